//! Host side of batched steps (SPEC §10): where each step's slots come
//! from (`sample.wgsl` for random batches, the resident user batches), the
//! gather/scatter passes (`batch_io.wgsl`), and mapping the slot numbers in
//! a batch's records back to rows. Owned by [`super::GpuTrainer`]; CPU
//! mirror: `crate::cpu` (its general step); slots: `crate::batches`.

use super::context::GpuContext;
use super::sampler::SampleU;
use super::trainer::Pass;
use crate::batches::StepSlots;
use crate::config::StepConfig;
use crate::record::Record;
use crate::sampler::Sampler;

/// The device side of batched steps (SPEC §10): each step's slots are
/// stepped by the same fused kernel as a table chunk — in place when the
/// table is one binding (`direct`), else gathered into a batch buffer by
/// batch_io.wgsl first and scattered back.
pub(super) struct BatchDev {
    /// Slots per step (anchors included): the batch buffers' rows.
    pub(super) cap: u32,
    /// The table is one binding: the step reads it in place (no gather) and
    /// scatters only a double-buffered guard's kept step.
    pub(super) direct: bool,
    pub(super) slots: wgpu::Buffer,
    /// Workgroups of the fused pass over the slots.
    pub(super) groups: u32,
    pub(super) gather: Pass,
    pub(super) scatter: Pass,
    pub(super) settle: Pass,
    pub(super) source: SlotSource,
}

/// Where each step's slots come from.
pub(super) enum SlotSource {
    /// sample.wgsl writes them; its parameters for a submission's steps
    /// are written to `schedule` at once and copied into `uniform` step by step.
    Random { sampler: Sampler, uniform: wgpu::Buffer, schedule: wgpu::Buffer, pass: Pass },
    /// The user's batches, all resident in `all` (and on the host, to map
    /// the slot numbers of the records back to rows).
    Given { all: wgpu::Buffer, host: Vec<StepSlots> },
}

impl BatchDev {
    /// The row in slot `slot` of step `step` (anchors a, b in slots 0, 1).
    fn slot_row(&self, step: u64, slot: u64, a: usize, b: usize) -> u64 {
        match &self.source {
            SlotSource::Random { sampler, .. } => match slot {
                0 => a as u64,
                1 => b as u64,
                s => {
                    let at = sampler.slot(step);
                    sampler.permute(at.epoch, at.start + s as u32 - 2) as u64
                }
            },
            SlotSource::Given { host, .. } => {
                let h = &host[(step % host.len() as u64) as usize];
                h.slots.get(slot as usize).map_or(u64::MAX, |s| s.0 as u64)
            }
        }
    }

    fn entries(&self, step: u64) -> usize {
        match &self.source {
            SlotSource::Random { sampler, .. } => sampler.slot(step).count as usize,
            SlotSource::Given { host, .. } => host[(step % host.len() as u64) as usize].entries,
        }
    }

    /// Random batches: the sample kernel's parameters for steps
    /// `first .. first + n` (one submission), written at once.
    pub(super) fn write_schedule(&self, ctx: &GpuContext, cfg: &StepConfig, first: u64, n: usize) {
        let SlotSource::Random { sampler, schedule, .. } = &self.source else { return };
        let steps: Vec<SampleU> = (0..n as u64)
            .map(|i| {
                let at = sampler.slot(first + i);
                SampleU {
                    epoch: at.epoch,
                    start: at.start,
                    count: at.count,
                    w_red: cfg.w_red(at.count as usize),
                    ..SampleU::zeroed_for(sampler)
                }
            })
            .collect();
        ctx.queue.write_buffer(schedule, 0, bytemuck::cast_slice(&steps));
    }

    /// Batched steps' records list slots: back to rows, sorted (a skip-row
    /// record's strike counts follow their rows), and the step's batch size.
    /// `manual`: the slots of `Trainer::step_rows`.
    pub(super) fn map_record(&self, r: &mut Record, step: u64, manual: Option<&StepSlots>, (a, b): (usize, usize)) {
        let row = |slot: u64| match manual {
            Some(m) => m.slots.get(slot as usize).map_or(u64::MAX, |s| s.0 as u64),
            None => self.slot_row(step, slot, a, b),
        };
        r.batch = match manual {
            Some(m) => m.entries,
            None => self.entries(step),
        };
        let scans = &mut r.scans;
        for s in [&mut scans.loss, &mut scans.grad] {
            s.rows.iter_mut().for_each(|x| *x = row(*x));
            s.rows.sort_unstable();
            if let Some(f) = &mut s.first {
                f.row = row(f.row);
            }
        }
        let t = &mut scans.table;
        if let Some(f) = &mut t.first {
            f.row = row(f.row);
        }
        let mut pairs: Vec<(u64, u32)> =
            t.rows.iter().enumerate().map(|(i, &s)| (row(s), scans.strikes.get(i).copied().unwrap_or(0))).collect();
        pairs.sort_unstable();
        t.rows = pairs.iter().map(|p| p.0).collect();
        if !scans.strikes.is_empty() {
            scans.strikes = pairs.iter().map(|p| p.1).collect();
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
