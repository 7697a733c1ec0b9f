// sample.wgsl — writes rows `permute(start + i)` of an epoch's permutation,
// i < count: the batch of a step (SPEC §10). One invocation per entry.
// Two entries: `batch`, a training step's slots (host owner:
// `GpuTrainer::encode_phase`, `Phase::Sample`, src/gpu/trainer/encode.rs;
// by default fused_step.wgsl's SAMPLED works them out and this pass does
// not run); `main`, an epoch's rows, run by `GpuSampler`
// (src/gpu/sampler.rs) for tests/sampler.rs, which checks the device's
// permutation against the CPU's. CPU mirror: `Sampler::permute`,
// `Sampler::batch_rows` (src/sampler.rs).

// (SampleParams and the slot function `batch_slot`: sampler.wgsl.)

@group(0) @binding(0) var<storage, read_write> rows_out: array<u32>;
@group(0) @binding(1) var<uniform> sp: SampleParams;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read_write> slots_out: array<vec4<u32>>;
// `batch`: a submission's steps' parameters, written at once; step k of
// the submission reads entry k = state.record (reset to 0 before each
// submission, advanced by reduce.wgsl as each step ends), so no copy runs
// between the steps.
@group(0) @binding(4) var<storage, read> schedule: array<SampleParams>;
@group(0) @binding(5) var<storage, read> state: State;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * WG + lid;
    if (i >= sp.count) {
        return;
    }
    let key = perm_key(sp);
    rows_out[i] = permute(key, sp.start + i);
}

// A training step's slots, one invocation each (`batch_slot`). (Where
// fused_step.wgsl's SAMPLED is on, that kernel works them out itself and
// this pass does not run.)
@compute @workgroup_size(WG)
fn batch(@builtin(workgroup_id) wg: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * WG + lid;
    if (i >= arrayLength(&slots_out)) {
        return;
    }
    slots_out[i] = batch_slot(schedule[state.record], i, params.anchor_a, params.anchor_b);
}
