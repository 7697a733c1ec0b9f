// anchors.wgsl — the start of a step (SPEC §2–§3): copy rows a and b of the
// current table into `anchors` (the step's snapshot p, q) and compute
// s0 = ‖p − q‖² and d0. Where steps cannot change rows a and b (frozen
// anchors, `GpuTrainer::keeps_anchors`) it runs once, and again only after
// the host writes the table. One workgroup, in the
// summation order of fused_step.wgsl's rows (L lane sums, folded as its
// row_fold does), so that a row equal to p has s2 = s0 bit for bit and an
// excess of exactly 0. Reads the current buffer on the device, so a
// double-buffered guard's choice never goes through the host.
// Host owner: `GpuTrainer::encode_phase`, `Phase::Anchors`
// (src/gpu/trainer/encode.rs); CPU mirror: `CpuTrainer::anchors` (src/cpu.rs).

override L: u32 = 1u;   // fused_step.wgsl's lanes per row
override VEC4: bool = false;   // … and whether they take whole vec4s
const MAX_L: u32 = 32u;

struct AnchorRows {
    a_at: u32,      // element offset of row a in its chunk
    b_at: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> anchors: array<f32>;   // p (D), then q (D)
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read> a_in_a: array<f32>;   // row a's chunk, table A
@group(0) @binding(4) var<storage, read> a_in_b: array<f32>;   // row a's chunk, table B
@group(0) @binding(5) var<storage, read> b_in_a: array<f32>;
@group(0) @binding(6) var<storage, read> b_in_b: array<f32>;
@group(0) @binding(7) var<uniform> at: AnchorRows;

var<workgroup> wg_lanes: array<vec2<f32>, MAX_L>;

// Column k of p and q: copied to `anchors`, added to `acc`.
fn take_column(acc: vec2<f32>, k: u32, cur: u32) -> vec2<f32> {
    let p = select(a_in_a[at.a_at + k], a_in_b[at.a_at + k], cur == 1u);
    let q = select(b_in_a[at.b_at + k], b_in_b[at.b_at + k], cur == 1u);
    anchors[k] = p;
    anchors[D + k] = q;
    return accumulate_sq(acc, p, p, q);
}

// MAX_L invocations: lane l < L sums columns l, l + L, … in order (VEC4:
// 4l … 4l + 3, then 4(l + L) …), as a fused-step lane does, then the
// lanes fold in row_fold's tree order. (One
// invocation walking all D columns waited on each load in turn: its
// stores to `anchors` may alias the table for all the compiler knows.)
@compute @workgroup_size(32)
fn main(@builtin(local_invocation_index) lid: u32) {
    // Runs even after an abort: the final evaluation still needs p, q, d0
    // (the kernels that write the table check `halted` themselves).
    let cur = state.cur;
    var acc = vec2<f32>(0.0, 0.0);
    if (lid < L && VEC4) {
        for (var c4 = lid; c4 < D / 4u; c4 = c4 + L) {
            for (var c = 0u; c < 4u; c = c + 1u) {
                acc = take_column(acc, 4u * c4 + c, cur);
            }
        }
    } else if (lid < L) {
        for (var k = lid; k < D; k = k + L) {
            acc = take_column(acc, k, cur);
        }
    }
    wg_lanes[lid] = acc;
    workgroupBarrier();
    for (var o = L / 2u; o > 0u; o = o / 2u) {
        if (lid < o) {
            wg_lanes[lid] = wg_lanes[lid] + wg_lanes[lid + o];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let s0 = wg_lanes[0].y;
        state.s0 = s0;
        state.d0 = safe_dist(s0, params.eps);
    }
}
