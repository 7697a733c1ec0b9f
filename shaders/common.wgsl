// common.wgsl — shared declarations and the math of SPEC §3–§5.
//
// Every kernel is composed as `common.wgsl` + its helpers + the kernel file
// (see `src/gpu/shaders.rs`); this file is the single source of the safe
// distance, the excess, the row coefficient, the row gradient and the SGD
// update, so the fused step and the staged kernels cannot drift apart.
// `src/reference.rs` mirrors these functions in f64, `src/cpu.rs` in f32.

// Pipeline-overridable constants, set by the host when it builds a pipeline.
override WG: u32 = 64u;        // workgroup size (power of two, ≤ MAX_WG)
override D: u32 = 1u;          // columns of the table
override MODE: u32 = 0u;       // endpoint mode, see MODE_* below
override NAIVE: bool = false;  // SPEC §6: reproduce autograd's NaN (ε = 0)
override GUARD: u32 = 0u;      // SPEC §9 policy, see GUARD_* below
override BATCHED: bool = false; // SPEC §10: the step runs over a gathered batch's slots
override CLIP: bool = false;   // SPEC §5: global-norm clipping

const MAX_WG: u32 = 256u;
const MODE_FROZEN: u32 = 0u;   // rows a and b never change
const MODE_DETACHED: u32 = 1u; // anchors get the row term when in the batch
const MODE_ATTACHED: u32 = 2u; // the full gradient: the batch pulls on the anchors

// A batch's slot (see src/batches.rs): (row, multiplicity, weight bits, 0),
// the weight being multiplicity·w_red; slots 0 and 1 are anchors a and b.
// A dead slot (its row is elsewhere, or past the batch's end) does nothing.
const DEAD: u32 = 0xffffffffu;

// SPEC §9 guard policies (values of GUARD; `src/guard.rs` mirrors them).
const GUARD_IGNORE: u32 = 0u;
const GUARD_SKIP_STEP: u32 = 1u;
const GUARD_SKIP_ROW: u32 = 2u;
const GUARD_ROLLBACK: u32 = 3u;
const GUARD_ABORT: u32 = 4u;

// What the guard did with a step (the record's `action` word).
const ACT_APPLIED: u32 = 0u;
const ACT_IGNORED: u32 = 1u;      // non-finite values found and written
const ACT_SKIPPED_STEP: u32 = 2u;
const ACT_SKIPPED_ROWS: u32 = 3u;
const ACT_ROLLED_BACK: u32 = 4u;
const ACT_ABORTED: u32 = 5u;
const ACT_NOT_RUN: u32 = 6u;      // the run had already aborted
const ACT_EVALUATED: u32 = 7u;    // a forward evaluation, no update

// One step's record (array<u32>, f32 as bits): a header, then one scan
// block per scanned buffer (loss, gradient, rows written; see scan.wgsl),
// then the strike counts of the listed rows (skip-row). `src/record.rs`
// decodes this layout.
const REC_HEADER: u32 = 10u;      // Σ|r|, max|r|, d0, s0, near, action, lr, cur, ‖g‖, clipping
const SCAN_CAP: u32 = 64u;        // SPEC §7: rows listed per scan
const SCAN_WORDS: u32 = 76u;      // 12 words + SCAN_CAP rows
const REC_WORDS: u32 = 302u;      // REC_HEADER + 3·SCAN_WORDS + SCAN_CAP

// Step-wide values; one uniform buffer for the whole run.
struct Params {
    rows: u32,      // R, rows of the whole table
    anchor_a: u32,
    anchor_b: u32,
    batch: u32,     // B, rows in the step's batch
    eps: f32,
    lr: f32,
    w_red: f32,     // 1 for `sum`, 1/B for `mean`
    seed_lo: u32,
    seed_hi: u32,
    tau: f32,       // SPEC §8: near-singular below (τ·d0)²
    max_skips: u32, // SPEC §9: consecutive skipped steps before abort
    max_rollbacks: u32,
    backoff: f32,   // lr factor on rollback
    margin: f32,    // SPEC §3 separation margin m (0 = off)
    margin_weight: f32, // λ
    momentum: f32,  // SPEC §5 μ
    weight_decay: f32,
    clip_norm: f32, // SPEC §5: max ‖g‖ (CLIP)
    _pad1: u32,
    _pad2: u32,
}

// One storage binding's share of the table (rows [row_base, row_base+rows)).
struct Chunk {
    row_base: u32,
    rows: u32,
    partial_base: u32,  // where this chunk's workgroups put their partial sums
    seg_base: u32,      // where its segments put their anchor-term sums (anchor_sum.wgsl)
}

// Device-side run state, written by `anchors`, `reduce` and `prepare`
// (the gradient norm and clip factor): the guard
// decides here, so no step waits for the host (SPEC §9).
struct State {
    record: u32,    // next slot of the records buffer (reset per submission)
    stamp: u32,     // this pass's, on its scan findings (reduce.wgsl advances it; never 0)
    cur: u32,       // double-buffered guards: 0 = table A is current, 1 = B
    halted: u32,    // 1 once the guard aborted: later steps do nothing
    s0: f32,        // ‖p − q‖² of the current snapshot
    d0: f32,        // sqrt(s0 + ε)
    lr: f32,        // learning rate now (rollback backs it off)
    skips: u32,     // consecutive skipped steps
    rollbacks: u32,
    restore: u32,   // 1: this step's restore pass copies the snapshot back
    clip: f32,      // this step's gradient factor (CLIP; NaN bits: the norm is not finite)
    norm: f32,      // this step's ‖g‖ before clipping
    undo: u32,      // 1: the guard dropped this step (batch_io.wgsl undoes a batch written in place, or reduce.wgsl's UNDO)
}

// One workgroup's share of a forward pass, folded by reduce.wgsl.
struct Partial {
    sum: f32,       // Σ|r| over the workgroup's finite rows
    max: f32,
    near: u32,      // SPEC §8 near-singular rows
    norm2: f32,     // Σ‖g‖² of the rows whose gradient is finite (fused_step PREP)
}

// Guards that write each step into the other table buffer, so a failing
// step is dropped by not switching buffers: no extra pass (SPEC §9).
fn double_buffered() -> bool {
    return (GUARD == GUARD_SKIP_STEP) | (GUARD == GUARD_ROLLBACK) | (GUARD == GUARD_ABORT);
}

// A 2-D dispatch grid (more than 65 535 workgroups) flattened to one index.
fn linear_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// SPEC §3, one column of s1 and s2: acc + ((x − p)², (x − q)²).
// Columns are accumulated in order k = 0 … D−1 (the reference does the same).
fn accumulate_sq(acc: vec2<f32>, x: f32, p: f32, q: f32) -> vec2<f32> {
    let t1 = x - p;
    let t2 = x - q;
    return acc + vec2<f32>(t1 * t1, t2 * t2);
}

// Row a holds p and row b holds q at the step's start, so row a's s2 and
// row b's s1 ARE s0. Using s0 itself keeps an anchor's excess free of
// rounding: two kernels may contract `acc + t·t` into FMAs differently.
fn pin_anchors(s: vec2<f32>, row: u32, a: u32, b: u32, s0: f32) -> vec2<f32> {
    return vec2<f32>(select(s.x, s0, row == b), select(s.y, s0, row == a));
}

// SPEC §3: ε goes inside the square root, so d ≥ sqrt(ε) > 0 and 1/d is finite.
fn safe_dist(s: f32, eps: f32) -> f32 {
    return sqrt(s + eps);
}

// 1/d, and 0 where d = 0 (possible only with ε = 0, at a row equal to an
// anchor): 0 is a valid subgradient of ‖·‖ at 0, so the safe mode stays
// finite even then. Both branches are evaluated; the 1/0 one is discarded.
fn safe_inv(d: f32) -> f32 {
    return select(1.0 / d, 0.0, d == 0.0);
}

// SPEC §3: r = d1 + d2 − d0, zero on the segment p–q.
fn excess(d1: f32, d2: f32, d0: f32) -> f32 {
    return d1 + d2 - d0;
}

// SPEC §4: c = w_red · sign(r), sign(0) = 0 as in PyTorch's abs backward.
fn row_coef(r: f32, w_red: f32) -> f32 {
    return w_red * sign(r);
}

// SPEC §4, one column of the row term: c·((x − p)/d1 + (x − q)/d2),
// with the reciprocals computed once per row.
fn row_grad(x: f32, p: f32, q: f32, c: f32, inv_d1: f32, inv_d2: f32) -> f32 {
    return c * ((x - p) * inv_d1 + (x - q) * inv_d2);
}

// SPEC §7: test the bits, not the value (`x != x` may be compiled away).
fn is_nonfinite(v: f32) -> bool {
    return exponent(v) == EXPONENT;
}

// A value's exponent bits: all ones (EXPONENT) exactly when it is not
// finite, so the largest over many values is EXPONENT exactly when one of
// them is not finite. A lane folds its values' by an integer max, one
// instruction each with no branch, and compares once (fused_step.wgsl's
// rows, scan_table.wgsl's tiles).
const EXPONENT: u32 = 0x7f800000u;

fn exponent(v: f32) -> u32 {
    return bitcast<u32>(v) & EXPONENT;
}

fn exponent4(v: vec4<f32>) -> vec4<u32> {
    return bitcast<vec4<u32>>(v) & vec4<u32>(EXPONENT);
}

// Exponents (`exponent4`, or their maxima) of which one is all ones.
fn any_nonfinite4(e: vec4<u32>) -> bool {
    return any(e == vec4<u32>(EXPONENT));
}

// The quiet NaN 0x7fc00000, made from bits: WGSL lets an implementation
// assume no NaN exists, so NaN is never produced by arithmetic here.
fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// SPEC §6: autograd computes (x − p)·(1/sqrt(s1)); at s1 = 0 that is
// 0·inf = NaN in every column. True for the rows where the naive formula
// blows up (s = (s1, s2), ε = 0).
fn naive_blows_up(s: vec2<f32>) -> bool {
    return NAIVE & ((s.x == 0.0) | (s.y == 0.0));
}

// naive_blows_up per distance, (s1 = 0, s2 = 0), for a row that is a term
// of the step's loss (`counted`: an anchor's slot of multiplicity 0, there
// for the anchor's own update, is none, so nothing of it blows up). Each
// NaN goes where autograd sends it: s1's to the row and p (attached: the
// anchor term of a), s2's to the row and q.
fn naive_blown(s: vec2<f32>, counted: bool) -> vec2<bool> {
    return vec2<bool>(NAIVE & counted & (s.x == 0.0), NAIVE & counted & (s.y == 0.0));
}

// x/d0 for the terms of d0's gradient, (p − q)/d0: 0 where d0 = 0 (only
// with ε = 0, anchors equal), the subgradient safe_inv takes for d1 and d2;
// the same bits as x/d0 elsewhere. --naive keeps x/d0 (autograd's).
fn over_d0(x: f32, d0: f32) -> f32 {
    return select(x / d0, 0.0, !NAIVE & (d0 == 0.0));
}

// SPEC §4 separation term: row a gets −λ(p − q)/d0, row b −λ(q − p)/d0
// when d0 < m, in modes detached and attached; as sep·(p − q), this is sep.
fn separation_coef(row: u32, a: u32, b: u32, d0: f32, m: f32, lambda: f32) -> f32 {
    let on = (MODE != MODE_FROZEN) & (m > 0.0) & (d0 < m);
    let s = select(0.0, over_d0(-lambda, d0), row == a) + select(0.0, over_d0(lambda, d0), row == b);
    return select(0.0, s, on);
}

// g plus the separation term sep·(p − q) where a row has one (sep ≠ 0:
// anchors a and b under an active margin), never as 0·(p − q): that is NaN
// where p − q overflows (anchors more than f32's range apart in a column),
// which made every row's gradient NaN (and a compiler may or may not fold
// 0·x to 0: backends disagreed). Mirror: `with_separation` (src/cpu.rs).
fn with_separation(g: f32, sep: f32, p: f32, q: f32) -> f32 {
    return select(g, g + sep * (p - q), sep != 0.0);
}

// May a step update anchor row `row` (a or b) that is `in_batch` or not?
// Always when attached (the batch pulls on it), when in the batch or pushed
// by an active separation term when detached, never when frozen. (Mirror:
// `StepConfig::anchor_touched`.)
fn anchor_touched(in_batch: bool, d0: f32, m: f32) -> bool {
    return (MODE == MODE_ATTACHED) | ((MODE == MODE_DETACHED) & (in_batch | ((m > 0.0) & (d0 < m))));
}

// SPEC §5 with μ = 0 and wd = 0.
fn sgd_update(x: f32, g: f32, lr: f32) -> f32 {
    return x - lr * g;
}

// SPEC §5: the step's direction v = μ·v_old + (g + wd·x) (PyTorch's SGD;
// v_old = 0 without momentum). The row moves by −lr·v.
fn sgd_direction(x: f32, g: f32, v_old: f32, mu: f32, wd: f32) -> f32 {
    return mu * v_old + (g + wd * x);
}

// SPEC §4 endpoint modes: may this step write row `row`?
fn writes_row(row: u32, a: u32, b: u32) -> bool {
    return (MODE != MODE_FROZEN) | ((row != a) & (row != b));
}
