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
    w_red: f32,     // this step's w_red (1/count for `mean`)
}

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
    let key = perm_key(sp.seed_lo, sp.seed_hi, sp.epoch, sp.half, sp.rows);
    rows_out[i] = permute(key, sp.start + i);
}

// A training step's slots (see common.wgsl): slots 0 and 1 are anchors a
// and b, with multiplicity 1 when the step's positions hold them (found by
// inverting the permutation: no search); slot 2 + i is position start + i,
// dead when it is an anchor (already in slot 0 or 1) or past the batch.
@compute @workgroup_size(WG)
fn batch(@builtin(workgroup_id) wg: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * WG + lid;
    let capacity = arrayLength(&slots_out);
    if (i >= capacity) {
        return;
    }
    let s = schedule[state.record];
    let key = perm_key(s.seed_lo, s.seed_hi, s.epoch, s.half, s.rows);
    let w = bitcast<u32>(s.w_red);
    if (i < 2u) {
        let row = select(params.anchor_a, params.anchor_b, i == 1u);
        let at = unpermute(key, row);
        let in_batch = at >= s.start && at - s.start < s.count;
        slots_out[i] = vec4<u32>(row, select(0u, 1u, in_batch), select(0u, w, in_batch), 0u);
        return;
    }
    var out = vec4<u32>(DEAD, 0u, 0u, 0u);
    if (i - 2u < s.count) {
        let row = permute(key, s.start + i - 2u);
        if (row != params.anchor_a && row != params.anchor_b) {
            out = vec4<u32>(row, 1u, w, 0u);
        }
    }
    slots_out[i] = out;
}
