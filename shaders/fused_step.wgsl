// fused_step.wgsl — the full-table step for one chunk, in ONE pass: read
// each row, compute d1, d2, r and the gradient, scan the loss, the gradient
// and the new values (SPEC §7), count the near-singular rows (§8), and
// write the row. With UPDATE = false it is the forward-only evaluation.
//
// L lanes share a row (L a power of two ≤ WG, chosen by the host: on a GPU
// 16 columns a lane where D is a multiple of 4 (four vec4s), about 8
// otherwise, since every lane repeats the row's scalar work):
// lane l takes columns l, l + L, … (VEC4: whole vec4s l, l + L, …), so
// neighbouring lanes touch neighbouring addresses and every load and store
// is coalesced. Each lane
// sums (x − p)², (x − q)² over its columns; the row's lanes fold their
// sums in a fixed tree order (fold_wg.wgsl, or the same bits by subgroup
// shuffles: fold_sg.wgsl), so the result is deterministic (it differs from
// the CPU's column order only by rounding). Every element is read once and
// written once.
//
// Where the row is written depends on the guard (SPEC §9):
//  - ignore, skip-row: in place (skip-row first decides, then writes);
//  - skip-step, rollback, abort: into the other table buffer (table_a ⇄
//    table_b); reduce.wgsl switches `state.cur` only if the step was clean,
//    so a failing step is dropped without another pass over the table.
// A batch read in place (DIRECT) under those guards writes its rows in
// place and logs their old values (`undo_log`): reduce.wgsl's UNDO
// workgroups (on a GPU; batch_io.wgsl's scatter on a software adapter)
// put them back only if the step was dropped.
// Batches (BATCHED): the pass runs over a batch's slots instead of a
// table chunk (gathered by batch_io.wgsl, or read in place: DIRECT below):
// slot i is row slots[i].x with its multiplicity and weight; the scans'
// masks are of slots, each workgroup's finding is its lowest row's
// (`lowest_row_finding`), and reduce.wgsl lists the lowest rows.
// Attached anchors and clipping (SPEC §4–§5) need the whole step reduced
// before any row is written: a PREP run of this kernel
// reads the rows first, writes each slot's coefficients and the gradient
// norm's partial sums (no scans, no writes); anchor_sum.wgsl and
// prepare.wgsl then give the anchors' gradients and the clip factor.
// Host owner: `GpuTrainer::encode_phase` (src/gpu/trainer/encode.rs;
// its pipelines: src/gpu/trainer/build.rs); CPU mirror:
// `CpuTrainer::pass` (src/cpu.rs), for batches and two-read steps
// src/cpu/general.rs; reference: src/reference.rs.

override UPDATE: bool = true;
// false only to measure what the fused scans cost (benches): with it the
// guard sees nothing, so the host allows it with `ignore` alone.
override SCAN: bool = true;
override L: u32 = 1u;   // lanes per row
// A lane keeps its row's values in registers when it has at most MAX_KEPT
// columns (D ≤ 8·L): the update then reads no memory, and the scans test
// one bit pattern per value, working out the details only for a lane that
// saw a non-finite value.
// (16 was measured: every lane count ran 25–40 % slower on an H200, the
// larger array costing even where only 8 are used: BENCHMARKS.md.)
const MAX_KEPT: u32 = 8u;
// In vectors (KEPT_VECTORS) a lane keeps up to 16, the first four vec4
// fields of a Kept4: nothing is indexed in memory, so fewer lanes a row (less of the
// row's scalar work repeated) can still keep their columns.
const MAX_KEPT_VECTORS: u32 = 16u;
override KEEP: bool = true;   // set by the host: D ≤ kept_max()·L
override MOMENTUM: bool = false;   // SPEC §5 μ > 0: a velocity buffer (double-buffered like the table)
override PREP: bool = false;       // the first read of a two-read step (see above)
// BATCHED with the table in one binding: the slots' rows are read from the
// table itself (table_a, by row), with no gather, and written there in
// place; a double-buffered guard also logs each row's old values in the
// batch buffer table_b (by slot: `undo_log`).
override DIRECT: bool = false;
// Row blocks a workgroup steps one after another (WG / L rows each, at
// most 256 rows in all: the scans' masks): the workgroup's fixed costs
// (resets, the Σ|r| tree, its partial and scan flush) are paid once for
// them all, and the reduce pass folds BLOCKS times fewer partials.
override BLOCKS: u32 = 1u;
// Read the next block's rows while this one is worked on (more bytes in
// flight a lane, at the cost of a second set of kept values in registers);
// false: each block's rows are read as it starts. The same bits either way.
override PREFETCH: bool = true;
// KEEP without VEC4: a lane's 4-byte columns held in the fields of a
// `Kept4` (column j: field j / 4, component j % 4) instead of an array,
// as VEC4 holds its vec4s: nothing for a driver to put in local memory.
// The same bits either way.
override KEPT_VECTORS: bool = false;

// The most columns a lane keeps (KEEP): MAX_KEPT in an array, 16 in vectors.
fn kept_max() -> u32 {
    return select(MAX_KEPT, MAX_KEPT_VECTORS, KEPT_VECTORS);
}

// The count of the loops over a lane's kept columns: ⌈D/L⌉ (≤ kept_max()
// under KEEP), a constant at pipeline creation, where loops to MAX_KEPT
// or MAX_KEPT_VECTORS ran dead iterations that compilers kept (as KEPT4
// for the vec4s).
fn kept_count() -> u32 {
    return min(kept_max(), (D + L - 1u) / L);
}
// D a multiple of 4, at most 4·MAX_KEPT4·L: a lane's kept columns are whole
// vec4s (lane l takes vec4s l, l + L, … of the row, KEPT4 at most:
// columns 4l … 4l + 3, then 4(l + L) …), read and written 16 bytes at a
// time through the vec4 views of the same buffers (bindings 16–19), as the
// 16-byte copy that runs at about twice the 4-byte one's bandwidth. A lane
// sums its columns in that order (anchors.wgsl likewise), and holds p and
// q of its columns from the start (`p4`, `q4`). Its values live in the
// fields of a struct of vectors (`Kept4`), never in an array: a vec4 is
// picked by a switch (`kept_get`, `kept_set`), a component by name, so
// nothing asks a driver to put them in memory (an array indexed by a loop
// counter may go to local memory unless the loop is unrolled). Set by the
// host (`LATENT_LINE_VEC4`).
override VEC4: bool = false;
// VEC4: the most vec4s a lane keeps, ⌈D/4 ÷ L⌉ ≤ MAX_KEPT4 (set by the
// host), and the count of every loop over them: a constant at pipeline
// creation, so a compiler unrolls them and keeps the vec4s in registers.
// (Loops to MAX_KEPT4, with the vec4s past KEPT4 dead, stayed loops of 8
// in RADV's and lavapipe's compilers, each `kept_get` a chain of selects:
// BENCHMARKS.md, twelfth session.)
override KEPT4: u32 = 2u;
// (The fields of a Kept4; no code reads it: a test pins the host's bound,
// `pipes::KEPT_VEC4S`, to it.)
const MAX_KEPT4: u32 = 8u;
// VEC4: p and q of the lane's vec4s read from workgroup memory (`wg_pq`,
// filled once a workgroup) at each use, instead of held in registers
// (`p4`, `q4`) across all of the workgroup's rows: at 4 lanes and D = 64
// those are 32 registers a lane (the H200 gave the step 116 in all, so 2
// workgroups of 256 an SM). Set by the host (`LATENT_LINE_PQ_SHARED`).
// The same values, so the same bits.
override PQ_SHARED: bool = false;
// VEC4: a row that read a non-finite value (or where the naive formula
// blows up) takes its own branch, so that a clean row's update carries no
// per-column selects of the NaN bits (3 a column). The same function on
// both sides, so the same bits. Set by the host (`LATENT_LINE_POISON_BRANCH`).
override POISON_BRANCH: bool = false;

// BATCHED and DIRECT random batches with no first read (PREP): the kernel
// works out each slot itself (sampler.wgsl's `batch_slot`, the function
// sample.wgsl's pass runs) from the step's entry of the schedule, and
// writes the slots for reduce.wgsl and the undo scatter, so no sample pass
// runs before it: one dispatch and one barrier fewer a step. A step whose
// slots the host wrote (`given`) reads them. The same slots, so the same
// bits. Set by the host (`LATENT_LINE_FUSED_SAMPLE`).
override SAMPLED: bool = false;

@group(0) @binding(0) var<storage, read_write> table_a: array<f32>;
@group(0) @binding(1) var<storage, read_write> table_b: array<f32>;   // a 16-byte stand-in when single-buffered
@group(0) @binding(2) var<storage, read> anchors: array<f32>;         // p (D), then q (D)
@group(0) @binding(3) var<storage, read> state: State;
@group(0) @binding(4) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(5) var<uniform> params: Params;
@group(0) @binding(6) var<uniform> chunk: Chunk;
@group(0) @binding(7) var<storage, read_write> strikes: array<u32>;   // skip-row only, per global row
@group(0) @binding(11) var<storage, read_write> vel_a: array<f32>;    // momentum only: velocity, laid out as the table
@group(0) @binding(12) var<storage, read_write> vel_b: array<f32>;
@group(0) @binding(13) var<storage, read> slots: array<vec4<u32>>;      // BATCHED: (row, multiplicity, weight bits, 0)
@group(0) @binding(14) var<storage, read_write> coef: array<vec4<f32>>; // per slot of the chunk: (c, 1/d1, 1/d2, the anchor terms it poisons: 1 a, 2 b), written by PREP
@group(0) @binding(15) var<storage, read> agrad: array<f32>;            // attached: g of a (D), then of b (D), from prepare.wgsl
// VEC4: bindings 0, 1, 11 and 12 again, as vec4s (16-byte stand-ins otherwise).
@group(0) @binding(16) var<storage, read_write> table_a4: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read_write> table_b4: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> vel_a4: array<vec4<f32>>;
@group(0) @binding(19) var<storage, read_write> vel_b4: array<vec4<f32>>;
// SAMPLED: the submission's sampling parameters, step k's at k = state.record
// (sample.wgsl's `schedule`), and the slots, written here (binding 13 is
// then a stand-in: a buffer cannot be bound read-only and read-write at
// once, and read-only is what the other pipelines keep, which lets a
// driver read them through a read-only cache). Stand-ins otherwise.
@group(0) @binding(20) var<storage, read> schedule: array<SampleParams>;
@group(0) @binding(21) var<storage, read_write> slots_rw: array<vec4<u32>>;
// UNDO_MARK (with `undo_log`): reduce.wgsl's UNDO, whose undo workgroups
// decide from these marks (zeroed by the host before each submission): [0]
// this pass's stamp (workgroup 0, before any return), and where a
// workgroup's scans found something in the gradient or the rows written
// (what the guard drops a step for) [1] this pass's stamp, [2] 1. A
// stand-in otherwise.
override UNDO_MARK: bool = false;
@group(0) @binding(22) var<storage, read_write> undo_mark: array<atomic<u32>>;

var<workgroup> wg_flags: vec2<u32>;   // (state.cur, state.halted), made uniform
// PQ_SHARED: p's vec4s (D/4 of them), then q's. Sized by the host:
// PQ_VEC4S = D/2 with PQ_SHARED, else 1, since NVIDIA gives a kernel all
// of its workgroup arrays, dead code's too (its compiler reported the
// fused step's 15 616 bytes becoming 19 728 with this array at 256, and
// the H200 then ran the 16-lane and 4-byte shapes 8–25 % slower).
override PQ_VEC4S: u32 = 1u;
var<workgroup> wg_pq: array<vec4<f32>, PQ_VEC4S>;

// VEC4: a lane's kept values, its vec4s `lane` (a), `lane + L` (b), … of
// a row (MAX_KEPT4 of them); a vec4 past the row is zeros, never read.
// Taken and set by `kept_get` and `kept_set`.
struct Kept4 {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
    e: vec4<f32>,
    f: vec4<f32>,
    g: vec4<f32>,
    h: vec4<f32>,
}

fn kept_get(k: Kept4, q: u32) -> vec4<f32> {
    switch (q) {
        case 0u: { return k.a; }
        case 1u: { return k.b; }
        case 2u: { return k.c; }
        case 3u: { return k.d; }
        case 4u: { return k.e; }
        case 5u: { return k.f; }
        case 6u: { return k.g; }
        default: { return k.h; }
    }
}

fn kept_set(k: Kept4, q: u32, v: vec4<f32>) -> Kept4 {
    var r = k;
    switch (q) {
        case 0u: { r.a = v; }
        case 1u: { r.b = v; }
        case 2u: { r.c = v; }
        case 3u: { r.d = v; }
        case 4u: { r.e = v; }
        case 5u: { r.f = v; }
        case 6u: { r.g = v; }
        default: { r.h = v; }
    }
    return r;
}

// VEC4: p (`p4`) and q (`q4`) of the lane's vec4 q_ of a row, from
// registers or from workgroup memory (PQ_SHARED).
fn p_get(p4: Kept4, lane: u32, q_: u32) -> vec4<f32> {
    if (PQ_SHARED) {
        return wg_pq[kept_vec4(lane, q_)];
    }
    return kept_get(p4, q_);
}

fn q_get(q4: Kept4, lane: u32, q_: u32) -> vec4<f32> {
    if (PQ_SHARED) {
        return wg_pq[D / 4u + kept_vec4(lane, q_)];
    }
    return kept_get(q4, q_);
}

fn no_kept4() -> Kept4 {
    let z = vec4<f32>(0.0);
    return Kept4(z, z, z, z, z, z, z, z);
}

// KEPT_VECTORS: the lane's kept column j (its j-th, column lane + j·L).
fn kept_elem(k: Kept4, j: u32) -> f32 {
    return kept_get(k, j / 4u)[j % 4u];
}

fn kept_with(k: Kept4, j: u32, v: f32) -> Kept4 {
    var c = kept_get(k, j / 4u);
    c[j % 4u] = v;
    return kept_set(k, j / 4u, c);
}

var<workgroup> wg_near: atomic<u32>;

// row_fold (the L lanes of a row add their sums, in a fixed order) comes
// from fold_wg.wgsl or, on adapters with subgroups, fold_sg.wgsl.

fn load_x(cur: u32, e: u32) -> f32 {
    if (cur == 0u) {
        return table_a[e];
    }
    return table_b[e];
}

// Double-buffered guards write the buffer that is not current.
fn store_x(cur: u32, e: u32, v: f32) {
    let dst = select(cur, 1u - cur, double_buffered());
    if (dst == 0u) {
        table_a[e] = v;
    } else {
        table_b[e] = v;
    }
}

// A batch read in place under a double-buffered guard: the step writes its
// rows in place (table_a; the current buffer, state.cur being 0 in every
// batched step) and each row's old values into the batch buffer table_b
// (and vel_b) at its slot: an undo log, which reduce.wgsl's UNDO
// workgroups (or, on a software adapter, batch_io.wgsl's scatter) put
// back only if the guard dropped the step (`state.undo`). A kept step, the
// usual one, then moves no row after this pass; before, every step went
// into table_b and was scattered back.
fn undo_log() -> bool {
    return BATCHED & DIRECT & double_buffered();
}

// Column k's new value and velocity `nv` (its old ones x_old, v_old) at
// element `base + k` of the row, `out_base + k` (see step_row).
fn put(cur: u32, base: u32, out_base: u32, k: u32, x_old: f32, v_old: f32, nv: vec2<f32>) {
    if (undo_log()) {
        table_a[base + k] = nv.x;
        table_b[out_base + k] = x_old;
        if (MOMENTUM) {
            vel_a[base + k] = nv.y;
            vel_b[out_base + k] = v_old;
        }
        return;
    }
    store_x(cur, out_base + k, nv.x);
    store_v(cur, out_base + k, nv.y);
}

// put for vec4 `c4` of the row (base and out_base in elements) into
// table_a4 (`to_a`) or table_b4: the caller picks the buffer once a row, a
// constant at each call (see `update4`).
fn put4(to_a: bool, base: u32, out_base: u32, c4: u32, x_old: vec4<f32>, v_old: vec4<f32>, nx: vec4<f32>, nv: vec4<f32>) {
    if (undo_log()) {
        table_a4[base / 4u + c4] = nx;
        table_b4[out_base / 4u + c4] = x_old;
        if (MOMENTUM) {
            vel_a4[base / 4u + c4] = nv;
            vel_b4[out_base / 4u + c4] = v_old;
        }
        return;
    }
    let e4 = out_base / 4u + c4;
    if (to_a) {
        table_a4[e4] = nx;
        if (MOMENTUM) {
            vel_a4[e4] = nv;
        }
    } else {
        table_b4[e4] = nx;
        if (MOMENTUM) {
            vel_b4[e4] = nv;
        }
    }
}

// VEC4: vec4 `e4` of table_a4 (`from_a`) or table_b4, and of their
// velocities: the caller picks the buffer once a row, so that a compiler
// that inlines (every driver's does) sees a constant, where testing `cur`
// at each load made RADV's compiler branch and fetch the buffer's
// descriptor again before every one of a row's loads, issuing none of
// them together (BENCHMARKS.md, twelfth session).
fn load_x4(from_a: bool, e4: u32) -> vec4<f32> {
    if (from_a) {
        return table_a4[e4];
    }
    return table_b4[e4];
}

fn load_v4(from_a: bool, e4: u32) -> vec4<f32> {
    if (!MOMENTUM) {
        return vec4<f32>(0.0);
    }
    if (from_a) {
        return vel_a4[e4];
    }
    return vel_b4[e4];
}

fn load_v(cur: u32, e: u32) -> f32 {
    if (!MOMENTUM) {
        return 0.0;
    }
    if (cur == 0u) {
        return vel_a[e];
    }
    return vel_b[e];
}

fn store_v(cur: u32, e: u32, v: f32) {
    if (!MOMENTUM) {
        return;
    }
    let dst = select(cur, 1u - cur, double_buffered());
    if (dst == 0u) {
        vel_a[e] = v;
    } else {
        vel_b[e] = v;
    }
}

// Gradient and new value of column k. A row that read a non-finite value,
// or where the naive formula divides by zero, gets NaN from bits: WGSL may
// assume no NaN exists, so arithmetic is never trusted to make one.
// `anchor`: 0 for a row, 1 for anchor a, 2 for b — whose gradient, when
// attached, prepare.wgsl has made whole. CLIP scales by the step's factor.
fn grad_at(x: f32, k: u32, c: f32, inv_d1: f32, inv_d2: f32, sep: f32, poisoned: bool, anchor: u32) -> f32 {
    return grad_pq(x, k, anchors[k], anchors[D + k], c, inv_d1, inv_d2, sep, poisoned, anchor);
}

// grad_at with p and q of column k given (a lane's kept ones).
fn grad_pq(x: f32, k: u32, p: f32, q: f32, c: f32, inv_d1: f32, inv_d2: f32, sep: f32, poisoned: bool, anchor: u32) -> f32 {
    var g = select(with_separation(row_grad(x, p, q, c, inv_d1, inv_d2), sep, p, q), nan(), poisoned);
    if (MODE == MODE_ATTACHED && anchor != 0u) {
        g = agrad[(anchor - 1u) * D + k];
    }
    return clipped(g);
}

fn clipped(g: f32) -> f32 {
    if (!CLIP || PREP) {
        return g;
    }
    let f = state.clip;
    return select(g * f, nan(), is_nonfinite(f));   // a non-finite norm: every update non-finite
}

// (new value, new velocity) of column k: SPEC §5's v = μ·v_old + g + wd·x,
// x − lr·v; NaN from bits for a poisoned row.
fn step_value(x: f32, g: f32, v_old: f32, lr: f32, poisoned: bool) -> vec2<f32> {
    let v = select(sgd_direction(x, g, v_old, params.momentum, params.weight_decay), nan(), poisoned);
    return vec2<f32>(select(sgd_update(x, v, lr), nan(), poisoned), v);
}

// Lane 0 of a batch's pass, after the barrier: the workgroup's finding in
// `buf` with the lowest row (rows are distinct within a step) as (row,
// column, bits); `slot0` is the slot of local row 0.
fn lowest_row_finding(buf: u32, slot0: u32) -> vec3<u32> {
    var best = vec3<u32>(NONE, NONE, 0u);
    var best_local = 0u;
    for (var k = 0u; k < 8u; k = k + 1u) {
        var m = scan_mask(buf, k);
        while (m != 0u) {
            let j = k * 32u + countTrailingZeros(m);
            m = m & (m - 1u);
            let row = slot_at(slot0 + j).x;
            if (row < best.x) {
                best.x = row;
                best_local = j;
            }
        }
    }
    // Its lanes' first findings: the lowest column wins (the lanes of
    // local row j are slots (j mod WG/L)·L + lane, in every row block).
    for (var lane = 0u; lane < L; lane = lane + 1u) {
        let f = scan_lane_finding(buf, (best_local % (WG / L)) * L + lane, best.x);
        if (f.x < best.y) {
            best = vec3<u32>(best.x, f.x, f.y);
        }
    }
    return best;
}

// Where local row `slot` of a workgroup (first local row `first`: a
// chunk's row index, or a batch's slot index) is, and what it weighs.
struct RowSite {
    i: u32,        // index in the chunk (or the batch)
    live: bool,
    base: u32,     // where the row is read (and written, in place)
    row: u32,      // the table's row
    mult: u32,
    weight: f32,
}

// SAMPLED: whether this step works out its slots (the host wrote none).
fn sampling() -> bool {
    return SAMPLED && schedule[state.record].given == 0u;
}

// Slot i of the step (BATCHED): as written, or worked out (SAMPLED; the
// same function the sample pass runs). Slots written by other invocations
// of this pass are never read: lane 0 of a batch's workgroup works out
// its finding's slots again (`lowest_row_finding`).
fn slot_at(i: u32) -> vec4<u32> {
    if (!SAMPLED) {
        return slots[i];
    }
    let s = schedule[state.record];
    if (s.given == 0u) {
        return batch_slot(s, i, params.anchor_a, params.anchor_b);
    }
    return slots_rw[i];   // given by the host
}

fn row_site(slot: u32, first: u32) -> RowSite {
    let i = first + slot;
    var site = RowSite(i, i < chunk.rows, i * D, chunk.row_base + i, 1u, params.w_red);
    if (BATCHED && site.live) {
        let s = slot_at(i);
        site.row = s.x;
        site.mult = s.y;
        site.weight = bitcast<f32>(s.z);
        site.live = s.x != DEAD;
        if (DIRECT && site.live) {
            site.base = (s.x - chunk.row_base) * D;
        }
    }
    return site;
}

// A lane's columns of a row (KEEP: at most MAX_KEPT), read ahead of their
// use: the workgroup loads the next row block while it works on this one,
// so more bytes are in flight per lane. The loops run a constant count
// (k ≥ D past the row) with constant indices, so a compiler may keep the
// values in registers; the H200's evidently does not quite (MAX_KEPT).
// The column of a lane's kept value j (at most MAX_KEPT; ≥ D: none).
fn kept_col(lane: u32, j: u32) -> u32 {
    return lane + j * L;
}

// Does the lane keep a column j (its column kept_col(lane, j) < D)? Every
// lane has the first ⌊D/L⌋ and none has one past ⌈D/L⌉ (lane < L): for
// those the test is a constant once the loops over j are unrolled, where
// `k < D` would be tested per lane.
fn has_kept(lane: u32, j: u32) -> bool {
    return (j < D / L) | ((j < (D + L - 1u) / L) & (kept_col(lane, j) < D));
}

// The lane whose scans saw column `col` of its row: the kept vec4s' lane
// where the update works on them (VEC4, except skip-row, whose two passes
// go over the columns one lane apart, as do the loss and the others).
fn owner_lane(col: u32) -> u32 {
    if (VEC4 && GUARD != GUARD_SKIP_ROW) {
        return (col / 4u) % L;
    }
    return col % L;
}

// VEC4: the vec4 index in the row of the lane's vec4 q (a: 0, b: 1, …).
fn kept_vec4(lane: u32, q: u32) -> u32 {
    return lane + q * L;
}

// VEC4: does the row have the lane's vec4 q (q < KEPT4, the count of
// the loops over a lane's vec4s)?
fn has_vec4(lane: u32, q: u32) -> bool {
    return (q < KEPT4) & ((q < D / 4u / L) | ((q < (D / 4u + L - 1u) / L) & (kept_vec4(lane, q) < D / 4u)));
}

// Without VEC4: a lane's columns in an array (the loops below run a
// constant count, so a driver may unroll them and keep it in registers).
fn load_kept(site: RowSite, lane: u32, cur: u32) -> array<f32, MAX_KEPT> {
    var kept: array<f32, MAX_KEPT>;
    if (KEEP && !VEC4 && !KEPT_VECTORS && site.live) {
        // The buffer picked once, not at every load (uniform either way).
        if (cur == 0u) {
            for (var j = 0u; j < kept_count(); j = j + 1u) {
                if (has_kept(lane, j)) {
                    kept[j] = table_a[site.base + kept_col(lane, j)];
                }
            }
        } else {
            for (var j = 0u; j < kept_count(); j = j + 1u) {
                if (has_kept(lane, j)) {
                    kept[j] = table_b[site.base + kept_col(lane, j)];
                }
            }
        }
    }
    return kept;
}

// KEEP: a lane's new values (column j's: `new_x[j]`) into the buffer a
// step writes (store_x's), picked once for all of them.
fn store_kept(cur: u32, out_base: u32, lane: u32, new_x: array<f32, MAX_KEPT>) {
    if (select(cur, 1u - cur, double_buffered()) == 0u) {
        for (var j = 0u; j < kept_count(); j = j + 1u) {
            if (has_kept(lane, j)) {
                table_a[out_base + kept_col(lane, j)] = new_x[j];
            }
        }
    } else {
        for (var j = 0u; j < kept_count(); j = j + 1u) {
            if (has_kept(lane, j)) {
                table_b[out_base + kept_col(lane, j)] = new_x[j];
            }
        }
    }
}

// VEC4: the lane's vec4s of a row from table_a4 (`from_a`) or table_b4.
fn load_vec4s(from_a: bool, site: RowSite, lane: u32) -> Kept4 {
    var kept = no_kept4();
    for (var q = 0u; q < KEPT4; q = q + 1u) {
        if (has_vec4(lane, q)) {
            kept = kept_set(kept, q, load_x4(from_a, site.base / 4u + kept_vec4(lane, q)));
        }
    }
    return kept;
}

// VEC4: a lane's vec4s of a row, 16 bytes a load. KEPT_VECTORS: its
// 4-byte kept columns, in the same struct.
fn load_kept4(site: RowSite, lane: u32, cur: u32) -> Kept4 {
    var kept = no_kept4();
    if (VEC4 && site.live) {
        // The buffer picked once (load_x4).
        if (cur == 0u) {
            kept = load_vec4s(true, site, lane);
        } else {
            kept = load_vec4s(false, site, lane);
        }
    } else if (KEEP && KEPT_VECTORS && site.live) {
        // As load_kept: the buffer picked once.
        if (cur == 0u) {
            for (var j = 0u; j < kept_count(); j = j + 1u) {
                if (has_kept(lane, j)) {
                    kept = kept_with(kept, j, table_a[site.base + kept_col(lane, j)]);
                }
            }
        } else {
            for (var j = 0u; j < kept_count(); j = j + 1u) {
                if (has_kept(lane, j)) {
                    kept = kept_with(kept, j, table_b[site.base + kept_col(lane, j)]);
                }
            }
        }
    }
    return kept;
}

// KEEP: the lane's kept column j (or its velocity), from whichever holds it.
fn kept_x(kept: array<f32, MAX_KEPT>, kept4: Kept4, j: u32) -> f32 {
    if (KEPT_VECTORS) {
        return kept_elem(kept4, j);
    }
    return kept[j];
}

// p (at = 0) or q (at = D) of the 4 columns from `k0`.
fn anchor4(at: u32, k0: u32) -> vec4<f32> {
    return vec4<f32>(anchors[at + k0], anchors[at + k0 + 1u], anchors[at + k0 + 2u], anchors[at + k0 + 3u]);
}

// VEC4: (s1, s2) of a row plus one kept vec4's columns, in column order
// (as anchors.wgsl sums them).
fn accumulate4(part: vec2<f32>, x: vec4<f32>, p: vec4<f32>, q: vec4<f32>) -> vec2<f32> {
    var s = accumulate_sq(part, x.x, p.x, q.x);
    s = accumulate_sq(s, x.y, p.y, q.y);
    s = accumulate_sq(s, x.z, p.z, q.z);
    return accumulate_sq(s, x.w, p.w, q.w);
}

// A row's coefficients for its columns' gradients and updates.
struct RowCo {
    c: f32,
    inv_d1: f32,
    inv_d2: f32,
    sep: f32,
    lr: f32,
    poisoned: bool,
    anchor: u32,
}

// Column k's (gradient, new value, new velocity).
fn column_step(x: f32, k: u32, p: f32, q: f32, v_old: f32, co: RowCo) -> vec3<f32> {
    let g = grad_pq(x, k, p, q, co.c, co.inv_d1, co.inv_d2, co.sep, co.poisoned, co.anchor);
    let nv = step_value(x, g, v_old, co.lr, co.poisoned);
    return vec3<f32>(g, nv.x, nv.y);
}

// VEC4: the update of one kept vec4 (columns k0 …): new values and
// velocities, and the largest exponents of its gradients and new values
// (`exponent4`). Components by name, so everything stays in registers.
struct Step4 {
    x: vec4<f32>,
    v: vec4<f32>,
    seen: vec4<u32>,
}

// step4 for a kept vec4 of the update; POISON_BRANCH: a clean row's with
// `poisoned` a constant false, a poisoned row's apart.
fn step4_row(x: vec4<f32>, k0: u32, p: vec4<f32>, q: vec4<f32>, v_old: vec4<f32>, co: RowCo) -> Step4 {
    if (POISON_BRANCH) {
        if (co.poisoned) {
            return step4(x, k0, p, q, v_old, co);
        }
        var clean = co;
        clean.poisoned = false;
        return step4(x, k0, p, q, v_old, clean);
    }
    return step4(x, k0, p, q, v_old, co);
}

fn step4(x: vec4<f32>, k0: u32, p: vec4<f32>, q: vec4<f32>, v_old: vec4<f32>, co: RowCo) -> Step4 {
    let s0 = column_step(x.x, k0, p.x, q.x, v_old.x, co);
    let s1 = column_step(x.y, k0 + 1u, p.y, q.y, v_old.y, co);
    let s2 = column_step(x.z, k0 + 2u, p.z, q.z, v_old.z, co);
    let s3 = column_step(x.w, k0 + 3u, p.w, q.w, v_old.w, co);
    let g = vec4<f32>(s0.x, s1.x, s2.x, s3.x);
    let nx = vec4<f32>(s0.y, s1.y, s2.y, s3.y);
    return Step4(nx, vec4<f32>(s0.z, s1.z, s2.z, s3.z), max(exponent4(g), exponent4(nx)));
}

// VEC4, a lane that saw a non-finite value only: its findings in the
// gradient (g) and the new values (t) of one kept vec4, in column order.
struct Scans2 {
    g: RowScan,
    t: RowScan,
}

fn scan4(acc: Scans2, x: vec4<f32>, k0: u32, p: vec4<f32>, q: vec4<f32>, v_old: vec4<f32>, co: RowCo) -> Scans2 {
    var s = acc;
    for (var c = 0u; c < 4u; c = c + 1u) {
        let r = column_step(x[c], k0 + c, p[c], q[c], v_old[c], co);
        s.g = row_scan_add(s.g, k0 + c, r.x);
        s.t = row_scan_add(s.t, k0 + c, r.y);
    }
    return s;
}

// VEC4: the update of a lane's kept vec4s of a row, read from (velocities)
// and written to the buffers `from_a` and `to_a` pick (constants at each
// call): the old velocities, and whether any gradient or new value is
// non-finite.
struct Update4 {
    vels: Kept4,
    bad: bool,
}

fn update4(from_a: bool, to_a: bool, kept4: Kept4, p4: Kept4, q4: Kept4, lane: u32, base: u32, out_base: u32, co: RowCo) -> Update4 {
    var vels = no_kept4();
    var seen = vec4<u32>(0u);
    for (var q = 0u; q < KEPT4; q = q + 1u) {
        if (has_vec4(lane, q)) {
            let at = kept_vec4(lane, q);
            let x = kept_get(kept4, q);
            let v = load_v4(from_a, base / 4u + at);
            vels = kept_set(vels, q, v);
            let st = step4_row(x, 4u * at, p_get(p4, lane, q), q_get(q4, lane, q), v, co);
            put4(to_a, base, out_base, at, x, v, st.x, st.v);
            seen = max(seen, st.seen);
        }
    }
    return Update4(vels, any_nonfinite4(seen));
}

// One row of the pass for lane `lane` of it, its values (KEEP) in `kept`
// (VEC4: in `kept4`, with p and q of its columns in `p4` and `q4`;
// KEPT_VECTORS: in `kept4`, by `kept_x`). All lanes call it (the row folds have barriers).
// Returns the lane's (m·|r|, |r|, Σ g² for clipping) of the row.
fn step_row(site: RowSite, slot: u32, kept_in: array<f32, MAX_KEPT>, kept4: Kept4, p4: Kept4, q4: Kept4, lane: u32, lid: u32, cur: u32) -> vec3<f32> {
    let i = site.i;
    let live = site.live;
    let base = site.base;
    let row = site.row;
    let mult = site.mult;
    let weight = site.weight;
    // Where a double-buffered guard writes: the other buffer, in place;
    // for a batch read in place, the batch buffer, by slot (its new values,
    // or with `undo_log` its old ones).
    let out_base = select(base, i * D, DIRECT & double_buffered());
    let is_anchor = (row == params.anchor_a) | (row == params.anchor_b);
    let anchor = select(0u, select(2u, 1u, row == params.anchor_a), is_anchor);

    // s1, s2 over this lane's columns, and the largest exponent it read
    // (common.wgsl's `exponent`: one compare a row, where each value was
    // compared, tested and counted; BENCHMARKS.md, twelfth session).
    var sums = vec2<f32>(0.0, 0.0);
    var seen = 0u;
    var kept = kept_in;
    var kept_v: array<f32, MAX_KEPT>;
    var kept_v4 = no_kept4();   // KEPT_VECTORS: the old velocities, as kept_v
    if (live) {
        if (VEC4) {
            var seen4 = vec4<u32>(0u);
            for (var q = 0u; q < KEPT4; q = q + 1u) {
                if (has_vec4(lane, q)) {
                    let x = kept_get(kept4, q);
                    sums = accumulate4(sums, x, p_get(p4, lane, q), q_get(q4, lane, q));
                    seen4 = max(seen4, exponent4(x));
                }
            }
            seen = max(max(seen4.x, seen4.y), max(seen4.z, seen4.w));
        } else if (KEEP) {
            for (var j = 0u; j < kept_count(); j = j + 1u) {
                let k = kept_col(lane, j);
                if (has_kept(lane, j)) {
                    let x = kept_x(kept, kept4, j);
                    sums = accumulate_sq(sums, x, anchors[k], anchors[D + k]);
                    seen = max(seen, exponent(x));
                }
            }
        } else {
            for (var k = lane; k < D; k = k + L) {
                let x = load_x(cur, base + k);
                sums = accumulate_sq(sums, x, anchors[k], anchors[D + k]);
                seen = max(seen, exponent(x));
            }
        }
    }
    // (The row's lanes fold 1.0 for a lane that read a non-finite value.)
    let folded = row_fold(lid, vec3<f32>(sums, select(0.0, 1.0, seen == EXPONENT)));
    let s = pin_anchors(folded.xy, row, params.anchor_a, params.anchor_b, state.s0);
    let in_bad = folded.z > 0.0;
    let d1 = safe_dist(s.x, params.eps);
    let d2 = safe_dist(s.y, params.eps);
    let r = excess(d1, d2, state.d0);
    // The loss term of a row that read a non-finite value is NaN.
    let r_seen = select(r, nan(), in_bad);
    let loss_bad = is_nonfinite(r_seen);
    var abs_r = 0.0;   // this row's share of Σ|r| (m·|r|) …
    var max_r = 0.0;   // … and its |r| for max|r| (a repeated row is one row)
    if (live & (lane == 0u) & (mult > 0u)) {
        if (SCAN) {
            scan_commit(0u, slot, lid, row, row_scan_add(row_scan_new(), 0u, r_seen));
        }
        max_r = select(abs(r), 0.0, loss_bad);   // sums cover finite terms
        abs_r = f32(mult) * max_r;
        let near = params.tau * state.d0;
        if ((s.x < near * near) | (s.y < near * near)) {
            atomicAdd(&wg_near, mult);
        }
    }
    // SPEC §4: c = multiplicity · w_red · sign(r) (a repeated row's copies
    // all read the snapshot, so their gradients are equal and add up).
    let c = row_coef(r, weight);
    let sep = separation_coef(row, params.anchor_a, params.anchor_b, state.d0, params.margin, params.margin_weight);
    let inv_d1 = safe_inv(d1);
    let inv_d2 = safe_inv(d2);
    let blown = naive_blown(s, mult > 0u);
    let poisoned = in_bad | blown.x | blown.y;
    let touched = select(mult > 0u, anchor_touched(mult > 0u, state.d0, params.margin), is_anchor);
    let writes = live & touched & writes_row(row, params.anchor_a, params.anchor_b);
    var norm2 = 0.0;
    if (PREP) {
        if (live && lane == 0u) {
            // w: which anchor terms this slot makes NaN (anchor_sum.wgsl),
            // 1 for a's, 2 for b's: a row that read a non-finite value both.
            let poisons = select(0u, 1u, in_bad | blown.x) | select(0u, 2u, in_bad | blown.y);
            coef[i] = vec4<f32>(c, inv_d1, inv_d2, f32(poisons));
        }
        // Σ g² over the rows whose whole gradient is here (attached
        // anchors get theirs in prepare.wgsl), finite ones only: a row
        // whose gradient is not finite is the guard's (SPEC §9). A finite
        // gradient whose Σ g² overflows counts (+Inf): the norm is then
        // not finite and the guard acts, where leaving the row out would
        // let it take an unclipped step. (This relies on f32 overflow giving
        // +Inf, which WGSL lets an implementation assume away, as it does
        // NaN (SPEC §6); every GPU and lavapipe give it, and the tests
        // check it on each.)
        var g2 = 0.0;
        var bad = 0.0;
        if (writes && !(MODE == MODE_ATTACHED && is_anchor)) {
            for (var k = lane; k < D; k = k + L) {
                let g = grad_at(load_x(cur, base + k), k, c, inv_d1, inv_d2, sep, poisoned, 0u);
                g2 = g2 + g * g;
                bad = select(bad, 1.0, is_nonfinite(g));
            }
        }
        let folded = row_fold(lid, vec3<f32>(g2, bad, 0.0));
        if (lane == 0u && folded.y == 0.0) {
            norm2 = folded.x;
        }
    }
    if (UPDATE) {
        let lr = state.lr;
        var gs = row_scan_new();
        var ts = row_scan_new();
        if (GUARD == GUARD_SKIP_ROW) {
            // Decide over the row's lanes first, then write: a row that
            // would turn non-finite keeps its old value and earns a strike.
            if (writes) {
                for (var k = lane; k < D; k = k + L) {
                    let x = load_x(cur, base + k);
                    let g = grad_at(x, k, c, inv_d1, inv_d2, sep, poisoned, anchor);
                    gs = row_scan_add(gs, k, g);
                    ts = row_scan_add(ts, k, step_value(x, g, load_v(cur, base + k), lr, poisoned).x);
                }
            }
            let lane_bad = row_scan_bad(gs) || row_scan_bad(ts);
            let lanes_bad = row_fold(lid, vec3<f32>(select(0.0, 1.0, lane_bad), 0.0, 0.0)).x > 0.0;
            let row_bad = lanes_bad;   // what would be written (the loss alone is reported)
            if (writes && !row_bad) {
                for (var k = lane; k < D; k = k + L) {
                    let x = load_x(cur, base + k);
                    let g = grad_at(x, k, c, inv_d1, inv_d2, sep, false, anchor);
                    let nv = step_value(x, g, load_v(cur, base + k), lr, false);
                    store_x(cur, out_base + k, nv.x);
                    store_v(cur, out_base + k, nv.y);
                }
            }
            if (writes && row_bad && lane == 0u) {
                // (Saturating at 2^32 − 2, the most a run state carries on.)
                strikes[row] = min(strikes[row], 0xfffffffdu) + 1u;
            }
        } else if (writes && VEC4) {
            // The row is in registers: write it, noting only whether any
            // value was non-finite; the details are worked out again for
            // such a lane alone.
            let co = RowCo(c, inv_d1, inv_d2, sep, lr, poisoned, anchor);
            // The buffers picked once a row (load_x4): a double-buffered
            // guard writes the one it does not read (but for `undo_log`,
            // which put4 writes in place and logs, whatever `to_a` says).
            var up: Update4;
            if (cur == 0u) {
                up = update4(true, !double_buffered(), kept4, p4, q4, lane, base, out_base, co);
            } else {
                up = update4(false, double_buffered(), kept4, p4, q4, lane, base, out_base, co);
            }
            let vels = up.vels;   // the old velocities, for the findings
            let any_bad = up.bad;
            if (SCAN && any_bad) {
                var sc = Scans2(gs, ts);
                for (var q = 0u; q < KEPT4; q = q + 1u) {
                    if (has_vec4(lane, q)) {
                        let at = kept_vec4(lane, q);
                        sc = scan4(sc, kept_get(kept4, q), 4u * at, p_get(p4, lane, q), q_get(q4, lane, q), kept_get(vels, q), co);
                    }
                }
                gs = sc.g;
                ts = sc.t;
            }
        } else if (writes && KEEP) {
            // The row is in registers: write it, noting only whether any
            // value was non-finite; the details are worked out again from
            // the kept values for such a lane alone.
            // (A flag per value here: an integer max, as the accumulation
            // above and the 16-byte update take, cost RADV's compiler 16
            // more registers with the columns kept in an array.)
            var any_bad = false;
            // Without momentum or an undo log, a column's new value is all
            // that is written: they are written after the loop, the buffer
            // picked once (`store_kept`), not at every store. (Not with
            // KEPT_VECTORS: RADV's compiler holds new values in a Kept4 in
            // 24 more registers than in an array, and this path is to be
            // compared with the array's as it was.)
            let later = !MOMENTUM & !undo_log() & !KEPT_VECTORS;
            var new_x: array<f32, MAX_KEPT>;
            for (var j = 0u; j < kept_count(); j = j + 1u) {
                let k = kept_col(lane, j);
                if (has_kept(lane, j)) {
                    let x = kept_x(kept, kept4, j);
                    let v_old = load_v(cur, base + k);
                    if (KEPT_VECTORS) {
                        kept_v4 = kept_with(kept_v4, j, v_old);
                    } else {
                        kept_v[j] = v_old;
                    }
                    let g = grad_at(x, k, c, inv_d1, inv_d2, sep, poisoned, anchor);
                    let nv = step_value(x, g, v_old, lr, poisoned);
                    any_bad = any_bad | is_nonfinite(g) | is_nonfinite(nv.x);
                    if (later) {
                        new_x[j] = nv.x;
                    } else {
                        put(cur, base, out_base, k, x, v_old, nv);
                    }
                }
            }
            if (later) {
                store_kept(cur, out_base, lane, new_x);
            }
            if (SCAN && any_bad) {
                for (var j = 0u; j < kept_count(); j = j + 1u) {
                    let k = kept_col(lane, j);
                    if (has_kept(lane, j)) {
                        let x = kept_x(kept, kept4, j);
                        let v_old = kept_x(kept_v, kept_v4, j);
                        let g = grad_at(x, k, c, inv_d1, inv_d2, sep, poisoned, anchor);
                        gs = row_scan_add(gs, k, g);
                        ts = row_scan_add(ts, k, step_value(x, g, v_old, lr, poisoned).x);
                    }
                }
            }
        } else if (writes) {
            for (var k = lane; k < D; k = k + L) {
                let x = load_x(cur, base + k);
                let g = grad_at(x, k, c, inv_d1, inv_d2, sep, poisoned, anchor);
                let v_old = load_v(cur, base + k);
                let nv = step_value(x, g, v_old, lr, poisoned);
                if (SCAN) {
                    gs = row_scan_add(gs, k, g);
                    ts = row_scan_add(ts, k, nv.x);
                }
                put(cur, base, out_base, k, x, v_old, nv);
            }
        } else if (live && double_buffered()) {
            // Frozen anchors are carried into the next buffer unchanged
            // (`undo_log`: their old values are logged, as every slot's).
            for (var k = lane; k < D; k = k + L) {
                store_x(cur, out_base + k, load_x(cur, base + k));
                store_v(cur, out_base + k, load_v(cur, base + k));
            }
        }
        if (SCAN && live) {
            scan_commit(1u, slot, lid, row, gs);
            scan_commit(2u, slot, lid, row, ts);
        }
    }
    return vec3<f32>(abs_r, max_r, norm2);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    scan_reset(lid);
    if (VEC4 && PQ_SHARED) {
        let d4 = max(D / 4u, 1u);   // (D / 4 is a divisor only where VEC4 holds: D ≥ 4)
        for (var j = lid; j < D / 2u; j = j + WG) {
            let at = select(0u, D, j >= d4);
            wg_pq[j] = anchor4(at, 4u * (j % d4));
        }
    }
    let block_rows = WG / L;           // rows of one block
    let wg_rows = block_rows * BLOCKS; // rows of the workgroup (≤ 256: the scans' masks)
    let lane = lid % L;
    let first = w * wg_rows;
    // What needs no state is read before the barrier below, so that its
    // loads are in flight with the state's: the anchors' columns (VEC4: p
    // and q of the lane's kept columns, read once a workgroup, every row
    // of the lane having the same columns, held in function variables
    // passed down, not module-scope private ones, which a driver may be
    // slower to keep in registers) and a batch's first slots.
    var p4 = no_kept4();
    var q4 = no_kept4();
    for (var q = 0u; VEC4 && !PQ_SHARED && q < KEPT4; q = q + 1u) {
        if (has_vec4(lane, q)) {
            p4 = kept_set(p4, q, anchor4(0u, 4u * kept_vec4(lane, q)));
            q4 = kept_set(q4, q, anchor4(D, 4u * kept_vec4(lane, q)));
        }
    }
    var site = row_site(lid / L, first);
    if (lid == 0u) {
        wg_flags = vec2<u32>(state.cur, state.halted);
        atomicStore(&wg_near, 0u);
        if (UNDO_MARK && undo_log() && UPDATE && w == 0u) {
            atomicStore(&undo_mark[0], state.stamp);
        }
    }
    let flags = workgroupUniformLoad(&wg_flags);   // also the barrier after the resets
    if ((UPDATE || PREP) && flags.y != 0u) {
        return;   // aborted: steps do nothing; evaluations still run
    }
    let cur = flags.x;
    // This lane's shares of Σ|r| (m·|r|), max|r| (a repeated row is one
    // row) and the clipping norm, over its rows in block order.
    var abs_r = 0.0;
    var max_r = 0.0;
    var norm2 = 0.0;
    var kept = load_kept(site, lane, cur);
    var kept4 = load_kept4(site, lane, cur);
    for (var blk = 0u; blk < BLOCKS; blk = blk + 1u) {
        if (first + blk * block_rows >= chunk.rows) {
            break;   // uniform: the rest of the workgroup's rows are past the chunk
        }
        let slot = blk * block_rows + lid / L;
        if (!PREFETCH && blk > 0u) {
            site = row_site(slot, first);
            kept = load_kept(site, lane, cur);
            kept4 = load_kept4(site, lane, cur);
        }
        // PREFETCH: the next block's row, read before this one is worked on.
        var next_site = site;
        var next_kept = kept;
        var next_kept4 = kept4;
        if (PREFETCH && blk + 1u < BLOCKS) {
            next_site = row_site(slot + block_rows, first);
            next_kept = load_kept(next_site, lane, cur);
            next_kept4 = load_kept4(next_site, lane, cur);
        }
        if (lane == 0u && site.i < chunk.rows && sampling()) {
            // The slot as the sample pass would have written it, for
            // reduce.wgsl and the undo scatter (each a later pass).
            slots_rw[site.i] = vec4<u32>(site.row, site.mult, bitcast<u32>(site.weight), 0u);
        }
        let r_acc = step_row(site, slot, kept, kept4, p4, q4, lane, lid, cur);
        if (PREFETCH) {
            site = next_site;
            kept = next_kept;
            kept4 = next_kept4;
        }
        abs_r = abs_r + r_acc.x;
        max_r = max(max_r, r_acc.y);
        norm2 = norm2 + r_acc.z;
    }
    let total = workgroup_sum_max(lid, vec2<f32>(abs_r, max_r));   // its barriers publish the scan atomics
    var norm_total = 0.0;
    if (PREP) {
        norm_total = workgroup_sum_max(lid, vec2<f32>(norm2, 0.0)).x;
    }
    if (lid == 0u && first < chunk.rows) {
        let gw = chunk.partial_base + w;
        partials[gw] = Partial(total.x, total.y, atomicLoad(&wg_near), norm_total);
        let row0 = chunk.row_base + first;
        if (UNDO_MARK && undo_log() && UPDATE && ((scan_first_local(1u) != NONE) | (scan_first_local(2u) != NONE))) {
            atomicStore(&undo_mark[1], state.stamp);
            atomicStore(&undo_mark[2], 1u);
        }
        for (var buf = 0u; buf < SCAN_BUFS; buf = buf + 1u) {
            let f = scan_first_local(buf);
            if (f == NONE) {
                continue;
            }
            if (BATCHED) {
                // Slots are not in row order: the lowest row's finding.
                scan_flush(buf, gw, state.stamp, first, lowest_row_finding(buf, first));
            } else {
                // The lane that owns the lowest finding kept its bits.
                let local_row = f / D;
                let owner = (local_row % block_rows) * L + owner_lane(f % D);
                scan_flush(buf, gw, state.stamp, row0, vec3<u32>(row0 + local_row, f % D, sc_bits[buf * MAX_WG + owner]));
            }
        }
    }
}
