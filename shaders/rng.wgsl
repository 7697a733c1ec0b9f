// rng.wgsl — counter-based N(0,1): a pure function of (seed, row, column),
// so a table is generated in place on the device with no state and no host
// copy, in any order, by any number of invocations. Mirrored by `src/rng.rs`.

// "lowbias32" integer hash (Chris Wellons): full avalanche in 32 bits.
fn mix32(x: u32) -> u32 {
    var h = x;
    h = h ^ (h >> 16u);
    h = h * 0x7feb352du;
    h = h ^ (h >> 15u);
    h = h * 0x846ca68bu;
    h = h ^ (h >> 16u);
    return h;
}

fn counter_hash(seed_lo: u32, seed_hi: u32, row: u32, col: u32, stream: u32) -> u32 {
    var h = mix32(seed_lo ^ 0x9e3779b9u);
    h = mix32(h ^ seed_hi);
    h = mix32(h ^ row);
    h = mix32(h ^ col);
    return mix32(h ^ stream);
}

// 24 random bits to a float in (0, 1], exactly representable.
fn unit_open(h: u32) -> f32 {
    return (f32(h >> 8u) + 1.0) * (1.0 / 16777216.0);
}

// Box–Muller, cosine branch; the angle is kept in (−π, π] where GPU cos is
// most accurate.
fn normal_at(seed_lo: u32, seed_hi: u32, row: u32, col: u32) -> f32 {
    let u1 = unit_open(counter_hash(seed_lo, seed_hi, row, col, 0u));
    let u2 = unit_open(counter_hash(seed_lo, seed_hi, row, col, 1u));
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * (u2 - 0.5));
}
