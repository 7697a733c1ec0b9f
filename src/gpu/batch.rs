//! Host side of batched steps (SPEC §10): where each step's slots come
//! from (random batches: worked out by `fused_step.wgsl` itself, SAMPLED,
//! or by `sample.wgsl`'s `batch` pass; the resident user batches), the
//! gather/scatter passes (`batch_io.wgsl`). Owned by [`super::GpuTrainer`]; CPU
//! mirror: `crate::cpu` (its general step); slots: `crate::batches`.

use super::context::GpuContext;
use super::sampler::SampleU;
use super::trainer::Pass;
use crate::batches::StepSlots;
use crate::config::StepConfig;
use crate::sampler::Sampler;

/// The device side of batched steps (SPEC §10): each step's slots are
/// stepped by the same fused kernel as a table chunk — in place when the
/// table is one binding (`direct`), else gathered into a batch buffer by
/// batch_io.wgsl first and scattered back.
pub(super) struct BatchDev {
    /// Slots per step (anchors included): the batch buffers' rows.
    pub(super) cap: u32,
    /// The plan's largest batch's slots (at most `cap`: room reserved or
    /// grown for `Trainer::step_rows` is more).
    pub(super) plan: u32,
    /// The slots the steps now dispatch over and their uniforms bound:
    /// `plan`, or for a larger `step_rows` batch its own (then `plan`
    /// again), so that room past the plan costs the planned steps nothing.
    pub(super) active: u32,
    /// Slots a workgroup of the fused step covers.
    pub(super) rows_per_group: u32,
    /// The table is one binding: the step reads and writes it in place (no
    /// gather); under a double-buffered guard it logs the rows' old values
    /// and the scatter puts them back only after a dropped step.
    pub(super) direct: bool,
    pub(super) slots: wgpu::Buffer,
    pub(super) gather: Pass,
    pub(super) scatter: Pass,
    pub(super) source: SlotSource,
    /// The uniforms that bound a step's slots (`active`): the fused step's
    /// and anchor_sum.wgsl's chunk, the reduce's `ReduceU`, batch_io.wgsl's.
    pub(super) x_uniform: wgpu::Buffer,
    pub(super) reduce_u: wgpu::Buffer,
    pub(super) io_u: wgpu::Buffer,
}

/// Where each step's slots come from.
pub(super) enum SlotSource {
    /// sample.wgsl writes them; its parameters for a submission's steps
    /// are written to `schedule` at once, and step k reads entry k
    /// (`state.record`), with no copy between the steps.
    Random { sampler: Sampler, schedule: wgpu::Buffer, pass: Pass },
    /// The user's batches: step k's slots are copied from entry
    /// k mod `resident` of `all`. All of them stay there when they fit
    /// (`resident` = their count: written once, at the start); otherwise
    /// `streamed` keeps them on the host and each submission writes its
    /// steps' batches into their entries of that ring (`write_schedule`),
    /// queue order keeping a write after the earlier submissions' copies.
    /// `entries`: each batch's size (repeats counted), for its records.
    Given { all: wgpu::Buffer, entries: Vec<usize>, resident: usize, streamed: Option<Vec<StepSlots>> },
}

impl BatchDev {
    /// Workgroups of the fused pass over the active slots.
    pub(super) fn groups(&self) -> u32 {
        self.active.div_ceil(self.rows_per_group)
    }

    /// Before a submission of steps `first .. first + n`: random batches'
    /// sample kernel parameters, written at once (`given`: the host wrote
    /// the slots, `Trainer::step_rows`); streamed user batches, each
    /// step's into its entry of the ring (n ≤ `resident`: no two of a
    /// submission's steps share one).
    pub(super) fn write_schedule(&self, ctx: &GpuContext, cfg: &StepConfig, first: u64, n: usize, given: bool) {
        let (sampler, schedule) = match &self.source {
            SlotSource::Random { sampler, schedule, .. } => (sampler, schedule),
            SlotSource::Given { all, resident, streamed: Some(host), .. } => {
                let bytes = self.cap as u64 * 16;
                for step in first..first + n as u64 {
                    let words = slot_words(&host[(step % host.len() as u64) as usize], cfg, self.cap);
                    ctx.queue.write_buffer(all, (step % *resident as u64) * bytes, bytemuck::cast_slice(&words));
                }
                return;
            }
            SlotSource::Given { streamed: None, .. } => return,
        };
        let steps: Vec<SampleU> = (0..n as u64)
            .map(|i| {
                let at = sampler.slot(first + i);
                SampleU { w_red: cfg.w_red(at.count as usize), given: given as u32, ..SampleU::at(sampler, at) }
            })
            .collect();
        ctx.queue.write_buffer(schedule, 0, bytemuck::cast_slice(&steps));
    }

    /// A batched step's size (entries, repeats counted) for its record;
    /// `manual`: the slots of `Trainer::step_rows`. The scans already list
    /// rows: reduce.wgsl maps the slots (`batch_findings`).
    pub(super) fn batch_size(&self, step: u64, manual: Option<&StepSlots>) -> usize {
        match (manual, &self.source) {
            (Some(m), _) => m.entries,
            (None, SlotSource::Random { sampler, .. }) => sampler.slot(step).count as usize,
            (None, SlotSource::Given { entries, .. }) => entries[(step % entries.len() as u64) as usize],
        }
    }
}

/// A step's slots as the kernels read them: (row, multiplicity, weight
/// bits, 0), dead slots after the batch's.
pub(super) fn slot_words(s: &StepSlots, cfg: &StepConfig, cap: u32) -> Vec<[u32; 4]> {
    let w_red = cfg.w_red(s.entries);
    let mut v: Vec<[u32; 4]> = s.slots.iter().map(|&(r, m)| [r, m, (m as f32 * w_red).to_bits(), 0]).collect();
    v.resize(cap as usize, [u32::MAX, 0, 0, 0]);
    v
}
