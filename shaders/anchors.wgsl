// anchors.wgsl — the start of a step (SPEC §2–§3): copy rows a and b of the
// current table into `anchors` (the step's snapshot p, q), compute
// s0 = ‖p − q‖² and d0, and advance the pass stamp. One invocation, in the
// summation order of fused_step.wgsl's rows (L lane sums, folded as its
// row_fold does), so that a row equal to p has s2 = s0 bit for bit and an
// excess of exactly 0. Reads the current buffer on the device, so a
// double-buffered guard's choice never goes through the host.

override L: u32 = 1u;   // fused_step.wgsl's lanes per row
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

@compute @workgroup_size(1)
fn main() {
    // Runs even after an abort: the final evaluation still needs p, q, d0
    // (the kernels that write the table check `halted` themselves).
    state.stamp = state.stamp + 1u;
    state.restore = 0u;
    let cur = state.cur;
    var lanes: array<vec2<f32>, MAX_L>;
    for (var l = 0u; l < L; l = l + 1u) {
        lanes[l] = vec2<f32>(0.0, 0.0);
    }
    for (var k = 0u; k < D; k = k + 1u) {
        let p = select(a_in_a[at.a_at + k], a_in_b[at.a_at + k], cur == 1u);
        let q = select(b_in_a[at.b_at + k], b_in_b[at.b_at + k], cur == 1u);
        anchors[k] = p;
        anchors[D + k] = q;
        lanes[k % L] = accumulate_sq(lanes[k % L], p, p, q);
    }
    for (var o = L / 2u; o > 0u; o = o / 2u) {
        for (var l = 0u; l < o; l = l + 1u) {
            lanes[l] = lanes[l] + lanes[l + o];
        }
    }
    let s0 = lanes[0].y;
    state.s0 = s0;
    state.d0 = safe_dist(s0, params.eps);
}
