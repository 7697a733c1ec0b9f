// distances.wgsl — the safe distances of SPEC §3 for each gathered row:
// dist[j] = (s1, s2, d1, d2). One invocation per batch row. The staged
// path (see gather.wgsl); host owner: `GpuTrainer::encode_staged`
// (src/gpu/trainer/encode.rs); reference: src/reference.rs.

@group(0) @binding(0) var<storage, read> xs: array<f32>;
@group(0) @binding(1) var<storage, read> anchors: array<f32>;   // p (D), then q (D)
@group(0) @binding(2) var<storage, read_write> dist: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> indices: array<u32>;
@group(0) @binding(5) var<storage, read> state: State;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let j = linear_workgroup(wg, nwg) * WG + lid;
    if (j >= params.batch) {
        return;
    }
    var s = vec2<f32>(0.0, 0.0);
    for (var k = 0u; k < D; k = k + 1u) {
        s = accumulate_sq(s, xs[j * D + k], anchors[k], anchors[D + k]);
    }
    s = pin_anchors(s, indices[j], params.anchor_a, params.anchor_b, state.s0);
    dist[j] = vec4<f32>(s, safe_dist(s.x, params.eps), safe_dist(s.y, params.eps));
}
