//! fold_sg.wgsl (the row fold by subgroup shuffles) against fold_wg.wgsl
//! (the portable fold in workgroup memory): the same bits, table and
//! records, whatever the lanes per row against the adapter's subgroup size
//! (lavapipe's is 8: L ≤ 8 folds by shuffles alone, L = 16 and 32 start in
//! workgroup memory), through every use of the fold — the distances, the
//! skip-row decision, the two-read step's gradient norm — over full tables
//! and random batches. Fails, like every GPU test, without an adapter, and
//! fails on one without subgroup operations.

mod common;

use common::*;
use latent_line::gpu::{GpuOptions, GpuTrainer};
use latent_line::{Batches, Endpoints, Guard, Policy, Record, Reduction, Shape, StepConfig, TableSource, Trainer};

fn run(
    shape: Shape,
    cfg: StepConfig,
    table: &[f32],
    batches: &Batches,
    (lanes, vec4): (u32, bool),
    subgroups: bool,
) -> (Vec<u32>, Vec<Record>) {
    let opts = GpuOptions {
        lanes_per_row: Some(lanes),
        workgroup: Some(64),
        subgroups: Some(subgroups),
        vec4: Some(vec4),
        ..GpuOptions::default()
    };
    let mut t = GpuTrainer::with_batches(gpu(), shape, cfg, TableSource::Data(table.to_vec()), opts, batches.clone())
        .unwrap_or_else(|e| panic!("subgroups {subgroups}: {e}"));
    assert_eq!(t.subgroup_fold().is_some(), subgroups, "the fold asked for is the fold built");
    assert_eq!((t.kernel_shape().1, t.vec4()), (lanes, vec4));
    let recs = t.steps(4).unwrap();
    (t.read_table().unwrap().iter().map(|x| x.to_bits()).collect(), recs)
}

#[test]
fn the_subgroup_fold_gives_the_portable_folds_bits() {
    let seed = seed("subgroup_fold");
    let mut case = 0u64;
    // (D, lanes, 16-byte kept columns: their own summation order)
    for (dim, lanes, vec4) in [
        (3usize, 4u32, false),
        (8, 8, false),
        (20, 16, false),
        (64, 32, false),
        (300, 32, false),
        (64, 8, true),
        (32, 16, true),
    ] {
        let shape = Shape::new(400, dim).unwrap();
        let table = spaced_table(seed ^ dim as u64, shape, 5, 390, 0.3);
        for (batches, endpoints, policy, clip) in [
            (Batches::Full, Endpoints::Frozen, Policy::SkipStep, 0.0),
            (Batches::Full, Endpoints::Attached, Policy::SkipRow, 0.05),
            (Batches::Random { size: 150, seed }, Endpoints::Detached, Policy::Ignore, 0.0),
            (Batches::Random { size: 150, seed }, Endpoints::Attached, Policy::Rollback, 1e6),
        ] {
            case += 1;
            let cfg = StepConfig {
                anchor_a: 5,
                anchor_b: 390,
                lr: 0.01,
                reduction: if case.is_multiple_of(2) { Reduction::Mean } else { Reduction::Sum },
                endpoints,
                clip_norm: clip,
                guard: Guard { policy, snapshot_every: 2, ..Guard::default() },
                ..StepConfig::for_rows(400)
            };
            let ctx = format!(
                "D {dim}, L {lanes}, vec4 {vec4}, {batches:?}, {endpoints:?}, {policy:?}, clip {clip}, seed {seed}"
            );
            let (t_sg, r_sg) = run(shape, cfg, &table, &batches, (lanes, vec4), true);
            let (t_wg, r_wg) = run(shape, cfg, &table, &batches, (lanes, vec4), false);
            assert!(t_sg == t_wg, "{ctx}: tables differ");
            assert_eq!(r_sg, r_wg, "{ctx}: records differ");
            assert!(t_sg != table.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{ctx}: nothing trained");
        }
    }
}
