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

impl PassTimer {
    /// `None` when the device has no timestamp queries.
    pub fn new(ctx: &GpuContext, capacity: u32) -> Option<Self> {
        if !ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let count = 2 * capacity;
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("pass timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * 8;
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = readback(ctx, "timestamp readback", bytes);
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
        // u64 ticks as pairs of little-endian words (words need not be
        // 8-byte aligned).
        let ticks: Vec<u64> = raw.chunks_exact(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect();
        Ok(ticks.chunks_exact(2).map(|t| t[1].saturating_sub(t[0]) as f64 * self.period * 1e-9).collect())
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
