//! Shared test helpers: seeds, random tables, the GPU context, comparisons.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use latent_line::gpu::GpuContext;
use rand::{Rng, SeedableRng};

/// A fresh seed per run (or `LATENT_LINE_TEST_SEED`), printed so that a
/// failure can be replayed; every assertion message repeats it.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("LATENT_LINE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("{test}: seed {s} (replay with LATENT_LINE_TEST_SEED={s})");
    s
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A random table with entries in [-2, 2), never all zeros.
pub fn random_table(rng: &mut impl Rng, rows: usize, dim: usize) -> Vec<f32> {
    (0..rows * dim).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

/// The GPU context for all tests of a binary. A missing adapter FAILS the
/// test: CI has lavapipe, so a skip would hide every GPU check.
pub fn gpu() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        Arc::new(GpuContext::new(None).unwrap_or_else(|e| panic!("a GPU adapter is required (lavapipe in CI): {e}")))
    })
    .clone()
}

/// Relative error of `got` against the f64 reference, elementwise, with
/// the denominator floored at the reference's RMS so that elements near
/// zero (where relative error means nothing) are judged at the table's scale.
pub fn max_rel_err(got: &[f32], want: &[f64]) -> (f64, usize) {
    assert_eq!(got.len(), want.len());
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len() as f64).sqrt().max(f64::MIN_POSITIVE);
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_finite() { (g as f64 - w).abs() / w.abs().max(rms) } else { f64::INFINITY };
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    worst
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}
