// distances.wgsl — the safe distances of SPEC §3 for each gathered row:
// dist[j] = (s1, s2, d1, d2). One invocation per batch row.

@group(0) @binding(0) var<storage, read> xs: array<f32>;
@group(0) @binding(1) var<storage, read> anchors: array<f32>;   // p (D), then q (D)
@group(0) @binding(2) var<storage, read_write> dist: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let j = linear_workgroup(wg, nwg) * WG + lid;
    if (j >= params.batch) {
        return;
    }
    var s1 = 0.0;
    var s2 = 0.0;
    for (var k = 0u; k < D; k = k + 1u) {
        let x = xs[j * D + k];
        let t1 = x - anchors[k];
        let t2 = x - anchors[D + k];
        s1 = s1 + t1 * t1;
        s2 = s2 + t2 * t2;
    }
    dist[j] = vec4<f32>(s1, s2, safe_dist(s1, params.eps), safe_dist(s2, params.eps));
}
