// loss.wgsl — the loss forward and backward of SPEC §3–§4 on gathered rows.
//   forward:  r_j, c_j = w_red·sign(r_j); per-workgroup (Σ|r|, max|r|)
//   backward: G[j, k] = c_j·((x − p)/d1 + (x − q)/d2), NaN where the naive
//             formula blows up
// The staged path (see gather.wgsl); host owner: `GpuTrainer::encode_staged`
// (src/gpu/trainer/encode.rs); reference: src/reference.rs.

@group(0) @binding(0) var<storage, read> xs: array<f32>;
@group(0) @binding(1) var<storage, read> anchors: array<f32>;   // p (D), then q (D)
@group(0) @binding(2) var<storage, read> dist: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> state: State;
@group(0) @binding(4) var<storage, read_write> coef: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(6) var<storage, read_write> grads: array<f32>;
@group(0) @binding(7) var<uniform> params: Params;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    let j = w * WG + lid;
    var abs_r = 0.0;
    if (j < params.batch) {
        let d = dist[j];
        let r = excess(d.z, d.w, state.d0);
        coef[j] = row_coef(r, params.w_red);
        abs_r = abs(r);
    }
    let total = workgroup_sum_max(lid, vec2<f32>(abs_r, abs_r));
    if (lid == 0u && w * WG < params.batch) {
        partials[w] = Partial(total.x, total.y, 0u, 0.0);   // no audit on this path
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e >= params.batch * D) {
        return;
    }
    let j = e / D;
    let k = e % D;
    let d = dist[j];
    let g = row_grad(xs[e], anchors[k], anchors[D + k], coef[j], safe_inv(d.z), safe_inv(d.w));
    grads[e] = select(g, nan(), naive_blows_up(d.xy));
}
