//! Shared test helpers: seeds, random tables, the GPU context, comparisons.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use latent_line::gpu::GpuContext;
use rand::{Rng, SeedableRng};

/// A fresh seed per run (or `LATENT_LINE_TEST_SEED`), printed on stderr
/// (which cargo shows for a failing test) so that a failure can be
/// replayed; most assertion messages repeat it.
pub fn seed(test: &str) -> u64 {
    let s = match std::env::var("LATENT_LINE_TEST_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("LATENT_LINE_TEST_SEED={s:?} is not a u64")),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
    };
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
    max_rel_err_floored(got, want, 0.0)
}

/// `max_rel_err` with the denominator floored also at `floor`.
fn max_rel_err_floored(got: &[f32], want: &[f64], floor: f64) -> (f64, usize) {
    assert_eq!(got.len(), want.len());
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len() as f64).sqrt().max(floor).max(f64::MIN_POSITIVE);
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_finite() { (g as f64 - w).abs() / w.abs().max(rms) } else { f64::INFINITY };
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    worst
}

/// `got`, a table of `dim` columns, against the reference `want` within
/// `tol` (relative, as `max_rel_err` measures it); a failure says `what`
/// and names the element.
pub fn assert_table_close(got: &[f32], want: &[f64], dim: usize, tol: f64, what: &str) {
    assert_close_floored(got, want, dim, tol, 0.0, what);
}

/// The SGD velocity against the reference's (SPEC §5): as
/// `assert_table_close`, with the denominator floored also at `scale`,
/// the size of one row's gradient terms (w_red: 1 for `sum`, 1/B for
/// `mean`). Where the terms cancel (an attached anchor alone in its batch:
/// its row and anchor terms are equal and opposite) the reference's
/// velocity is exactly 0 and f32 leaves rounding of that size.
pub fn assert_velocity_close(got: &[f32], want: &[f64], dim: usize, tol: f64, scale: f64, what: &str) {
    assert_close_floored(got, want, dim, tol, scale, what);
}

fn assert_close_floored(got: &[f32], want: &[f64], dim: usize, tol: f64, floor: f64, what: &str) {
    let (err, at) = max_rel_err_floored(got, want, floor);
    assert!(
        err <= tol,
        "{what}, relative error {err:e} at row {} col {} (got {}, want {})",
        at / dim,
        at % dim,
        got[at],
        want[at]
    );
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// A random table (seeded) whose anchors a, b are at least 1 apart and
/// whose other rows are at least `min_gap` from both: detached anchors
/// approach each other by up to 2·lr per step, and near an anchor a step
/// amplifies an error by about 1 + lr/d1, so ten steps on such a table
/// compare implementations, not conditioning.
pub fn spaced_table(seed: u64, shape: latent_line::Shape, a: usize, b: usize, min_gap: f32) -> Vec<f32> {
    let d = shape.dim;
    let mut table = random_table(&mut rng(seed), shape.rows, d);
    if d == 1 {
        // On a line every point between p and q has r = 0 exactly, where
        // sign(r) is decided by rounding; put the anchors beyond the data.
        table[a] = 2.5;
        table[b] = 4.0;
    }
    let mut r = rng(seed ^ 0x5eed);
    let dist =
        |t: &[f32], i: usize, j: usize| (0..d).map(|k| (t[i * d + k] - t[j * d + k]).powi(2)).sum::<f32>().sqrt();
    // The same draw as `random_table`, for one row.
    let mut redraw =
        |t: &mut [f32], i: usize| t[i * d..][..d].iter_mut().for_each(|v| *v = r.random_range(-2.0f32..2.0));
    while dist(&table, a, b) < 1.0 {
        redraw(&mut table, b);
    }
    for i in (0..shape.rows).filter(|&i| i != a && i != b) {
        while dist(&table, i, a) < min_gap || dist(&table, i, b) < min_gap {
            redraw(&mut table, i);
        }
    }
    table
}

/// Records as printed, less the steps' GPU times (which differ from run to
/// run): what two runs' records are compared by where a NaN d0 must equal
/// itself.
pub fn printed(records: &[latent_line::Record]) -> String {
    let untimed: Vec<latent_line::Record> =
        records.iter().map(|r| latent_line::Record { gpu_seconds: None, ..r.clone() }).collect();
    format!("{untimed:?}")
}

/// Two GPU runs of switches that change no values, as (table bits,
/// records): bit for bit where the driver rounds each operation as
/// written (lavapipe, CI's adapter); on a hardware GPU, whose compiler may
/// fuse a multiply and an add in one build and not in another (WGSL allows
/// it; the H200 did), the same non-finite elements, the finite ones within
/// rounding, and the records' actions and scans exactly. Records compare
/// as printed: a NaN d0 is not == itself.
pub fn assert_same_run(
    got: &(Vec<u32>, Vec<latent_line::Record>),
    want: &(Vec<u32>, Vec<latent_line::Record>),
    dim: usize,
    what: &str,
) {
    let ((t1, r1), (t0, r0)) = (got, want);
    if gpu().is_software() {
        assert!(t1 == t0, "{what}: tables differ");
        assert_eq!(printed(r1), printed(r0), "{what}: records differ");
        return;
    }
    let nonfinite = |t: &[u32]| t.iter().map(|&b| (b & 0x7f80_0000) == 0x7f80_0000).collect::<Vec<bool>>();
    assert_eq!(nonfinite(t1), nonfinite(t0), "{what}: non-finite elements differ");
    // The finite ones within rounding (non-finite ones as 0).
    let finite = |t: &[u32]| {
        t.iter().map(|&b| f32::from_bits(b)).map(|x| if x.is_finite() { x } else { 0.0 }).collect::<Vec<f32>>()
    };
    let want_f64: Vec<f64> = finite(t0).iter().map(|&x| x as f64).collect();
    assert_table_close(&finite(t1), &want_f64, dim, 1e-5, what);
    let acts = |r: &[latent_line::Record]| format!("{:?}", r.iter().map(|x| (x.action, &x.scans)).collect::<Vec<_>>());
    assert_eq!(acts(r1), acts(r0), "{what}: records differ");
}
