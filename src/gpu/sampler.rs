//! Host side of `shaders/sample.wgsl`'s `main`: an epoch's rows generated
//! on the device (SPEC §10), for tests/sampler.rs to check against the CPU
//! mirror, `crate::sampler::Sampler`. (Training's slots: sample.wgsl's
//! `batch` pass or fused_step.wgsl's SAMPLED, both from
//! `GpuTrainer::encode_phase`.) `SampleU` is also the schedule's entry.

use std::sync::Arc;

use super::context::GpuContext;
use super::layout::grid;
use super::pipes::{bind, read_mapped, readback, storage, uniform, Constants};
use super::shaders;
use crate::error::{Error, Result};
use crate::sampler::{Sampler, Slot};

/// sampler.wgsl's `SampleParams`: one step's batch, with its epoch's
/// round keys (48 bytes: WGSL rounds the struct to its vec4's alignment).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct SampleU {
    pub(super) keys: [u32; 4],
    pub(super) start: u32,
    pub(super) count: u32,
    pub(super) rows: u32,
    pub(super) half: u32,
    pub(super) w_red: f32,
    /// 1: the host wrote the step's slots (`Trainer::step_rows`), so
    /// fused_step.wgsl's SAMPLED reads them instead of working them out.
    pub(super) given: u32,
    pub(super) pad: [u32; 2],
}

/// Writes batches of a [`Sampler`] into a device buffer.
pub struct GpuSampler {
    ctx: Arc<GpuContext>,
    sampler: Sampler,
    wg: u32,
    pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    /// The batch's rows, `batch` u32 (or more for [`Self::positions`]).
    pub rows: wgpu::Buffer,
    group: wgpu::BindGroup,
    capacity: u32,
}

impl GpuSampler {
    /// A sampler whose buffer holds up to `capacity` rows.
    pub fn new(ctx: Arc<GpuContext>, sampler: Sampler, capacity: u32) -> Self {
        let wg = ctx.workgroup_size(256);
        let consts = Constants { wg, ..Constants::default() };
        let pipeline = consts.pipeline(&ctx, &shaders::SAMPLE, "main", &[]);
        let params = uniform(&ctx, "sample params", &SampleU::at(&sampler, sampler.slot(0)));
        let rows = storage(
            &ctx,
            "batch rows",
            capacity as u64 * 4,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let group = bind(&ctx, &pipeline, &[&rows, &params]);
        GpuSampler { ctx, sampler, wg, pipeline, params, rows, group, capacity }
    }

    /// Encodes the writing of `slot`'s rows into `self.rows[..slot.count]`.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder, slot: Slot) {
        let p = SampleU::at(&self.sampler, slot);
        self.ctx.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        let (x, y) = grid(slot.count.div_ceil(self.wg), self.ctx.max_groups());
        pass.dispatch_workgroups(x, y, 1);
    }

    /// Positions `start .. start + count` of `epoch`'s permutation, read back
    /// (tests and tools; count ≤ capacity). The buffer is poisoned first
    /// (all ones, never a row of a table of < 2^32 rows), so a position the
    /// kernel did not write shows.
    pub fn positions(&self, epoch: u32, start: u32, count: u32) -> Result<Vec<u32>> {
        if count > self.capacity {
            return Err(Error::invalid("count", format!("{count} positions; the buffer holds {}", self.capacity)));
        }
        // (Past the rows the kernel's cycle walk need never end.)
        let (end, rows) = (start as u64 + count as u64, self.sampler.rows as u64);
        if end > rows {
            return Err(Error::invalid("start", format!("positions {start}..{end} are past the {rows} rows")));
        }
        if count == 0 {
            return Ok(Vec::new());
        }
        self.ctx.queue.write_buffer(&self.rows, 0, &vec![0xff; count as usize * 4]);
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.encode(&mut enc, Slot { epoch, start, count });
        let staging = readback(&self.ctx, "batch readback", count as u64 * 4);
        enc.copy_buffer_to_buffer(&self.rows, 0, &staging, 0, count as u64 * 4);
        self.ctx.queue.submit([enc.finish()]);
        read_mapped(&self.ctx, &staging, count as u64 * 4)
    }
}

const _: () = assert!(std::mem::size_of::<SampleU>() == 48, "sampler.wgsl's SampleParams");

impl SampleU {
    /// `slot` of `s`'s batches, its epoch's keys worked out here; `w_red`
    /// 1, slots to be worked out (`given` 0).
    pub(super) fn at(s: &Sampler, slot: Slot) -> Self {
        SampleU {
            keys: s.keys(slot.epoch),
            start: slot.start,
            count: slot.count,
            rows: s.rows,
            half: s.half_bits(),
            w_red: 1.0,
            given: 0,
            pad: [0; 2],
        }
    }
}
