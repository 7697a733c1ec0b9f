// init.wgsl — fill one chunk of the table with N(0,1) from the counter RNG.
// One invocation per element; host owner: `GpuTrainer::encode_generate`
// (src/gpu/trainer/encode.rs); CPU mirror: `src/rng.rs`.

@group(0) @binding(0) var<storage, read_write> table: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> chunk: Chunk;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e >= chunk.rows * D) {
        return;
    }
    let row = chunk.row_base + e / D;
    table[e] = normal_at(params.seed_lo, params.seed_hi, row, e % D);
}
