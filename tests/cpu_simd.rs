//! The CPU's full-table pass runs a build for the widest instructions the
//! CPU has (`Simd`: baseline SSE2, AVX2, AVX-512). Every build must give
//! the baseline's bits — table and records — through every policy, momentum
//! and weight decay, the margin, and rows with non-finite values (the
//! scans' bookkeeping path). On x86-64 a CPU with no wider build (no AVX2)
//! leaves nothing to compare, so the tests fail there rather than pass
//! having checked nothing. Other targets have the baseline build alone:
//! these tests are not built there, rather than passing with nothing
//! compared.
#![cfg(target_arch = "x86_64")]

mod common;

use common::*;
use latent_line::cpu::{CpuTrainer, Simd};
use latent_line::{Batches, Endpoints, Guard, Policy, Record, Shape, StepConfig, TableSource, Trainer};

/// The builds to compare: the baseline first, and at least one more.
fn builds() -> Vec<Simd> {
    let builds = Simd::available();
    eprintln!("builds compared: {builds:?}");
    assert!(builds.len() >= 2, "only {builds:?} on this CPU: nothing to compare the baseline with");
    builds
}

/// Five steps over `batches` in build `simd`: the table's bits and the records.
fn run(shape: Shape, cfg: StepConfig, table: &[f32], batches: &Batches, simd: Simd) -> (Vec<u32>, Vec<Record>) {
    let mut t = CpuTrainer::with_batches(shape, cfg, TableSource::Data(table.to_vec()), batches.clone()).unwrap();
    t.set_simd(simd).unwrap();
    assert_eq!(t.simd(), simd);
    let recs = t.steps(5).unwrap();
    (t.read_table().unwrap().iter().map(|x| x.to_bits()).collect(), recs)
}

#[test]
fn every_simd_build_gives_the_baseline_bits() {
    let seed = seed("cpu_simd");
    let builds = builds();
    let mut r = rng(seed);
    for dim in [1usize, 7, 64, 130] {
        let shape = Shape::new(5000, dim).unwrap();
        let mut table = spaced_table(seed ^ dim as u64, shape, 3, 4000, 0.3);
        // A few non-finite values (not in the anchors' rows).
        for row in [10usize, 777, 4999] {
            use rand::Rng;
            table[row * dim + r.random_range(0..dim)] = [f32::NAN, f32::INFINITY][row % 2];
        }
        for (policy, momentum, wd, margin, endpoints) in [
            (Policy::Ignore, 0.0, 0.0, 0.0, Endpoints::Frozen),
            (Policy::SkipStep, 0.9, 0.01, 0.0, Endpoints::Detached),
            (Policy::SkipRow, 0.0, 0.02, 100.0, Endpoints::Detached),
            (Policy::Rollback, 0.5, 0.0, 0.0, Endpoints::Frozen),
        ] {
            let cfg = StepConfig {
                anchor_a: 3,
                anchor_b: 4000,
                lr: 0.05,
                momentum,
                weight_decay: wd,
                margin,
                endpoints,
                guard: Guard { policy, snapshot_every: 2, ..Guard::default() },
                ..StepConfig::for_rows(5000)
            };
            let want = run(shape, cfg, &table, &Batches::Full, Simd::Baseline);
            // Rows with non-finite values in every step: ignore and skip-row
            // train the table; skip-step and rollback drop every step.
            let before: Vec<u32> = table.iter().map(|x| x.to_bits()).collect();
            let trains = matches!(policy, Policy::Ignore | Policy::SkipRow);
            assert_eq!(want.0 != before, trains, "D {dim} {policy:?}: trained or not, seed {seed}");
            for &simd in &builds[1..] {
                let got = run(shape, cfg, &table, &Batches::Full, simd);
                let ctx = format!("{simd:?} D {dim} {policy:?} μ {momentum} wd {wd} margin {margin}, seed {seed}");
                assert!(got.0 == want.0, "{ctx}: tables differ");
                assert_eq!(got.1, want.1, "{ctx}: records differ");
            }
        }
    }
}

/// The general step (batches; attached anchors and clipping on the full
/// table) runs its read B in the same builds: the same bits too, with
/// momentum, decay, the margin, and rows with non-finite values.
#[test]
fn every_simd_build_gives_the_baseline_bits_in_the_general_step() {
    let seed = seed("cpu_simd_general");
    let builds = builds();
    let mut r = rng(seed);
    for dim in [7usize, 64] {
        let shape = Shape::new(5000, dim).unwrap();
        let clean = spaced_table(seed ^ dim as u64, shape, 3, 4000, 0.3);
        // A few non-finite values (not in the anchors' rows), in the batch
        // cases: a full table holding them would skip or undo every step.
        let mut dirty = clean.clone();
        for row in [10usize, 777, 4999] {
            use rand::Rng;
            dirty[row * dim + r.random_range(0..dim)] = [f32::NAN, f32::INFINITY][row % 2];
        }
        for (batches, endpoints, clip, policy, table) in [
            (Batches::Random { size: 1500, seed }, Endpoints::Detached, 0.0, Policy::SkipRow, &dirty),
            (Batches::Random { size: 1500, seed }, Endpoints::Attached, 0.5, Policy::SkipStep, &dirty),
            (Batches::Full, Endpoints::Attached, 0.0, Policy::SkipStep, &clean),
            (Batches::Full, Endpoints::Detached, 0.5, Policy::Rollback, &clean),
        ] {
            let cfg = StepConfig {
                anchor_a: 3,
                anchor_b: 4000,
                lr: 0.05,
                momentum: 0.5,
                weight_decay: 0.01,
                margin: 100.0,
                endpoints,
                clip_norm: clip,
                guard: Guard { policy, snapshot_every: 2, ..Guard::default() },
                ..StepConfig::for_rows(5000)
            };
            let want = run(shape, cfg, table, &batches, Simd::Baseline);
            let before: Vec<u32> = table.iter().map(|x| x.to_bits()).collect();
            assert!(want.0 != before, "D {dim} {batches:?} {endpoints:?} {policy:?}: nothing trained, seed {seed}");
            for &simd in &builds[1..] {
                let got = run(shape, cfg, table, &batches, simd);
                let ctx = format!("{simd:?} D {dim} {batches:?} {endpoints:?} clip {clip} {policy:?}, seed {seed}");
                assert!(got.0 == want.0, "{ctx}: tables differ");
                // (As printed: a record may hold NaN, which equals nothing.)
                assert_eq!(format!("{:?}", got.1), format!("{:?}", want.1), "{ctx}: records differ");
            }
        }
    }
}
