//! GPU time of compute passes from timestamp queries, where the adapter has
//! them (`Features::TIMESTAMP_QUERY`, asked for only when offered): what the
//! device spent, not what the host waited. Used by `cargo bench`.

use super::context::GpuContext;
use super::pipes::{read_mapped, readback};
use crate::error::Result;

/// Passes timed per query set (wgpu allows 4096 queries, two a pass).
const TIMED_PASSES: u32 = 1024;

/// Begin/end timestamps for up to `capacity` passes.
pub struct PassTimer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    capacity: u32,
    /// Nanoseconds per timestamp tick.
    period: f64,
}

/// A query set of `pairs` (begin, end) timestamp pairs and the buffer it
/// resolves into (8 bytes a timestamp), or `None` when the device has no
/// timestamp queries.
pub(crate) fn timestamp_pairs(ctx: &GpuContext, label: &str, pairs: u32) -> Option<(wgpu::QuerySet, wgpu::Buffer)> {
    if !ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        return None;
    }
    let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some(label),
        ty: wgpu::QueryType::Timestamp,
        count: 2 * pairs,
    });
    let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: pairs as u64 * 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    Some((set, resolve))
}

/// Seconds between each (begin, end) pair of resolved u64 ticks, read back
/// as little-endian u32 word pairs (words need not be 8-byte aligned);
/// `None` for a pair that runs backwards or a device with no period.
pub(crate) fn pair_seconds(words: &[u32], period_ns: f64) -> Vec<Option<f64>> {
    let ticks: Vec<u64> = words.chunks_exact(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect();
    ticks
        .chunks_exact(2)
        .map(|t| (t[1] >= t[0] && period_ns > 0.0).then(|| (t[1] - t[0]) as f64 * period_ns * 1e-9))
        .collect()
}

impl PassTimer {
    /// `None` when the device has no timestamp queries.
    pub fn new(ctx: &GpuContext, capacity: u32) -> Option<Self> {
        let (set, resolve) = timestamp_pairs(ctx, "pass timestamps", capacity)?;
        let staging = readback(ctx, "timestamp readback", capacity as u64 * 16);
        Some(PassTimer { set, resolve, staging, capacity, period: ctx.queue.get_timestamp_period() as f64 })
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The timestamp writes of pass `i` (< capacity).
    pub fn writes(&self, i: u32) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        }
    }

    /// Encodes the copy of the first `passes` passes' timestamps to the host.
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder, passes: u32) {
        enc.resolve_query_set(&self.set, 0..2 * passes, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, passes as u64 * 16);
    }

    /// Seconds each of the first `passes` passes took, after `resolve` was submitted.
    pub fn read(&self, ctx: &GpuContext, passes: u32) -> Result<Vec<f64>> {
        let raw = read_mapped(ctx, &self.staging, passes as u64 * 16)?;
        // (A pair that runs backwards counts as no time.)
        Ok(pair_seconds(&raw, self.period).into_iter().map(|s| s.unwrap_or(0.0)).collect())
    }
}

/// Times `n` passes in rounds of at most `TIMED_PASSES` (one query set
/// each) and sums them; `None` as soon as a round has no timestamps.
pub(super) fn in_timed_rounds(
    n: u32,
    mut round: impl FnMut(u32) -> Result<Option<std::time::Duration>>,
) -> Result<Option<std::time::Duration>> {
    let mut total = std::time::Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let m = left.min(TIMED_PASSES);
        match round(m)? {
            Some(t) => total += t,
            None => return Ok(None),
        }
        left -= m;
    }
    Ok(Some(total))
}
