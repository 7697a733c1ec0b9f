// sampler.wgsl — SPEC §10's random batches: a keyed bijection on [0, R).
// A balanced Feistel network on 2·HALF bits (the smallest even width with
// 2^(2·HALF) ≥ R), four rounds of mix32, walks its own cycle until the value
// lands in [0, R) (fewer than 4 rounds of walking on average: 2^(2·HALF) <
// 4R). Keyed by (seed, epoch): each epoch is a fresh permutation, with no
// table of indices anywhere. The four round keys come from the host
// (`Sampler::keys`: counter_hash of the seed and epoch, stream 7), so no
// invocation hashes them again before its first slot. Needs rng.wgsl (mix32).
// CPU mirror: `Sampler::permute` (src/sampler.rs). Also here: a step's
// sampling parameters and its slots (`batch_slot`), shared by sample.wgsl
// and fused_step.wgsl (SAMPLED).

// One step's batch: positions start … start + count − 1 of epoch's
// permutation (host: `SampleU`, src/gpu/sampler.rs).
struct SampleParams {
    keys: vec4<u32>,   // the epoch's round keys
    start: u32,
    count: u32,
    rows: u32,
    half: u32,
    w_red: f32,     // this step's w_red (1/count for `mean`)
    given: u32,     // 1: the host wrote this step's slots (`Trainer::step_rows`): none to work out
}

struct PermKey {
    k: vec4<u32>,   // round keys
    half: u32,      // bits per Feistel half
    rows: u32,      // R
}

fn perm_key(s: SampleParams) -> PermKey {
    return PermKey(s.keys, s.half, s.rows);
}

fn feistel(key: PermKey, x: u32) -> u32 {
    let mask = (1u << key.half) - 1u;
    var l = x >> key.half;
    var r = x & mask;
    for (var round = 0u; round < 4u; round = round + 1u) {
        let t = l ^ (mix32(r ^ key.k[round]) & mask);
        l = r;
        r = t;
    }
    return (l << key.half) | r;
}

// The position `x` of the epoch's permutation (x < R).
fn permute(key: PermKey, x: u32) -> u32 {
    var y = feistel(key, x);
    while (y >= key.rows) {
        y = feistel(key, y);
    }
    return y;
}

// The inverse network: each round (l, r) → (r, l ^ F(r ^ k)) undone.
fn feistel_inv(key: PermKey, y: u32) -> u32 {
    let mask = (1u << key.half) - 1u;
    var l = y >> key.half;
    var r = y & mask;
    for (var round = 4u; round > 0u; round = round - 1u) {
        let t = r ^ (mix32(l ^ key.k[round - 1u]) & mask);
        r = l;
        l = t;
    }
    return (l << key.half) | r;
}

// The position of row `row` in the epoch's permutation: the cycle walked
// backwards (permute(key, unpermute(key, row)) == row).
fn unpermute(key: PermKey, row: u32) -> u32 {
    var x = feistel_inv(key, row);
    while (x >= key.rows) {
        x = feistel_inv(key, x);
    }
    return x;
}

// Slot i of a training step (see common.wgsl): slots 0 and 1 are anchors a
// and b, with multiplicity 1 when the step's positions hold them (found by
// inverting the permutation: no search); slot 2 + i is position start + i,
// dead when it is an anchor (already in slot 0 or 1) or past the batch.
fn batch_slot(s: SampleParams, i: u32, anchor_a: u32, anchor_b: u32) -> vec4<u32> {
    let key = perm_key(s);
    let w = bitcast<u32>(s.w_red);
    if (i < 2u) {
        let row = select(anchor_a, anchor_b, i == 1u);
        let at = unpermute(key, row);
        let in_batch = at >= s.start && at - s.start < s.count;
        return vec4<u32>(row, select(0u, 1u, in_batch), select(0u, w, in_batch), 0u);
    }
    if (i - 2u < s.count) {
        let row = permute(key, s.start + i - 2u);
        if (row != anchor_a && row != anchor_b) {
            return vec4<u32>(row, 1u, w, 0u);
        }
    }
    return vec4<u32>(DEAD, 0u, 0u, 0u);
}
