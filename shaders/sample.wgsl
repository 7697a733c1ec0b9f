// sample.wgsl — writes rows `permute(start + i)` of an epoch's permutation,
// i < count: the batch of a step (SPEC §10). One invocation per entry.
// Host owner: `GpuSampler` (src/gpu/sampler.rs).

struct SampleParams {
    seed_lo: u32,
    seed_hi: u32,
    epoch: u32,
    start: u32,
    count: u32,
    rows: u32,
    half: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> rows_out: array<u32>;
@group(0) @binding(1) var<uniform> sp: SampleParams;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * WG + lid;
    if (i >= sp.count) {
        return;
    }
    let key = perm_key(sp.seed_lo, sp.seed_hi, sp.epoch, sp.half, sp.rows);
    rows_out[i] = permute(key, sp.start + i);
}
