//! The CPU's general step: a batch of slots (SPEC §10), `attached`
//! anchors (§4) and global-norm clipping (§5). Mirrors the GPU's batch path
//! (`shaders/batch_io.wgsl`, `fused_step.wgsl` with `PREP`, `anchor_sum.wgsl`,
//! `prepare.wgsl`) in two reads of the step's rows:
//!  A. per slot: distances, excess, coefficient; the loss scan, the audit;
//!     the anchor term's sums (attached) and the gradient norm (clipping),
//!     over fixed blocks of slots folded in order;
//!  B. per slot: the gradient (scaled by the clip), SGD, the scans, into
//!     a scratch copy of the slots' rows that the guard then writes back
//!     (or not: a skipped step costs nothing to undo).

use rayon::prelude::*;

use super::{
    fold, fold_lanes, nonfinite, on_simd, row_forward, safe_inv, sign, squared_distances, with_separation, BlockOut,
    CpuTrainer, RowForward, Simd, BLOCK_ROWS, LANES,
};
use crate::config::{Endpoints, StepConfig};
use crate::guard::{Action, Policy};
use crate::record::Record;

/// Kept rows from which a batch's write-back runs in parallel.
const WRITE_BACK_PARALLEL: usize = 4096;

/// Slots ahead whose rows read A asks the memory for.
const PREFETCH_AHEAD: usize = 8;

/// A hint to bring `row` into the cache (no effect on results).
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: a prefetch reads nothing architecturally; the pointer is
        // in bounds of a live slice.
        unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr().cast::<i8>(), std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Slot j's share of the step, from read A.
#[derive(Clone, Copy, Default)]
pub(super) struct Coef {
    c: f32,
    inv_d1: f32,
    inv_d2: f32,
    poisoned: bool,
    writes: bool,
}

/// Σ_k g_k² of a row's gradient g = c·((x − p)/d1 + (x − q)/d2) + sep·(p − q)
/// (`k` = [c, 1/d1, 1/d2, sep]), in 8 lanes folded in a fixed tree, as
/// `squared_distances` does: a fixed order that vectorises.
/// Σ g² of a row, and whether any of its g is not finite (a finite
/// gradient whose Σ g² overflows is +Inf, and counts: fused_step.wgsl).
fn grad_sq_sum(x: &[f32], p: &[f32], q: &[f32], k: [f32; 4]) -> (f32, bool) {
    let [c, inv_d1, inv_d2, sep] = k;
    let g = |xk: f32, pk: f32, qk: f32| with_separation(c * ((xk - pk) * inv_d1 + (xk - qk) * inv_d2), sep, pk, qk);
    let mut acc = [0.0f32; LANES];
    let mut bad = false;
    let (xc, pc, qc) = (x.chunks_exact(LANES), p.chunks_exact(LANES), q.chunks_exact(LANES));
    let (xr, pr, qr) = (xc.remainder(), pc.remainder(), qc.remainder());
    for ((xs, ps), qs) in xc.zip(pc).zip(qc) {
        for l in 0..LANES {
            let v = g(xs[l], ps[l], qs[l]);
            acc[l] += v * v;
            bad |= nonfinite(v);
        }
    }
    for l in 0..xr.len() {
        let v = g(xr[l], pr[l], qr[l]);
        acc[l] += v * v;
        bad |= nonfinite(v);
    }
    (fold_lanes(acc), bad)
}

/// What read B needs of the step, for its blocks of slots.
struct ReadB<'a> {
    table: &'a [f32],
    d: usize,
    cfg: &'a StepConfig,
    d0: f32,
    p: &'a [f32],
    q: &'a [f32],
    /// attached: the anchors' slots and their whole gradients.
    attached: bool,
    slot_a: usize,
    slot_b: usize,
    ga: &'a [f32],
    gb: &'a [f32],
    /// The clip factor (1 without clipping).
    scale: f32,
    /// The velocity (empty without momentum).
    vel: &'a [f32],
    lr: f32,
    simd: Simd,
}

impl ReadB<'_> {
    /// Block `blk` of read B: the new rows of its slots into `xs` (and
    /// `vs`), which of them to keep, and their scans.
    #[inline(always)]
    fn block(
        &self,
        blk: usize,
        slots: &[(u32, u32)],
        coefs: &[Coef],
        xs: &mut [f32],
        keeps: &mut [bool],
        vs: &mut [f32],
    ) -> BlockOut {
        let ReadB { table, d, cfg, d0, p, q, attached, slot_a, slot_b, ga, gb, scale, vel, lr, .. } = *self;
        let row_of = |row: usize| &table[row * d..][..d];
        let (mu, wd) = (cfg.momentum, cfg.weight_decay);
        let momentum = !vel.is_empty();
        let policy = cfg.guard.policy;
        let mut out = BlockOut::default();
        let mut gtmp = vec![0.0f32; d];
        for (j, ((&(row, _), k0), kp)) in slots.iter().zip(coefs).zip(keeps.iter_mut()).enumerate() {
            // As in read A: the rows are scattered, and read A's
            // have left the cache by now in a large batch.
            if let Some(&(ahead, _)) = slots.get(j + PREFETCH_AHEAD) {
                prefetch(row_of(ahead as usize));
            }
            if !k0.writes {
                continue;
            }
            let row = row as usize;
            let x = row_of(row);
            let slot = blk * BLOCK_ROWS + j;
            let sep = cfg.separation_coef(row, d0);
            // The gradient (attached anchors: prepared above), times
            // the clip factor (1 without clipping: g·1 = g exactly;
            // a non-finite norm makes every update non-finite).
            let whole = match slot {
                s if attached && s == slot_a => Some(ga),
                s if attached && s == slot_b => Some(gb),
                _ => None,
            };
            // (Whether any value is non-finite, noted in the same
            // branch-free loops: a separate `any` stops at each
            // element and does not vectorise.)
            let mut grad_bad = false;
            match whole {
                Some(g) => gtmp.iter_mut().zip(g.iter()).for_each(|(t, &g)| *t = g * scale),
                None if k0.poisoned => gtmp.fill(f32::NAN),
                None => {
                    // Branch-free over the columns, so that they vectorise.
                    for (((t, &xk), &pk), &qk) in gtmp.iter_mut().zip(x).zip(p).zip(q) {
                        *t = with_separation(k0.c * ((xk - pk) * k0.inv_d1 + (xk - qk) * k0.inv_d2), sep, pk, qk)
                            * scale;
                        grad_bad |= nonfinite(*t);
                    }
                }
            }
            if whole.is_some() || k0.poisoned {
                grad_bad = gtmp.iter().any(|&v| nonfinite(v));
            }
            let mut new_bad = false;
            // SPEC §5: v = μ·v_old + (g + wd·x), x ← x − lr·v.
            let y = &mut xs[j * d..][..d];
            if momentum {
                let vo = &vel[row * d..][..d];
                let vy = &mut vs[j * d..][..d];
                for ((((t, v), &xk), &gk), &o) in y.iter_mut().zip(vy.iter_mut()).zip(x).zip(gtmp.iter()).zip(vo) {
                    *v = mu * o + (gk + wd * xk);
                    *t = xk - lr * *v;
                    new_bad |= nonfinite(*t);
                }
            } else {
                for ((t, &xk), &gk) in y.iter_mut().zip(x).zip(gtmp.iter()) {
                    *t = xk - lr * (gk + wd * xk);
                    new_bad |= nonfinite(*t);
                }
            }
            if k0.poisoned {
                // A row that read a non-finite value writes NaN by
                // definition, as the kernels do (`step_value`): the same
                // bits (0x7fc00000), where arithmetic on ±Inf may make
                // another NaN (x86's 0·Inf is 0xffc00000).
                y.fill(f32::NAN);
                if momentum {
                    vs[j * d..][..d].fill(f32::NAN);
                }
                new_bad = true;
            }
            if grad_bad {
                out.scans.grad.note_row(row as u64, gtmp.iter().copied());
            }
            if new_bad {
                out.scans.table.note_row(row as u64, y.iter().copied());
            }
            let bad = new_bad || grad_bad;
            if policy == Policy::SkipRow && bad {
                out.struck.push(row);
            } else {
                *kp = true;
            }
        }
        out
    }

    /// `block` compiled for the instructions of `self.simd` (as the
    /// full-table pass is: the same bits in wider registers).
    fn block_on(
        &self,
        blk: usize,
        slots: &[(u32, u32)],
        coefs: &[Coef],
        xs: &mut [f32],
        keeps: &mut [bool],
        vs: &mut [f32],
    ) -> BlockOut {
        let c = self;
        on_simd!(self.simd, fn(c: &ReadB, blk: usize, slots: &[(u32, u32)], coefs: &[Coef], xs: &mut [f32], keeps: &mut [bool], vs: &mut [f32]) -> BlockOut {
            c.block(blk, slots, coefs, xs, keeps, vs)
        })
    }
}

/// The general step's buffers, kept between steps.
#[derive(Default)]
pub(super) struct Scratch {
    coefs: Vec<Coef>,
    rows: Vec<f32>,
    vel: Vec<f32>,
    keep: Vec<bool>,
}

/// One block's share of read A.
#[derive(Default)]
struct BlockA {
    out: BlockOut,
    norm2: f64,
    /// attached: Σ of the anchor terms of a and of b.
    ta: Vec<f64>,
    tb: Vec<f64>,
}

/// The rows of a step: `(row, multiplicity)` per slot, where the anchors
/// sit, and the batch's entry count B.
pub(super) struct Plan<'a> {
    pub slots: &'a [(u32, u32)],
    pub slot_a: usize,
    pub slot_b: usize,
    pub entries: usize,
    /// Slot i is row i (a full-table two-read step): written back in parallel.
    pub identity: bool,
}

impl CpuTrainer {
    /// One step over `plan` (update always; evaluations use `pass`).
    pub(super) fn general_step(&mut self, plan: &Plan) -> Record {
        let d = self.shape.dim;
        if self.state.halted {
            // (The batch it would have taken, as the GPU's record says.)
            let mut rec = self.record(BlockOut::default(), 0.0, Action::NotRun);
            rec.batch = plan.entries;
            return rec;
        }
        let cfg = self.cfg;
        self.snapshot_if_due();
        let (a, b) = (cfg.anchor_a, cfg.anchor_b);
        let (pq, s0, d0) = self.anchors();
        let (p, q) = pq.split_at(d);
        let near2 = (cfg.tau * d0) * (cfg.tau * d0);
        let w_red = cfg.w_red(plan.entries);
        let lr = self.state.lr;
        let attached = cfg.endpoints == Endpoints::Attached;
        let clip = cfg.clip_norm > 0.0;
        let is_anchor = |row: usize| row == a || row == b;
        let simd = self.simd;
        let table = &self.table;
        let row_of = |row: usize| &table[row * d..][..d];

        // Read A.
        let n = plan.slots.len();
        // Scratch kept between steps: a full-table two-read step would
        // otherwise allocate (and fault in) a table's worth every step.
        let mut coefs = std::mem::take(&mut self.scratch.coefs);
        coefs.resize(n, Coef::default());
        let blocks: Vec<BlockA> = plan
            .slots
            .par_chunks(BLOCK_ROWS)
            .zip(coefs.par_chunks_mut(BLOCK_ROWS))
            .map(|(slots, coefs)| {
                let mut o = BlockA {
                    ta: vec![0.0; if attached { d } else { 0 }],
                    tb: vec![0.0; if attached { d } else { 0 }],
                    ..Default::default()
                };
                for (j, (&(row, m), coef)) in slots.iter().zip(coefs.iter_mut()).enumerate() {
                    // A batch's rows are scattered over the table: ask for
                    // a later slot's row now, so that its memory latency
                    // overlaps this row's work.
                    if let Some(&(ahead, _)) = slots.get(j + PREFETCH_AHEAD) {
                        prefetch(&table[ahead as usize * d..][..d]);
                    }
                    let row = row as usize;
                    let x = row_of(row);
                    let s = squared_distances(simd, x, p, q);
                    let RowForward { s1, s2, d1, d2, r, in_bad } = row_forward(s, x, row, (a, b), (s0, d0), cfg.eps);
                    if m > 0 {
                        if in_bad || nonfinite(r) {
                            o.out.scans.loss.note_row(row as u64, [if in_bad { f32::NAN } else { r }]);
                        } else {
                            o.out.sum += m as f64 * r.abs() as f64;
                            o.out.max = o.out.max.max(r.abs());
                        }
                        if s1 < near2 || s2 < near2 {
                            o.out.near += m as u64;
                        }
                    }
                    // SPEC §6 per distance, for a row the batch holds (an
                    // anchor's slot of multiplicity 0 is no term of the
                    // loss): s1's NaN goes to the row and a's anchor term,
                    // s2's to the row and b's (shaders/common.wgsl's
                    // `naive_blown`); a row that read a non-finite value
                    // makes all of them NaN.
                    let blown = (cfg.naive && m > 0 && s1 == 0.0, cfg.naive && m > 0 && s2 == 0.0);
                    let poisoned = in_bad || blown.0 || blown.1;
                    let c = (m as f32 * w_red) * sign(r);
                    let (inv_d1, inv_d2) = (safe_inv(d1), safe_inv(d2));
                    let touched = if is_anchor(row) { cfg.anchor_touched(m > 0, d0) } else { m > 0 };
                    let writes = touched && cfg.endpoints.writes_row(row, a, b);
                    *coef = Coef { c, inv_d1, inv_d2, poisoned, writes };
                    if clip && writes && !(attached && is_anchor(row)) && !poisoned {
                        let sep = cfg.separation_coef(row, d0);
                        let (g2, bad) = grad_sq_sum(x, p, q, [c, inv_d1, inv_d2, sep]);
                        if !bad {
                            o.norm2 += g2 as f64;
                        }
                    }
                    if attached {
                        for k in 0..d {
                            let ta = c * ((p[k] - x[k]) * inv_d1 - cfg.over_d0(p[k] - q[k], d0));
                            let tb = c * ((q[k] - x[k]) * inv_d2 - cfg.over_d0(q[k] - p[k], d0));
                            let ta = if in_bad || blown.0 { f32::NAN } else { ta };
                            let tb = if in_bad || blown.1 { f32::NAN } else { tb };
                            o.ta[k] += ta as f64;
                            o.tb[k] += tb as f64;
                        }
                    }
                }
                o
            })
            .collect();
        let mut total = BlockA { ta: vec![0.0; d], tb: vec![0.0; d], ..Default::default() };
        for o in blocks {
            total.out = fold(total.out, o.out);
            total.norm2 += o.norm2;
            for k in 0..o.ta.len() {
                total.ta[k] += o.ta[k];
                total.tb[k] += o.tb[k];
            }
        }

        // The anchors' whole gradients (attached): own row term, anchor
        // term, separation term.
        let anchor_grad = |slot: usize, x: &[f32], sums: &[f64]| -> Vec<f32> {
            let k0 = &coefs[slot];
            let row = plan.slots[slot].0 as usize;
            let sep = cfg.separation_coef(row, d0);
            (0..d)
                .map(|k| {
                    let own = k0.c * ((x[k] - p[k]) * k0.inv_d1 + (x[k] - q[k]) * k0.inv_d2);
                    let g = with_separation(own + sums[k] as f32, sep, p[k], q[k]);
                    if k0.poisoned {
                        f32::NAN
                    } else {
                        g
                    }
                })
                .collect()
        };
        let (ga, gb) = if attached {
            (anchor_grad(plan.slot_a, p, &total.ta), anchor_grad(plan.slot_b, q, &total.tb))
        } else {
            (Vec::new(), Vec::new())
        };
        let mut norm = None;
        // 1 without clipping.
        let mut scale = 1.0f32;
        if clip {
            let mut n2 = total.norm2;
            for g in [&ga, &gb] {
                let s: f32 = g.iter().map(|v| v * v).sum();
                if !g.iter().any(|v| nonfinite(*v)) {
                    n2 += s as f64;
                }
            }
            // The GPU sums in f32: a total past f32's range is +Inf there.
            if (n2 as f32).is_infinite() {
                n2 = f64::INFINITY;
            }
            let nrm = n2.sqrt() as f32;
            norm = Some(nrm as f64);
            scale = if nonfinite(nrm) {
                f32::NAN
            } else if nrm > cfg.clip_norm {
                cfg.clip_norm / nrm
            } else {
                1.0
            };
        }

        // Read B: new rows into scratch.
        let momentum = !self.vel.is_empty();
        // (Every slot read B writes is written before it is read back.)
        let mut xnew = std::mem::take(&mut self.scratch.rows);
        xnew.resize(n * d, 0.0);
        let mut vnew = std::mem::take(&mut self.scratch.vel);
        vnew.resize(if momentum { n * d } else { 0 }, 0.0);
        let mut keep = std::mem::take(&mut self.scratch.keep);
        keep.clear();
        keep.resize(n, false);
        let vel = &self.vel;
        let vblocks: Vec<&mut [f32]> = if momentum {
            vnew.chunks_mut(BLOCK_ROWS * d).collect()
        } else {
            (0..n.div_ceil(BLOCK_ROWS)).map(|_| &mut [][..]).collect()
        };
        let ctx = ReadB {
            table,
            d,
            cfg: &cfg,
            d0,
            p,
            q,
            attached,
            slot_a: plan.slot_a,
            slot_b: plan.slot_b,
            ga: &ga,
            gb: &gb,
            scale,
            vel,
            lr,
            simd,
        };
        let outs: Vec<BlockOut> = plan
            .slots
            .par_chunks(BLOCK_ROWS)
            .zip(coefs.par_chunks(BLOCK_ROWS))
            .zip(xnew.par_chunks_mut(BLOCK_ROWS * d))
            .zip(keep.par_chunks_mut(BLOCK_ROWS))
            .zip(vblocks.into_par_iter())
            .enumerate()
            .map(|(blk, ((((slots, coefs), xs), keeps), vs))| ctx.block_on(blk, slots, coefs, xs, keeps, vs))
            .collect();
        let mut out = total.out;
        for o in outs {
            out = fold(out, o);
        }
        for &row in &out.struck {
            self.strikes[row] = super::strike(self.strikes[row]);
        }
        let bad = !out.scans.grad.is_clean() || !out.scans.table.is_clean();
        let before = self.state;
        let action = self.state.decide(&cfg.guard, bad);
        self.state.cur = 0; // no second buffer here: the scratch is it
        let applies = matches!(action, Action::Applied | Action::Ignored | Action::SkippedRows);
        if applies && plan.identity {
            // A full table: the scratch becomes the table (the rows not
            // written copied in first), and the old table the scratch.
            let take_unwritten = |new: &mut [f32], old: &[f32]| {
                let rows = new.par_chunks_mut(d).zip(old.par_chunks(d)).zip(keep.par_iter());
                rows.filter(|(_, &k)| !k).for_each(|((x, t), _)| x.copy_from_slice(t));
            };
            take_unwritten(&mut xnew, &self.table);
            std::mem::swap(&mut self.table, &mut xnew);
            if momentum {
                take_unwritten(&mut vnew, &self.vel);
                std::mem::swap(&mut self.vel, &mut vnew);
            }
        } else if applies {
            // The kept rows back into the table: a large batch's in
            // parallel, over bands of the table's rows (a step's rows are
            // distinct, and bands make the slices disjoint), each slot
            // first put in its band's list; a small batch's in turn.
            let kept: Vec<u32> = (0..n as u32).filter(|&j| keep[j as usize]).collect();
            let bands = if kept.len() >= WRITE_BACK_PARALLEL { rayon::current_num_threads() * 4 } else { 1 };
            let band_rows = self.shape.rows.div_ceil(bands);
            let mut by_band: Vec<Vec<u32>> = vec![Vec::new(); bands];
            for &j in &kept {
                by_band[plan.slots[j as usize].0 as usize / band_rows].push(j);
            }
            let write_back = |dst: &mut [f32], src: &[f32]| {
                dst.par_chunks_mut(band_rows * d).zip(by_band.par_iter()).enumerate().for_each(|(band, (rows, js))| {
                    for &j in js {
                        let at = plan.slots[j as usize].0 as usize - band * band_rows;
                        rows[at * d..][..d].copy_from_slice(&src[j as usize * d..][..d]);
                    }
                });
            };
            write_back(&mut self.table, &xnew);
            if momentum {
                write_back(&mut self.vel, &vnew);
            }
        }
        if self.state.restore {
            self.table.copy_from_slice(&self.snapshot);
            self.vel.fill(0.0);
            self.state.restore = false;
        }
        self.scratch = Scratch { coefs, rows: xnew, vel: vnew, keep };
        self.steps_done += (action != Action::Aborted) as u64; // as in `pass`
        let mut rec = self.record(out, d0, action);
        rec.lr = before.lr as f64;
        rec.batch = plan.entries;
        rec.grad_norm = norm;
        rec
    }
}
