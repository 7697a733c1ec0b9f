//! Encoding a step: its kernels (`phases`, one `Phase` each), their
//! dispatches over the chunks (`encode_phase`), the step as one pass or,
//! with --profile, a timed pass per kernel (`encode_fused`); the table's
//! generation and the staged path's step.

use super::*;
use crate::gpu::batch::SlotSource;
use crate::gpu::timer::PassTimer;

impl GpuTrainer {
    pub(super) fn encode_generate(&self, seed: u64) {
        let ctx = &self.ctx;
        let mut p = params_u(self.shape, &self.cfg);
        p.seed_lo = seed as u32;
        p.seed_hi = (seed >> 32) as u32;
        let seeded = uniform(ctx, "init params", &p);
        let pipeline = self.constants().pipeline(ctx, &shaders::INIT, "main", &[]);
        let groups = self.chunks.iter().map(|c| bind(ctx, &pipeline, &[&c.a, &seeded, &c.uniform])).collect();
        let init = Pass { pipeline, groups };
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let d = self.shape.dim as u64;
            let each = self.chunks.iter().map(|c| (c.span.rows as u64 * d).div_ceil(self.fused.wg as u64) as u32);
            init.dispatch_each(&mut pass, each, self.max_groups);
        }
        ctx.queue.submit([enc.finish()]);
    }

    /// One step (or, with `update == false`, one evaluation), as one pass
    /// (or, with `phase_timer`, a timed pass per kernel from that timer's
    /// pass `first`). `step` is its number. Returns the kernels encoded.
    pub(super) fn encode_fused(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        update: bool,
        snapshot: bool,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
        phase_timer: Option<(&PassTimer, u32)>,
        step: u64,
    ) -> Vec<Phase> {
        let batch = self.batch.as_ref().filter(|_| update);
        // The step's slots: copied from the resident batches (copies go
        // between passes); random ones are sampled by the step's first
        // kernel (under SAMPLED, by the fused step), from its entry of the
        // submission's schedule.
        if let (Some(b), None) = (batch, &self.manual) {
            if let SlotSource::Given { all, resident, .. } = &b.source {
                let bytes = b.cap as u64 * 16;
                let at = (step % *resident as u64) * bytes;
                enc.copy_buffer_to_buffer(all, at, &b.slots, 0, bytes);
            }
        }
        let phases = self.phases(update, snapshot);
        // After this step the anchors are as it left them: fresh for the
        // next one when no step can change rows a and b.
        self.anchors_fresh = self.keeps_anchors();
        match phase_timer {
            // --profile: each kernel in a pass of its own, timed.
            Some((timer, first)) => {
                for (i, &ph) in phases.iter().enumerate() {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(ph.kernel()),
                        timestamp_writes: Some(timer.writes(first + i as u32)),
                    });
                    self.encode_phase(&mut pass, ph, update);
                }
            }
            None => {
                let mut pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("fused step"), timestamp_writes });
                for &ph in &phases {
                    self.encode_phase(&mut pass, ph, update);
                }
            }
        }
        phases
    }

    /// The kernels of one step (or evaluation), in order.
    fn phases(&self, update: bool, snapshot: bool) -> Vec<Phase> {
        let batch = self.batch.as_ref().filter(|_| update);
        let random = matches!(batch, Some(BatchDev { source: SlotSource::Random { .. }, .. }));
        let pre = self.prepass.as_ref().filter(|_| update);
        let rollback = self.rollback.is_some();
        [
            // (SAMPLED: the fused step works out the slots itself.)
            (Phase::Sample, random && self.manual.is_none() && !self.fused.sampled),
            (Phase::Snapshot, snapshot && rollback),
            (Phase::Anchors, !self.anchors_fresh),
            (Phase::Gather, batch.is_some_and(|b| !b.direct)),
            (Phase::Prep, pre.is_some()),
            (Phase::AnchorSum, pre.is_some_and(|p| p.anchor_sum.is_some())),
            (Phase::Prepare, pre.is_some()),
            (Phase::Fused, true),
            (Phase::Reduce, !self.without_reduce),
            // (A batch read in place has rows to put back only under a
            // double-buffered guard, and only after a dropped step: with
            // UNDO in the reduce pass's own workgroups.)
            (
                Phase::Scatter,
                batch.is_some_and(|b| {
                    !b.direct || self.cfg.guard.policy.double_buffered() && !self.fused.undo_in_reduce
                }),
            ),
            (Phase::Restore, update && rollback),
        ]
        .into_iter()
        .filter_map(|(ph, on)| on.then_some(ph))
        .collect()
    }

    /// Encodes one kernel of a step (its dispatches over every chunk).
    fn encode_phase(&self, pass: &mut wgpu::ComputePass, phase: Phase, update: bool) {
        let batch = self.batch.as_ref().filter(|_| update);
        let max = self.max_groups;
        let each_chunk = |pass: &mut wgpu::ComputePass, p: &Pass, groups: &dyn Fn(&GpuChunk) -> u32| {
            p.dispatch_each(pass, self.chunks.iter().map(groups), max)
        };
        let once = |pass: &mut wgpu::ComputePass, p: &Pass, groups: u32| p.dispatch(pass, groups, max);
        let d = self.shape.dim as u64;
        let wg = self.fused.wg as u64;
        let elements = |c: &GpuChunk| (c.span.rows as u64 * d).div_ceil(wg) as u32;
        let rows = |c: &GpuChunk| c.row_groups;
        // (Over the active slots: room past them is not dispatched.)
        let slot_elements = |b: &BatchDev| slot_groups(b.active, d, self.vec4(), self.fused.wg);
        // The fused kernel's passes, over the batch's slots or the chunks.
        let fused = |pass: &mut wgpu::ComputePass, p: &Pass| match batch {
            Some(b) => once(pass, p, b.groups()),
            None => each_chunk(pass, p, &rows),
        };
        let pre = self.prepass.as_ref();
        match phase {
            Phase::Sample => {
                if let Some(BatchDev { source: SlotSource::Random { pass: sample, .. }, active, .. }) = batch {
                    once(pass, sample, active.div_ceil(self.fused.wg));
                }
            }
            Phase::Snapshot => {
                if let Some((snap, _)) = &self.rollback {
                    each_chunk(pass, snap, &elements);
                }
            }
            Phase::Anchors => self.anchors_pass.dispatch_one(pass),
            Phase::Gather => {
                if let Some(b) = batch {
                    each_chunk(pass, &b.gather, &|_| slot_elements(b));
                }
            }
            Phase::Prep => {
                if let Some(pre) = pre {
                    fused(pass, &pre.prep);
                }
            }
            Phase::AnchorSum => {
                if let Some(sum) = pre.and_then(|p| p.anchor_sum.as_ref()) {
                    let blocks = (d as u32).div_ceil(self.fused.wg);
                    match batch {
                        Some(b) => once(pass, sum, blocks * b.active.div_ceil(SEG)),
                        None => each_chunk(pass, sum, &|c| blocks * (c.span.rows as u32).div_ceil(SEG)),
                    }
                }
            }
            Phase::Prepare => {
                if let Some(pre) = pre {
                    pre.prepare.dispatch_one(pass);
                }
            }
            Phase::Fused => {
                if update {
                    fused(pass, &self.fused_update);
                } else {
                    each_chunk(pass, &self.fused_eval, &rows);
                }
            }
            Phase::Reduce => match update {
                // (With UNDO, its undo workgroups after the reduce's one.)
                true => self.reduce_update.dispatch(pass, self.reduce_groups, max),
                false => self.reduce_eval.dispatch_one(pass),
            },
            Phase::Scatter => {
                if let Some(b) = batch {
                    if b.direct {
                        // Indirect: no workgroups unless reduce.wgsl dropped
                        // the step (its grid follows rollback's, if any).
                        let at = if self.rollback.is_some() { self.chunks.len() } else { 0 };
                        pass.set_pipeline(&b.scatter.pipeline);
                        pass.set_bind_group(0, &b.scatter.groups[0], &[]);
                        pass.dispatch_workgroups_indirect(&self.guard_args, at as u64 * 16);
                    } else {
                        each_chunk(pass, &b.scatter, &|_| slot_elements(b));
                    }
                }
            }
            Phase::Restore => {
                // Indirect: reduce.wgsl gave no workgroups unless it rolled back.
                if let Some((_, restore)) = &self.rollback {
                    pass.set_pipeline(&restore.pipeline);
                    for (i, bg) in restore.groups.iter().enumerate() {
                        pass.set_bind_group(0, bg, &[]);
                        pass.dispatch_workgroups_indirect(&self.guard_args, i as u64 * 16);
                    }
                }
            }
        }
    }

    /// Nominal bytes `phase` reads and writes in one step: the buffers it
    /// goes over in full.
    pub(super) fn phase_bytes(&self, phase: Phase) -> u64 {
        let d = self.shape.dim as u64;
        let table = self.shape.bytes();
        let vel = if self.cfg.momentum > 0.0 { 2 } else { 1 };
        // Rows a step's kernels go over: the batch's slots or the table's rows.
        let slots = self.batch.as_ref().map_or(self.shape.rows as u64, |b| b.active as u64);
        let direct = self.batch.as_ref().is_some_and(|b| b.direct);
        match phase {
            Phase::Sample => slots * 16,
            Phase::Snapshot => 2 * table,
            // Copies only after a rollback (an indirect dispatch, empty
            // otherwise): not counted.
            Phase::Restore => 0,
            Phase::Anchors => 4 * d * 4,
            // DIRECT: no gather; the scatter copies only after a dropped
            // step (not counted), the fused pass writes a double-buffered
            // guard's undo log beside the rows.
            Phase::Gather | Phase::Scatter if direct => 0,
            Phase::Fused if direct && self.cfg.guard.policy.double_buffered() => 3 * vel * slots * d * 4,
            Phase::Gather | Phase::Scatter | Phase::Fused => 2 * vel * slots * d * 4,
            Phase::Prep | Phase::AnchorSum => slots * d * 4 + slots * 16,
            Phase::Prepare => slots.div_ceil(SEG as u64) * 2 * d * 4,
            Phase::Reduce => slots * 16,
        }
    }

    /// One full-table step through the staged kernels.
    pub(super) fn encode_staged(&self, enc: &mut wgpu::CommandEncoder) {
        let s = self.staged.as_ref().expect("staged buffers are built before encoding");
        let b = self.shape.rows as u64;
        let d = self.shape.dim as u64;
        let max = self.max_groups;
        let elem_groups = (b * d).div_ceil(self.fused.wg as u64) as u32;
        let row_groups = (b as u32).div_ceil(self.fused.wg);
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("staged step"), timestamp_writes: None });
        self.anchors_pass.dispatch_one(&mut pass);
        let per_chunk = std::iter::repeat(elem_groups);
        s.gather.dispatch_each(&mut pass, per_chunk.clone(), max);
        s.distances.dispatch(&mut pass, row_groups, max);
        s.forward.dispatch(&mut pass, row_groups, max);
        s.reduce.dispatch_one(&mut pass);
        s.backward.dispatch(&mut pass, elem_groups, max);
        s.sgd.dispatch_each(&mut pass, per_chunk, max);
    }
}
