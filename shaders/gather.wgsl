// gather.wgsl — the embedding gather: X[j, :] = W[idx[j], :] for the batch
// entries whose row lies in this chunk (one dispatch per chunk, so a table
// split across storage bindings needs no dynamic binding index).
// One invocation per batch element. Host owner: `GpuTrainer::encode_staged`
// (src/gpu/trainer/encode.rs), the staged path: a cross-check of the fused
// step, kernel by kernel (`StepPath::Staged`); reference: src/reference.rs.

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> indices: array<u32>;
@group(0) @binding(2) var<storage, read_write> xs: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<uniform> chunk: Chunk;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e >= params.batch * D) {
        return;
    }
    let row = indices[e / D];
    if (row < chunk.row_base || row - chunk.row_base >= chunk.rows) {
        return;
    }
    xs[e] = table[(row - chunk.row_base) * D + e % D];
}
