//! SPEC §7–§9 by fault injection, fresh random positions every run (seed
//! printed): planted NaN / ±Inf / subnormals are found exactly by every
//! scan; a loss or gradient made non-finite on purpose triggers each guard
//! policy, after which the table is exactly what the policy promises; the
//! audit sees the anchors collapse in `detached` mode.

mod common;

use rand::Rng;

use common::*;
use latent_line::cpu::CpuTrainer;
use latent_line::gpu::{scan_values, GpuOptions, GpuTrainer};
use latent_line::scan::{scan_rows, BadElement, Scan, ROW_CAP};
use latent_line::{reference, Action, Endpoints, Guard, Policy, Shape, StepConfig, TableSource, Trainer};

/// What a scan must report, computed the plain way (value tests, not bits).
fn expected(table: &[f32], dim: usize) -> Scan {
    let mut s = Scan::default();
    let mut bad_rows = Vec::new();
    for (i, &v) in table.iter().enumerate() {
        if v.is_finite() {
            continue;
        }
        if v.is_nan() {
            s.nan += 1;
        } else if v > 0.0 {
            s.pos_inf += 1;
        } else {
            s.neg_inf += 1;
        }
        let row = (i / dim) as u64;
        if s.first.is_none() {
            s.first = Some(BadElement { row, col: (i % dim) as u64, bits: v.to_bits() });
        }
        if bad_rows.last() != Some(&row) {
            bad_rows.push(row);
        }
    }
    s.bad_rows = bad_rows.len() as u64;
    s.rows = bad_rows.into_iter().take(ROW_CAP).collect();
    s
}

/// Plants `n` bad values (NaN with random payload and sign, ±Inf) at random
/// places, plus the first and last element, plus subnormals that must NOT be
/// reported. Returns the planted flat positions of bad values.
fn plant(rng: &mut impl Rng, table: &mut [f32], n: usize) {
    let len = table.len();
    let mut at: Vec<usize> = (0..n).map(|_| rng.random_range(0..len)).collect();
    at.push(0);
    at.push(len - 1);
    for i in at {
        table[i] = match rng.random_range(0..4) {
            0 => f32::INFINITY,
            1 => f32::NEG_INFINITY,
            2 => f32::from_bits(0x7f80_0000 | rng.random_range(1..0x0080_0000u32)), // NaN, any payload
            _ => f32::from_bits(0xff80_0000 | rng.random_range(1..0x0080_0000u32)), // negative NaN
        };
    }
    for _ in 0..n {
        let i = rng.random_range(0..len);
        if table[i].is_finite() {
            table[i] = f32::from_bits(rng.random_range(1..0x0080_0000u32)); // subnormal: finite
        }
    }
}

#[test]
fn every_scan_finds_planted_values_exactly() {
    let seed = seed("scan_planted");
    let mut r = rng(seed);
    // (rows, dim, planted): few findings, and more bad rows than the cap;
    // then rows so wide that on lavapipe a workgroup scans fewer rows than
    // it has lanes (its loop limit: src/gpu/scan.rs `scan_tile`), 4-byte
    // and 16-byte, with a partial last tile.
    for (case, (rows, dim, n)) in [
        (3000usize, 5usize, 6usize),
        (2100, 64, 150),
        (700, 131, 3),
        (5000, 1, 90),
        (300, 70_001, 250),
        (300, 60_000, 250),
    ]
    .into_iter()
    .enumerate()
    {
        let shape = Shape::new(rows, dim).unwrap();
        let mut table = random_table(&mut r, rows, dim);
        plant(&mut r, &mut table, n);
        let want = expected(&table, dim);
        assert!(want.nonfinite() > 0 && want.first.unwrap().row == 0, "case {case}, seed {seed}");
        let ctx = format!("case {case} ({rows} × {dim}), seed {seed}");

        assert_eq!(scan_rows(&table, dim, 0), want, "cpu scan_rows, {ctx}");
        // GPU: one binding, and forced across 7 bindings (findings in several).
        for chunk_rows in [None, Some(rows.div_ceil(7))] {
            assert_eq!(scan_values(gpu(), &table, shape, chunk_rows).unwrap(), want, "gpu scan {chunk_rows:?}, {ctx}");
        }
        // The trainers' scans of a loaded table.
        let cfg = StepConfig::for_rows(rows);
        let mut cpu = CpuTrainer::new(shape, cfg, TableSource::Data(table.clone())).unwrap();
        assert_eq!(cpu.scan_table().unwrap(), want, "cpu trainer, {ctx}");
        let opts = GpuOptions { max_chunk_rows: Some(rows.div_ceil(3)), ..GpuOptions::default() };
        let mut g = GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.clone()), opts).unwrap();
        assert_eq!(g.scan_table().unwrap(), want, "gpu trainer, {ctx}");
    }
}

#[test]
fn a_clean_table_scans_clean() {
    let seed = seed("scan_clean");
    let table = random_table(&mut rng(seed), 1000, 9);
    let shape = Shape::new(1000, 9).unwrap();
    assert!(scan_values(gpu(), &table, shape, Some(100)).unwrap().is_clean(), "seed {seed}");
    assert!(scan_rows(&table, 9, 0).is_clean(), "seed {seed}");
}

/// The backends under test: CPU, and GPU split across several bindings,
/// 8 lanes to a row (so rows up to 64 wide stay in registers: the scans'
/// rare detail path runs for every fault planted here), each workgroup
/// stepping one row block, then four in turn (a lane sees four rows: its
/// findings must stay its lowest row's); where D is a multiple of 4, also
/// with the kept columns taken 16 bytes at a time (a column's lane is then
/// (k / 4) mod 8, not k mod 8).
fn trainers(shape: Shape, cfg: StepConfig, table: &[f32]) -> Vec<(&'static str, Box<dyn Trainer>)> {
    let gpu_with = |blocks: u32, vec4: bool| {
        let opts = GpuOptions {
            max_chunk_rows: Some(shape.rows.div_ceil(4)),
            lanes_per_row: Some(8),
            row_blocks: Some(blocks),
            vec4: Some(vec4),
            ..GpuOptions::default()
        };
        let t = GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.to_vec()), opts).unwrap();
        assert_eq!((t.row_blocks(), t.vec4()), (blocks, vec4));
        Box::new(t) as Box<dyn Trainer>
    };
    let mut all = vec![
        ("cpu", Box::new(CpuTrainer::new(shape, cfg, TableSource::Data(table.to_vec())).unwrap()) as Box<dyn Trainer>),
        ("gpu", gpu_with(1, false)),
        ("gpu-4-blocks", gpu_with(4, false)),
    ];
    if shape.dim.is_multiple_of(4) {
        all.push(("gpu-vec4-2-blocks", gpu_with(2, true)));
    }
    all
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn row(t: &[f32], r: usize, dim: usize) -> &[f32] {
    &t[r * dim..][..dim]
}

/// A fault at a random non-anchor row: a loss fault (a NaN or ±Inf in the
/// row), or a gradient fault (the row set to anchor p exactly under the
/// naive formula: d1 = 0, the loss stays finite, the gradient is NaN).
#[derive(Clone, Copy, Debug)]
enum Fault {
    Loss { row: usize, col: usize, value: f32 },
    Grad { row: usize },
}

struct Case {
    shape: Shape,
    cfg: StepConfig,
    table: Vec<f32>,
    fault: Fault,
}

fn case(r: &mut impl Rng, policy: Policy, grad: bool) -> Case {
    let (rows, dim) = (r.random_range(40..400), r.random_range(1..40));
    let shape = Shape::new(rows, dim).unwrap();
    let table = random_table(r, rows, dim);
    let (a, b) = (r.random_range(0..rows / 2), r.random_range(rows / 2..rows));
    let mut bad = r.random_range(0..rows);
    while bad == a || bad == b {
        bad = r.random_range(0..rows);
    }
    let guard = Guard { policy, snapshot_every: 4, ..Guard::default() };
    let base = StepConfig { anchor_a: a, anchor_b: b, lr: 0.05, guard, ..StepConfig::for_rows(rows) };
    if grad {
        // Frozen anchors: the naive formula's only blow-up is the planted row.
        let cfg = StepConfig { naive: true, eps: 0.0, endpoints: Endpoints::Frozen, ..base };
        Case { shape, cfg, table, fault: Fault::Grad { row: bad } }
    } else {
        let value = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][r.random_range(0..3)];
        Case { shape, cfg: base, table, fault: Fault::Loss { row: bad, col: r.random_range(0..dim), value } }
    }
}

/// A case of two columns or more: in one column every row between the
/// anchors has r = 0, so after a few steps many rows sit on the segment,
/// where `on_segment` leaves them out of a comparison.
fn case_2d(r: &mut impl Rng, policy: Policy, grad: bool) -> Case {
    loop {
        let c = case(r, policy, grad);
        if c.shape.dim >= 2 {
            return c;
        }
    }
}

fn inject(t: &mut dyn Trainer, c: &Case) -> usize {
    let dim = c.shape.dim;
    let now = t.read_table().unwrap();
    match c.fault {
        Fault::Loss { row, col, value } => {
            let mut v = row_of(&now, row, dim);
            v[col] = value;
            t.write_row(row, &v).unwrap();
            row
        }
        Fault::Grad { row } => {
            t.write_row(row, &row_of(&now, c.cfg.anchor_a, dim)).unwrap();
            row
        }
    }
}

/// Is row `i` of `t` on the segment between the case's anchors, to rounding
/// (|r| ≲ 1e-4)? There sign(r) is decided by rounding, and f32 and f64 may
/// take steps 2·lr·|g| apart (|g| small): such rows are not compared.
fn on_segment(t: &[f32], i: usize, c: &Case) -> bool {
    let dim = c.shape.dim;
    let dist = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
    let (p, q, x) = (row(t, c.cfg.anchor_a, dim), row(t, c.cfg.anchor_b, dim), row(t, i, dim));
    let d0 = dist(p, q);
    (dist(x, p) + dist(x, q) - d0).abs() < 1e-4 * (1.0 + d0)
}

fn row_of(t: &[f32], r: usize, dim: usize) -> Vec<f32> {
    row(t, r, dim).to_vec()
}

/// The scans of the failing step point at the planted row, in the buffer
/// the fault belongs to.
fn check_scans(name: &str, rec: &latent_line::Record, c: &Case, bad: usize, ctx: &str) {
    match c.fault {
        Fault::Loss { .. } => {
            assert_eq!(rec.scans.loss.rows, vec![bad as u64], "{name} loss scan, {ctx}");
            assert_eq!(rec.scans.loss.nan, 1, "{name}: the loss term of a non-finite row is NaN, {ctx}");
        }
        Fault::Grad { .. } => {
            assert!(rec.scans.loss.is_clean(), "{name}: a gradient fault keeps the loss finite, {ctx}");
            assert_eq!(rec.scans.grad.rows, vec![bad as u64], "{name} gradient scan, {ctx}");
            assert_eq!(rec.scans.grad.nan, c.shape.dim as u64, "{name}, {ctx}");
            assert!(
                rec.near_singular >= 3,
                "{name}: anchors + the planted row (and any row trained onto an anchor), {ctx}"
            );
        }
    }
}

const WARMUP: usize = 6;

#[test]
fn skip_step_and_abort_leave_the_table_as_before_the_step() {
    let seed = seed("guard_skip_abort");
    let mut r = rng(seed);
    for (policy, grad) in
        [(Policy::SkipStep, false), (Policy::SkipStep, true), (Policy::Abort, false), (Policy::Abort, true)]
    {
        let c = case(&mut r, policy, grad);
        let ctx = format!("{policy:?} {:?}, seed {seed}", c.fault);
        for (name, mut t) in trainers(c.shape, c.cfg, &c.table) {
            let good = t.steps(WARMUP).unwrap();
            assert!(good.iter().all(|g| g.action == Action::Applied), "{name}, {ctx}");
            let bad = inject(t.as_mut(), &c);
            let before = t.read_table().unwrap();
            let recs = t.steps(3).unwrap();
            check_scans(name, &recs[0], &c, bad, &ctx);
            let actions: Vec<Action> = recs.iter().map(|r| r.action).collect();
            let want = match policy {
                Policy::SkipStep => vec![Action::SkippedStep; 3],
                _ => vec![Action::Aborted, Action::NotRun, Action::NotRun],
            };
            assert_eq!(actions, want, "{name}, {ctx}");
            assert!(same_bits(&t.read_table().unwrap(), &before), "{name}: table changed, {ctx}");
        }
    }
}

#[test]
fn skip_step_aborts_after_max_skips() {
    let seed = seed("guard_max_skips");
    let mut c = case(&mut rng(seed), Policy::SkipStep, false);
    const S: Action = Action::SkippedStep;
    // K skips in a row are allowed; the next failure aborts (K = 0: the
    // first, as `--max-rollbacks 0` aborts at the first rollback).
    for k in [3usize, 0] {
        c.cfg.guard.max_skips = k as u32;
        for (name, mut t) in trainers(c.shape, c.cfg, &c.table) {
            inject(t.as_mut(), &c);
            let actions: Vec<Action> = t.steps(6).unwrap().iter().map(|r| r.action).collect();
            let mut want = vec![S; k];
            want.push(Action::Aborted);
            want.resize(6, Action::NotRun);
            assert_eq!(actions, want, "{name}, K {k}, seed {seed}");
        }
    }
}

#[test]
fn rollback_restores_the_last_snapshot_and_backs_off_lr() {
    let seed = seed("guard_rollback");
    let mut r = rng(seed);
    for grad in [false, true] {
        let c = case(&mut r, Policy::Rollback, grad);
        let ctx = format!("{:?}, seed {seed}", c.fault);
        let every = c.cfg.guard.snapshot_every as usize;
        for (name, mut t) in trainers(c.shape, c.cfg, &c.table) {
            // Snapshots at steps 0 and 4; the table at step 4 is the one to return to.
            t.steps(every).unwrap();
            let snapshot = t.read_table().unwrap();
            t.steps(WARMUP - every).unwrap();
            let bad = inject(t.as_mut(), &c);
            let rec = t.steps(1).unwrap().remove(0);
            check_scans(name, &rec, &c, bad, &ctx);
            assert_eq!(rec.action, Action::RolledBack, "{name}, {ctx}");
            assert!(same_bits(&t.read_table().unwrap(), &snapshot), "{name}: not the snapshot, {ctx}");
            let next = t.steps(1).unwrap().remove(0);
            assert_eq!(next.action, Action::Applied, "{name}, {ctx}");
            assert_eq!(next.lr, (c.cfg.lr * c.cfg.guard.backoff) as f64, "{name}: lr backed off, {ctx}");
        }
    }
}

/// SPEC §13: a run resumed between two snapshot steps, given the saved
/// run state and snapshot, rolls back to the table the unbroken run rolls
/// back to (the snapshot before the resume point, not the resume point).
#[test]
fn a_resumed_rollback_restores_the_unbroken_runs_snapshot() {
    let seed = seed("resume_rollback");
    let c = case(&mut rng(seed), Policy::Rollback, false);
    let every = c.cfg.guard.snapshot_every as usize;
    let split = every + 2; // between the snapshots at `every` and 2·`every`
    for (name, mut whole) in trainers(c.shape, c.cfg, &c.table) {
        let ctx = format!("{name}, {:?}, seed {seed}", c.fault);
        whole.steps(every).unwrap();
        let at_snapshot = whole.read_table().unwrap();
        whole.steps(split - every).unwrap();
        let (table, state) = (whole.read_table().unwrap(), whole.run_state().unwrap());
        let snapshot = whole.read_snapshot().unwrap().unwrap_or_else(|| panic!("{ctx}: no snapshot"));
        assert!(same_bits(&snapshot, &at_snapshot), "{ctx}: the snapshot is not the table at step {every}");
        // The second half, on a fresh trainer of the same backend.
        let mut resumed = trainers(c.shape, c.cfg, &table).into_iter().find(|(n, _)| *n == name).unwrap().1;
        resumed.set_run_state(state.clone()).unwrap();
        resumed.set_snapshot(&snapshot).unwrap();
        for t in [&mut whole, &mut resumed] {
            t.steps(1).unwrap();
            inject(t.as_mut(), &c);
            assert_eq!(t.steps(1).unwrap()[0].action, Action::RolledBack, "{ctx}");
            assert!(same_bits(&t.read_table().unwrap(), &at_snapshot), "{ctx}: not the step-{every} snapshot");
        }
        // Without the snapshot a resumed run snapshots at its first step.
        let mut bare = trainers(c.shape, c.cfg, &table).into_iter().find(|(n, _)| *n == name).unwrap().1;
        bare.set_run_state(state).unwrap();
        assert!(bare.read_snapshot().unwrap().is_none(), "{ctx}: a snapshot before any step");
        bare.steps(1).unwrap();
        assert!(same_bits(&bare.read_snapshot().unwrap().unwrap(), &table), "{ctx}: no snapshot at the resume step");
    }
}

#[test]
fn rollback_aborts_after_max_rollbacks() {
    let seed = seed("guard_max_rollbacks");
    let mut c = case(&mut rng(seed), Policy::Rollback, false);
    c.cfg.guard.max_rollbacks = 2;
    for (name, mut t) in trainers(c.shape, c.cfg, &c.table) {
        let mut actions = Vec::new();
        // The fault is planted before step 0, so the step-0 snapshot holds it
        // too: every rollback restores it and fails again (planting it anew
        // each time keeps the test independent of that).
        for _ in 0..3 {
            inject(t.as_mut(), &c);
            actions.push(t.steps(1).unwrap()[0].action);
        }
        assert_eq!(actions, [Action::RolledBack, Action::RolledBack, Action::Aborted], "{name}, seed {seed}");
    }
}

/// A row's strike count saturates at 2^32 − 2, the most a run state
/// carries on: a run resumed at it strikes the row again and its state
/// can still be resumed (it wrapped to 0 on the CPU in debug builds'
/// overflow, and on the GPU).
#[test]
fn strike_counts_saturate_where_a_run_state_can_carry_them() {
    let seed = seed("strike_saturates");
    let (rows, dim) = (40usize, 6usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut r = rng(seed);
    let table = random_table(&mut r, rows, dim);
    let row = r.random_range(1..rows - 1);
    let cfg = StepConfig { guard: Guard { policy: Policy::SkipRow, ..Guard::default() }, ..StepConfig::for_rows(rows) };
    for (name, mut t) in trainers(shape, cfg, &table) {
        t.write_row(row, &vec![f32::NAN; dim]).unwrap();
        let most = u32::MAX - 1;
        let state = latent_line::RunState { lr: cfg.lr, strikes: vec![(row as u32, most - 1)], ..Default::default() };
        t.set_run_state(state).unwrap();
        t.steps(3).unwrap();
        let after = t.run_state().unwrap();
        assert_eq!(after.strikes, vec![(row as u32, most)], "{name}, seed {seed}");
        // (Resumed by a trainer of the same kind: a run state is set
        // before any step.)
        let (_, mut resumed) = trainers(shape, cfg, &table).into_iter().find(|(n, _)| *n == name).unwrap();
        resumed.set_run_state(after).unwrap_or_else(|e| panic!("{name}: {e}, seed {seed}"));
    }
}

#[test]
fn skip_row_keeps_only_the_offending_rows_and_counts_strikes() {
    let seed = seed("guard_skip_row");
    let mut r = rng(seed);
    for grad in [false, true] {
        let c = case_2d(&mut r, Policy::SkipRow, grad);
        let ctx = format!("{:?}, seed {seed}", c.fault);
        let dim = c.shape.dim;
        for (name, mut t) in trainers(c.shape, c.cfg, &c.table) {
            t.steps(WARMUP).unwrap();
            let bad = inject(t.as_mut(), &c);
            let before = t.read_table().unwrap();
            for strike in 1..=2u32 {
                let start = t.read_table().unwrap();
                let rec = t.steps(1).unwrap().remove(0);
                check_scans(name, &rec, &c, bad, &ctx);
                assert_eq!(rec.action, Action::SkippedRows, "{name}, {ctx}");
                assert_eq!(rec.scans.strikes, vec![strike], "{name}: strikes of row {bad}, {ctx}");
                let got = t.read_table().unwrap();
                assert!(same_bits(row(&got, bad, dim), row(&before, bad, dim)), "{name}: row {bad} changed, {ctx}");
                // Every other row took the normal step (the planted row is
                // not an anchor, so nobody else depends on it).
                let mut want = to_f64(&start);
                reference::step(&mut want, c.shape, &c.cfg);
                // A row left unwritten would be off by lr·|g| ≈ 0.05.
                let compared: Vec<usize> =
                    (0..c.shape.rows).filter(|&i| i != bad && !on_segment(&start, i, &c)).collect();
                assert!(compared.len() >= c.shape.rows / 2, "{name}: {} rows compared, {ctx}", compared.len());
                for i in compared {
                    let (err, _) = max_rel_err(row(&got, i, dim), &want[i * dim..][..dim]);
                    assert!(err <= 1e-5, "{name}: row {i} off by {err:e}, {ctx}");
                }
            }
        }
    }
}

#[test]
fn ignore_writes_the_non_finite_row_and_says_so() {
    let seed = seed("guard_ignore");
    let c = case(&mut rng(seed), Policy::Ignore, true);
    for (name, mut t) in trainers(c.shape, c.cfg, &c.table) {
        let bad = inject(t.as_mut(), &c);
        let rec = t.steps(1).unwrap().remove(0);
        assert_eq!(rec.action, Action::Ignored, "{name}, seed {seed}");
        assert_eq!(rec.scans.table.rows, vec![bad as u64], "{name}, seed {seed}");
        let s = t.scan_table().unwrap();
        assert_eq!((s.rows.clone(), s.nan), (vec![bad as u64], c.shape.dim as u64), "{name}, seed {seed}");
    }
}

/// A row read with ±Inf writes NaN by definition, the same bits
/// (0x7fc00000) on both backends and every path: full table and batches,
/// without weight decay (its 0·Inf is x86's other NaN, 0xffc00000) and
/// with, with momentum (its velocity too), attached anchors (the two-read
/// step).
#[test]
fn a_row_read_with_inf_writes_the_same_nan_on_every_backend() {
    use latent_line::{Batches, IndexBatches};
    let seed = seed("inf_row_nan_bits");
    let mut r = rng(seed);
    let (rows, dim) = (r.random_range(40..200), r.random_range(1..20) * 4);
    let shape = Shape::new(rows, dim).unwrap();
    let mut table = random_table(&mut r, rows, dim);
    let bad = r.random_range(2..rows - 1);
    table[bad * dim + r.random_range(0..dim)] = [f32::INFINITY, f32::NEG_INFINITY][r.random_range(0..2)];
    let all_rows: Vec<i64> = (0..rows as i64).collect();
    for (what, momentum, weight_decay, endpoints) in [
        ("plain", 0.0, 0.0, Endpoints::Frozen),
        ("weight decay", 0.0, 0.1, Endpoints::Frozen),
        ("momentum", 0.5, 0.0, Endpoints::Frozen),
        ("attached", 0.0, 0.0, Endpoints::Attached),
    ] {
        let cfg = StepConfig {
            lr: 0.05,
            weight_decay,
            momentum,
            endpoints,
            guard: Guard { policy: Policy::Ignore, ..Guard::default() },
            ..StepConfig::for_rows(rows)
        };
        for batches in [Batches::Full, Batches::Indices(IndexBatches::new(vec![all_rows.clone()], rows).unwrap())] {
            let ctx = format!("{what}, full {}, {rows} × {dim}, row {bad}, seed {seed}", batches.is_full());
            let mut got = Vec::new();
            let mut cpu =
                CpuTrainer::with_batches(shape, cfg, TableSource::Data(table.clone()), batches.clone()).unwrap();
            let opts = GpuOptions { lanes_per_row: Some(4), ..GpuOptions::default() };
            let mut g =
                GpuTrainer::with_batches(gpu(), shape, cfg, TableSource::Data(table.clone()), opts, batches).unwrap();
            for t in [&mut cpu as &mut dyn Trainer, &mut g] {
                let rec = t.steps(1).unwrap().remove(0);
                let out = t.read_table().unwrap();
                assert!(
                    row(&out, bad, dim).iter().all(|v| v.to_bits() == 0x7fc0_0000),
                    "{ctx}: {:?}",
                    row(&out, bad, dim)
                );
                if let Some(v) = t.read_velocity().unwrap() {
                    assert!(row(&v, bad, dim).iter().all(|v| v.to_bits() == 0x7fc0_0000), "{ctx}: velocity");
                }
                got.push((rec.scans.table.first.map(|f| f.bits), rec.scans.grad.first.map(|f| f.bits)));
            }
            // Attached anchors sum the planted row's NaN gradient into
            // theirs: NaN by arithmetic, whose bits are the hardware's
            // (NVIDIA's is 0x7fffffff), and anchor a's row may be the first
            // finding; elsewhere the findings are the planted row's.
            if endpoints != Endpoints::Attached {
                assert_eq!(got[0], got[1], "cpu against gpu: the findings' bits, {ctx}");
                assert_eq!(got[0].0, Some(0x7fc0_0000), "{ctx}");
            }
        }
    }
}

/// Values that overflow alone — |x| near f32::MAX under weight decay: the
/// row's gradient stays finite (1/d = 0), each such new value is ∓∞ — are
/// reported at the lowest column, with its bits, by every trainer. With
/// 16-byte kept columns a column's lane is (k / 4) mod L rather than
/// k mod L (except under skip-row, which goes over the columns one lane
/// apart), and the flush must read the bits from the lane that saw the
/// column: the first column is drawn where the two mappings differ, and
/// the lane each would wrongly name holds a later finding of the other
/// sign.
#[test]
fn lone_overflows_are_reported_at_the_first_column_with_its_bits() {
    let seed = seed("lone_overflow");
    let mut r = rng(seed);
    let (rows, dim, lanes) = (300usize, 32usize, 8usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut table = random_table(&mut r, rows, dim);
    let row = r.random_range(10..240);
    let first = loop {
        let c = r.random_range(0..dim);
        if c % lanes != (c / 4) % lanes && 4 * (c % lanes) > c {
            break c;
        }
    };
    // A column of lane `first % lanes`'s vec4, after `first`; and one
    // after it that lane `(first / 4) % lanes` takes one column at a time.
    let later = 4 * (first % lanes) + r.random_range(0..4);
    let third = (first + 1..dim).find(|c| c % lanes == (first / 4) % lanes).expect("first ≤ 23");
    let big = if r.random_bool(0.5) { 3e38f32 } else { -3e38 };
    table[row * dim + first] = big;
    table[row * dim + later] = -big;
    table[row * dim + third] = -big;
    let planted = if later == third { 2 } else { 3 };
    let want = BadElement { row: row as u64, col: first as u64, bits: (-big.signum() * f32::INFINITY).to_bits() };
    // In place, into the other buffer, and skip-row's own two passes.
    for policy in [Policy::Ignore, Policy::SkipStep, Policy::SkipRow] {
        let guard = Guard { policy, ..Guard::default() };
        let cfg = StepConfig {
            anchor_a: 3,
            anchor_b: 250,
            lr: 0.05,
            weight_decay: 30.0,
            guard,
            ..StepConfig::for_rows(rows)
        };
        let all = trainers(shape, cfg, &table);
        assert!(all.iter().any(|(name, _)| name.contains("vec4")), "no 16-byte trainer at D = {dim}");
        for (name, mut t) in all {
            let rec = t.steps(1).unwrap().remove(0);
            let ctx = format!("{name} {policy:?}: row {row}, columns {first}, {later}, {third}, seed {seed}");
            assert!(rec.scans.grad.is_clean(), "{ctx}: {:?}", rec.scans.grad);
            assert_eq!(rec.scans.table.first, Some(want), "{ctx}");
            assert_eq!(
                (rec.scans.table.rows.clone(), rec.scans.table.nonfinite()),
                (vec![row as u64], planted),
                "{ctx}"
            );
        }
    }
}

/// Plants an overflow at `(row, col)` of `clean` (±3e38, which a weight
/// decay of 30 turns into ∓inf in the row's new value) and checks that one
/// step with `opts` (under `ignore`, then `skip-step` with momentum)
/// reports exactly that element of the rows written, and nothing in the
/// gradient. `kept` says whether the trainer keeps its columns as the
/// caller means to test.
fn assert_planted_overflow_reported(
    r: &mut impl rand::Rng,
    clean: &[f32],
    shape: Shape,
    (row, col): (usize, usize),
    opts: GpuOptions,
    kept: impl Fn(&GpuTrainer) -> bool,
    ctx: &str,
) {
    let mut table = clean.to_vec();
    let big = if r.random_bool(0.5) { 3e38f32 } else { -3e38 };
    table[row * shape.dim + col] = big;
    let want = BadElement { row: row as u64, col: col as u64, bits: (-big.signum() * f32::INFINITY).to_bits() };
    for (policy, momentum) in [(Policy::Ignore, 0.0), (Policy::SkipStep, 0.9)] {
        let guard = Guard { policy, ..Guard::default() };
        let cfg = StepConfig {
            anchor_a: 3,
            anchor_b: shape.rows - 5,
            lr: 0.05,
            weight_decay: 30.0,
            momentum,
            guard,
            ..StepConfig::for_rows(shape.rows)
        };
        let mut t = GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.clone()), opts.clone()).unwrap();
        assert!(kept(&t), "{ctx}: the columns are not kept as the test means");
        let rec = t.steps(1).unwrap().remove(0);
        let ctx = format!("{policy:?}: row {row}, column {col}, {ctx}");
        assert!(rec.scans.grad.is_clean(), "{ctx}: {:?}", rec.scans.grad);
        assert_eq!(rec.scans.table.first, Some(want), "{ctx}");
        assert_eq!((rec.scans.table.rows.clone(), rec.scans.table.nonfinite()), (vec![row as u64], 1), "{ctx}");
    }
}

/// With 16-byte kept columns a lane may hold up to eight vec4s (4 lanes
/// at D = 64: lane l has vec4s l, l + 4, l + 8 and l + 12; 2 lanes: eight
/// each). An overflow in a later one alone must still send that lane down
/// the findings path: planted in each of vec4s b, c and d in turn at 4
/// lanes, and in e, g and h at 2.
#[test]
fn an_overflow_in_a_lanes_later_vec4_is_reported() {
    let seed = seed("later_vec4_overflow");
    let mut r = rng(seed);
    let (rows, dim) = (200usize, 64usize);
    let shape = Shape::new(rows, dim).unwrap();
    let clean = random_table(&mut r, rows, dim);
    for (lanes, q) in [(4usize, 1usize), (4, 2), (4, 3), (2, 4), (2, 6), (2, 7)] {
        let (row, lane) = (r.random_range(10..190), r.random_range(0..lanes));
        let col = 4 * (lane + q * lanes) + r.random_range(0..4);
        let opts = GpuOptions {
            lanes_per_row: Some(lanes as u32),
            row_blocks: Some(2),
            vec4: Some(true),
            ..GpuOptions::default()
        };
        let ctx = format!("vec4 {q} of lane {lane}, seed {seed}");
        assert_planted_overflow_reported(&mut r, &clean, shape, (row, col), opts, |t| t.vec4(), &ctx);
    }
}

/// 4-byte kept columns held in vectors (KEPT_VECTORS, the default; 8 lanes
/// at D = 64: lane l keeps columns l, l + 8, …, l + 56, its j-th in field
/// j / 4, component j % 4; 4 lanes: 16 a lane) or in an array (`=0`): an
/// overflow in any of them sends the lane down the findings path, which
/// reads them back from where they are held.
#[test]
fn an_overflow_in_a_kept_column_is_reported_from_vectors_and_from_an_array() {
    let seed = seed("kept_vectors_overflow");
    let mut r = rng(seed);
    let (rows, dim) = (200usize, 64usize);
    let shape = Shape::new(rows, dim).unwrap();
    let clean = random_table(&mut r, rows, dim);
    // 8 lanes: 8 columns a lane, in vectors or in an array; 4 lanes: 16 a
    // lane, all four of the vectors' fields (an array keeps at most 8).
    for (vectors, lanes, js) in [(true, 8usize, &[1usize, 4, 7][..]), (false, 8, &[1, 4, 7]), (true, 4, &[2, 9, 15])] {
        for &j in js {
            let (row, lane) = (r.random_range(10..190), r.random_range(0..lanes));
            let opts = GpuOptions {
                lanes_per_row: Some(lanes as u32),
                row_blocks: Some(2),
                kept_vectors: Some(vectors),
                vec4: Some(false), // the 4-byte path's kept columns (16-byte ones are the test above)
                ..GpuOptions::default()
            };
            let ctx = format!("kept column {j} of lane {lane} of {lanes}, in vectors {vectors}, seed {seed}");
            let kept = |t: &GpuTrainer| t.keeps_columns() && t.kept_in_vectors() == vectors;
            assert_planted_overflow_reported(&mut r, &clean, shape, (row, lane + j * lanes), opts, kept, &ctx);
        }
    }
}

/// Each step reports its own findings only: a row found in one step and
/// mended by the host is not reported again when the next step finds
/// another row, elsewhere in the table (other workgroups' findings from
/// earlier passes stay on the device and are told apart by the pass's
/// stamp).
#[test]
fn a_finding_is_reported_only_in_its_own_step() {
    let seed = seed("own_step");
    let mut r = rng(seed);
    let (rows, dim) = (400usize, 8usize);
    let shape = Shape::new(rows, dim).unwrap();
    let table = random_table(&mut r, rows, dim);
    let (first, second) = (r.random_range(5..100), r.random_range(300..395));
    for policy in [Policy::Ignore, Policy::SkipStep] {
        let guard = Guard { policy, ..Guard::default() };
        let cfg = StepConfig { anchor_a: 0, anchor_b: rows - 1, lr: 0.05, guard, ..StepConfig::for_rows(rows) };
        for (name, mut t) in trainers(shape, cfg, &table) {
            let ctx = format!("{name} {policy:?}: rows {first} then {second}, seed {seed}");
            for (step, row) in [first, second].into_iter().enumerate() {
                let mut now = t.read_table().unwrap();
                if step == 1 {
                    t.write_row(first, &table[first * dim..][..dim]).unwrap();
                    now = t.read_table().unwrap();
                }
                let mut bad = row_of(&now, row, dim);
                bad[r.random_range(0..dim)] = f32::NAN;
                t.write_row(row, &bad).unwrap();
                let rec = t.steps(1).unwrap().remove(0);
                for (what, scan) in
                    [("loss", &rec.scans.loss), ("gradient", &rec.scans.grad), ("rows", &rec.scans.table)]
                {
                    assert_eq!(scan.rows, vec![row as u64], "{ctx}: {what} scan at step {step}");
                }
                assert_eq!(rec.scans.loss.nan, 1, "{ctx}: step {step}");
            }
        }
    }
}

#[test]
fn audit_shows_detached_anchors_collapsing() {
    let seed = seed("audit_collapse");
    let (rows, dim) = (500usize, 8usize);
    let shape = Shape::new(rows, dim).unwrap();
    let table = random_table(&mut rng(seed), rows, dim);
    let cfg = StepConfig { endpoints: Endpoints::Detached, lr: 0.1, ..StepConfig::for_rows(rows) };
    for (name, mut t) in trainers(shape, cfg, &table) {
        let recs = t.steps(60).unwrap();
        // Each anchor's own row term pulls it toward the other by lr: d0
        // falls by about 2·lr a step until the anchors meet.
        for w in recs.windows(2).take(10) {
            assert!(w[1].d0 < w[0].d0, "{name}: d0 {} → {}, seed {seed}", w[0].d0, w[1].d0);
        }
        let at = latent_line::report::collapse_step(&recs, recs[0].d0, latent_line::guard::COLLAPSE_FRACTION);
        assert!(at.is_some(), "{name}: no collapse seen; d0 {} → {}, seed {seed}", recs[0].d0, recs[59].d0);
        // Both anchors sit at distance 0 from themselves: near-singular ≥ 2.
        assert!(recs.iter().all(|r| r.near_singular >= 2), "{name}, seed {seed}");
    }
    // Frozen anchors keep d0, on every backend.
    for (name, mut f) in trainers(shape, StepConfig { endpoints: Endpoints::Frozen, ..cfg }, &table) {
        let fr = f.steps(60).unwrap();
        assert!(fr.iter().all(|r| r.d0 == fr[0].d0), "{name}: frozen d0 moved, seed {seed}");
    }
}

#[test]
fn a_margin_stops_the_detached_collapse() {
    let seed = seed("audit_margin");
    let (rows, dim) = (500usize, 8usize);
    let shape = Shape::new(rows, dim).unwrap();
    let table = random_table(&mut rng(seed), rows, dim);
    let lr = 0.1f32;
    let base = StepConfig { endpoints: Endpoints::Detached, lr, ..StepConfig::for_rows(rows) };
    let d0_start = CpuTrainer::new(shape, base, TableSource::Data(table.clone())).unwrap().evaluate().unwrap().d0;
    let margin = (0.6 * d0_start) as f32;
    let cfg = StepConfig { margin, ..base };
    for (name, mut t) in trainers(shape, cfg, &table) {
        let recs = t.steps(300).unwrap();
        // d0 shrinks by 2·lr a step until it is below m; from then on the
        // separation term (λ = 1) cancels the anchors' pull exactly.
        let lowest = recs.iter().map(|r| r.d0).fold(f64::INFINITY, f64::min);
        assert!(
            lowest >= margin as f64 - 2.0 * lr as f64 - 1e-4,
            "{name}: d0 fell to {lowest} (m = {margin}), seed {seed}"
        );
        assert!(
            latent_line::report::collapse_step(&recs, recs[0].d0, latent_line::guard::COLLAPSE_FRACTION).is_none(),
            "{name}, seed {seed}"
        );
        let last = recs.last().unwrap();
        assert!(last.separation > 0.0 && last.d0 < margin as f64, "{name}: the term is active at the end, seed {seed}");
        assert!(last.mean_excess() < 0.5 * recs[0].mean_excess(), "{name}: the excess falls, seed {seed}");
    }
}

#[test]
fn scan_records_too_big_for_one_binding_are_refused_with_sizes() {
    // 64-lane workgroups of one row per lane, one row block each, keep 192
    // bytes of scan records per 64 rows: 3 bytes a row, in one binding.
    // Past the binding limit the table is refused before anything is
    // allocated. (More row blocks a workgroup would make them fit.)
    let ctx = gpu();
    let rows = (ctx.max_binding_bytes() / 3 + 1000).min(u32::MAX as u64) as usize;
    let shape = Shape::new(rows, 1).unwrap();
    let opts = GpuOptions { workgroup: Some(64), lanes_per_row: Some(1), row_blocks: Some(1), ..GpuOptions::default() };
    let err = GpuTrainer::new(ctx, shape, StepConfig::for_rows(rows), TableSource::Random { seed: 1 }, opts)
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{rows} rows")) && msg.contains("scan records"), "{msg}");
}

#[test]
fn a_non_finite_loss_alone_is_reported_not_acted_on() {
    // A row of 1e20s: s1 overflows to +Inf, so its loss term is +Inf, but
    // 1/d1 = 0 makes its gradient 0 and its new value finite. SPEC §9 acts
    // on what a step would write: the step is applied, the loss reported.
    let seed = seed("loss_only");
    let (rows, dim) = (100usize, 6usize);
    let shape = Shape::new(rows, dim).unwrap();
    let mut table = random_table(&mut rng(seed), rows, dim);
    let big = 1 + (seed as usize % (rows - 2));
    table[big * dim..][..dim].fill(1e20);
    for policy in [Policy::SkipStep, Policy::SkipRow, Policy::Abort] {
        let cfg = StepConfig { guard: Guard { policy, ..Guard::default() }, ..StepConfig::for_rows(rows) };
        for (name, mut t) in trainers(shape, cfg, &table) {
            let rec = t.steps(1).unwrap().remove(0);
            assert_eq!(rec.action, Action::Applied, "{name} {policy:?}, seed {seed}");
            assert_eq!(
                (rec.scans.loss.rows.clone(), rec.scans.loss.pos_inf),
                (vec![big as u64], 1),
                "{name}, seed {seed}"
            );
            assert!(rec.scans.grad.is_clean() && rec.scans.table.is_clean(), "{name}, seed {seed}");
            assert!(t.scan_table().unwrap().is_clean(), "{name}, seed {seed}");
        }
    }
}

#[test]
fn rollback_with_momentum_restarts_the_velocity() {
    // After a rollback the velocity of the failed trajectory is dropped:
    // the next step from the snapshot equals a first step with v = 0 at the
    // backed-off lr (checked against the f64 reference).
    let seed = seed("rollback_momentum");
    let mut c = case_2d(&mut rng(seed), Policy::Rollback, false);
    c.cfg.momentum = 0.9;
    let dim = c.shape.dim;
    for (name, mut t) in trainers(c.shape, c.cfg, &c.table) {
        t.steps(4).unwrap(); // snapshot at step 0 and 4
        let snapshot = t.read_table().unwrap();
        t.steps(2).unwrap();
        inject(t.as_mut(), &c);
        assert_eq!(t.steps(1).unwrap()[0].action, Action::RolledBack, "{name}, seed {seed}");
        assert!(same_bits(&t.read_table().unwrap(), &snapshot), "{name}: not the snapshot, seed {seed}");
        t.steps(1).unwrap();
        let got = t.read_table().unwrap();
        let mut want = to_f64(&snapshot);
        let mut vel = vec![0.0f64; want.len()];
        let lr = c.cfg.lr * c.cfg.guard.backoff;
        reference::step_with_velocity(&mut want, &mut vel, c.shape, &StepConfig { lr, ..c.cfg });
        let compared: Vec<usize> = (0..c.shape.rows).filter(|&i| !on_segment(&snapshot, i, &c)).collect();
        assert!(compared.len() >= c.shape.rows / 2, "{name}: {} rows compared, seed {seed}", compared.len());
        for i in compared {
            let (err, _) = max_rel_err(row(&got, i, dim), &want[i * dim..][..dim]);
            assert!(err <= 1e-5, "{name}: row {i} off by {err:e} (velocity not restarted?), seed {seed}");
        }
    }
}

/// Clipping (SPEC §5) with a gradient that is finite but whose Σ g²
/// overflows f32 (a separation weight of 1e20: the anchors' g ≈ 1e20):
/// the norm is +Inf, so every update would be non-finite and the guard
/// acts (skip-step drops the step, skip-row keeps every row), as the
/// reference says; the row was left out of the
/// norm before, and the anchors took an unclipped step of ≈ 1e19. At a
/// weight of 1e15 (Σ g² ≈ 1e30, in range) the step is clipped as usual.
#[test]
fn a_clip_norm_that_overflows_goes_through_the_guard() {
    let seed = seed("clip_overflow");
    let (rows, dim) = (300usize, 8usize);
    let shape = Shape::new(rows, dim).unwrap();
    let (a, b) = (5, 250);
    let table = spaced_table(seed, shape, a, b, 0.3);
    let cases = [
        (Endpoints::Detached, Policy::SkipStep),
        (Endpoints::Attached, Policy::SkipStep),
        (Endpoints::Detached, Policy::SkipRow),
    ];
    for (endpoints, policy) in cases {
        for weight in [1e20f32, 1e15] {
            let cfg = StepConfig {
                anchor_a: a,
                anchor_b: b,
                endpoints,
                margin: 100.0,
                margin_weight: weight,
                clip_norm: 1.0,
                lr: 0.05,
                guard: Guard { policy, ..Guard::default() },
                ..StepConfig::for_rows(rows)
            };
            let mut want = to_f64(&table);
            let r = reference::step(&mut want, shape, &cfg);
            let norm = r.grad_norm.unwrap();
            assert_eq!(norm.is_finite(), weight < 1e19, "reference ‖g‖ {norm}, seed {seed}");
            for (name, mut t) in trainers(shape, cfg, &table) {
                let ctx = format!("{name} {endpoints:?} {policy:?} λ {weight:e}, seed {seed}");
                let rec = t.steps(1).unwrap().remove(0);
                let got = rec.grad_norm.expect("clipping reports ‖g‖");
                if norm.is_finite() {
                    assert_eq!(rec.action, Action::Applied, "{ctx}");
                    assert!(rel(got, norm) <= 1e-5, "{ctx}: ‖g‖ {got} vs {norm}");
                    assert_table_close(&t.read_table().unwrap(), &want, dim, 1e-5, &ctx);
                } else {
                    assert!(!got.is_finite(), "{ctx}: ‖g‖ {got}");
                    // A NaN clip factor makes every update non-finite:
                    // skip-step drops the step, skip-row keeps every row.
                    let want = if policy == Policy::SkipRow { Action::SkippedRows } else { Action::SkippedStep };
                    assert_eq!(rec.action, want, "{ctx}");
                    assert!(same_bits(&t.read_table().unwrap(), &table), "{ctx}: the table changed");
                }
            }
        }
    }
}

/// SPEC §7, §9, §15: no per-step host synchronisation. The GPU's steps
/// come back several to a group, one group a submission that the host
/// neither waited inside nor stepped through, and the guard still decides
/// each step: on a clean table every step applied, with a NaN planted
/// every step skipped (the table stays as it was, so each finds it again).
#[test]
fn gpu_steps_come_back_several_to_a_host_round_trip_each_decided_on_the_device() {
    let seed = seed("no_host_sync");
    let mut c = case(&mut rng(seed), Policy::SkipStep, false);
    c.cfg.guard.max_skips = 1000;
    for planted in [false, true] {
        let ctx = format!("planted {planted}, seed {seed}");
        let opts = GpuOptions::default();
        let mut t = GpuTrainer::new(gpu(), c.shape, c.cfg, TableSource::Data(c.table.clone()), opts).unwrap();
        if planted {
            inject(&mut t, &c);
        }
        let before = t.read_table().unwrap();
        let mut groups: Vec<Vec<Action>> = Vec::new();
        let ran = t
            .steps_streamed(40, &mut |g| {
                groups.push(g.iter().map(|r| r.action).collect());
                true
            })
            .unwrap();
        assert_eq!(ran, 40, "{ctx}");
        assert!(groups.len() <= 10, "{ctx}: {} host round trips for 40 steps", groups.len());
        let want = if planted { Action::SkippedStep } else { Action::Applied };
        assert!(groups.iter().flatten().all(|&a| a == want), "{ctx}: {groups:?}");
        assert_eq!(same_bits(&t.read_table().unwrap(), &before), planted, "{ctx}: trained or not");
    }
}
