// copy_vec4.wgsl — copy.wgsl with 16-byte loads and stores (D a multiple
// of 4): each invocation moves four elements, as a tuned device copy
// (cudaMemcpy) does, so the floor is the memory's and not the issue
// rate's. Host owner: `GpuTrainer::gpu_time_table_copies`
// (src/gpu/trainer/timing.rs; benches).

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> chunk: Chunk;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e < chunk.rows * (D / 4u)) {
        dst[e] = src[e];
    }
}
