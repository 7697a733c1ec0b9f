// sgd.wgsl — the SGD update of SPEC §5 scattered back into one chunk:
// W[idx[j], k] −= lr·G[j, k] for the batch rows in this chunk.
// Assumes no duplicate indices within the batch (the staged path takes
// the full table only).
// The staged path (see gather.wgsl); host owner: `GpuTrainer::encode_staged`
// (src/gpu/trainer/encode.rs); reference: src/reference.rs.

@group(0) @binding(0) var<storage, read_write> table: array<f32>;
@group(0) @binding(1) var<storage, read> indices: array<u32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<uniform> chunk: Chunk;
@group(0) @binding(5) var<storage, read> state: State;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e >= params.batch * D) {
        return;
    }
    let row = indices[e / D];
    if (row < chunk.row_base || row - chunk.row_base >= chunk.rows
        || !writes_row(row, params.anchor_a, params.anchor_b)) {
        return;
    }
    let at = (row - chunk.row_base) * D + e % D;
    // A non-finite gradient (the naive formula's NaN) is written as NaN
    // explicitly rather than left to arithmetic that may assume no NaN.
    let g = grads[e];
    table[at] = select(sgd_update(table[at], g, state.lr), nan(), is_nonfinite(g));
}
