// fused_step.wgsl — the full-table step for one chunk, in ONE pass: each
// invocation owns one row, reads it, computes d1, d2, r and the gradient,
// and writes the updated row back (the second read of the row hits cache).
// With UPDATE = false the same kernel is the forward-only evaluation.
// Host owner: `GpuTrainer::encode_fused` (src/gpu/trainer.rs);
// reference: `reference::step` (src/reference.rs).

override UPDATE: bool = true;

@group(0) @binding(0) var<storage, read_write> table: array<f32>;
@group(0) @binding(1) var<storage, read> anchors: array<f32>;   // p (D), then q (D)
@group(0) @binding(2) var<storage, read> state: State;
@group(0) @binding(3) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(4) var<uniform> params: Params;
@group(0) @binding(5) var<uniform> chunk: Chunk;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    let i = w * WG + lid;
    var abs_r = 0.0;
    if (i < chunk.rows) {
        let base = i * D;
        var s = vec2<f32>(0.0, 0.0);
        for (var k = 0u; k < D; k = k + 1u) {
            s = accumulate_sq(s, table[base + k], anchors[k], anchors[D + k]);
        }
        let row = chunk.row_base + i;
        s = pin_anchors(s, row, params.anchor_a, params.anchor_b, state.s0);
        let d1 = safe_dist(s.x, params.eps);
        let d2 = safe_dist(s.y, params.eps);
        let r = excess(d1, d2, state.d0);
        abs_r = abs(r);
        if (UPDATE && writes_row(row, params.anchor_a, params.anchor_b)) {
            let c = row_coef(r, params.w_red);
            let inv_d1 = safe_inv(d1);
            let inv_d2 = safe_inv(d2);
            let blown = naive_blows_up(s);
            for (var k = 0u; k < D; k = k + 1u) {
                let x = table[base + k];
                let g = row_grad(x, anchors[k], anchors[D + k], c, inv_d1, inv_d2);
                table[base + k] = select(sgd_update(x, g, params.lr), nan(), blown);
            }
        }
    }
    let total = workgroup_sum_max(lid, vec2<f32>(abs_r, abs_r));
    if (lid == 0u && w * WG < chunk.rows) {
        partials[chunk.partial_base + w] = total;
    }
}
