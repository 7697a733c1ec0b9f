//! The counter-based N(0,1) generator of `shaders/rng.wgsl`, ported line by
//! line. A table entry is a pure function of (seed, row, column).

pub(crate) fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

pub(crate) fn counter_hash(seed: u64, row: u32, col: u32, stream: u32) -> u32 {
    let mut h = mix32(seed as u32 ^ 0x9e37_79b9);
    h = mix32(h ^ (seed >> 32) as u32);
    h = mix32(h ^ row);
    h = mix32(h ^ col);
    mix32(h ^ stream)
}

/// The two uniforms in (0, 1] behind entry (row, col); exact in f32.
pub fn uniforms(seed: u64, row: u32, col: u32) -> (f32, f32) {
    let unit = |h: u32| ((h >> 8) as f32 + 1.0) * (1.0 / 16_777_216.0);
    (unit(counter_hash(seed, row, col, 0)), unit(counter_hash(seed, row, col, 1)))
}

/// Entry (row, col) of the table generated with `seed`, in f32 as the CPU
/// backend computes it (the GPU's log and cos may differ in the last bits).
pub fn normal_f32(seed: u64, row: u32, col: u32) -> f32 {
    let (u1, u2) = uniforms(seed, row, col);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * (u2 - 0.5)).cos()
}

/// The same entry in f64, the reference for both backends.
pub fn normal_f64(seed: u64, row: u32, col: u32) -> f64 {
    let (u1, u2) = uniforms(seed, row, col);
    (-2.0 * (u1 as f64).ln()).sqrt() * (std::f64::consts::TAU * (u2 as f64 - 0.5)).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_moments_and_depend_on_every_counter() {
        let n = 200_000u32;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for i in 0..n {
            let z = normal_f64(7, i / 64, i % 64);
            s += z;
            s2 += z * z;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        let base = normal_f64(1, 2, 3);
        assert_ne!(base, normal_f64(2, 2, 3));
        assert_ne!(base, normal_f64(1 | (1 << 32), 2, 3));
        assert_ne!(base, normal_f64(1, 3, 3));
        assert_ne!(base, normal_f64(1, 2, 4));
    }
}
