// reduce.wgsl — fold the per-workgroup partials of one forward pass into
// one metrics record, in a fixed order, and advance the record counter.
// Record: (Σ|r|, max|r|, d0, s0). Host owner: `GpuTrainer::encode_reduce`.

struct ReduceParams {
    count: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> partials: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<storage, read_write> records: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> rp: ReduceParams;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < rp.count; j = j + WG) {
        let v = partials[j];
        acc = vec2<f32>(acc.x + v.x, max(acc.y, v.y));
    }
    let total = workgroup_sum_max(lid, acc);
    if (lid == 0u) {
        records[state.record] = vec4<f32>(total.x, total.y, state.d0, state.s0);
        state.record = state.record + 1u;
    }
}
