//! SPEC §6: `--naive` reproduces the original bug exactly — after one
//! full-table step in `detached` mode rows a and b, and only they, are
//! non-finite in every column — while the safe default stays finite.

mod common;

use common::*;
use latent_line::cpu::CpuTrainer;
use latent_line::gpu::{GpuOptions, GpuTrainer, StepPath};
use latent_line::{
    reference, Action, Batches, Endpoints, Guard, IndexBatches, Policy, Shape, StepConfig, TableSource, Trainer,
};

fn backends(shape: Shape, cfg: StepConfig, table: &[f32]) -> Vec<(String, Box<dyn Trainer>)> {
    let mut v: Vec<(String, Box<dyn Trainer>)> =
        vec![("cpu".into(), Box::new(CpuTrainer::new(shape, cfg, TableSource::Data(table.to_vec())).unwrap()))];
    for path in [StepPath::Fused, StepPath::Staged] {
        let opts = GpuOptions { path, max_chunk_rows: Some(97), ..GpuOptions::default() };
        // The staged path is a cross-check of the math and has no guard.
        let cfg = if path == StepPath::Staged { ignoring(cfg) } else { cfg };
        let t = GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.to_vec()), opts).unwrap();
        v.push((format!("gpu {path:?}"), Box::new(t)));
    }
    v
}

fn ignoring(cfg: StepConfig) -> StepConfig {
    StepConfig { guard: Guard { policy: Policy::Ignore, ..cfg.guard }, ..cfg }
}

fn bad_rows(table: &[f32], dim: usize) -> Vec<usize> {
    (0..table.len() / dim).filter(|&r| table[r * dim..][..dim].iter().any(|v| !v.is_finite())).collect()
}

#[test]
fn naive_detached_step_turns_exactly_the_anchor_rows_nan() {
    let seed = seed("naive");
    let (rows, dim) = (300usize, 7usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut r = rng(seed);
    let table = random_table(&mut r, rows, dim);
    let (a, b) = (rand::Rng::random_range(&mut r, 0..rows / 2), rand::Rng::random_range(&mut r, rows / 2..rows));
    let cfg = StepConfig {
        anchor_a: a,
        anchor_b: b,
        eps: 0.0,
        naive: true,
        endpoints: Endpoints::Detached,
        ..StepConfig::for_rows(rows)
    };
    let cfg = ignoring(cfg);
    let mut want = to_f64(&table);
    reference::step(&mut want, shape, &cfg);
    let want_bad: Vec<usize> = (0..rows).filter(|&i| want[i * dim..][..dim].iter().any(|v| !v.is_finite())).collect();
    assert_eq!(want_bad, vec![a, b], "reference, seed {seed}");
    for (name, mut t) in backends(shape, cfg, &table) {
        let rec = t.steps(1).unwrap().remove(0);
        let got = t.read_table().unwrap();
        assert_eq!(bad_rows(&got, dim), vec![a, b], "{name}, seed {seed}");
        if !name.contains("Staged") {
            // The fused scans saw it happen: gradient and rows written,
            // NaN in every column of rows a and b; the loss stayed finite.
            assert_eq!(rec.action, Action::Ignored, "{name}");
            assert!(rec.scans.loss.is_clean(), "{name}: {:?}", rec.scans.loss);
            for s in [&rec.scans.grad, &rec.scans.table] {
                assert_eq!((s.nan, s.pos_inf, s.neg_inf, s.bad_rows), (2 * dim as u64, 0, 0, 2), "{name}");
                assert_eq!(s.rows, vec![a.min(b) as u64, a.max(b) as u64], "{name}");
                let f = s.first.unwrap();
                assert_eq!((f.row, f.col, f.bits), (a.min(b) as u64, 0, 0x7fc0_0000), "{name}");
            }
            assert_eq!(rec.near_singular, 2, "{name}: rows a and b are at distance 0 from an anchor");
        }
        for row in [a, b] {
            assert!(
                got[row * dim..][..dim].iter().all(|v| v.is_nan()),
                "{name}, seed {seed}: row {row} not NaN in all columns"
            );
        }
    }
    // Frozen anchors are never written: the naive formula does no harm there.
    let frozen = StepConfig { endpoints: Endpoints::Frozen, ..cfg };
    for (name, mut t) in backends(shape, frozen, &table) {
        t.steps(1).unwrap();
        assert!(bad_rows(&t.read_table().unwrap(), dim).is_empty(), "{name}, seed {seed}");
    }
}

/// SPEC §6 with batches: the naive formula's NaN goes where autograd's
/// backward takes it. An anchor the batch leaves out is no term of the
/// loss (its slot, of multiplicity 0, is there for its own update), so
/// nothing of it blows up: under `attached`, and under `detached` with
/// the separation term on, both anchors take finite steps. A batch that
/// holds anchor a alone blows up a's s1 only: row a is NaN, and b, whose
/// anchor term takes s2's path, is not. Each backend against the float64
/// reference, on both chunks' sides of a two-binding GPU table.
#[test]
fn naive_batches_poison_only_what_autograd_does() {
    let seed = seed("naive_batches");
    let (rows, dim) = (200usize, 6usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut r = rng(seed);
    let table = random_table(&mut r, rows, dim);
    let (a, b) = (rand::Rng::random_range(&mut r, 0..rows / 2), rand::Rng::random_range(&mut r, rows / 2..rows));
    let others: Vec<i64> = (0..20)
        .map(|_| rand::Rng::random_range(&mut r, 0..rows))
        .filter(|&i| i != a && i != b)
        .map(|i| i as i64)
        .collect();
    let with_a: Vec<i64> = others.iter().copied().chain([a as i64, a as i64]).collect();
    let base = StepConfig { anchor_a: a, anchor_b: b, eps: 0.0, naive: true, ..StepConfig::for_rows(rows) };
    let d0 = (0..dim).map(|k| (table[a * dim + k] - table[b * dim + k]).powi(2)).sum::<f32>().sqrt();
    for (endpoints, margin, batch, expect_bad) in [
        (Endpoints::Attached, 0.0, &others, vec![]),
        (Endpoints::Detached, 2.0 * d0, &others, vec![]),
        (Endpoints::Attached, 0.0, &with_a, vec![a]),
    ] {
        let cfg = ignoring(StepConfig { endpoints, margin, ..base });
        let ctx = format!("{endpoints:?}, margin {margin}, batch {batch:?}, seed {seed}");
        let rows_of: Vec<usize> = batch.iter().map(|&i| i as usize).collect();
        let mut want = to_f64(&table);
        let mut vel = vec![0.0; want.len()];
        reference::step_batch(&mut want, &mut vel, shape, &cfg, &rows_of);
        let want_bad: Vec<usize> =
            (0..rows).filter(|&i| want[i * dim..][..dim].iter().any(|v| !v.is_finite())).collect();
        assert_eq!(want_bad, expect_bad, "reference: {ctx}");
        let batches = || Batches::Indices(IndexBatches::new(vec![batch.clone()], rows).unwrap());
        let opts = GpuOptions { max_chunk_rows: Some(rows / 2), ..GpuOptions::default() };
        let trainers: Vec<(&str, Box<dyn Trainer>)> = vec![
            (
                "cpu",
                Box::new(CpuTrainer::with_batches(shape, cfg, TableSource::Data(table.clone()), batches()).unwrap()),
            ),
            (
                "gpu",
                Box::new(
                    GpuTrainer::with_batches(gpu(), shape, cfg, TableSource::Data(table.clone()), opts, batches())
                        .unwrap(),
                ),
            ),
        ];
        for (name, mut t) in trainers {
            t.steps(1).unwrap();
            let got = t.read_table().unwrap();
            assert_eq!(bad_rows(&got, dim), want_bad, "{name}: {ctx}");
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                if w.is_finite() {
                    let tol = 1e-5 * w.abs().max(1.0);
                    assert!((g as f64 - w).abs() <= tol, "{name}: {ctx}: element {i} is {g}, reference {w}");
                }
            }
            for row in [a, b] {
                let moved = (0..dim).any(|k| got[row * dim + k].to_bits() != table[row * dim + k].to_bits());
                assert!(moved, "{name}: {ctx}: anchor row {row} took no step");
            }
        }
    }
}

#[test]
fn safe_default_stays_finite_for_1000_steps_of_the_six_code_case() {
    let seed = seed("safe_six_codes");
    let shape = Shape::new(6, 4).unwrap();
    let table = random_table(&mut rng(seed), 6, 4);
    // `ignore`: a non-finite value would be written, not refused by a
    // guard (which would keep the table finite whatever the math did).
    let cfg =
        ignoring(StepConfig { endpoints: Endpoints::Detached, anchor_a: 0, anchor_b: 5, ..StepConfig::for_rows(6) });
    // The first steps against the float64 reference: the safe formula, not
    // some other finite one.
    let mut want = to_f64(&table);
    for _ in 0..3 {
        reference::step(&mut want, shape, &cfg);
    }
    for (name, mut t) in backends(shape, cfg, &table) {
        t.steps(3).unwrap();
        assert_table_close(&t.read_table().unwrap(), &want, 4, 1e-5, &format!("{name}, seed {seed}"));
        let records = t.steps(997).unwrap();
        for (i, r) in records.iter().enumerate() {
            assert!(r.action == Action::Applied && r.scans.is_clean(), "{name}, step {}, seed {seed}: {r:?}", i + 3);
            assert!(r.excess_sum.is_finite() && r.d0.is_finite(), "{name}, step {}, seed {seed}", i + 3);
        }
        assert!(bad_rows(&t.read_table().unwrap(), 4).is_empty(), "{name}, seed {seed}");
    }
}

#[test]
fn default_guard_skips_the_naive_step_and_aborts_after_ten() {
    let seed = seed("naive_guarded");
    let (rows, dim) = (200usize, 5usize);
    let shape = Shape::new(rows, dim).unwrap();
    let table = random_table(&mut rng(seed), rows, dim);
    let cfg = StepConfig {
        eps: 0.0,
        naive: true,
        endpoints: Endpoints::Detached,
        anchor_a: 3,
        anchor_b: 150,
        ..StepConfig::for_rows(rows)
    };
    for (name, mut t) in backends(shape, cfg, &table) {
        if name.contains("Staged") {
            continue;
        }
        let recs = t.steps(12).unwrap();
        let actions: Vec<Action> = recs.iter().map(|r| r.action).collect();
        // Ten skips allowed (SPEC §9: "after K consecutive skips abort").
        let mut want = vec![Action::SkippedStep; 10];
        want.extend([Action::Aborted, Action::NotRun]);
        assert_eq!(actions, want, "{name}");
        assert_eq!(recs[0].scans.table.rows, vec![3, 150], "{name}");
        let got = t.read_table().unwrap();
        assert!(got.iter().zip(&table).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: the table changed");
    }
}
