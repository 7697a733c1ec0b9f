// reduce_wg.wgsl — a fixed-order workgroup reduction of (sum, max) pairs.
//
// Tree order depends only on WG, so results are bit-identical run to run:
// no float atomics anywhere (SPEC §11).

var<workgroup> wg_sum: array<f32, MAX_WG>;
var<workgroup> wg_max: array<f32, MAX_WG>;

// Must be called from uniform control flow by all WG invocations.
fn workgroup_sum_max(lid: u32, v: vec2<f32>) -> vec2<f32> {
    wg_sum[lid] = v.x;
    wg_max[lid] = v.y;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            wg_sum[lid] = wg_sum[lid] + wg_sum[lid + s];
            wg_max[lid] = max(wg_max[lid], wg_max[lid + s]);
        }
        workgroupBarrier();
    }
    return vec2<f32>(wg_sum[0], wg_max[0]);
}
