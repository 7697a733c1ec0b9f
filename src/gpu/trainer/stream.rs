//! Streaming steps: a few steps a submission, their records copied into a
//! ring of readback buffers mapped asynchronously (`submit`), read as each
//! submission finishes (`collect`): the host waits only for the oldest
//! submission when the ring is full. Each step's pass is timed by
//! timestamp queries where the device has them, its two timestamps copied
//! after the records (`Record::gpu_seconds`): a step's own GPU time with no
//! wait on the host (under --profile, the sum of its kernels' passes).

use super::*;
use crate::gpu::pipes::finish_map;
use crate::gpu::timer::{pair_seconds, timestamp_pairs, PassTimer};
use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::time::Instant;

type MapDone = Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Where a ring buffer keeps its steps' timestamps: after the records.
pub(super) const STAMPS_AT: u64 = STEPS_PER_SUBMIT as u64 * RECORD_BYTES;
/// A ring buffer's size: the records, then two u64 timestamps a step.
pub(super) const SLOT_BYTES: u64 = STAMPS_AT + STEPS_PER_SUBMIT as u64 * 16;

/// One readback buffer of the ring and the submission it waits for.
pub(super) struct Slot {
    pub(super) buffer: wgpu::Buffer,
    /// Where the device has timestamp queries: the queries of the steps'
    /// passes (begin, end), and the buffer they resolve into before the
    /// copy to `buffer` at STAMPS_AT.
    pub(super) stamps: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    pub(super) pending: Option<Pending>,
}

/// A submission's readback, in flight.
pub(super) struct Pending {
    /// Records (steps, or 1 for an evaluation).
    records: usize,
    done: MapDone,
    index: wgpu::SubmissionIndex,
    /// The first step's number; `None` for an evaluation.
    first: Option<u64>,
    /// The steps' timestamps follow the records.
    timed: bool,
    /// --profile: each step's kernels and their timed passes (read at
    /// submission, which profiling waits for), tallied as the records come
    /// back: only those of steps that ran (after an abort, the passes of
    /// the steps submitted with it did nothing).
    profiled: Vec<Vec<(Phase, f64)>>,
}

/// The bytes of a ring buffer a submission of `records` maps: its records,
/// and with `timed` its steps' timestamps after them (one a record).
fn mapped_bytes(records: usize, timed: bool) -> u64 {
    if timed {
        STAMPS_AT + records as u64 * 16
    } else {
        records as u64 * RECORD_BYTES
    }
}

/// A ring slot's timestamp queries, where the device has them.
pub(super) fn slot_stamps(ctx: &GpuContext) -> Option<(wgpu::QuerySet, wgpu::Buffer)> {
    timestamp_pairs(ctx, "step timestamps", STEPS_PER_SUBMIT as u32)
}

impl GpuTrainer {
    /// Encodes `n` steps (or one evaluation when `n == 0`) into one
    /// submission whose records land in ring slot `slot`, mapped
    /// asynchronously.
    fn submit(&mut self, n: usize, slot: usize) {
        let ctx = self.ctx.clone();
        self.start_submission();
        let first = self.steps_done;
        if let Some(b) = &self.batch {
            b.write_schedule(&self.ctx, &self.cfg, first, n, self.manual.is_some());
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        if n == 0 {
            self.encode_fused(&mut enc, false, false, None, None, first);
        }
        // --profile: a timed pass per kernel, read back after the submission.
        let timer = if n > 0 && self.profile.is_some() { PassTimer::new(&ctx, n as u32 * PHASES) } else { None };
        // Otherwise each step's pass, timed as a whole (the fused path's
        // steps are one pass each).
        let stamps =
            self.ring[slot].stamps.clone().filter(|_| n > 0 && timer.is_none() && self.opts.path == StepPath::Fused);
        let mut timed: Vec<Phase> = Vec::new();
        // (--profile: each step's count of timed passes.)
        let mut per_step: Vec<usize> = Vec::new();
        for i in 0..n {
            match self.opts.path {
                StepPath::Fused => {
                    let every = self.cfg.guard.snapshot_every as u64;
                    let snapshot = self.steps_done.is_multiple_of(every) || self.snapshot_due;
                    self.snapshot_due = false;
                    let t = timer.as_ref().map(|t| (t, timed.len() as u32));
                    let writes = stamps.as_ref().map(|(set, _)| wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    });
                    let phases = self.encode_fused(&mut enc, true, snapshot, writes, t, self.steps_done);
                    if t.is_some() {
                        per_step.push(phases.len());
                        timed.extend(phases);
                    }
                }
                StepPath::Staged => self.encode_staged(&mut enc),
            }
            self.steps_done += 1;
        }
        if let Some(t) = &timer {
            t.resolve(&mut enc, timed.len() as u32);
        }
        let count = n.max(1);
        let bytes = count as u64 * RECORD_BYTES;
        let s = &mut self.ring[slot];
        enc.copy_buffer_to_buffer(&self.records, 0, &s.buffer, 0, bytes);
        if let Some((set, resolve)) = &stamps {
            // (Timed only with n > 0 steps: one stamp pair a record.)
            enc.resolve_query_set(set, 0..2 * n as u32, resolve, 0);
            enc.copy_buffer_to_buffer(resolve, 0, &s.buffer, STAMPS_AT, n as u64 * 16);
        }
        let mapped = mapped_bytes(count, stamps.is_some());
        let index = ctx.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        s.buffer.slice(..mapped).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        s.pending = Some(Pending {
            records: count,
            done: rx,
            index,
            first: (n > 0).then_some(first),
            timed: stamps.is_some(),
            profiled: Vec::new(),
        });
        if let Some(t) = &timer {
            // Waits for this submission: profiling trades the overlap for
            // the kernels' own times.
            match t.read(&ctx, timed.len() as u32) {
                Ok(secs) => {
                    let mut passes = timed.iter().copied().zip(secs);
                    let steps = per_step.iter().map(|&k| passes.by_ref().take(k).collect()).collect();
                    if let Some(p) = self.ring[slot].pending.as_mut() {
                        p.profiled = steps;
                    }
                }
                Err(e) => self.profile_error = Some(e.to_string()),
            }
        }
    }

    /// --profile: one step's timed passes, added to the run's tally.
    fn tally_profile(&mut self, passes: &[(Phase, f64)]) {
        for &(ph, sec) in passes {
            let bytes = self.phase_bytes(ph);
            let all = self.profile.as_mut().expect("profiling");
            let at = match all.iter().position(|k| k.kernel == ph.kernel()) {
                Some(i) => i,
                None => {
                    all.push(KernelTime { kernel: ph.kernel().into(), ..KernelTime::default() });
                    all.len() - 1
                }
            };
            let k = &mut all[at];
            k.calls += 1;
            k.seconds += sec;
            k.bytes += bytes;
        }
    }

    /// Waits for ring slot `slot`'s submission and decodes its records.
    fn collect(&mut self, slot: usize) -> Result<Vec<Record>> {
        let s = &mut self.ring[slot];
        let Pending { records: count, done: rx, index, first, timed, profiled } =
            s.pending.take().expect("collect is called on a pending slot");
        self.ctx
            .device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.ctx.check()?;
        let raw = finish_map(&s.buffer, mapped_bytes(count, timed), rx)?;
        let words: &[u32] = &raw;
        let seconds = if timed {
            pair_seconds(&words[(STAMPS_AT / 4) as usize..], self.ctx.queue.get_timestamp_period() as f64)
        } else {
            Vec::new()
        };
        // Steps not done so far (the aborted one, those after it): a step
        // not run names the batch of the step the run stopped at, which a
        // resume takes again, as the CPU's record does.
        let mut undone = 0u64;
        let records: Vec<Record> = words[..count * RECORD_WORDS]
            .chunks_exact(RECORD_WORDS)
            .enumerate()
            .map(|(i, w)| {
                let mut r = Record::from_words(w, self.shape.rows);
                let passes = profiled.get(i).map(|p| p.iter().map(|(_, sec)| sec).sum());
                r.gpu_seconds = seconds.get(i).copied().flatten().or(passes);
                if r.action != crate::guard::Action::NotRun {
                    r.separation = self.cfg.separation(r.d0);
                }
                if let (Some(first), Some(b)) = (first, &self.batch) {
                    r.batch = b.batch_size(first + i as u64 - undone, self.manual.as_ref());
                }
                undone += matches!(r.action, crate::guard::Action::Aborted | crate::guard::Action::NotRun) as u64;
                r
            })
            .collect();
        for (r, passes) in records.iter().zip(&profiled) {
            if r.action != crate::guard::Action::NotRun {
                self.tally_profile(passes);
            }
        }
        // Every step encoded was counted; the aborted one (the table is as
        // before it: a resume takes it again) and those after it, which did
        // nothing, are not done.
        if first.is_some() {
            use crate::guard::Action::{Aborted, NotRun};
            self.steps_done -= records.iter().filter(|r| matches!(r.action, Aborted | NotRun)).count() as u64;
        }
        Ok(records)
    }

    /// After a failed wait: let the device finish, and free every slot, so
    /// that a later call starts from an empty ring.
    fn reset_ring(&mut self) {
        let _ = self.ctx.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
        for s in &mut self.ring {
            if s.pending.take().is_some() {
                s.buffer.unmap();
            }
        }
    }

    /// Runs `n` steps through the ring, or one evaluation when `n == 0`.
    pub(super) fn run(&mut self, n: usize) -> Result<Vec<Record>> {
        // (Not `n` at once: a caller may ask for more steps than memory
        // holds records, to be stopped by the stop flag.)
        let mut out = Vec::with_capacity(n.clamp(1, 1 << 16));
        self.run_streamed(n, &mut |records| {
            out.extend(records);
            true
        })?;
        Ok(out)
    }

    /// `n` steps (0: one evaluation) in submissions of up to
    /// STEPS_PER_SUBMIT, up to RING of them in flight (fewer steps where
    /// they are slow: QUEUED_SECONDS); each submission's
    /// records go to `on` as they come back, and `on` returning false stops
    /// further submissions. Returns the passes run.
    pub(super) fn run_streamed(&mut self, n: usize, on: &mut dyn FnMut(Vec<Record>) -> bool) -> Result<usize> {
        self.stepped |= n > 0;
        if n > 0 && self.opts.path == StepPath::Staged {
            self.build_staged()?;
        }
        // Submissions made as they are needed: one evaluation, or the steps
        // in groups (n may be huge: "until `on` says stop"), of at most
        // STEPS_PER_SUBMIT, and of no more work in flight than the device
        // does in QUEUED_SECONDS by the last submission's pace: a stop
        // (Ctrl-C, `docker stop`'s 10 s) waits on little more than that
        // however slow a step (lavapipe: a second a step at 1M × 32, where
        // 32 steps in flight took 16 s). A GPU's steps, far under it, keep
        // the whole ring busy.
        // (The pace unknown, the first submission is of one step, alone.)
        let mut left = n;
        let mut evaluation = n == 0;
        let mut last_collect = Instant::now();
        let mut ran = 0usize;
        let mut halted = false;
        let mut in_flight: VecDeque<(usize, usize, Instant)> = VecDeque::new();
        let mut next = 0usize;
        loop {
            let stopped =
                halted || n > 0 && self.stop.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
            if self.ring[next].pending.is_none() && !stopped && (left > 0 || evaluation) {
                let queued: usize = in_flight.iter().map(|&(_, m, _)| m).sum();
                let room = match self.pace {
                    Some(s) if s > 0.0 => ((QUEUED_SECONDS / s) as usize).max(1),
                    Some(_) => usize::MAX,
                    None => 1,
                };
                let m = left.min(STEPS_PER_SUBMIT).min(room.saturating_sub(queued).max(1));
                if in_flight.is_empty() || queued + m <= room {
                    self.submit(m, next);
                    in_flight.push_back((next, m, Instant::now()));
                    left -= m;
                    evaluation = false;
                    next = (next + 1) % RING;
                    continue;
                }
            }
            match in_flight.pop_front() {
                Some((s, m, submitted)) => match self.collect(s) {
                    Ok(records) => {
                        // The device's time for these steps: from when it
                        // could start them (submitted, or the one before
                        // them done) to now.
                        let now = Instant::now();
                        if m > 0 {
                            self.pace = Some(now.duration_since(submitted.max(last_collect)).as_secs_f64() / m as f64);
                        }
                        last_collect = now;
                        ran += records.len();
                        halted |= !on(records);
                    }
                    Err(e) => {
                        self.reset_ring();
                        return Err(e);
                    }
                },
                None => break,
            }
        }
        Ok(ran)
    }
}
