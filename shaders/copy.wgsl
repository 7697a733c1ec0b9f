// copy.wgsl — a plain device copy of one chunk, dst[e] = src[e], one
// element per invocation (consecutive lanes, consecutive addresses): the
// floor a full-table step is measured against (SPEC §15), through the same
// API and the same kind of memory access as the kernels. Host owner:
// `GpuTrainer::gpu_time_table_copies` (src/gpu/trainer/timing.rs).

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> chunk: Chunk;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e < chunk.rows * D) {
        dst[e] = src[e];
    }
}
