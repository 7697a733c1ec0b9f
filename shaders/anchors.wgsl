// anchors.wgsl — SPEC §2–§3: from the step's snapshot (p, q) compute
// s0 = ‖p − q‖² and d0. One invocation, columns in order (deterministic).
// The snapshot itself is a buffer copy encoded by the host before this.

@group(0) @binding(0) var<storage, read> anchors: array<f32>;   // p (D), then q (D)
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(1)
fn main() {
    // s2 of row a is exactly s0: the same function over the same values, so
    // an anchor row's excess is sqrt(ε) + d0 − d0 with no rounding noise.
    var s = vec2<f32>(0.0, 0.0);
    for (var k = 0u; k < D; k = k + 1u) {
        s = accumulate_sq(s, anchors[k], anchors[k], anchors[D + k]);
    }
    let s0 = s.y;
    state.s0 = s0;
    state.d0 = safe_dist(s0, params.eps);
}
