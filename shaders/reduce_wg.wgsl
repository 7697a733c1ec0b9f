// reduce_wg.wgsl — a fixed-order workgroup reduction of (sum, max) pairs.
//
// Tree order depends only on WG, so results are bit-identical run to run:
// no float atomics anywhere (SPEC §11).

var<workgroup> wg_sum: array<f32, MAX_WG>;
var<workgroup> wg_max: array<f32, MAX_WG>;

// Must be called from uniform control flow by all WG invocations. No
// barrier after the total is read: the next call's first write (lane 0's)
// may land before another lane has read this total, so where calls follow
// one another only lane 0 may use the earlier totals (as every caller
// does), or a barrier must come between.
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

// workgroup_sum_max with a u32 sum folded in the same tree (reduce.wgsl's
// partials: Σ|r|, max|r| and the near-singular rows): the floats in the
// same order, so the same bits, with one tree's barriers instead of two.
// The same rule on the totals as workgroup_sum_max's.
struct SumMaxCount {
    sum_max: vec2<f32>,
    count: u32,
}

fn workgroup_sum_max_count(lid: u32, v: vec2<f32>, n: u32) -> SumMaxCount {
    wg_sum[lid] = v.x;
    wg_max[lid] = v.y;
    wg_u0[lid] = n;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            wg_sum[lid] = wg_sum[lid] + wg_sum[lid + s];
            wg_max[lid] = max(wg_max[lid], wg_max[lid + s]);
            wg_u0[lid] = wg_u0[lid] + wg_u0[lid + s];
        }
        workgroupBarrier();
    }
    return SumMaxCount(vec2<f32>(wg_sum[0], wg_max[0]), wg_u0[0]);
}

// Integer reductions and a prefix sum for the single-workgroup kernels
// (reduce.wgsl, scan_finish.wgsl). Same rules: uniform control flow.
var<workgroup> wg_u0: array<u32, MAX_WG>;
var<workgroup> wg_u1: array<u32, MAX_WG>;

// 64-bit addition on (lo, hi) pairs: counts may pass 2^32 on big tables.
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn workgroup_sum64(lid: u32, v: vec2<u32>) -> vec2<u32> {
    wg_u0[lid] = v.x;
    wg_u1[lid] = v.y;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let t = add64(vec2<u32>(wg_u0[lid], wg_u1[lid]), vec2<u32>(wg_u0[lid + s], wg_u1[lid + s]));
            wg_u0[lid] = t.x;
            wg_u1[lid] = t.y;
        }
        workgroupBarrier();
    }
    let total = vec2<u32>(wg_u0[0], wg_u1[0]);
    workgroupBarrier();
    return total;
}

// (Σ v.x, min v.y) over the workgroup.
fn workgroup_sum_min_u32(lid: u32, v: vec2<u32>) -> vec2<u32> {
    wg_u0[lid] = v.x;
    wg_u1[lid] = v.y;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            wg_u0[lid] = wg_u0[lid] + wg_u0[lid + s];
            wg_u1[lid] = min(wg_u1[lid], wg_u1[lid + s]);
        }
        workgroupBarrier();
    }
    let total = vec2<u32>(wg_u0[0], wg_u1[0]);
    workgroupBarrier();
    return total;
}

// (exclusive prefix sum of v at lane lid, total), Hillis–Steele.
fn workgroup_prefix_u32(lid: u32, v: u32) -> vec2<u32> {
    wg_u0[lid] = v;
    workgroupBarrier();
    for (var s = 1u; s < WG; s = s * 2u) {
        var t = wg_u0[lid];
        if (lid >= s) {
            t = t + wg_u0[lid - s];
        }
        workgroupBarrier();
        wg_u0[lid] = t;
        workgroupBarrier();
    }
    let inclusive = wg_u0[lid];
    let total = wg_u0[WG - 1u];
    workgroupBarrier();
    return vec2<u32>(inclusive - v, total);
}
