//! SPEC §4, §5 and §10 on both backends against the float64 reference:
//! random batches, user batches with heavy repeats (the same row many
//! times, the anchors inside, a batch of one row, a batch larger than the
//! table), every endpoint mode, the separation term on and off, momentum
//! and weight decay, clipping on and off — after one step and after ten.
//! Then determinism (bit-identical reruns) and the anti-collapse claims.

mod common;

use rand::Rng;

use common::*;
use latent_line::cpu::CpuTrainer;
use latent_line::gpu::{GpuOptions, GpuTrainer};
use latent_line::{
    reference, Action, Batches, Endpoints, Guard, IndexBatches, Policy, Reduction, Shape, StepConfig, TableSource,
    Trainer,
};

const TOL: f64 = 1e-5;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Cpu,
    /// GPU, with the table forced across several storage bindings.
    Gpu {
        chunk_rows: Option<usize>,
    },
    /// GPU, table in one binding, `lanes` lanes to a row (lavapipe's auto
    /// choice is one): each lane's findings, the lowest column wins; with
    /// `blocks` row blocks a workgroup, each lane sees several rows.
    GpuLanes {
        lanes: u32,
        blocks: u32,
        /// Kept columns (and batch_io.wgsl's rows) 16 bytes at a time,
        /// where D is a multiple of 4.
        vec4: bool,
        /// Rows per storage binding (several: the batch is gathered).
        chunk_rows: Option<usize>,
    },
    /// GPU, table in one binding, as `GpuLanes`, with a random batch's
    /// slots worked out in the fused step (`GpuOptions::fused_sample`;
    /// `sampled: false`: by the sample pass, as by default).
    GpuSampled {
        lanes: u32,
        blocks: u32,
        vec4: bool,
        sampled: bool,
    },
    /// GPU, table in one binding, as `GpuLanes`, with a dropped batch's
    /// rows put back by reduce.wgsl's own workgroups (`undo: true`,
    /// `GpuOptions::undo_in_reduce`: a GPU's default, not lavapipe's) or
    /// by batch_io.wgsl's indirect scatter; `max_groups`: workgroups a
    /// grid dimension (few: the reduce pass's grid is 2-D).
    GpuUndo {
        lanes: u32,
        blocks: u32,
        vec4: bool,
        undo: bool,
        max_groups: Option<u32>,
    },
}

/// The fused step's shape of `GpuLanes` and `GpuSampled`: workgroups of 64.
fn lane_opts(lanes: u32, blocks: u32, vec4: bool) -> GpuOptions {
    GpuOptions {
        lanes_per_row: Some(lanes),
        workgroup: Some(64),
        row_blocks: Some(blocks),
        vec4: Some(vec4),
        ..GpuOptions::default()
    }
}

fn open(backend: Backend, shape: Shape, cfg: StepConfig, table: Vec<f32>, batches: Batches) -> Box<dyn Trainer> {
    let source = TableSource::Data(table);
    match backend {
        Backend::Cpu => Box::new(CpuTrainer::with_batches(shape, cfg, source, batches).unwrap()),
        Backend::Gpu { chunk_rows } => {
            let opts = GpuOptions { max_chunk_rows: chunk_rows, ..GpuOptions::default() };
            Box::new(GpuTrainer::with_batches(gpu(), shape, cfg, source, opts, batches).unwrap())
        }
        Backend::GpuLanes { lanes, blocks, vec4, chunk_rows } => {
            let opts = GpuOptions { max_chunk_rows: chunk_rows, ..lane_opts(lanes, blocks, vec4) };
            let t = GpuTrainer::with_batches(gpu(), shape, cfg, source, opts, batches).unwrap();
            assert_eq!(t.vec4(), vec4 && shape.dim.is_multiple_of(4) && shape.dim <= 32 * lanes as usize);
            Box::new(t)
        }
        Backend::GpuSampled { lanes, blocks, vec4, sampled } => {
            let opts = GpuOptions { fused_sample: Some(sampled), ..lane_opts(lanes, blocks, vec4) };
            let random = matches!(batches, Batches::Random { .. });
            let t = GpuTrainer::with_batches(gpu(), shape, cfg, source, opts, batches).unwrap();
            // Applied to random batches with no first read, and only there.
            assert_eq!(t.fused_sample(), sampled && random && !cfg.needs_prepass(), "{shape:?} {cfg:?}");
            Box::new(t)
        }
        Backend::GpuUndo { lanes, blocks, vec4, undo, max_groups } => {
            let opts = GpuOptions { undo_in_reduce: Some(undo), max_groups, ..lane_opts(lanes, blocks, vec4) };
            let t = GpuTrainer::with_batches(gpu(), shape, cfg, source, opts, batches).unwrap();
            // Applied to batches read in place under a double-buffered guard.
            assert_eq!(t.undo_in_reduce(), undo && cfg.guard.policy.double_buffered(), "{cfg:?}");
            Box::new(t)
        }
    }
}

/// The rows of step `step` as the reference takes them: the sampler's
/// (tests/sampler.rs checks it against SPEC §10), every row, or of user
/// batches the lists as the test wrote them (`given`), cycled through, not
/// the code's reading of them.
fn rows_of(batches: &Batches, given: Option<&[Vec<i64>]>, rows: usize, step: u64) -> Vec<usize> {
    match (batches, given) {
        (Batches::Indices(_), Some(g)) => g[step as usize % g.len()].iter().map(|&i| i as usize).collect(),
        (Batches::Indices(_), None) => panic!("user batches: the test's own lists (`given`)"),
        _ => match batches.rows(rows, step).unwrap() {
            Some(r) => r.into_iter().map(|r| r as usize).collect(),
            None => (0..rows).collect(),
        },
    }
}

/// 1 step, then 9 more, on `backend` and on the reference; `given`: the
/// lists that user batches were made of.
fn check(backend: Backend, shape: Shape, cfg: StepConfig, batches: Batches, given: Option<&[Vec<i64>]>, seed: u64) {
    let ctx = format!("{backend:?} {shape:?} {cfg:?} {batches:?} seed {seed}");
    let table = spaced_table(seed, shape, cfg.anchor_a, cfg.anchor_b, 0.3);
    let mut want = to_f64(&table);
    let mut vel = if cfg.momentum > 0.0 { vec![0.0f64; table.len()] } else { Vec::new() };
    let mut t = open(backend, shape, cfg, table, batches.clone());
    let mut done = 0u64;
    for n in [1usize, 9] {
        let got = t.steps(n).unwrap();
        assert_eq!(got.len(), n, "{ctx}");
        for (i, g) in got.iter().enumerate() {
            let step = done + i as u64;
            let rows = rows_of(&batches, given, shape.rows, step);
            let r = reference::step_batch(&mut want, &mut vel, shape, &cfg, &rows);
            assert_eq!(g.batch, rows.len(), "{ctx}: batch size at step {step}");
            assert_eq!(g.near_singular, r.near_singular, "{ctx}: near-singular at step {step}");
            assert!(rel(g.d0, r.d0) <= TOL, "{ctx}: d0 at step {step}: {} vs {}", g.d0, r.d0);
            let tol = 1e-4 * r.excess_sum + 1e-6 * rows.len() as f64 * (r.d0 + 1.0);
            assert!(
                (g.excess_sum - r.excess_sum).abs() <= tol,
                "{ctx}: Σ|r| at step {step}: {} vs {}",
                g.excess_sum,
                r.excess_sum
            );
            // max|r| is over rows: a repeated row counts once.
            let tol_max = 1e-4 * r.excess_max + 1e-6 * (r.d0 + 1.0);
            assert!(
                (g.excess_max - r.excess_max).abs() <= tol_max,
                "{ctx}: max|r| at step {step}: {} vs {}",
                g.excess_max,
                r.excess_max
            );
            match (g.grad_norm, r.grad_norm) {
                // A gradient that cancels to ~0 (an anchor alone in its
                // batch, attached) is judged at the scale of f32 rounding.
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() <= 1e-4 * b + 1e-6, "{ctx}: ‖g‖ at step {step}: {a} vs {b}")
                }
                (a, b) => assert_eq!(a.is_some(), b.is_some(), "{ctx}: ‖g‖ reported at step {step}"),
            }
            assert!(g.scans.is_clean(), "{ctx}: non-finite at step {step}: {:?}", g.scans);
        }
        done += n as u64;
        let got = t.read_table().unwrap();
        assert_table_close(&got, &want, shape.dim, TOL, &format!("{ctx}: after {done} steps"));
        // SPEC §5's velocity itself (rows outside the batch keep theirs).
        let b = rows_of(&batches, given, shape.rows, done - 1).len();
        let scale = if cfg.reduction == Reduction::Mean { 1.0 / b as f64 } else { 1.0 };
        match t.read_velocity().unwrap() {
            Some(v) => {
                assert_velocity_close(&v, &vel, shape.dim, TOL, scale, &format!("{ctx}: velocity after {done} steps"))
            }
            None => assert!(vel.is_empty(), "{ctx}: no velocity with μ > 0"),
        }
    }
}

/// The batch plans of the sweep for a table of `rows` rows (anchors a, b).
/// With user batches, the lists they were made of.
type Plan = (&'static str, Batches, Option<Vec<Vec<i64>>>);

fn plans(rows: usize, a: usize, b: usize, seed: u64) -> Vec<Plan> {
    let mut r = rng(seed ^ 0xba7c);
    let ib = |v: Vec<Vec<i64>>| (Batches::Indices(IndexBatches::new(v.clone(), rows).unwrap()), Some(v));
    // One row many times, the anchors inside (twice each: dozens of copies
    // of a detached anchor under `sum` pull the two together in a few steps,
    // to where (p − q)/d0 is ill-conditioned whatever the code), the rest
    // drawn with replacement: 3·R entries, more than the table.
    let heavy: Vec<i64> = (0..3 * rows)
        .map(|i| match i {
            _ if i % 5 == 0 => 7,
            1 | 17 => a as i64,
            2 | 33 => b as i64,
            _ => r.random_range(0..rows as i64),
        })
        .collect();
    let two_d: Vec<Vec<i64>> =
        (0..3).map(|_| (0..rows / 2).map(|_| r.random_range(0..rows as i64)).collect()).collect();
    let named = |name, (batches, given)| (name, batches, given);
    vec![
        ("random", Batches::Random { size: rows / 3 + 1, seed }, None),
        named("heavy repeats, larger than the table", ib(vec![heavy])),
        named("one row", ib(vec![vec![r.random_range(0..rows as i64)]])),
        named("2-D, cycled", ib(two_d)),
        ("full", Batches::Full, None),
    ]
}

const POLICIES: [Policy; 5] = [Policy::SkipStep, Policy::Ignore, Policy::SkipRow, Policy::Rollback, Policy::Abort];

/// Every endpoint mode × the margin off, active (100: d0 is below it) and
/// inactive (0.5: the anchors start ≥ 1 apart) × momentum/decay × clipping
/// active (0.05) and inactive (1e6), over every batch plan.
fn sweep(backend: Backend, shape: Shape, case_seed: u64) {
    let (a, b) = (3usize, shape.rows - 2);
    let mut case = 0u64;
    for (name, batches, given) in plans(shape.rows, a, b, case_seed) {
        // Under `sum` a row repeated m times moves m times as far, and near
        // an anchor a step amplifies f32 rounding by about 1 + lr·m/d1: the
        // heavy plan's lr is divided by its repeats (3·R/5), so its step
        // compares implementations, not conditioning.
        let lr = if name.starts_with("heavy") { 0.01 * 5.0 / (3 * shape.rows) as f32 } else { 0.01 };
        // `mean` divides the gradient by the batch size B: lr·B is the same
        // step as `sum`'s (at lr alone a row would move 1/B as far, which
        // the table's tolerance could not tell from no step).
        let size = match (&batches, &given) {
            (_, Some(g)) => g[0].len(),
            (Batches::Random { size, .. }, None) => *size,
            _ => shape.rows,
        };
        for endpoints in [Endpoints::Frozen, Endpoints::Detached, Endpoints::Attached] {
            for (margin, momentum, wd, clip) in
                [(0.0, 0.0, 0.0, 0.0), (100.0, 0.9, 0.01, 0.0), (0.5, 0.5, 0.0, 0.05), (100.0, 0.0, 0.02, 1e6)]
            {
                case += 1;
                let cfg = StepConfig {
                    anchor_a: a,
                    anchor_b: b,
                    lr: if case.is_multiple_of(2) { lr } else { lr * size as f32 },
                    reduction: if case.is_multiple_of(2) { Reduction::Sum } else { Reduction::Mean },
                    endpoints,
                    margin,
                    momentum,
                    weight_decay: wd,
                    clip_norm: clip,
                    // Clean tables: every guard trains the same way through
                    // its own buffers (snapshots every 3 steps).
                    guard: Guard { policy: POLICIES[case as usize % 5], snapshot_every: 3, ..Guard::default() },
                    ..StepConfig::for_rows(shape.rows)
                };
                check(backend, shape, cfg, batches.clone(), given.as_deref(), case_seed.wrapping_add(case));
            }
        }
    }
}

#[test]
fn cpu_batches_modes_and_sgd_match_the_reference() {
    let seed = seed("cpu_batches");
    sweep(Backend::Cpu, Shape::new(60, 5).unwrap(), seed);
    sweep(Backend::Cpu, Shape::new(37, 33).unwrap(), seed ^ 1);
}

#[test]
fn gpu_batches_modes_and_sgd_match_the_reference() {
    let seed = seed("gpu_batches");
    sweep(Backend::Gpu { chunk_rows: Some(25) }, Shape::new(60, 5).unwrap(), seed);
    sweep(Backend::Gpu { chunk_rows: None }, Shape::new(37, 33).unwrap(), seed ^ 1);
    sweep(
        Backend::GpuLanes { lanes: 4, blocks: 4, vec4: false, chunk_rows: None },
        Shape::new(37, 33).unwrap(),
        seed ^ 2,
    );
    // 16-byte kept columns and batch rows: read in place (DIRECT), written
    // to the batch buffer by slot and scattered back; then gathered from
    // and scattered to four bindings.
    let vec4 = |chunk_rows| Backend::GpuLanes { lanes: 4, blocks: 2, vec4: true, chunk_rows };
    sweep(vec4(None), Shape::new(37, 32).unwrap(), seed ^ 3);
    sweep(vec4(Some(10)), Shape::new(37, 32).unwrap(), seed ^ 4);
}

/// SPEC §11: the same options twice give bit-identical tables and records,
/// with random batches and with duplicated user batches, on both backends.
#[test]
fn batched_runs_are_bit_identical() {
    let seed = seed("batch_determinism");
    let shape = Shape::new(300, 12).unwrap();
    let table = spaced_table(seed, shape, 0, 299, 0.3);
    let mut r = rng(seed);
    let dup: Vec<Vec<i64>> = (0..4).map(|_| (0..500).map(|_| r.random_range(0..40)).collect()).collect();
    for batches in [Batches::Random { size: 70, seed }, Batches::Indices(IndexBatches::new(dup, 300).unwrap())] {
        for backend in [Backend::Cpu, Backend::Gpu { chunk_rows: Some(128) }] {
            let cfg = StepConfig {
                endpoints: Endpoints::Attached,
                reduction: Reduction::Mean,
                lr: 0.5,
                momentum: 0.9,
                clip_norm: 0.01,
                margin: 50.0,
                ..StepConfig::for_rows(300)
            };
            let run = || {
                let mut t = open(backend, shape, cfg, table.clone(), batches.clone());
                let recs = t.steps(12).unwrap();
                (t.read_table().unwrap(), recs)
            };
            let (t1, r1) = run();
            let (t2, r2) = run();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&t1) == bits(&t2), "{backend:?} {batches:?}: tables differ, seed {seed}");
            assert_eq!(r1, r2, "{backend:?} {batches:?}: records differ, seed {seed}");
            assert!(t1 != table, "{backend:?}: nothing trained, seed {seed}");
        }
    }
}

/// SPEC §8 and §3: with `attached` and a margin m, 1 000 steps keep
/// d0 ≥ m·(1 − 1e-3) while the mean excess falls; with `detached` and no
/// margin the audit shows d0 shrinking (the collapse the margin prevents).
#[test]
fn the_margin_keeps_attached_anchors_apart_and_detached_ones_collapse() {
    let seed = seed("margin_1000");
    let shape = Shape::new(256, 8).unwrap();
    let table = spaced_table(seed, shape, 0, 255, 0.3);
    let d0_start = {
        let (p, q) = (&table[..8], &table[255 * 8..]);
        p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt() as f64
    };
    let m = 0.98 * d0_start as f32;
    for backend in [Backend::Cpu, Backend::Gpu { chunk_rows: None }] {
        let cfg = StepConfig {
            endpoints: Endpoints::Attached,
            reduction: Reduction::Mean,
            lr: 0.05 * 64.0,
            margin: m,
            margin_weight: 1.0,
            ..StepConfig::for_rows(256)
        };
        let mut t = open(backend, shape, cfg, table.clone(), Batches::Random { size: 64, seed });
        let first = t.evaluate().unwrap().mean_excess();
        let recs = t.steps(1000).unwrap();
        let low = recs.iter().map(|r| r.d0).fold(f64::INFINITY, f64::min);
        assert!(low >= m as f64 * (1.0 - 1e-3), "{backend:?}: d0 fell to {low} below the margin {m}, seed {seed}");
        let last = t.evaluate().unwrap().mean_excess();
        assert!(last < 0.1 * first, "{backend:?}: mean excess {first} → {last} did not fall, seed {seed}");

        let cfg = StepConfig { endpoints: Endpoints::Detached, lr: 0.05, ..StepConfig::for_rows(256) };
        let mut t = open(backend, shape, cfg, table.clone(), Batches::Random { size: 64, seed });
        let recs = t.steps(1000).unwrap();
        let (d_first, d_last) = (recs[0].d0, recs[999].d0);
        assert!(d_last < 0.5 * d_first, "{backend:?}: detached d0 {d_first} → {d_last} did not shrink, seed {seed}");
    }
}

/// SPEC §7 over a batch, whose slots are in no row order: each scan gives
/// the lowest non-finite element and the lowest 64 bad rows, sorted, with
/// exact counts — random batches and user batches (anchors and repeats
/// inside, unsorted), the GPU in one binding and split across several.
/// `skip-row` keeps every bad row as it is, so the bad rows of each step
/// are known from the table, and the strikes of the listed rows count the
/// steps whose batch held them.
#[test]
fn batch_scans_list_the_lowest_rows_and_element() {
    let seed = seed("batch_scans");
    let mut r = rng(seed);
    let (rows, dim) = (3000usize, r.random_range(1..70));
    let shape = Shape::new(rows, dim).unwrap();
    let (a, b) = (r.random_range(0..rows / 2), r.random_range(rows / 2..rows));
    let mut table = spaced_table(seed, shape, a, b, 0.3);
    let mut planted = vec![false; rows];
    for (i, p) in planted.iter_mut().enumerate() {
        if i != a && i != b && r.random_bool(0.3) {
            *p = true;
            let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][r.random_range(0..3)];
            table[i * dim + r.random_range(0..dim)] = v;
        }
    }
    let mut user: Vec<i64> = (0..900).map(|_| r.random_range(0..rows as i64)).collect();
    user.extend([a as i64, b as i64, b as i64, 5, 5]);
    // … and batches with fewer bad rows than the list holds (all listed).
    let few: Vec<i64> = (0..60).map(|_| r.random_range(0..rows as i64)).chain([a as i64, 9, 9]).collect();
    let ib = |v: Vec<Vec<i64>>| (Batches::Indices(IndexBatches::new(v.clone(), rows).unwrap()), Some(v));
    let batches =
        [(Batches::Random { size: 1000, seed }, None), ib(vec![user.clone(), user[300..].to_vec()]), ib(vec![few])];
    let guard = Guard { policy: Policy::SkipRow, ..Guard::default() };
    let cfg = StepConfig { anchor_a: a, anchor_b: b, lr: 0.01, guard, ..StepConfig::for_rows(rows) };
    for (batches, given) in batches {
        let backends = [
            Backend::Cpu,
            Backend::Gpu { chunk_rows: None },
            Backend::Gpu { chunk_rows: Some(700) },
            Backend::GpuLanes { lanes: 8, blocks: 1, vec4: false, chunk_rows: None },
            Backend::GpuLanes { lanes: 8, blocks: 4, vec4: false, chunk_rows: None },
            Backend::GpuLanes { lanes: 16, blocks: 2, vec4: true, chunk_rows: Some(700) },
        ];
        for backend in backends {
            let ctx = format!("{backend:?} {batches:?} dim {dim}, seed {seed}");
            let mut t = open(backend, shape, cfg, table.clone(), batches.clone());
            let mut strikes = vec![0u32; rows];
            for (step, rec) in t.steps(3).unwrap().iter().enumerate() {
                let mut bad: Vec<u64> = rows_of(&batches, given.as_deref(), rows, step as u64)
                    .into_iter()
                    .filter(|&i| planted[i])
                    .map(|i| i as u64)
                    .collect();
                bad.sort_unstable();
                bad.dedup();
                bad.iter().for_each(|&i| strikes[i as usize] += 1);
                // The first two plans overflow the list, the third does not.
                assert!(bad.len() > 64 || matches!(&batches, Batches::Indices(i) if i.len() == 1), "{ctx}");
                assert!(!bad.is_empty(), "{ctx}: no bad row in the batch");
                let n = bad.len() as u64;
                let listed: Vec<u64> = bad[..bad.len().min(64)].to_vec();
                for (name, s, per_row) in
                    [("loss", &rec.scans.loss, 1), ("gradient", &rec.scans.grad, dim), ("rows", &rec.scans.table, dim)]
                {
                    let what = format!("{ctx}: {name} scan at step {step}");
                    // A row that read a non-finite value is poisoned: its loss
                    // term, gradient and new values are all NaN.
                    assert_eq!((s.nan, s.pos_inf, s.neg_inf), (n * per_row as u64, 0, 0), "{what}");
                    assert_eq!(s.bad_rows, n, "{what}");
                    assert_eq!(s.rows, listed, "{what}");
                    let first = s.first.unwrap_or_else(|| panic!("{what}: no first element"));
                    assert_eq!((first.row, first.col, first.kind()), (bad[0], 0, "NaN"), "{what}");
                }
                let want: Vec<u32> = listed.iter().map(|&i| strikes[i as usize]).collect();
                assert_eq!(rec.scans.strikes, want, "{ctx}: strikes at step {step}");
            }
            // skip-row wrote no bad row: they are as planted.
            let now = t.read_table().unwrap();
            for i in (0..rows).filter(|&i| planted[i]) {
                let same =
                    now[i * dim..][..dim].iter().zip(&table[i * dim..][..dim]).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{ctx}: bad row {i} was written");
            }
        }
    }
}

/// A clean row whose gradient is not finite — an anchor's separation term
/// overflowing (margin weight near f32::MAX over a small d0) — is reported
/// by the gradient scan of a batch step, as well as by the rows' scan, and
/// the same way on both backends (the CPU notes it in the column loop).
#[test]
fn a_clean_rows_non_finite_gradient_is_reported_in_a_batch() {
    let seed = seed("batch_grad_overflow");
    let mut r = rng(seed);
    let (rows, dim, a, b) = (500usize, 8usize, 3usize, 400usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut table = random_table(&mut r, rows, dim);
    // q a small step from p: d0 ≈ 0.03, so 3e38 / d0 overflows.
    for k in 0..dim {
        table[b * dim + k] = table[a * dim + k] + 0.01;
    }
    let cfg = StepConfig {
        anchor_a: a,
        anchor_b: b,
        lr: 0.01,
        endpoints: Endpoints::Detached,
        margin: 1e30,
        margin_weight: 3e38,
        guard: Guard { policy: Policy::Ignore, ..Guard::default() },
        ..StepConfig::for_rows(rows)
    };
    let user: Vec<i64> = (0..60).map(|_| r.random_range(0..rows as i64)).chain([a as i64, b as i64]).collect();
    // A batch, and the full table (the CPU's full-table pass).
    for batches in [Batches::Indices(IndexBatches::new(vec![user], rows).unwrap()), Batches::Full] {
        let mut seen = Vec::new();
        for backend in [Backend::Cpu, Backend::Gpu { chunk_rows: None }] {
            let mut t = open(backend, shape, cfg, table.clone(), batches.clone());
            let rec = t.steps(1).unwrap().remove(0);
            let ctx = format!("{backend:?}, {batches:?}, seed {seed}");
            assert_eq!(rec.scans.grad.rows, vec![a as u64, b as u64], "{ctx}: gradient scan {:?}", rec.scans.grad);
            assert_eq!(rec.scans.table.rows, vec![a as u64, b as u64], "{ctx}: rows' scan {:?}", rec.scans.table);
            seen.push((rec.scans.grad.first, rec.scans.grad.nonfinite()));
        }
        assert_eq!(seen[0], seen[1], "CPU and GPU differ, {batches:?}, seed {seed}");
    }
}

/// A large batch's kept rows go back into the table in parallel, over
/// bands of rows (from 4 096 kept rows on the CPU): against the reference,
/// with momentum (the velocity goes back the same way) and without.
#[test]
fn cpu_large_batches_write_back_every_kept_row() {
    let seed = seed("cpu_large_batch");
    let shape = Shape::new(20_000, 3).unwrap();
    for (i, momentum) in [0.0f32, 0.9].into_iter().enumerate() {
        let cfg = StepConfig {
            anchor_a: 11,
            anchor_b: 19_000,
            lr: 0.01,
            momentum,
            // (`sum`: every row moves by about lr, well past the tolerance.)
            reduction: Reduction::Sum,
            endpoints: Endpoints::Detached,
            ..StepConfig::for_rows(shape.rows)
        };
        let batches = Batches::Random { size: 9000, seed: seed ^ i as u64 };
        check(Backend::Cpu, shape, cfg, batches, None, seed.wrapping_add(i as u64));
    }
}

/// A batch step that the guard drops leaves every row (and velocity) as it
/// was, the batch's rows included: skip-step, abort (whose later steps do
/// nothing), rollback (back to its snapshot) and a rollback past its
/// limit, which aborts (as it was before the step). In one binding the step
/// writes its rows in place and logs their old values, which go back only
/// for a dropped step (by batch_io.wgsl's scatter, or by reduce.wgsl's own
/// workgroups: UNDO); gathered from several bindings it writes a batch
/// buffer. A kept step, before and after, changes exactly its batch's rows.
#[test]
fn a_dropped_batch_step_leaves_every_row_as_it_was() {
    let seed = seed("batch_dropped");
    let mut r = rng(seed);
    let (rows, dim) = (300usize, 32usize);
    let shape = Shape::new(rows, dim).unwrap();
    let (a, b) = (r.random_range(0..rows / 2), r.random_range(rows / 2..rows));
    let table = spaced_table(seed, shape, a, b, 0.3);
    let batches = Batches::Random { size: 90, seed };
    let batch = |step: u64| rows_of(&batches, None, rows, step);
    // Snapshots every 2 steps: step 3 fails, in a row of its batch that
    // steps 4 and 5 do not take (a later kept step is then checked too).
    let bad = batch(3)
        .into_iter()
        .find(|&i| i != a && i != b && !batch(4).contains(&i) && !batch(5).contains(&i))
        .expect("a row of step 3's batch alone");
    let col = r.random_range(0..dim);
    let backends = [
        Backend::Cpu,
        Backend::Gpu { chunk_rows: None },
        Backend::Gpu { chunk_rows: Some(70) },
        Backend::GpuLanes { lanes: 8, blocks: 2, vec4: false, chunk_rows: None },
        Backend::GpuLanes { lanes: 4, blocks: 2, vec4: true, chunk_rows: None },
        Backend::GpuLanes { lanes: 4, blocks: 1, vec4: true, chunk_rows: Some(70) },
        // The undo in the reduce pass (a GPU's default), and on lavapipe's
        // default shape the indirect scatter it replaces, asked for.
        Backend::GpuUndo { lanes: 4, blocks: 2, vec4: true, undo: true, max_groups: None },
        // (13 a dimension: the table in one binding, the reduce pass's 47
        // workgroups of 64 lanes, its undo's over 90 slots × 32, a 2-D grid.)
        Backend::GpuUndo { lanes: 1, blocks: 1, vec4: false, undo: true, max_groups: Some(13) },
        Backend::GpuUndo { lanes: 8, blocks: 2, vec4: false, undo: false, max_groups: None },
    ];
    let bits = |t: &[f32]| t.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for (policy, max_rollbacks) in
        [(Policy::SkipStep, 3), (Policy::Abort, 3), (Policy::Rollback, 3), (Policy::Rollback, 0)]
    {
        for momentum in [0.0f32, 0.9] {
            let guard = Guard { policy, snapshot_every: 2, max_rollbacks, ..Guard::default() };
            let aborts = policy == Policy::Abort || max_rollbacks == 0;
            let cfg = StepConfig { anchor_a: a, anchor_b: b, lr: 0.05, momentum, guard, ..StepConfig::for_rows(rows) };
            for backend in backends {
                let ctx = format!("{backend:?} {guard:?} momentum {momentum}, row {bad}, seed {seed}");
                let mut t = open(backend, shape, cfg, table.clone(), batches.clone());
                // A kept step changes its batch's rows and no other.
                let kept = |t: &mut Box<dyn Trainer>, step: u64| {
                    let before = t.read_table().unwrap();
                    let rec = t.steps(1).unwrap().remove(0);
                    assert_eq!(rec.action, Action::Applied, "{ctx}: step {step}");
                    let now = t.read_table().unwrap();
                    let rows_in = batch(step);
                    for i in (0..rows).filter(|&i| i != a && i != b) {
                        let changed = bits(&now[i * dim..][..dim]) != bits(&before[i * dim..][..dim]);
                        assert_eq!(changed, rows_in.contains(&i), "{ctx}: row {i} at step {step}");
                    }
                };
                kept(&mut t, 0);
                kept(&mut t, 1);
                let snapshot = (t.read_table().unwrap(), t.read_velocity().unwrap());
                kept(&mut t, 2);
                let mut row = t.read_table().unwrap()[bad * dim..][..dim].to_vec();
                row[col] = f32::NAN;
                t.write_row(bad, &row).unwrap();
                let before = (t.read_table().unwrap(), t.read_velocity().unwrap());
                let rec = t.steps(1).unwrap().remove(0);
                let want = match policy {
                    _ if aborts => Action::Aborted,
                    Policy::SkipStep => Action::SkippedStep,
                    _ => Action::RolledBack,
                };
                assert_eq!(rec.action, want, "{ctx}");
                assert_eq!(rec.scans.table.rows, vec![bad as u64], "{ctx}");
                let now = (t.read_table().unwrap(), t.read_velocity().unwrap());
                assert_eq!(now.1.is_some(), momentum > 0.0, "{ctx}: a velocity exactly with momentum");
                if want == Action::RolledBack {
                    assert_eq!(bits(&now.0), bits(&snapshot.0), "{ctx}: not the snapshot");
                    if let Some(v) = &now.1 {
                        assert!(v.iter().all(|&x| x == 0.0), "{ctx}: the velocity restarts after a rollback");
                    }
                } else {
                    assert_eq!(bits(&now.0), bits(&before.0), "{ctx}: the table changed");
                    assert_eq!(
                        now.1.as_deref().map(bits),
                        before.1.as_deref().map(bits),
                        "{ctx}: the velocity changed"
                    );
                }
                if aborts {
                    let later: Vec<Action> = t.steps(2).unwrap().iter().map(|r| r.action).collect();
                    assert_eq!(later, vec![Action::NotRun; 2], "{ctx}");
                    assert_eq!(bits(&t.read_table().unwrap()), bits(&before.0), "{ctx}: an aborted run wrote");
                } else if policy == Policy::SkipStep {
                    kept(&mut t, 4);
                    kept(&mut t, 5);
                }
            }
        }
    }
}

/// fused_step.wgsl's SAMPLED: a random batch's slots worked out in the
/// step, with no sample pass, give the sample pass's run — table and
/// records, bit for bit on lavapipe — under every guard, with momentum and
/// the separation term, across epochs, over a table with non-finite rows
/// (findings listed from the slots the step wrote, dropped steps undone
/// from them, skip-row's strikes), with rows given by `step_rows` between
/// the random steps; and, on a clean table, the float64 reference. Where
/// it cannot apply (a first read, a table over several bindings) it is
/// not applied.
#[test]
fn batches_sampled_in_the_step_give_the_sample_pass_run() {
    let seed = seed("fused_sample");
    let mut r = rng(seed);
    let rows = 700usize;
    let (a, b) = (5usize, 640usize);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let mut case = 0u64;
    for (dim, lanes, blocks, vec4) in [(32usize, 4u32, 2u32, true), (5, 1, 1, false), (56, 8, 4, false)] {
        let shape = Shape::new(rows, dim).unwrap();
        let clean = spaced_table(seed ^ dim as u64, shape, a, b, 0.3);
        let mut table = clean.clone();
        // (Rows between the anchors: every epoch's steps take each once.)
        let bad: Vec<usize> = (0..5).map(|_| r.random_range(a + 1..b)).collect();
        for i in bad {
            table[i * dim + r.random_range(0..dim)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3];
        }
        // 300 of 700 rows a step: 3 steps an epoch, the last one of 100.
        let batches = Batches::Random { size: 300, seed: seed ^ 7 };
        for policy in POLICIES {
            for endpoints in [Endpoints::Frozen, Endpoints::Detached] {
                case += 1;
                let cfg = StepConfig {
                    anchor_a: a,
                    anchor_b: b,
                    lr: 0.05,
                    endpoints,
                    momentum: if case.is_multiple_of(2) { 0.9 } else { 0.0 },
                    margin: if case.is_multiple_of(3) { 100.0 } else { 0.0 },
                    reduction: if case.is_multiple_of(2) { Reduction::Sum } else { Reduction::Mean },
                    guard: Guard { policy, snapshot_every: 2, max_skips: 100, ..Guard::default() },
                    ..StepConfig::for_rows(rows)
                };
                let ctx = format!("D {dim}, L {lanes}, blocks {blocks}, {policy:?}, {endpoints:?}, seed {seed}");
                let run = |sampled: bool| {
                    let backend = Backend::GpuSampled { lanes, blocks, vec4, sampled };
                    let mut t = open(backend, shape, cfg, table.clone(), batches.clone());
                    let mut recs = t.steps(4).unwrap();
                    recs.push(t.step_rows(&[1, 2, 2, a as u32, 699, 1]).unwrap());
                    recs.extend(t.steps(3).unwrap());
                    (bits(&t.read_table().unwrap()), recs)
                };
                let base = run(false);
                let found = base.1.iter().any(|rec| !rec.scans.is_clean());
                assert!(found, "{ctx}: no step met a non-finite row");
                assert_same_run(&run(true), &base, dim, &ctx);
                // On the clean table, against the reference.
                check(
                    Backend::GpuSampled { lanes, blocks, vec4, sampled: true },
                    shape,
                    cfg,
                    batches.clone(),
                    None,
                    seed ^ case,
                );
            }
        }
        // Not applied: a first read (clipping), user batches, several bindings.
        let clip = StepConfig { anchor_a: a, anchor_b: b, clip_norm: 0.05, ..StepConfig::for_rows(rows) };
        open(Backend::GpuSampled { lanes, blocks, vec4, sampled: true }, shape, clip, clean.clone(), batches.clone());
        let given = Batches::Indices(IndexBatches::new(vec![vec![1, 2, 3]], rows).unwrap());
        let cfg = StepConfig { anchor_a: a, anchor_b: b, ..StepConfig::for_rows(rows) };
        open(Backend::GpuSampled { lanes, blocks, vec4, sampled: true }, shape, cfg, clean.clone(), given);
        let opts = GpuOptions { fused_sample: Some(true), max_chunk_rows: Some(300), ..GpuOptions::default() };
        let t = GpuTrainer::with_batches(gpu(), shape, cfg, TableSource::Data(clean), opts, batches).unwrap();
        assert!(!t.fused_sample(), "D {dim}: sampled in the step over several bindings");
    }
    // The sample pass runs without the switch and not with it (were it to
    // run as well, it would write the same slots, and every comparison
    // above would pass).
    let shape = Shape::new(rows, 8).unwrap();
    let cfg = StepConfig { anchor_a: a, anchor_b: b, ..StepConfig::for_rows(rows) };
    for sampled in [false, true] {
        let batches = Batches::Random { size: 300, seed };
        let mut t = open(
            Backend::GpuSampled { lanes: 1, blocks: 1, vec4: false, sampled },
            shape,
            cfg,
            spaced_table(seed, shape, a, b, 0.3),
            batches,
        );
        assert!(t.set_profile(true).unwrap(), "lavapipe and the GPUs we run on have timestamp queries");
        t.steps(2).unwrap();
        let kernels: Vec<String> = t.profile().unwrap().into_iter().map(|k| k.kernel).collect();
        let sample_pass = kernels.iter().any(|k| k.starts_with("sample.wgsl"));
        assert_eq!(sample_pass, !sampled, "sampled in the step: {sampled}; kernels {kernels:?}");
        assert!(kernels.iter().any(|k| k == "fused_step.wgsl"), "{kernels:?}");
    }
    // The switch reached a pipeline (the comparisons above would pass a
    // kernel compared with itself).
    let built = gpu().built.lock().unwrap().clone();
    let sampled = built
        .iter()
        .any(|b| b.kernel.name == "fused_step" && b.constants.iter().any(|(k, v)| k == "SAMPLED" && *v == 1.0));
    assert!(sampled, "no fused step built with SAMPLED = 1");
}

/// `--indices` batches past what stays on the device (`GpuOptions::
/// resident_batches`) are streamed a submission at a time: the same bits
/// and records as all resident, for a ring that the batches' count is no
/// multiple of, in place and gathered (several bindings), every guard, a
/// host-given step in between, and non-finite rows met on the way.
#[test]
fn user_batches_streamed_give_the_resident_run() {
    let seed = seed("resident_batches");
    let mut r = rng(seed);
    let (rows, dim, a, b) = (300usize, 12usize, 3usize, 290usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut table = spaced_table(seed, shape, a, b, 0.3);
    // 13 batches of 60 indices, heavy repeats: their slot counts differ.
    let given: Vec<Vec<i64>> = (0..13).map(|k| (0..60).map(|_| r.random_range(0..20 + 20 * k)).collect()).collect();
    // NaN in three rows that the batches take (drawn from the table's
    // rows, they could all lie past the batches' range: one seed in about
    // a thousand met none).
    let taken: Vec<usize> = given.iter().flatten().map(|&i| i as usize).filter(|&i| i != a && i != b).collect();
    for _ in 0..3 {
        table[taken[r.random_range(0..taken.len())] * dim + r.random_range(0..dim)] = f32::NAN;
    }
    let batches = Batches::Indices(IndexBatches::new(given, rows).unwrap());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for (case, policy) in POLICIES.into_iter().enumerate() {
        for chunk_rows in [None, Some(128)] {
            let cfg = StepConfig {
                anchor_a: a,
                anchor_b: b,
                lr: 0.05,
                momentum: if case % 2 == 0 { 0.9 } else { 0.0 },
                guard: Guard { policy, snapshot_every: 4, max_skips: 100, max_rollbacks: 100, ..Guard::default() },
                ..StepConfig::for_rows(rows)
            };
            let run_with = |resident: Option<usize>, want: (usize, bool), more: GpuOptions| {
                let opts = GpuOptions { max_chunk_rows: chunk_rows, resident_batches: resident, ..more };
                let mut t = GpuTrainer::with_batches(
                    gpu(),
                    shape,
                    cfg,
                    TableSource::Data(table.clone()),
                    opts,
                    batches.clone(),
                )
                .unwrap();
                assert_eq!(t.resident_batches(), Some(want), "asked {resident:?}");
                // (The undo in the reduce pass: a GPU's default, not lavapipe's.)
                let in_place = chunk_rows.is_none() && policy.double_buffered();
                let asked = more.undo_in_reduce.unwrap_or(!gpu().is_software());
                assert_eq!(t.undo_in_reduce(), asked && in_place, "{policy:?}");
                let kernel = t.device_info().kernel;
                let said = format!(", user batches streamed ({} on the device at once)", want.0);
                assert_eq!(kernel.ends_with(&said), want.1, "{kernel}");
                let mut recs = t.steps(11).unwrap();
                recs.push(t.step_rows(&[1, 2, 2, a as u32, 299]).unwrap());
                recs.extend(t.steps(20).unwrap());
                (bits(&t.read_table().unwrap()), recs)
            };
            let run = |resident: Option<usize>, want: (usize, bool)| run_with(resident, want, GpuOptions::default());
            let ctx = format!("{policy:?}, chunks of {chunk_rows:?} rows, seed {seed}");
            let all = run(None, (13, false));
            // A dropped step undone by the reduce pass's own workgroups
            // (applied in one binding under a double-buffered guard), over a
            // 2-D grid (8 workgroups a dimension: the table in one binding,
            // the reduce pass's ≥ 9 workgroups of 64 lanes), against the
            // scatter's run of the same shape.
            let undo = |on: bool| GpuOptions {
                undo_in_reduce: Some(on),
                max_groups: Some(8),
                workgroup: Some(64),
                ..GpuOptions::default()
            };
            let undone = run_with(None, (13, false), undo(true));
            let scattered = run_with(None, (13, false), undo(false));
            assert_same_run(&undone, &scattered, dim, &format!("{ctx}, undone in the reduce pass"));
            assert!(all.1.iter().any(|rec| !rec.scans.is_clean()), "{ctx}: no step met a non-finite row");
            for ring in [1, 9] {
                // (1 is raised to a submission's 8 steps.)
                let streamed = run(Some(ring), (ring.max(8), true));
                assert!(streamed.0 == all.0, "{ctx}, {ring} resident: tables differ");
                assert_eq!(printed(&streamed.1), printed(&all.1), "{ctx}, {ring} resident: records differ");
            }
            assert_eq!(run(Some(40), (13, false)).0, all.0, "{ctx}: more asked than there are");
        }
    }
}

/// A batch's two-read step (attached anchors, clipping) keeps its
/// coefficients by slot, and allocates none for the table's rows: on a
/// table of 9M rows × 2 (one 72 MB binding) 16 bytes a row would be over
/// lavapipe's 128 MiB binding limit. The same table as the CPU's.
#[test]
fn batch_two_read_steps_keep_no_coefficients_for_the_table() {
    let seed = seed("batch_coef");
    let rows = 9_000_000usize;
    let shape = Shape::new(rows, 2).unwrap();
    let cfg = StepConfig { endpoints: Endpoints::Attached, clip_norm: 0.5, lr: 0.1, ..StepConfig::for_rows(rows) };
    let batches = Batches::Random { size: 64, seed };
    let table = random_table(&mut rng(seed), rows, 2);
    let source = || TableSource::Data(table.clone());
    let mut cpu = CpuTrainer::with_batches(shape, cfg, source(), batches.clone()).unwrap();
    let mut gpu =
        GpuTrainer::with_batches(gpu(), shape, cfg, source(), GpuOptions::default(), batches.clone()).unwrap();
    assert!(gpu.layout().one_binding(), "72 MB in one binding");
    let mut want = to_f64(&table);
    for step in 0..2 {
        reference::step_batch(&mut want, &mut [], shape, &cfg, &rows_of(&batches, None, rows, step));
    }
    for (name, t) in [("cpu", &mut cpu as &mut dyn Trainer), ("gpu", &mut gpu)] {
        let recs = t.steps(2).unwrap();
        assert!(recs.iter().all(|r| r.action == Action::Applied), "{name}, seed {seed}: {recs:?}");
        let got = t.read_table().unwrap();
        assert_table_close(&got, &want, 2, 1e-5, &format!("{name}, seed {seed}"));
        assert!(got != table, "{name}, seed {seed}: nothing trained");
    }
}

#[test]
fn step_rows_needs_a_trainer_built_with_batches_on_both_backends() {
    // The same contract on both backends: a full-table trainer refuses
    // `step_rows` (the GPU one has no batch buffers), naming the call; one
    // built with batches takes given rows, and refuses rows out of range
    // in the call's own terms (not a command-line flag's).
    let shape = Shape::new(50, 3).unwrap();
    let cfg = StepConfig::for_rows(50);
    let source = || TableSource::Random { seed: 1 };
    let full: Vec<Box<dyn Trainer>> = vec![
        Box::new(CpuTrainer::new(shape, cfg, source()).unwrap()),
        Box::new(GpuTrainer::new(gpu(), shape, cfg, source(), GpuOptions::default()).unwrap()),
    ];
    for mut t in full {
        let e = t.step_rows(&[1, 2]).unwrap_err().to_string();
        assert!(e.starts_with("invalid step_rows: ") && e.contains("with_batches"), "{e}");
    }
    let batches = || Batches::Random { size: 10, seed: 2 };
    let batched: Vec<Box<dyn Trainer>> = vec![
        Box::new(CpuTrainer::with_batches(shape, cfg, source(), batches()).unwrap()),
        Box::new(GpuTrainer::with_batches(gpu(), shape, cfg, source(), GpuOptions::default(), batches()).unwrap()),
    ];
    for mut t in batched {
        assert_eq!(t.step_rows(&[1, 2, 2]).unwrap().batch, 3);
        let e = t.step_rows(&[1, 50]).unwrap_err().to_string();
        assert!(e.starts_with("invalid step_rows: ") && e.contains("50, out of range"), "{e}");
    }
}

#[test]
fn library_calls_with_hostile_values_are_refused_not_panicking() {
    use std::sync::{atomic::AtomicBool, Arc};
    // A shape built around Shape::new (its fields are public).
    let zero_dim = Shape { rows: 5, dim: 0 };
    let cfg = StepConfig::for_rows(5);
    assert!(CpuTrainer::new(zero_dim, cfg, TableSource::Random { seed: 1 }).is_err());
    assert!(GpuTrainer::new(gpu(), zero_dim, cfg, TableSource::Random { seed: 1 }, GpuOptions::default()).is_err());
    assert!(latent_line::gpu::scan_values(gpu(), &[], zero_dim, None).is_err());
    assert!(Shape::new(usize::MAX, usize::MAX).is_err());
    // A run state no run writes; then steps(usize::MAX) stopped at once
    // (no room reserved for usize::MAX records).
    let shape = Shape::new(40, 3).unwrap();
    let cfg = StepConfig::for_rows(40);
    let trainers: Vec<Box<dyn Trainer>> = vec![
        Box::new(CpuTrainer::new(shape, cfg, TableSource::Random { seed: 1 }).unwrap()),
        Box::new(GpuTrainer::new(gpu(), shape, cfg, TableSource::Random { seed: 1 }, GpuOptions::default()).unwrap()),
    ];
    for mut t in trainers {
        let good = t.run_state().unwrap();
        for bad in [
            latent_line::RunState { lr: f32::NAN, ..good.clone() },
            latent_line::RunState { lr: -1.0, ..good.clone() },
            latent_line::RunState { steps: u64::MAX, ..good.clone() },
            latent_line::RunState { skips: u32::MAX, ..good.clone() },
        ] {
            let e = t.set_run_state(bad.clone()).unwrap_err().to_string();
            assert!(e.starts_with("invalid run state: "), "{bad:?}: {e}");
        }
        // Set again before any step, taken; after a step, refused, not
        // taken over the steps counted.
        t.set_run_state(good.clone()).unwrap();
        t.set_run_state(latent_line::RunState { steps: 3, ..good.clone() }).unwrap();
        t.set_run_state(good.clone()).unwrap();
        t.steps(1).unwrap();
        let e = t.set_run_state(good.clone()).unwrap_err().to_string();
        assert!(e.contains("set before any step; this trainer has already stepped"), "{e}");
        assert_eq!(t.run_state().unwrap().steps, 1);
        t.set_stop(Arc::new(AtomicBool::new(true)));
        assert!(t.steps(usize::MAX).unwrap().is_empty());
    }
    // A guard's limit whose counter would wrap past it: refused.
    for guard in
        [Guard { max_skips: u32::MAX, ..Guard::default() }, Guard { max_rollbacks: u32::MAX, ..Guard::default() }]
    {
        let cfg = StepConfig { guard, ..StepConfig::for_rows(40) };
        let e = CpuTrainer::new(Shape::new(40, 3).unwrap(), cfg, TableSource::Random { seed: 1 }).err().unwrap();
        assert!(e.to_string().contains("4294967295 is more than 4294967294"), "{e}");
    }
    // A table of no rows is not saved (in a save's terms).
    let dir = tempfile::tempdir().unwrap();
    let e = latent_line::npy::save(&dir.path().join("t.npy"), Shape { rows: 0, dim: 3 }, &[]).unwrap_err();
    assert!(e.to_string().ends_with("a table of 0 rows: nothing to save"), "{e}");
    // Public helpers on values no table has.
    assert_eq!(latent_line::scan::scan_rows(&[f32::NAN], 0, 0).nan, 1);
    assert!(Batches::Random { size: 0, seed: 0 }.rows(10, 0).is_err());
    assert!(IndexBatches::new(vec![vec![0u32]], 0).is_err());
    // A batch whose slots (16 bytes each) outgrow a storage binding before
    // its rows do (D < 4): refused with the sizes, not by a wgpu error.
    let shape = Shape::new(2000, 2).unwrap();
    let opts = GpuOptions { max_binding_bytes: Some(12_000), ..GpuOptions::default() };
    let batches = Batches::Random { size: 1000, seed: 1 };
    let source = TableSource::Random { seed: 1 };
    let e = GpuTrainer::with_batches(gpu(), shape, StepConfig::for_rows(2000), source, opts, batches).err();
    let e = e.expect("slots past the binding limit").to_string();
    assert!(
        e.contains(
            "in batches of 1002 slots, its slots (16 bytes each) need a 16032-byte binding, over the device's \
             12000-byte limit; a smaller batch fits"
        ),
        "{e}"
    );
    // skip-row's strike counts (4 bytes a row) likewise, named as such.
    let cfg = StepConfig { guard: Guard { policy: Policy::SkipRow, ..Guard::default() }, ..StepConfig::for_rows(2000) };
    let opts = GpuOptions { max_binding_bytes: Some(7000), ..GpuOptions::default() };
    let e = GpuTrainer::new(gpu(), shape, cfg, TableSource::Random { seed: 1 }, opts).err();
    let e = e.expect("strikes past the binding limit").to_string();
    assert!(e.contains("its skip-row strike counts (4 bytes a row) need a 8000-byte binding"), "{e}");
}

/// `step_rows` on more distinct rows than the trainer's batches plan: the
/// GPU's batch buffers grow (the trainer rebuilt, its table, velocity,
/// snapshot, guard state and strikes carried across), as the CPU takes any
/// batch. The grown run is the run whose room was reserved from the start
/// (`GpuOptions::batch_rows`) — bit for bit on lavapipe — and the CPU's,
/// under every guard, with non-finite rows met, momentum, the anchors
/// frozen, detached or attached with clipping, random and user batches
/// (resident and streamed), in one binding and over several. Where the
/// buffers cannot grow (a binding too small) the call is refused, naming
/// the rows, and the trainer goes on as if it had not been made.
#[test]
fn step_rows_past_the_planned_batch_grows_the_gpu_buffers() {
    let seed = seed("grow_batches");
    let mut r = rng(seed);
    let (rows, dim, a, b) = (300usize, 12usize, 3usize, 290usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut table = spaced_table(seed, shape, a, b, 0.3);
    let bad: Vec<u32> = (0..3).map(|_| r.random_range(a as u32 + 1..b as u32)).collect();
    for &i in &bad {
        table[i as usize * dim + r.random_range(0..dim)] = f32::NAN;
    }
    // Two calls past the plan (the second past the first), repeats, the
    // anchors and the non-finite rows among them (skip-row's strikes from
    // the first counted on by the second).
    let mut big = |n: usize| -> Vec<u32> {
        let mut v: Vec<u32> = (0..n).map(|_| r.random_range(0..rows as u32)).collect();
        v.extend([a as u32, 7, 7, b as u32]);
        v.extend(&bad);
        v
    };
    let (big1, big2) = (big(60), big(200));
    let distinct = |v: &[u32]| {
        let mut d: Vec<u32> = v.iter().copied().filter(|&x| x != a as u32 && x != b as u32).collect();
        d.sort_unstable();
        d.dedup();
        d.len()
    };
    let most = distinct(&big1).max(distinct(&big2));
    // Batches of unequal sizes (an epoch's last random batch is 300 mod 23
    // = 1 row; user batches of 6 to 18 distinct rows): a step not run
    // names the batch of the step the run stopped at.
    let given: Vec<Vec<i64>> =
        (0..13).map(|k| (0..6 + k).map(|i| ((k * 17 + i * 5) % rows) as i64).collect()).collect();
    let plans = [
        ("random", Batches::Random { size: 23, seed }, None),
        ("user, resident", Batches::Indices(IndexBatches::new(given.clone(), rows).unwrap()), None),
        ("user, streamed", Batches::Indices(IndexBatches::new(given, rows).unwrap()), Some(8)),
    ];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for (case, policy) in POLICIES.into_iter().enumerate() {
        for (name, batches, resident) in &plans {
            for chunk_rows in [None, Some(128)] {
                // (Each guard with momentum or without, and with the
                // anchors frozen, detached or attached with clipping: a
                // first read of the batch, its coefficients by slot.)
                let endpoints = [Endpoints::Frozen, Endpoints::Detached, Endpoints::Attached][case % 3];
                let cfg = StepConfig {
                    anchor_a: a,
                    anchor_b: b,
                    lr: 0.05,
                    endpoints,
                    clip_norm: if endpoints == Endpoints::Attached { 0.5 } else { 0.0 },
                    momentum: if case % 2 == 0 { 0.9 } else { 0.0 },
                    guard: Guard { policy, snapshot_every: 3, max_skips: 100, max_rollbacks: 100, ..Guard::default() },
                    ..StepConfig::for_rows(rows)
                };
                let ctx = format!("{policy:?}, {endpoints:?}, {name}, chunks of {chunk_rows:?} rows, seed {seed}");
                // The calls, on any trainer: table (and velocity) bits and records.
                let calls = |t: &mut dyn Trainer, sizes: &mut dyn FnMut(&dyn Trainer)| {
                    let mut recs = t.steps(3).unwrap();
                    recs.push(t.step_rows(&big1).unwrap());
                    sizes(&*t);
                    recs.extend(t.steps(4).unwrap());
                    recs.push(t.step_rows(&big2).unwrap());
                    sizes(&*t);
                    recs.extend(t.steps(3).unwrap());
                    let mut out = bits(&t.read_table().unwrap());
                    out.extend(bits(&t.read_velocity().unwrap().unwrap_or_default()));
                    (out, recs)
                };
                let opts = |reserve: Option<usize>| GpuOptions {
                    max_chunk_rows: chunk_rows,
                    resident_batches: *resident,
                    batch_rows: reserve,
                    ..lane_opts(1, 1, false)
                };
                // The buffers' rows, opened and at the end: grown by a call
                // only while the run goes on (an aborted run's calls do
                // nothing, as on the CPU: calls 3 and 8 of the records).
                let gpu_run = |reserve: Option<usize>, want: &dyn Fn(&[latent_line::Record]) -> [usize; 2]| {
                    let source = TableSource::Data(table.clone());
                    let mut t =
                        GpuTrainer::with_batches(gpu(), shape, cfg, source, opts(reserve), batches.clone()).unwrap();
                    let planned = t.batch_rows().unwrap();
                    let run = calls(&mut t, &mut |_| {});
                    // (Planned steps dispatch over the plan's slots, not the room.)
                    let plan = if *name == "random" { 23 } else { 18 };
                    assert_eq!(t.dispatched_batch_rows(), Some(plan), "{ctx}: reserved {reserve:?}");
                    let seen = [planned, t.batch_rows().unwrap()];
                    assert_eq!(seen, want(&run.1), "{ctx}: the batch buffers' rows (reserved {reserve:?})");
                    run
                };
                let planned = if *name == "random" { 23 } else { 18 };
                let grows = |recs: &[latent_line::Record]| {
                    let aborted = recs.iter().position(|r| r.action == Action::Aborted).unwrap_or(usize::MAX);
                    let room = match aborted {
                        0..3 => planned,
                        3..8 => distinct(&big1),
                        _ => distinct(&big2),
                    };
                    [planned, room]
                };
                let grown = gpu_run(None, &grows);
                let reserved = gpu_run(Some(most), &|_| [most, most]);
                assert_same_run(&grown, &reserved, dim, &format!("{ctx}: grown against reserved"));
                assert!(grown.1.iter().any(|rec| !rec.scans.is_clean()), "{ctx}: no step met a non-finite row");
                // The CPU's run: the same actions, batches and findings, the
                // same non-finite elements, the finite ones close.
                let mut cpu =
                    CpuTrainer::with_batches(shape, cfg, TableSource::Data(table.clone()), batches.clone()).unwrap();
                let on_cpu = calls(&mut cpu, &mut |_| {});
                let said = |r: &[latent_line::Record]| {
                    format!("{:?}", r.iter().map(|x| (x.action, x.batch, x.lr, &x.scans)).collect::<Vec<_>>())
                };
                assert_eq!(said(&grown.1), said(&on_cpu.1), "{ctx}: GPU and CPU records");
                let as_f64 = |t: &[u32]| -> Vec<f64> {
                    t.iter().map(|&b| f32::from_bits(b)).map(|x| if x.is_finite() { x as f64 } else { 0.0 }).collect()
                };
                let nonfinite = |t: &[u32]| t.iter().map(|&b| !f32::from_bits(b).is_finite()).collect::<Vec<bool>>();
                assert_eq!(nonfinite(&grown.0), nonfinite(&on_cpu.0), "{ctx}: non-finite elements");
                let got: Vec<f32> = as_f64(&grown.0).iter().map(|&x| x as f32).collect();
                assert_table_close(&got, &as_f64(&on_cpu.0), dim, TOL, &format!("{ctx}: GPU against CPU"));
            }
        }
    }
    // The kernel's shape is the plan's, not the room's: a growth (or a
    // reserve) past the slots that take a second row block a workgroup
    // (2 × 1024 workgroups of 64 rows, lavapipe's) keeps the plan's one,
    // and so its bits, attached anchors and clipping's first read too.
    {
        let (rows, dim) = (140_000usize, 4usize);
        let shape = Shape::new(rows, dim).unwrap();
        let table = spaced_table(seed, shape, 0, rows - 1, 0.3);
        let cfg = StepConfig { endpoints: Endpoints::Attached, clip_norm: 0.5, lr: 0.05, ..StepConfig::for_rows(rows) };
        let all: Vec<u32> = (0..rows as u32).collect();
        let run = |reserve: Option<usize>| {
            let opts = GpuOptions { batch_rows: reserve, ..GpuOptions::default() };
            let source = TableSource::Data(table.clone());
            let batches = Batches::Random { size: 64, seed };
            let mut t = GpuTrainer::with_batches(gpu(), shape, cfg, source, opts, batches).unwrap();
            let blocks = t.row_blocks();
            let mut recs = t.steps(2).unwrap();
            recs.push(t.step_rows(&all).unwrap());
            recs.extend(t.steps(2).unwrap());
            assert_eq!((blocks, t.row_blocks()), (1, 1), "reserved {reserve:?}");
            (bits(&t.read_table().unwrap()), recs)
        };
        assert_same_run(&run(None), &run(Some(rows)), dim, &format!("past a row block's slots, seed {seed}"));
    }
    // Buffers that cannot grow: a binding of 128 rows' bytes holds no
    // batch of more. Refused, naming the rows; the trainer goes on as if
    // the call had not been made.
    let cfg = StepConfig { anchor_a: a, anchor_b: b, lr: 0.05, ..StepConfig::for_rows(rows) };
    let opts = GpuOptions { max_binding_bytes: Some(128 * dim as u64 * 4), ..lane_opts(1, 1, false) };
    let open = || {
        let source = TableSource::Data(table.clone());
        GpuTrainer::with_batches(gpu(), shape, cfg, source, opts.clone(), Batches::Random { size: 20, seed }).unwrap()
    };
    let (mut refused, mut plain) = (open(), open());
    refused.steps(2).unwrap();
    let e = refused.step_rows(&big2).unwrap_err().to_string();
    let n = distinct(&big2);
    assert!(e.starts_with(&format!("invalid step_rows: {n} distinct rows besides the anchors, more than")), "{e}");
    assert!(e.contains("could not grow") && e.contains("binding"), "{e}");
    refused.steps(3).unwrap();
    plain.steps(5).unwrap();
    assert_eq!(refused.run_state().unwrap().steps, 5);
    assert!(bits(&refused.read_table().unwrap()) == bits(&plain.read_table().unwrap()), "seed {seed}");
}
