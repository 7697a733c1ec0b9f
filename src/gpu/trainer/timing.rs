//! Timing for `cargo bench` (SPEC §15): the step, the evaluation, the
//! table scan and copies of the table, by timestamp queries (GPU time) or
//! by the wall clock around one submission.

use super::*;
use crate::gpu::timer::{in_timed_rounds, PassTimer};

impl GpuTrainer {
    /// Wall time of `iters` plain device copies of the whole table (each
    /// chunk into a scratch buffer of its size), in one submission: the
    /// floor a full-table step is measured against (SPEC §15).
    pub fn time_table_copies(&self, iters: u64) -> Result<std::time::Duration> {
        let largest = self.chunks.iter().map(|c| c.a.size()).max().unwrap_or(16);
        let scratch = storage(&self.ctx, "copy scratch", largest, wgpu::BufferUsages::COPY_DST);
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        for _ in 0..iters {
            for c in &self.chunks {
                enc.copy_buffer_to_buffer(&c.a, 0, &scratch, 0, c.a.size());
            }
        }
        let t = std::time::Instant::now();
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()?;
        Ok(t.elapsed())
    }

    /// GPU time of `n` full-table steps from timestamp queries (one pass a
    /// step), or `None` without them. The guard acts as in `steps`; the
    /// records are not read. For benchmarks (SPEC §15).
    pub fn gpu_time_steps(&mut self, n: u32) -> Result<Option<std::time::Duration>> {
        in_timed_rounds(n, |m| self.gpu_time_passes_once(m, true))
    }

    /// GPU time of `n` full-table steps' fused passes alone, their reduce
    /// pass left out, or `None` without timestamp queries: beside
    /// `gpu_time_steps`, what the one-workgroup reduce pass adds to a
    /// step's pass (benches). No step is folded, recorded or guarded (a
    /// double-buffered guard reads and writes the same buffers every
    /// time), so afterwards the trainer is fit for nothing but timing;
    /// refused for batches, whose sampled slots would repeat one batch.
    pub fn gpu_time_fused_passes(&mut self, n: u32) -> Result<Option<std::time::Duration>> {
        if self.batch.is_some() {
            return Err(Error::invalid("timing", "fused passes alone are timed for full-table steps only"));
        }
        self.without_reduce = true;
        let timed = in_timed_rounds(n, |m| self.gpu_time_passes_once(m, true));
        self.without_reduce = false;
        timed
    }

    /// GPU time of `n` evaluations of the table (the fused pass with
    /// UPDATE = false: every row read, its sums folded, its loss scanned,
    /// nothing written; then reduce.wgsl), or `None` without timestamp
    /// queries: beside the step, what the reading and the row's math cost
    /// without the update and the writes (benches).
    pub fn gpu_time_evaluations(&mut self, n: u32) -> Result<Option<std::time::Duration>> {
        in_timed_rounds(n, |m| self.gpu_time_passes_once(m, false))
    }

    fn gpu_time_passes_once(&mut self, n: u32, update: bool) -> Result<Option<std::time::Duration>> {
        let Some(timer) = PassTimer::new(&self.ctx, n.max(1)) else { return Ok(None) };
        let ctx = self.ctx.clone();
        let every = self.cfg.guard.snapshot_every as u64;
        let mut done = 0u32;
        while done < n {
            let m = (n - done).min(STEPS_PER_SUBMIT as u32);
            self.start_submission();
            if let Some(b) = &self.batch {
                b.write_schedule(&ctx, &self.cfg, self.steps_done, m as usize, false);
            }
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            for i in 0..m {
                let snapshot = update && self.steps_done.is_multiple_of(every);
                self.encode_fused(&mut enc, update, snapshot, Some(timer.writes(done + i)), None, self.steps_done);
                self.steps_done += update as u64;
            }
            done += m;
            if done == n {
                timer.resolve(&mut enc, n);
            }
            ctx.queue.submit([enc.finish()]);
        }
        let secs: f64 = timer.read(&ctx, n)?.iter().sum();
        Ok(Some(std::time::Duration::from_secs_f64(secs)))
    }

    /// GPU time of `iters` copies of the table by `copy.wgsl` (the floor of
    /// SPEC §15 through the same API as the step), or `None` without
    /// timestamp queries.
    /// With `vec4`, copy_vec4.wgsl (16-byte accesses; D a multiple of 4).
    pub fn gpu_time_table_copies(&self, iters: u32, vec4: bool) -> Result<Option<std::time::Duration>> {
        if vec4 && !self.shape.dim.is_multiple_of(4) {
            return Err(Error::invalid(
                "copy",
                format!("a 16-byte copy needs D a multiple of 4, not {}", self.shape.dim),
            ));
        }
        let Some(wg) = self.copy_workgroup(vec4)? else { return Ok(None) };
        in_timed_rounds(iters, |m| self.gpu_time_copies_once(m, vec4, wg))
    }

    /// The copy floor's workgroup size: the fastest of 64, 128 and 256
    /// invocations (those the device allows) by a short trial at the first
    /// timing, then kept. Not the step's (`LATENT_LINE_WORKGROUP`, which
    /// the device check tunes): a floor that moved with the step's shape
    /// could be a slow copy, flattering the step's ratio to it.
    fn copy_workgroup(&self, vec4: bool) -> Result<Option<u32>> {
        if let Some(&wg) = self.copy_wg[vec4 as usize].get() {
            return Ok(Some(wg));
        }
        let mut sizes: Vec<u32> = [64, 128, 256].iter().map(|&w| self.ctx.workgroup_size(w)).collect();
        sizes.dedup();
        let mut best: Option<(std::time::Duration, u32)> = None;
        for wg in sizes {
            // The best of three rounds of 4 copies (the first warms up).
            let mut t = std::time::Duration::MAX;
            for _ in 0..3 {
                let Some(d) = self.gpu_time_copies_once(4, vec4, wg)? else { return Ok(None) };
                t = t.min(d);
            }
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, wg));
            }
        }
        Ok(best.map(|(_, wg)| *self.copy_wg[vec4 as usize].get_or_init(|| wg)))
    }

    fn gpu_time_copies_once(&self, iters: u32, vec4: bool, wg: u32) -> Result<Option<std::time::Duration>> {
        let Some(timer) = PassTimer::new(&self.ctx, iters.max(1)) else { return Ok(None) };
        let ctx = &self.ctx;
        let kernel = if vec4 { &shaders::COPY_VEC4 } else { &shaders::COPY };
        let pipeline = Constants::new(self.shape, &self.cfg, wg).pipeline(ctx, kernel, "main", &[]);
        let per_invocation = if vec4 { 4 } else { 1 };
        let largest = self.chunks.iter().map(|c| c.a.size()).max().unwrap_or(16);
        let scratch = storage(ctx, "copy scratch", largest, wgpu::BufferUsages::empty());
        let groups = self.chunks.iter().map(|c| bind(ctx, &pipeline, &[&c.a, &scratch, &c.uniform])).collect();
        let copy = Pass { pipeline, groups };
        let d = self.shape.dim as u64;
        let each: Vec<u32> =
            self.chunks.iter().map(|c| (c.span.rows as u64 * d).div_ceil(wg as u64 * per_invocation) as u32).collect();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        for i in 0..iters {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("copy"),
                timestamp_writes: Some(timer.writes(i)),
            });
            copy.dispatch_each(&mut pass, each.iter().copied(), self.max_groups);
        }
        timer.resolve(&mut enc, iters);
        ctx.queue.submit([enc.finish()]);
        let secs: f64 = timer.read(ctx, iters)?.iter().sum();
        Ok(Some(std::time::Duration::from_secs_f64(secs)))
    }

    /// Wall time of `iters` table scans in one submission (benchmarks).
    pub fn time_table_scans(&mut self, iters: u32) -> Result<std::time::Duration> {
        self.with_table_scanner(true, |s, t| s.time(t, iters))
    }

    /// `time_table_scans` with 4-byte loads (scan_table.wgsl `main`), where
    /// the default takes 16 bytes a load: the benches' comparison.
    pub fn time_table_scans_4byte(&mut self, iters: u32) -> Result<std::time::Duration> {
        self.with_table_scanner(false, |s, t| s.time(t, iters))
    }

    /// The GPU's own time of `iters` table scans from timestamp queries, or
    /// `None` without them; `wide`: 16-byte loads where D allows (the
    /// default), else 4-byte (benchmarks).
    pub fn gpu_time_table_scans(&mut self, iters: u32, wide: bool) -> Result<Option<std::time::Duration>> {
        self.with_table_scanner(wide, |s, t| s.gpu_time(t, iters))
    }

    /// Runs `f` with a scanner of the current table: the trainer's own
    /// (16-byte loads where D allows) for `wide`, else a 4-byte one.
    fn with_table_scanner<R>(
        &mut self,
        wide: bool,
        f: impl FnOnce(&mut TableScanner, &crate::gpu::scan::PreparedScan) -> Result<R>,
    ) -> Result<R> {
        let cur = self.current()?;
        let mut narrow = None;
        let scanner = if wide {
            self.ensure_scanner()?;
            self.scanner.as_mut().expect("built above")
        } else {
            narrow.insert(TableScanner::with_loads(
                self.ctx.clone(),
                self.shape,
                &self.layout,
                self.fused.single_wg,
                self.max_groups,
                false,
            )?)
        };
        let bufs: Vec<&wgpu::Buffer> = self.chunks.iter().map(|c| c.buffer(cur)).collect();
        let prepared = scanner.prepare(&bufs);
        f(scanner, &prepared)
    }
}
