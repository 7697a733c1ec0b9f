//! The CPU backend: the shaders' math in f32 Rust, multi-threaded with rayon.
//! Each row is one task's work exactly as in `shaders/fused_step.wgsl`
//! (scans, audit and guard included); partial sums are formed over fixed
//! blocks of rows and folded in order, so results do not depend on the
//! number of threads. The guard decides with [`GuardState::decide`], the
//! mirror of `shaders/reduce.wgsl`.

use rayon::prelude::*;

mod general;

use crate::batches::{Batches, Schedule, StepSlots};
use crate::config::{Shape, StepConfig};
use crate::error::{Error, Result};
use crate::guard::{Action, GuardState, Policy};
use crate::record::{Record, StepScans};
use crate::scan::{scan_rows, Scan};
use crate::trainer::{DeviceInfo, Feed, RunState, Sink, TableSource, Trainer};

/// Rows per parallel task; fixes the reduction order.
const BLOCK_ROWS: usize = 1024;

pub struct CpuTrainer {
    shape: Shape,
    cfg: StepConfig,
    /// The current table.
    table: Vec<f32>,
    /// Double-buffered guards: where a step writes; becomes current if clean.
    next: Vec<f32>,
    /// rollback: the last snapshot.
    snapshot: Vec<f32>,
    /// skip-row: strikes per row.
    strikes: Vec<u32>,
    /// momentum: the velocity (current, and next for double-buffered guards).
    vel: Vec<f32>,
    vel_next: Vec<f32>,
    state: GuardState,
    steps_done: u64,
    /// A step was asked of this trainer (`Trainer::set_run_state` then
    /// refused).
    stepped: bool,
    /// A resumed run snapshots at its first step (it has no earlier one).
    snapshot_due: bool,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// SPEC §10: where each step's rows come from.
    schedule: Schedule,
    /// Full-table steps that need the general path (attached, clipping):
    /// every row once, as slots.
    identity: Vec<(u32, u32)>,
    /// The general step's scratch, reused from step to step.
    scratch: general::Scratch,
    /// The build of the full-table pass (and of read B of the general step) that runs.
    simd: Simd,
}

/// What a row's lane does with its new values.
enum Write {
    /// Write the new values (`tmp`).
    Tmp,
    /// Carry the row unchanged into the next buffer (frozen anchors).
    Copy,
    Nothing,
}

/// Lanes of the CPU's partial sums: like the GPU's L lanes a row, column k
/// goes to lane k mod 8, and the lanes are folded in a fixed tree. The
/// order is fixed (deterministic) and lets the compiler use SIMD.
const LANES: usize = 8;

/// (Σ (x − p)², Σ (x − q)²) over a row, compiled for `simd`'s
/// instructions. Each copy is kept out of line: inlined into the row loop
/// it is slower (measured).
#[inline(always)]
fn squared_distances(simd: Simd, x: &[f32], p: &[f32], q: &[f32]) -> (f32, f32) {
    on_simd!(simd, #[inline(never)] fn(x: &[f32], p: &[f32], q: &[f32]) -> (f32, f32) {
        squared_distances_body(x, p, q)
    })
}

#[inline(always)]
fn squared_distances_body(x: &[f32], p: &[f32], q: &[f32]) -> (f32, f32) {
    let (mut a1, mut a2) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xc, pc, qc) = (x.chunks_exact(LANES), p.chunks_exact(LANES), q.chunks_exact(LANES));
    let (xr, pr, qr) = (xc.remainder(), pc.remainder(), qc.remainder());
    for ((xs, ps), qs) in xc.zip(pc).zip(qc) {
        for l in 0..LANES {
            let (t1, t2) = (xs[l] - ps[l], xs[l] - qs[l]);
            a1[l] += t1 * t1;
            a2[l] += t2 * t2;
        }
    }
    for l in 0..xr.len() {
        let (t1, t2) = (xr[l] - pr[l], xr[l] - qr[l]);
        a1[l] += t1 * t1;
        a2[l] += t2 * t2;
    }
    (fold_lanes(a1), fold_lanes(a2))
}

/// The fixed tree that folds the 8 lanes of a row's partial sums.
#[inline(always)]
fn fold_lanes(a: [f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// One row's forward quantities (SPEC §3), as a lane of fused_step.wgsl
/// computes them.
struct RowForward {
    s1: f32,
    s2: f32,
    d1: f32,
    d2: f32,
    /// The excess d1 + d2 − d0.
    r: f32,
    /// The row holds a non-finite value.
    in_bad: bool,
}

/// Row `row` = `x`, whose (Σ (x − p)², Σ (x − q)²) is `(s1, s2)`, against
/// the anchors' snapshot (rows a, b; s0, d0).
#[inline(always)]
fn row_forward(
    (s1, s2): (f32, f32),
    x: &[f32],
    row: usize,
    (a, b): (usize, usize),
    (s0, d0): (f32, f32),
    eps: f32,
) -> RowForward {
    // A non-finite input makes s1 or s2 non-finite (Rust floats are IEEE),
    // so the row is searched only then.
    let in_bad = (nonfinite(s1) || nonfinite(s2)) && x.iter().any(|&v| nonfinite(v));
    // pin_anchors of shaders/common.wgsl
    let s1 = if row == b { s0 } else { s1 };
    let s2 = if row == a { s0 } else { s2 };
    let (d1, d2) = (safe_dist(s1, eps), safe_dist(s2, eps));
    RowForward { s1, s2, d1, d2, r: d1 + d2 - d0, in_bad }
}

/// The bit test of SPEC §7.
fn nonfinite(v: f32) -> bool {
    v.to_bits() & 0x7f80_0000 == 0x7f80_0000
}

/// What one row's step needs, as one lane of fused_step.wgsl has it.
#[derive(Clone, Copy)]
struct RowCtx<'a> {
    p: &'a [f32],
    q: &'a [f32],
    a: usize,
    b: usize,
    s0: f32,
    d0: f32,
    near2: f32,
    w_red: f32,
    lr: f32,
    mu: f32,
    wd: f32,
    cfg: StepConfig,
    d: usize,
    simd: Simd,
}

/// Rows whose forward scalars are computed together: their distances
/// first, then the square roots, divisions and signs across the rows at
/// once, in vector registers, rather than one row's dependent chain at a
/// time. The same IEEE operations as `row_forward`, so the same bits.
const TILE: usize = 16;

/// A tile's forward quantities, row i in element i (RowForward, plus the
/// inverse distances and the loss coefficient).
struct Tile {
    /// (Σ (x − p)², Σ (x − q)²) as read, before the anchors are pinned:
    /// non-finite exactly where the row's values may be.
    raw1: [f32; TILE],
    raw2: [f32; TILE],
    s1: [f32; TILE],
    s2: [f32; TILE],
    r: [f32; TILE],
    inv1: [f32; TILE],
    inv2: [f32; TILE],
    /// w_red · sign(r)
    c: [f32; TILE],
}

impl RowCtx<'_> {
    /// The forward quantities of `rows` (at most TILE rows), the first of
    /// which is row `first`.
    #[inline(always)]
    fn tile(&self, first: usize, rows: &[f32]) -> Tile {
        let RowCtx { p, q, a, b, s0, d0, w_red, cfg, d, .. } = *self;
        let mut t = Tile {
            raw1: [0.0; TILE],
            raw2: [0.0; TILE],
            s1: [0.0; TILE],
            s2: [0.0; TILE],
            r: [0.0; TILE],
            inv1: [0.0; TILE],
            inv2: [0.0; TILE],
            c: [0.0; TILE],
        };
        for (i, x) in rows.chunks_exact(d).enumerate() {
            (t.raw1[i], t.raw2[i]) = squared_distances(self.simd, x, p, q);
        }
        (t.s1, t.s2) = (t.raw1, t.raw2);
        // pin_anchors of shaders/common.wgsl
        let n = rows.len() / d;
        if (first..first + n).contains(&b) {
            t.s1[b - first] = s0;
        }
        if (first..first + n).contains(&a) {
            t.s2[a - first] = s0;
        }
        // Branch-free across the tile, so that it vectorises (rows past
        // `n` compute on zeros and are not read).
        for i in 0..TILE {
            let (d1, d2) = (safe_dist(t.s1[i], cfg.eps), safe_dist(t.s2[i], cfg.eps));
            let r = d1 + d2 - d0;
            t.r[i] = r;
            t.inv1[i] = safe_inv(d1);
            t.inv2[i] = safe_inv(d2);
            t.c[i] = w_red * sign(r);
        }
        t
    }

    /// Row i of tile `t`, row `row` = `x`, as one lane of fused_step.wgsl
    /// steps it: computes the row's new values into `tmp` (the next
    /// buffer's row, or scratch for in-place policies) and says what to do
    /// with them.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn step(
        &self,
        t: &Tile,
        i: usize,
        row: usize,
        x: &[f32],
        v_old: &[f32],
        update: bool,
        tmp: &mut [f32],
        vtmp: &mut [f32],
        out: &mut BlockOut,
    ) -> Write {
        let RowCtx { p, q, a, b, d0, near2, lr, mu, wd, cfg, d, .. } = *self;
        let policy = cfg.guard.policy;
        let (s1, s2, r) = (t.s1[i], t.s2[i], t.r[i]);
        // A non-finite input makes the raw sums non-finite (Rust floats
        // are IEEE), so the row is searched only then.
        let in_bad = (nonfinite(t.raw1[i]) || nonfinite(t.raw2[i])) && x.iter().any(|&v| nonfinite(v));
        // The loss term of a row that read a non-finite value is NaN.
        let loss_bad = in_bad || nonfinite(r);
        if loss_bad {
            out.scans.loss.note_row(row as u64, [if in_bad { f32::NAN } else { r }]);
        } else {
            out.sum += r.abs() as f64;
            out.max = out.max.max(r.abs());
        }
        if s1 < near2 || s2 < near2 {
            out.near += 1;
        }
        if !update {
            return Write::Nothing;
        }
        if !cfg.endpoints.writes_row(row, a, b) {
            return if policy.double_buffered() { Write::Copy } else { Write::Nothing };
        }
        let c = t.c[i];
        let sep = cfg.separation_coef(row, d0);
        let (inv_d1, inv_d2) = (t.inv1[i], t.inv2[i]);
        // naive_blows_up of shaders/common.wgsl (SPEC §6), or a bad input.
        let poisoned = in_bad || (cfg.naive && (s1 == 0.0 || s2 == 0.0));
        let grad = |k: usize| {
            if poisoned {
                f32::NAN
            } else {
                with_separation(c * ((x[k] - p[k]) * inv_d1 + (x[k] - q[k]) * inv_d2), sep, p[k], q[k])
            }
        };
        let (mut grad_bad, mut new_bad) = (poisoned, poisoned);
        if poisoned {
            tmp.fill(f32::NAN);
            vtmp.fill(f32::NAN);
        } else {
            // Every row but the anchors has no separation term: its loop
            // has none, rather than a select a column.
            let k = [c, inv_d1, inv_d2, sep];
            let cols = if sep == 0.0 {
                update_cols::<false>(tmp, vtmp, x, v_old, p, q, k, [lr, mu, wd])
            } else {
                update_cols::<true>(tmp, vtmp, x, v_old, p, q, k, [lr, mu, wd])
            };
            (grad_bad, new_bad) = cols;
        }
        // The scans' bookkeeping runs only for rows with findings.
        if grad_bad {
            out.scans.grad.note_row(row as u64, (0..d).map(grad));
        }
        if new_bad {
            out.scans.table.note_row(row as u64, tmp.iter().copied());
        }
        // SPEC §9 acts on what would be written (reduce.wgsl likewise).
        if policy == Policy::SkipRow && (grad_bad || new_bad) {
            out.struck.push(row);
            Write::Nothing
        } else {
            Write::Tmp
        }
    }

    /// A block of rows stepped into the next buffers (double-buffered
    /// guards); `first` is its first row.
    #[inline(always)]
    fn block_to_next(&self, first: usize, src: &[f32], dst: &mut [f32], v: &[f32], vn: &mut [f32]) -> BlockOut {
        let d = self.d;
        let mut out = BlockOut::default();
        for (ti, (xs, ys)) in src.chunks(TILE * d).zip(dst.chunks_mut(TILE * d)).enumerate() {
            let f = first + ti * TILE;
            let t = self.tile(f, xs);
            for (i, (x, y)) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)).enumerate() {
                let j = ti * TILE + i;
                let vo = row_of(v, j, d);
                let vy: &mut [f32] = if vn.is_empty() { &mut [] } else { &mut vn[j * d..][..d] };
                // The new values land in the next buffers directly.
                if let Write::Copy = self.step(&t, i, f + i, x, vo, true, y, vy, &mut out) {
                    y.copy_from_slice(x);
                    vy.copy_from_slice(vo);
                }
            }
        }
        out
    }

    /// A block of rows stepped in place (single-buffered guards), or
    /// evaluated (`update` false).
    #[inline(always)]
    fn block_in_place(&self, first: usize, rows: &mut [f32], v: &mut [f32], update: bool) -> BlockOut {
        let d = self.d;
        let mut out = BlockOut::default();
        let (mut tmp, mut vtmp) = (vec![0.0f32; d], vec![0.0f32; if v.is_empty() { 0 } else { d }]);
        for (ti, xs) in rows.chunks_mut(TILE * d).enumerate() {
            let f = first + ti * TILE;
            let t = self.tile(f, xs);
            for (i, x) in xs.chunks_exact_mut(d).enumerate() {
                let j = ti * TILE + i;
                let vo = row_of(v, j, d);
                if let Write::Tmp = self.step(&t, i, f + i, x, vo, update, &mut tmp, &mut vtmp, &mut out) {
                    x.copy_from_slice(&tmp);
                    if !v.is_empty() {
                        v[j * d..][..d].copy_from_slice(&vtmp);
                    }
                }
            }
        }
        out
    }

    /// `block_to_next` compiled for the instructions of `self.simd`.
    fn block_to_next_on(&self, first: usize, src: &[f32], dst: &mut [f32], v: &[f32], vn: &mut [f32]) -> BlockOut {
        let c = self;
        on_simd!(self.simd, fn(c: &RowCtx, first: usize, src: &[f32], dst: &mut [f32], v: &[f32], vn: &mut [f32]) -> BlockOut {
            c.block_to_next(first, src, dst, v, vn)
        })
    }

    /// `block_in_place` compiled for the instructions of `self.simd`.
    fn block_in_place_on(&self, first: usize, rows: &mut [f32], v: &mut [f32], update: bool) -> BlockOut {
        let c = self;
        on_simd!(self.simd, fn(c: &RowCtx, first: usize, rows: &mut [f32], v: &mut [f32], update: bool) -> BlockOut {
            c.block_in_place(first, rows, v, update)
        })
    }
}

/// A row's new values (and velocities, with momentum) into `tmp` (`vtmp`):
/// SPEC §5's v = μ·v_old + (g + wd·x), x ← x − lr·v (sgd_direction of
/// common.wgsl; v_old = 0 without momentum), branch-free over the columns
/// so that they vectorise. `k` = [c, 1/d1, 1/d2, sep], `s` = [lr, μ, wd];
/// SEP: with the separation term (`with_separation`: sep ≠ 0). Returns
/// whether a gradient, and a new value, was not finite.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update_cols<const SEP: bool>(
    tmp: &mut [f32],
    vtmp: &mut [f32],
    x: &[f32],
    v_old: &[f32],
    p: &[f32],
    q: &[f32],
    k: [f32; 4],
    s: [f32; 3],
) -> (bool, bool) {
    let [c, inv_d1, inv_d2, sep] = k;
    let [lr, mu, wd] = s;
    let g = |xk: f32, pk: f32, qk: f32| {
        let g = c * ((xk - pk) * inv_d1 + (xk - qk) * inv_d2);
        if SEP {
            g + sep * (pk - qk)
        } else {
            g
        }
    };
    let (mut grad_bad, mut new_bad) = (false, false);
    if v_old.is_empty() {
        for (((t, &xk), &pk), &qk) in tmp.iter_mut().zip(x).zip(p).zip(q) {
            let g = g(xk, pk, qk);
            *t = xk - lr * (g + wd * xk);
            grad_bad |= nonfinite(g);
            new_bad |= nonfinite(*t);
        }
    } else {
        let cols = tmp.iter_mut().zip(vtmp.iter_mut()).zip(x.iter().zip(v_old)).zip(p.iter().zip(q));
        for (((t, vt), (&xk, &vo)), (&pk, &qk)) in cols {
            let g = g(xk, pk, qk);
            *vt = mu * vo + (g + wd * xk);
            *t = xk - lr * *vt;
            grad_bad |= nonfinite(g);
            new_bad |= nonfinite(*t);
        }
    }
    (grad_bad, new_bad)
}

/// g plus the separation term sep·(p − q) where a row has one (sep ≠ 0:
/// anchors a and b under an active margin), never as 0·(p − q): that is
/// NaN where p − q overflows (anchors more than f32's range apart in a
/// column), which made every row's gradient NaN. (`with_separation` of
/// shaders/common.wgsl.)
#[inline(always)]
pub(crate) fn with_separation(g: f32, sep: f32, pk: f32, qk: f32) -> f32 {
    if sep != 0.0 {
        g + sep * (pk - qk)
    } else {
        g
    }
}

/// Calls `$body`, a function of the named arguments (the caller's variables
/// of those names), compiled for `$simd`'s instructions: one
/// `#[target_feature]` copy per wider build, into which the `#[inline(always)]`
/// row code is compiled; the attributes go on every copy.
macro_rules! on_simd {
    ($simd:expr, $(#[$attr:meta])* fn($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            $(#[$attr])*
            unsafe fn avx2($($arg: $ty),*) -> $ret $body
            #[target_feature(enable = "avx512f")]
            $(#[$attr])*
            unsafe fn avx512($($arg: $ty),*) -> $ret $body
            match $simd {
                // SAFETY: a `Simd` other than Baseline exists only where the
                // CPU has its instructions (`Simd::available`).
                Simd::Avx512 => return unsafe { avx512($($arg),*) },
                Simd::Avx2 => return unsafe { avx2($($arg),*) },
                Simd::Baseline => {}
            }
        }
        let _ = $simd;
        $(#[$attr])*
        fn baseline($($arg: $ty),*) -> $ret $body
        baseline($($arg),*)
    }};
}
use on_simd;

/// The instructions the full-table pass and read B are compiled for, chosen
/// at run time (the default x86-64 build has SSE2 alone). Each build does
/// the same IEEE operations in the same order, in wider registers (Rust
/// never fuses a·b + c), so all give the same bits; a test checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Baseline,
    Avx2,
    Avx512,
}

impl Simd {
    /// The builds this CPU can run, widest last.
    pub fn available() -> Vec<Simd> {
        let mut v = vec![Simd::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                v.push(Simd::Avx2);
            }
            if std::is_x86_feature_detected!("avx512f") {
                v.push(Simd::Avx512);
            }
        }
        v
    }

    /// The widest available, unless `LATENT_LINE_CPU_SIMD` (`baseline`,
    /// `avx2`, `avx512`) names another the CPU has.
    fn chosen() -> Result<Simd> {
        let all = Simd::available();
        match crate::gpu::context::env_var("LATENT_LINE_CPU_SIMD")? {
            None => Ok(*all.last().unwrap_or(&Simd::Baseline)),
            Some(name) => all.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                Error::invalid(
                    "LATENT_LINE_CPU_SIMD",
                    format!(
                        "{name:?}: this CPU runs {}",
                        Simd::available().iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                    ),
                )
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Simd::Baseline => "baseline",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// Row `i` of a block of rows of `d` (empty for an empty buffer).
fn row_of(v: &[f32], i: usize, d: usize) -> &[f32] {
    if v.is_empty() {
        &[]
    } else {
        &v[i * d..][..d]
    }
}

/// One block's share of a pass.
#[derive(Default)]
struct BlockOut {
    sum: f64,
    max: f32,
    near: u64,
    scans: StepScans,
    struck: Vec<usize>,
}

/// `acc` then `o`, in that order (the sums are order-sensitive; scans are not).
fn fold(mut acc: BlockOut, o: BlockOut) -> BlockOut {
    acc.sum += o.sum;
    acc.max = acc.max.max(o.max);
    acc.near += o.near;
    acc.scans.loss = std::mem::take(&mut acc.scans.loss).merge(o.scans.loss);
    acc.scans.grad = std::mem::take(&mut acc.scans.grad).merge(o.scans.grad);
    acc.scans.table = std::mem::take(&mut acc.scans.table).merge(o.scans.table);
    acc.struck.extend(o.struck);
    acc
}

fn alloc(shape: Shape, n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| shape.too_large("host memory allocation failed"))?;
    huge_pages(&v); // before the first touch, which maps the pages
    v.resize(n, 0.0f32);
    Ok(v)
}

/// Asks Linux to back a large buffer with 2 MiB pages (transparent huge
/// pages, where they are enabled for `madvise`): a batch's rows are
/// scattered over the table, and with 4 KiB pages nearly every row is a
/// TLB miss as well as a cache miss. Advice only: no result depends on it.
fn huge_pages(v: &Vec<f32>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let (at, bytes) = (v.as_ptr() as usize, v.capacity() * std::mem::size_of::<f32>());
        if bytes < 4 << 20 {
            return;
        }
        let start = at.next_multiple_of(PAGE);
        let end = (at + bytes) / PAGE * PAGE;
        // SAFETY: advice on whole pages inside our own allocation; it
        // changes no contents and no mapping the allocator relies on.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

impl CpuTrainer {
    pub fn new(shape: Shape, cfg: StepConfig, source: TableSource) -> Result<Self> {
        Self::with_batches(shape, cfg, source, Batches::Full)
    }

    /// A trainer whose steps take their rows from `batches` (SPEC §10).
    pub fn with_batches(shape: Shape, cfg: StepConfig, source: TableSource, batches: Batches) -> Result<Self> {
        cfg.validate(shape)?;
        let schedule = Schedule::new(&batches, shape.rows, cfg.anchor_a as u32, cfg.anchor_b as u32)?;
        let n =
            usize::try_from(shape.elements()).map_err(|_| shape.too_large("more elements than this host can index"))?;
        let policy = cfg.guard.policy;
        // Only the plain full-table step double-buffers; the general one
        // writes a scratch copy of its slots back when the guard allows.
        let general = !schedule.is_full() || cfg.needs_prepass();
        let double = policy.double_buffered() && !general;
        let momentum = cfg.momentum > 0.0;
        // The table's copies this trainer allocates (a table given as
        // values is one already), checked against what the host can give
        // before any is.
        let copies: Vec<&str> = [
            (!matches!(source, TableSource::Data(_)), "the table"),
            (double, "its second buffer"),
            (policy == Policy::Rollback, "rollback's snapshot"),
            (momentum, "the velocity"),
            (momentum && double, "the velocity's second buffer"),
        ]
        .into_iter()
        .filter_map(|(has, what)| has.then_some(what))
        .collect();
        // The general step's scratch: its slots' new rows (and velocity),
        // and about 32 bytes a slot of coefficients and flags.
        let slots = if general {
            if schedule.is_full() {
                shape.rows
            } else {
                schedule.max_slots()
            }
        } else {
            0
        } as u64;
        let scratch = slots.saturating_mul(shape.dim as u64 * 4 * (1 + momentum as u64) + 32);
        let parts = [
            (
                (copies.len() as u64).saturating_mul(shape.bytes()),
                format!(
                    "{} cop{} of the table: {}",
                    copies.len(),
                    if copies.len() == 1 { "y" } else { "ies" },
                    copies.join(", ")
                ),
            ),
            (scratch, format!("the step's scratch for {slots} rows")),
            // User batches' slot lists, all held (`Schedule::lists_bytes`).
            (schedule.lists_bytes(), "the batches' slots".to_owned()),
            // (4 bytes a row.)
            (if policy == Policy::SkipRow { shape.rows as u64 * 4 } else { 0 }, "skip-row's strike counts".to_owned()),
        ];
        crate::host::check(shape, &parts, crate::host::RESERVE_CPU)?;
        let table = match source {
            TableSource::Data(v) => {
                if v.len() != n {
                    return Err(Error::invalid(
                        "table",
                        format!("{} values for {} × {}", v.len(), shape.rows, shape.dim),
                    ));
                }
                v
            }
            TableSource::Stream(mut feed) => {
                let mut v = alloc(shape, n)?;
                feed(&mut v)?;
                v
            }
            TableSource::Random { seed } => {
                let mut v = alloc(shape, n)?;
                let d = shape.dim;
                v.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
                    for (col, o) in out.iter_mut().enumerate() {
                        *o = crate::rng::normal_f32(seed, row as u32, col as u32);
                    }
                });
                v
            }
        };
        let next = if double { alloc(shape, n)? } else { Vec::new() };
        let snapshot = if policy == Policy::Rollback { alloc(shape, n)? } else { Vec::new() };
        let strikes = if policy == Policy::SkipRow { vec![0u32; shape.rows] } else { Vec::new() };
        let vel = if momentum { alloc(shape, n)? } else { Vec::new() };
        let vel_next = if momentum && double { alloc(shape, n)? } else { Vec::new() };
        let identity =
            if batches.is_full() && general { (0..shape.rows as u32).map(|r| (r, 1)).collect() } else { Vec::new() };
        Ok(CpuTrainer {
            shape,
            cfg,
            table,
            next,
            snapshot,
            strikes,
            vel,
            vel_next,
            state: GuardState::new(cfg.lr),
            steps_done: 0,
            stepped: false,
            snapshot_due: false,
            stop: None,
            schedule,
            identity,
            scratch: general::Scratch::default(),
            simd: Simd::chosen()?,
        })
    }

    /// The build of the full-table pass and of batches' read B that runs
    /// (the widest the CPU has, unless `LATENT_LINE_CPU_SIMD` says otherwise).
    pub fn simd(&self) -> Simd {
        self.simd
    }

    /// Runs the passes' `simd` build (tests and benches compare
    /// them); refused where the CPU lacks its instructions.
    pub fn set_simd(&mut self, simd: Simd) -> Result<()> {
        if !Simd::available().contains(&simd) {
            return Err(Error::invalid("simd", format!("this CPU cannot run the {} build", simd.name())));
        }
        self.simd = simd;
        Ok(())
    }

    /// One training step, by the plain full-table pass or the general one.
    fn step(&mut self) -> Record {
        let (a, b) = (self.cfg.anchor_a as u32, self.cfg.anchor_b as u32);
        // (The schedule is lent out for the step, which needs `self`.)
        let schedule = std::mem::replace(&mut self.schedule, Schedule::Full);
        let slots = schedule.slots(self.steps_done);
        let rec = match slots {
            Some(s) => self.step_slots(&s),
            None if self.cfg.needs_prepass() => {
                let identity = std::mem::take(&mut self.identity);
                let plan = general::Plan {
                    slots: &identity,
                    slot_a: a as usize,
                    slot_b: b as usize,
                    entries: self.shape.rows,
                    identity: true,
                };
                let rec = self.general_step(&plan);
                self.identity = identity;
                rec
            }
            None => self.pass(true),
        };
        self.schedule = schedule;
        rec
    }

    fn step_slots(&mut self, s: &StepSlots) -> Record {
        self.general_step(&general::Plan { slots: &s.slots, slot_a: 0, slot_b: 1, entries: s.entries, identity: false })
    }

    /// rollback: a snapshot of the table when one is due (SPEC §9).
    fn snapshot_if_due(&mut self) {
        let due = self.steps_done.is_multiple_of(self.cfg.guard.snapshot_every as u64) || self.snapshot_due;
        if self.cfg.guard.policy == Policy::Rollback && due {
            self.snapshot.copy_from_slice(&self.table);
            self.snapshot_due = false;
        }
    }

    /// The step's snapshot of the anchors (SPEC §2): p then q, s0 and d0.
    /// s0 in the rows' own summation order: a row equal to p has s2 = s0
    /// bit for bit, so its excess is exactly 0, as in exact arithmetic.
    fn anchors(&self) -> (Vec<f32>, f32, f32) {
        let d = self.shape.dim;
        let (a, b) = (self.cfg.anchor_a, self.cfg.anchor_b);
        let mut pq = Vec::with_capacity(2 * d);
        pq.extend_from_slice(&self.table[a * d..][..d]);
        pq.extend_from_slice(&self.table[b * d..][..d]);
        let (p, q) = pq.split_at(d);
        let s0 = squared_distances(self.simd, p, p, q).1;
        (pq, s0, safe_dist(s0, self.cfg.eps))
    }

    /// One pass over the table: forward always, update when `update`.
    fn pass(&mut self, update: bool) -> Record {
        let d = self.shape.dim;
        if update && self.state.halted {
            return self.record(BlockOut::default(), 0.0, Action::NotRun);
        }
        let policy = self.cfg.guard.policy;
        if update {
            self.snapshot_if_due();
        }
        let cfg = self.cfg;
        let (a, b) = (cfg.anchor_a, cfg.anchor_b);
        let (pq, s0, d0) = self.anchors();
        let (p, q) = pq.split_at(d);
        let near = cfg.tau * d0;
        let near2 = near * near;
        let w_red = cfg.w_red(self.shape.rows);
        let lr = self.state.lr;

        let (mu, wd) = (cfg.momentum, cfg.weight_decay);
        let ctx = RowCtx { p, q, a, b, s0, d0, near2, w_red, lr, mu, wd, cfg, d, simd: self.simd };

        let chunk = BLOCK_ROWS * d;
        let nblocks = self.table.len().div_ceil(chunk);
        // Velocity blocks beside the table's (empty slices without momentum).
        fn blocks_of(v: &mut [f32], chunk: usize, n: usize) -> Vec<&mut [f32]> {
            if v.is_empty() {
                (0..n).map(|_| &mut [][..]).collect()
            } else {
                v.chunks_mut(chunk).collect()
            }
        }
        let blocks: Vec<BlockOut> = if update && policy.double_buffered() {
            let (table, next) = (&self.table, &mut self.next);
            let vel = blocks_of(&mut self.vel, chunk, nblocks);
            let vel_next = blocks_of(&mut self.vel_next, chunk, nblocks);
            table
                .par_chunks(chunk)
                .zip(next.par_chunks_mut(chunk))
                .zip(vel.into_par_iter().zip(vel_next.into_par_iter()))
                .enumerate()
                .map(|(blk, ((src, dst), (v, vn)))| ctx.block_to_next_on(blk * BLOCK_ROWS, src, dst, v, vn))
                .collect()
        } else {
            let vel = blocks_of(&mut self.vel, chunk, nblocks);
            self.table
                .par_chunks_mut(chunk)
                .zip(vel.into_par_iter())
                .enumerate()
                .map(|(blk, (rows, v))| ctx.block_in_place_on(blk * BLOCK_ROWS, rows, v, update))
                .collect()
        };
        let total = blocks.into_iter().fold(BlockOut::default(), fold);
        if !update {
            return self.record(total, d0, Action::Evaluated);
        }
        for &row in &total.struck {
            self.strikes[row] = strike(self.strikes[row]);
        }
        let bad = !total.scans.grad.is_clean() || !total.scans.table.is_clean();
        let before = self.state;
        let action = self.state.decide(&cfg.guard, bad);
        if self.state.cur != before.cur {
            std::mem::swap(&mut self.table, &mut self.next);
            std::mem::swap(&mut self.vel, &mut self.vel_next);
            self.state.cur = 0; // the host keeps the current table in `table`
        }
        if self.state.restore {
            self.table.copy_from_slice(&self.snapshot);
            self.vel.fill(0.0); // copy_table.wgsl: the velocity restarts
            self.state.restore = false;
        }
        // An aborted step is not done: the table is as before it, and a
        // resume (under another guard) takes it again.
        self.steps_done += (action != Action::Aborted) as u64;
        let mut rec = self.record(total, d0, action);
        rec.lr = before.lr as f64;
        rec
    }

    fn record(&self, mut o: BlockOut, d0: f32, action: Action) -> Record {
        if !self.strikes.is_empty() {
            o.scans.strikes = o.scans.table.rows.iter().map(|&r| self.strikes[r as usize]).collect();
        }
        Record {
            excess_sum: if action == Action::NotRun { 0.0 } else { o.sum },
            excess_max: o.max as f64,
            d0: d0 as f64,
            batch: self.shape.rows,
            near_singular: o.near,
            // (A step not run has no lr, as the GPU's record says.)
            lr: if action == Action::NotRun { 0.0 } else { self.state.lr as f64 },
            separation: if action == Action::NotRun { 0.0 } else { self.cfg.separation(d0 as f64) },
            action,
            grad_norm: None,
            scans: o.scans,
            gpu_seconds: None,
        }
    }
}

impl Trainer for CpuTrainer {
    fn shape(&self) -> Shape {
        self.shape
    }
    fn config(&self) -> &StepConfig {
        &self.cfg
    }
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            backend: "cpu".into(),
            adapter: format!("{} threads", rayon::current_num_threads()),
            driver: String::new(),
            kernel: format!("passes built for {}", self.simd.name()),
        }
    }
    fn steps(&mut self, n: usize) -> Result<Vec<Record>> {
        let stopped = |s: &Option<std::sync::Arc<std::sync::atomic::AtomicBool>>| {
            s.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
        };
        let mut out = Vec::with_capacity(n.min(1 << 16));
        self.stepped |= n > 0;
        for _ in 0..n {
            if stopped(&self.stop) {
                break;
            }
            out.push(self.step());
        }
        Ok(out)
    }
    fn set_stop(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(flag);
    }
    fn step_rows(&mut self, rows: &[u32]) -> Result<Record> {
        let ib = step_rows_batch(rows, self.shape.rows, !self.schedule.is_full(), "CpuTrainer")?;
        let (a, b) = (self.cfg.anchor_a as u32, self.cfg.anchor_b as u32);
        self.stepped = true;
        Ok(self.step_slots(&StepSlots::new(ib.batch(0), a, b, true)))
    }
    fn evaluate(&mut self) -> Result<Record> {
        Ok(self.pass(false))
    }
    fn read_table(&mut self) -> Result<Vec<f32>> {
        Ok(self.table.clone())
    }
    fn has_velocity(&self) -> bool {
        !self.vel.is_empty()
    }
    /// rollback: the snapshot holds a table once a step ran, until it is
    /// due again.
    fn has_snapshot(&self) -> bool {
        self.cfg.guard.policy == Policy::Rollback && self.steps_done > 0 && !self.snapshot_due
    }
    fn read_table_into(&mut self, sink: &mut Sink) -> Result<()> {
        sink(&self.table)
    }
    fn read_velocity_into(&mut self, sink: &mut Sink) -> Result<bool> {
        if !self.has_velocity() {
            return Ok(false);
        }
        sink(&self.vel).map(|_| true)
    }
    fn read_snapshot_into(&mut self, sink: &mut Sink) -> Result<bool> {
        if !self.has_snapshot() {
            return Ok(false);
        }
        sink(&self.snapshot).map(|_| true)
    }
    fn write_row(&mut self, row: usize, values: &[f32]) -> Result<()> {
        check_row(self.shape, row, values)?;
        let d = self.shape.dim;
        self.table[row * d..][..d].copy_from_slice(values);
        Ok(())
    }
    fn read_velocity(&mut self) -> Result<Option<Vec<f32>>> {
        Ok(self.has_velocity().then(|| self.vel.clone()))
    }
    fn set_velocity(&mut self, v: &[f32]) -> Result<()> {
        if self.vel.len() != v.len() {
            return Err(Error::invalid(
                "velocity",
                format!("{} values for a velocity of {} (momentum off, or another shape)", v.len(), self.vel.len()),
            ));
        }
        self.vel.copy_from_slice(v);
        Ok(())
    }
    fn set_velocity_from(&mut self, feed: &mut Feed) -> Result<()> {
        if self.vel.is_empty() {
            return Err(Error::invalid("velocity", "momentum off: this run has no velocity"));
        }
        feed(&mut self.vel)
    }
    fn read_snapshot(&mut self) -> Result<Option<Vec<f32>>> {
        Ok(self.has_snapshot().then(|| self.snapshot.clone()))
    }
    fn set_snapshot(&mut self, t: &[f32]) -> Result<()> {
        if self.cfg.guard.policy != Policy::Rollback || t.len() != self.snapshot.len() {
            return Err(Error::invalid(
                "snapshot",
                format!("{} values: not a rollback run, or another shape", t.len()),
            ));
        }
        self.snapshot.copy_from_slice(t);
        self.snapshot_due = false;
        Ok(())
    }
    fn set_snapshot_from(&mut self, feed: &mut Feed) -> Result<()> {
        if self.cfg.guard.policy != Policy::Rollback {
            return Err(Error::invalid("snapshot", "not a rollback run"));
        }
        feed(&mut self.snapshot)?;
        self.snapshot_due = false;
        Ok(())
    }
    fn run_state(&mut self) -> Result<RunState> {
        let s = &self.state;
        let (skips, rollbacks) = crate::guard::resume_counters(self.cfg.guard.policy, s.halted, s.skips, s.rollbacks);
        let strikes = RunState::strikes_of(&self.strikes);
        Ok(RunState { steps: self.steps_done, lr: s.lr, skips, rollbacks, strikes, ..RunState::default() })
    }
    fn set_run_state(&mut self, r: RunState) -> Result<()> {
        crate::trainer::before_any_step(self.stepped)?;
        r.check(&self.cfg)?;
        // skip-row counts on (another policy keeps no counts).
        if !self.strikes.is_empty() {
            self.strikes = r.strikes_per_row(self.shape.rows)?;
        }
        (self.state.lr, self.state.skips, self.state.rollbacks) = (r.lr, r.skips, r.rollbacks);
        self.steps_done = r.steps;
        self.snapshot_due = true;
        Ok(())
    }
    fn scan_table(&mut self) -> Result<Scan> {
        Ok(scan_rows(&self.table, self.shape.dim, 0))
    }
}

/// `Trainer::step_rows`'s checks, shared by the backends (one contract:
/// the GPU's needs batch buffers): a trainer built with batches
/// (`batched`), rows in range; errors in the call's own terms.
pub(crate) fn step_rows_batch(
    rows: &[u32],
    table_rows: usize,
    batched: bool,
    trainer: &str,
) -> Result<crate::batches::IndexBatches> {
    if !batched {
        return Err(Error::invalid(
            "step_rows",
            format!(
                "this {trainer} was built for full-table steps: open it with batches (Batches::Random or \
                 Batches::Indices, as `backend::open`'s or `{trainer}::with_batches`'s `batches`) to step on given rows"
            ),
        ));
    }
    crate::batches::IndexBatches::new(vec![rows.to_vec()], table_rows)
        .map_err(|e| Error::invalid("step_rows", e.to_string().replace("invalid --indices: ", "")))
}

/// `write_row`'s checks, shared by the backends.
pub(crate) fn check_row(shape: Shape, row: usize, values: &[f32]) -> Result<()> {
    if row >= shape.rows {
        return Err(Error::invalid("row", format!("{row} is out of range for {} rows", shape.rows)));
    }
    if values.len() != shape.dim {
        return Err(Error::invalid("row", format!("{} values for a row of {} columns", values.len(), shape.dim)));
    }
    Ok(())
}

fn safe_dist(s: f32, eps: f32) -> f32 {
    (s + eps).sqrt()
}

/// `safe_inv` of shaders/common.wgsl: 1/d, 0 at d = 0.
fn safe_inv(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// A skip-row strike more, saturating at `u32::MAX − 1`, the most a run
/// state carries on (fused_step.wgsl likewise).
pub(crate) fn strike(n: u32) -> u32 {
    n.saturating_add(1).min(u32::MAX - 1)
}

/// WGSL's `sign`: 0 at 0.
fn sign(r: f32) -> f32 {
    if r > 0.0 {
        1.0
    } else if r < 0.0 {
        -1.0
    } else {
        0.0
    }
}
