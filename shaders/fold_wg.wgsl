// fold_wg.wgsl — fused_step.wgsl's row fold, portable: the L lanes of a
// row add their partial sums in workgroup memory, in a fixed tree order
// (offsets L/2, L/4, …, 1), so the result is deterministic. fold_sg.wgsl
// gives the same bits with subgroup shuffles; the host composes one or the
// other (src/gpu/shaders.rs: FUSED_STEP, FUSED_STEP_SG).

// Sized by the host: ROW_TREE = WG where L > 1, else 1 (NVIDIA allots a
// workgroup array that only dead code uses).
override ROW_TREE: u32 = 256u;
var<workgroup> wg_row: array<vec3<f32>, ROW_TREE>;

// Folds v over the L lanes of each row; every lane gets its row's total.
// All lanes must call it (it has barriers).
fn row_fold(lid: u32, v: vec3<f32>) -> vec3<f32> {
    if (L == 1u) {
        return v;   // one lane per row: nothing to fold (uniform: L is an override)
    }
    wg_row[lid] = v;
    workgroupBarrier();
    let lane = lid % L;
    for (var o = L / 2u; o > 0u; o = o / 2u) {
        if (lane < o) {
            wg_row[lid] = wg_row[lid] + wg_row[lid + o];
        }
        workgroupBarrier();
    }
    let total = wg_row[lid - lane];
    workgroupBarrier();
    return total;
}
