// fold_sg.wgsl — fused_step.wgsl's row fold with subgroup shuffles
// (Features::SUBGROUP), bit for bit the fold of fold_wg.wgsl.
//
// The tree of fold_wg.wgsl sets, at offset o, the partial of residue r < o
// to S(r) + S(r + o). A butterfly does the same in every lane at once:
// lane i adds lane i ^ o's value, and since IEEE addition is commutative,
// lanes i and i ^ o get equal bits — by induction every lane ends with
// exactly the tree's total, with no barrier and no broadcast. Offsets of at
// least SG (the adapter's smallest subgroup) stay in workgroup memory, as
// in fold_wg.wgsl; below it the row's lanes share a subgroup, given that
// subgroups are runs of consecutive invocation indices (so on every
// driver we know of; the GPU tests compare the two folds bit for bit).

override SG: u32 = 32u;   // the adapter's subgroup_min_size (a power of two)

// Its tree in workgroup memory, for rows wider than a subgroup only:
// sized by the host (ROW_TREE = WG where L > SG, else 1), as an array
// that only dead code uses still takes workgroup memory on NVIDIA.
override ROW_TREE: u32 = 256u;
var<workgroup> wg_row: array<vec3<f32>, ROW_TREE>;

// Folds v over the L lanes of each row; every lane gets its row's total.
// All lanes must call it.
fn row_fold(lid: u32, v: vec3<f32>) -> vec3<f32> {
    if (L == 1u) {
        return v;
    }
    var t = v;
    if (L > SG) {
        // Offsets L/2 … SG: the tree in workgroup memory; then each lane
        // takes the partial of its residue mod SG.
        wg_row[lid] = v;
        workgroupBarrier();
        let lane = lid % L;
        for (var o = L / 2u; o >= SG; o = o / 2u) {
            if (lane < o) {
                wg_row[lid] = wg_row[lid] + wg_row[lid + o];
            }
            workgroupBarrier();
        }
        t = wg_row[lid - lane + lane % SG];
        workgroupBarrier();
    }
    // Offsets min(L, SG)/2 … 1 (both powers of two, as the host sets
    // them), by a counted loop: a compiler unrolls a count it knows (log2
    // of constants), where RADV's kept `o = o / 2` as a loop
    // (BENCHMARKS.md, twelfth session).
    let n = countTrailingZeros(min(L, SG));
    for (var i = 1u; i <= n; i = i + 1u) {
        t = t + subgroupShuffleXor(t, min(L, SG) >> i);
    }
    return t;
}
