//! `cargo bench`: the full-table step on each backend beside its floor, a
//! plain copy of the same bytes on the same device (SPEC §15), and the cost
//! of the NaN forensics (SPEC §7–§9). Each is `NAME/ROWSxDIM` in a group
//! (`cpu[…]`, `gpu[…]`, `gpu-time[…]`, named by the adapter):
//!   step-noscan     `ignore`, fused scans compiled out: the bare step
//!   step-ignore     + the fused scans of loss, gradient and rows written
//!   step-skip-step  + the default guard (writes the other table buffer)
//!   step-skip-step-1lane     the same with one lane per row (the first kernel)
//!   step-skip-step-wgfold    (gpu-time, GPUs with subgroups) the same with
//!                   the row fold in workgroup memory, not subgroup shuffles
//!   step-skip-step-4byte     (gpu-time) the same with 4-byte columns, where
//!                   the default's are 16-byte (D a multiple of 4), at the
//!                   4-byte path's own default lanes; -4byte-nokeep and
//!                   -4byte-keptarray: its columns read twice, or kept in
//!                   an array, not vectors
//!   step-skip-step-noprefetch, -prefetch (gpu-time) without and with
//!                   reading the next row block ahead (the one that is
//!                   not the default's); -pqshared: p and q read from workgroup
//!                   memory, not held in registers (-pqshared-prefetch:
//!                   and read ahead); -Nlanes: at twice and half the
//!                   default lanes, with the default's kind of columns
//!   step-skip-step-noreduce (gpu-time) the default step's fused passes
//!                   alone, its one-workgroup reduce pass left out
//!   step-skip-step-detached (gpu-time) the default step with endpoints
//!                   `detached`, the peers' (benches/peers/: p and q read
//!                   from the table each step, the anchor rows updated)
//!   eval, eval-4byte (gpu-time) the evaluation pass: every row read and
//!                   its sums folded, nothing written (bytes: read)
//!   scan            the table scan of `latent-line scan` (16-byte loads;
//!                   scan-4byte: 4-byte), beside scan-copy, a copy of the
//!                   table per GiB moved (gpu: `copy_buffer_to_buffer`,
//!                   wall; gpu-time: the 16-byte shader copy)
//!   batch-random    a random batch of 65 536 rows (4 096 on a software
//!                   adapter) drawn on the device, default guard
//!   batch-indices   user batches of the same size with repeats (rows drawn
//!                   with replacement from a quarter of the table)
//!   batch-random-1block, -4byte, -sampled (gpu-time) the random batch
//!                   with one row block a workgroup; with 4-byte columns;
//!                   with its slots worked out in the fused step
//!   batch-random-scatter (gpu-time, where the undo in the reduce pass is
//!                   the default: a GPU's) the random batch with a dropped
//!                   step's rows put back by batch_io.wgsl's indirect
//!                   scatter, a dispatch of its own every step
//!   batch-random-ignore (gpu-time) the random batch under `ignore`: no
//!                   undo log, no scatter (the default guard's cost)
//!   step-attached-clip  the full table, attached anchors and clipping:
//!                   the two-read step
//! Sizes are 1M × 64 and 1M × 128 (scan: a 1 GiB table) on a hardware GPU
//! and the CPU, smaller on a software adapter. The CPU's floor is a copy
//! of the table on one core (`memcpy`) and on all (`memcpy-par`), the step
//! running on all; its pass is the build for the CPU's widest instructions
//! (`Simd`). Group `gpu[…]`: wall clock
//! around whole submissions (GPU work included: each measurement waits for
//! the device). Group `gpu-time[…]`, where the adapter has timestamp
//! queries: the GPU's own time of each pass, beside `copy-shader`, a copy
//! of the table by a compute shader. Throughput is in bytes read + written (the scan: read), so
//! criterion's GB/s compares directly with the copy's.
//! `LATENT_LINE_BENCH_GROUPS=gpu-time` (a comma list of `gpu`, `gpu-time`,
//! `cpu`): only those groups make their tables, where a filter alone still
//! builds every group's (benches/gpu.sh: device time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use latent_line::cpu::CpuTrainer;
use latent_line::gpu::{GpuContext, GpuOptions, GpuTrainer};
use latent_line::{Batches, Endpoints, Guard, IndexBatches, Policy, Shape, StepConfig, TableSource, Trainer};

fn shapes(hardware: bool) -> Vec<Shape> {
    let rows = if hardware { 1_000_000 } else { 100_000 };
    [64, 128].iter().map(|&d| Shape::new(rows, d).expect("valid shape")).collect()
}

/// `LATENT_LINE_BENCH_HUGE=1` on a hardware GPU: also 100M × 64 (25.6 GB,
/// 51 GB with the default guard's second buffer), for the gpu-time group.
fn huge(hardware: bool) -> Option<Shape> {
    let on = std::env::var("LATENT_LINE_BENCH_HUGE").is_ok_and(|v| v == "1");
    (hardware && on).then(|| Shape::new(100_000_000, 64).expect("valid shape"))
}

fn config(shape: Shape, policy: Policy) -> StepConfig {
    StepConfig { guard: Guard { policy, ..Guard::default() }, ..StepConfig::for_rows(shape.rows) }
}

/// The batch of the batch benches, and the bytes a step of it reads and writes.
fn batch_size(hardware: bool) -> usize {
    if hardware {
        65_536
    } else {
        4_096
    }
}

/// Eight user batches of `size` rows with repeats: drawn with replacement
/// from the first quarter of the table (a fixed LCG, no dependency).
fn dup_batches(shape: Shape, size: usize) -> Batches {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let quarter = (shape.rows / 4).max(1) as u64;
    let batches = (0..8)
        .map(|_| {
            (0..size)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    ((x >> 33) % quarter) as i64
                })
                .collect()
        })
        .collect();
    Batches::Indices(IndexBatches::new(batches, shape.rows).expect("indices in range"))
}

/// The batch benches' trainers on `shape` under `policy`: random batches
/// of `size` rows, and user batches of as many with repeats; each opened
/// as the loop reaches it (one table on the device at a time).
fn batch_trainers(
    ctx: &Arc<GpuContext>,
    shape: Shape,
    size: usize,
    opts: GpuOptions,
    policy: Policy,
) -> impl Iterator<Item = (&'static str, GpuTrainer)> + '_ {
    [("batch-random", Batches::Random { size, seed: 3 }), ("batch-indices", dup_batches(shape, size))].into_iter().map(
        move |(name, batches)| {
            let cfg = config(shape, policy);
            let source = TableSource::Random { seed: 1 };
            let t =
                GpuTrainer::with_batches(ctx.clone(), shape, cfg, source, opts.clone(), batches).expect("GPU trainer");
            (name, t)
        },
    )
}

fn attached_clip(shape: Shape) -> StepConfig {
    StepConfig {
        endpoints: Endpoints::Attached,
        reduction: latent_line::Reduction::Mean,
        clip_norm: 1.0,
        ..config(shape, Policy::SkipStep)
    }
}

fn bench_steps(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, name: String, t: &mut dyn Trainer) {
    g.bench_function(name, |b| {
        b.iter_custom(|n| {
            let start = Instant::now();
            t.steps(n as usize).expect("steps");
            start.elapsed()
        })
    });
}

/// GPU time (timestamp queries) of `t`'s steps.
fn bench_gpu_time(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, name: String, t: &mut GpuTrainer) {
    g.bench_function(name, |b| b.iter_custom(|n| t.gpu_time_steps(n as u32).expect("steps").expect("timestamps")));
}

/// GPU time of copies of `t`'s table by a shader, 4 and 16 bytes an access:
/// the floors a step is measured against.
fn bench_copies(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, id: &str, t: &GpuTrainer) {
    for (name, vec4) in [("copy-shader", false), ("copy-shader-vec4", true)] {
        g.bench_function(format!("{name}/{id}"), |b| {
            b.iter_custom(|n| t.gpu_time_table_copies(n as u32, vec4).expect("copy").expect("timestamps"))
        });
    }
}

/// Whether group `name` is to run: all unless `LATENT_LINE_BENCH_GROUPS`
/// lists some.
fn group_wanted(name: &str) -> bool {
    std::env::var("LATENT_LINE_BENCH_GROUPS").map_or(true, |v| v.split(',').any(|g| g.trim() == name))
}

fn gpu(c: &mut Criterion) {
    if !group_wanted("gpu") && !group_wanted("gpu-time") {
        return;
    }
    let ctx = match GpuContext::new(None) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("no GPU adapter ({e}); GPU benches not run");
            return;
        }
    };
    let hardware = !ctx.is_software();
    if group_wanted("gpu") {
        gpu_wall(c, &ctx, hardware);
    }
    if group_wanted("gpu-time") {
        gpu_time(c, &ctx, hardware);
    }
}

/// Group `gpu[…]`: wall clock around whole submissions.
fn gpu_wall(c: &mut Criterion, ctx: &Arc<GpuContext>, hardware: bool) {
    let label = format!("gpu[{}]", ctx.info.name);
    let mut g = c.benchmark_group(&label);
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for shape in shapes(hardware) {
        let id = format!("{}x{}", shape.rows, shape.dim);
        g.throughput(Throughput::Bytes(2 * shape.bytes()));
        let open = |policy: Policy, fused_scans: bool| {
            let opts = GpuOptions { fused_scans, ..GpuOptions::default() };
            GpuTrainer::new(ctx.clone(), shape, config(shape, policy), TableSource::Random { seed: 1 }, opts)
                .expect("GPU trainer")
        };
        let one_lane = |policy: Policy| {
            let opts = GpuOptions { lanes_per_row: Some(1), workgroup: Some(64), ..GpuOptions::default() };
            GpuTrainer::new(ctx.clone(), shape, config(shape, policy), TableSource::Random { seed: 1 }, opts)
                .expect("GPU trainer")
        };
        let mut t = open(Policy::Ignore, false);
        g.bench_function(format!("copy/{id}"), |b| b.iter_custom(|n| t.time_table_copies(n).expect("copy")));
        bench_steps(&mut g, format!("step-noscan/{id}"), &mut t);
        drop(t);
        bench_steps(&mut g, format!("step-ignore/{id}"), &mut open(Policy::Ignore, true));
        bench_steps(&mut g, format!("step-skip-step/{id}"), &mut open(Policy::SkipStep, true));
        bench_steps(&mut g, format!("step-skip-step-1lane/{id}"), &mut one_lane(Policy::SkipStep));
        let mut t = GpuTrainer::new(
            ctx.clone(),
            shape,
            attached_clip(shape),
            TableSource::Random { seed: 1 },
            GpuOptions::default(),
        )
        .expect("GPU trainer");
        bench_steps(&mut g, format!("step-attached-clip/{id}"), &mut t);
        drop(t);
        let bsize = batch_size(hardware);
        g.throughput(Throughput::Bytes(2 * bsize as u64 * shape.dim as u64 * 4));
        for (name, mut t) in batch_trainers(ctx, shape, bsize, GpuOptions::default(), Policy::SkipStep) {
            bench_steps(&mut g, format!("{name}-{bsize}/{id}"), &mut t);
        }
    }
    // The table scan over 1 GiB (64 MiB on a software adapter), wall clock
    // beside `copy_buffer_to_buffer` per GiB moved.
    let (id, mut t) = scan_table(ctx, hardware);
    g.throughput(Throughput::Bytes(t.shape().bytes()));
    g.bench_function(format!("scan-copy/{id}"), |b| b.iter_custom(|n| t.time_table_copies(n).expect("copy") / 2));
    g.bench_function(format!("scan/{id}"), |b| b.iter_custom(|n| t.time_table_scans(n as u32).expect("scan")));
    g.bench_function(format!("scan-4byte/{id}"), |b| {
        b.iter_custom(|n| t.time_table_scans_4byte(n as u32).expect("scan"))
    });
    g.finish();
}

/// Group `gpu-time[…]`: the GPU's own time of each pass.
fn gpu_time(c: &mut Criterion, ctx: &Arc<GpuContext>, hardware: bool) {
    // GPU time from timestamp queries, beside a copy by a compute shader
    // (copy.wgsl): the device's own time, no host in it.
    if !ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        eprintln!("{}: no timestamp queries; GPU-time benches not run", ctx.info.name);
        return;
    }
    let mut g = c.benchmark_group(format!("gpu-time[{}]", ctx.info.name));
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    if let Some(shape) = huge(hardware) {
        // One table at a time: the copy floor, then the default step.
        let id = format!("{}x{}", shape.rows, shape.dim);
        g.throughput(Throughput::Bytes(2 * shape.bytes()));
        let opts = GpuOptions::default();
        let mut t =
            GpuTrainer::new(ctx.clone(), shape, config(shape, Policy::SkipStep), TableSource::Random { seed: 1 }, opts)
                .expect("GPU trainer (100M × 64)");
        bench_copies(&mut g, &id, &t);
        bench_gpu_time(&mut g, format!("step-skip-step/{id}"), &mut t);
    }
    for shape in shapes(hardware) {
        let id = format!("{}x{}", shape.rows, shape.dim);
        g.throughput(Throughput::Bytes(2 * shape.bytes()));
        // The default step again with the portable row fold, where the
        // default is the subgroup fold (a hardware GPU with subgroups).
        let sg = hardware && ctx.features.contains(wgpu::Features::SUBGROUP);
        // And with one row block a workgroup (the kernel before row
        // blocks), and with other lanes a row than the default's.
        let o = GpuOptions::default;
        // The default's lanes as a trainer settles them (the environment's
        // switches included: gpu.sh exports the shape it tuned).
        let default_step = || {
            GpuTrainer::new(ctx.clone(), shape, config(shape, Policy::SkipStep), TableSource::Random { seed: 1 }, o())
                .expect("GPU trainer")
        };
        let (default_lanes, default_vec4_at_lanes) = {
            let probe = default_step();
            (probe.kernel_shape().1, probe.vec4())
        };
        // The 4-byte path (VEC4 off) at its own default lanes, and its
        // switches: where D allows, the default is 16-byte columns.
        let b4 = || GpuOptions { vec4: Some(false), ..o() };
        let mut variants: Vec<(String, Policy, GpuOptions)> = vec![
            ("step-noscan".into(), Policy::Ignore, GpuOptions { fused_scans: false, ..o() }),
            ("step-ignore".into(), Policy::Ignore, o()),
            ("step-skip-step".into(), Policy::SkipStep, o()),
            ("step-skip-step-wgfold".into(), Policy::SkipStep, GpuOptions { subgroups: Some(false), ..o() }),
            ("step-skip-step-1block".into(), Policy::SkipStep, GpuOptions { row_blocks: Some(1), ..o() }),
            // Registers against bytes in flight (the same bits).
            ("step-skip-step-noprefetch".into(), Policy::SkipStep, GpuOptions { prefetch: Some(false), ..o() }),
            ("step-skip-step-prefetch".into(), Policy::SkipStep, GpuOptions { prefetch: Some(true), ..o() }),
            ("step-skip-step-pqshared".into(), Policy::SkipStep, GpuOptions { pq_shared: Some(true), ..o() }),
            (
                "step-skip-step-pqshared-prefetch".into(),
                Policy::SkipStep,
                GpuOptions { pq_shared: Some(true), prefetch: Some(true), ..o() },
            ),
            ("step-skip-step-4byte".into(), Policy::SkipStep, b4()),
            ("step-skip-step-4byte-nokeep".into(), Policy::SkipStep, GpuOptions { keep_columns: Some(false), ..b4() }),
            (
                "step-skip-step-4byte-keptarray".into(),
                Policy::SkipStep,
                GpuOptions { kept_vectors: Some(false), ..b4() },
            ),
        ];
        let mut others = vec![default_lanes / 2, default_lanes * 2, 32];
        others.dedup();
        for lanes in others.into_iter().filter(|&l| (1..=32).contains(&l) && l != default_lanes) {
            // (The default's kind of columns: 16-byte ones as far as these
            // lanes keep them.)
            let opts = GpuOptions { lanes_per_row: Some(lanes), vec4: Some(default_vec4_at_lanes), ..o() };
            variants.push((format!("step-skip-step-{lanes}lanes"), Policy::SkipStep, opts));
        }
        let mut default_vec4 = false;
        let mut default_reads_ahead = false;
        let mut b4_keeps = false;
        for (name, policy, opts) in variants.into_iter().filter(|v| sg || v.2.subgroups.is_none()) {
            let mut t =
                GpuTrainer::new(ctx.clone(), shape, config(shape, policy), TableSource::Random { seed: 1 }, opts)
                    .expect("GPU trainer");
            // (The default step and the 4-byte one come before their
            // variants in the list: a variant that would build the same
            // kernel again is left out.)
            match name.as_str() {
                "step-skip-step" => (default_vec4, default_reads_ahead) = (t.vec4(), t.reads_ahead()),
                // (Set even where this variant is skipped as the default's twin.)
                "step-skip-step-4byte" => b4_keeps = t.keeps_columns(),
                _ => {}
            }
            let same = (name == "step-skip-step-4byte" && !default_vec4)
                || (matches!(name.as_str(), "step-skip-step-prefetch" | "step-skip-step-noprefetch")
                    && t.reads_ahead() == default_reads_ahead)
                || (name.contains("-pqshared") && !t.pq_shared())
                || (name == "step-skip-step-pqshared-prefetch" && !t.reads_ahead())
                || ((name.ends_with("-nokeep") || name.ends_with("-keptarray")) && !b4_keeps);
            if same {
                continue;
            }
            if name == "step-noscan" {
                bench_copies(&mut g, &id, &t);
            }
            bench_gpu_time(&mut g, format!("{name}/{id}"), &mut t);
        }
        // The default step's fused passes alone, their reduce pass left
        // out: against `step-skip-step`, what the one-workgroup reduce adds
        // to a step (a trainer of its own: it is fit for nothing else after).
        {
            let mut t = default_step();
            g.bench_function(format!("step-skip-step-noreduce/{id}"), |b| {
                b.iter_custom(|n| t.gpu_time_fused_passes(n as u32).expect("passes").expect("timestamps"))
            });
        }
        // The step the peers (benches/peers/) take: endpoints `detached`,
        // as the original code (`vecs = weight.data`): p and q read from the
        // table at each step and the anchors' rows updated, where the
        // default (`frozen`) reads them once and writes neither.
        {
            let cfg = StepConfig { endpoints: Endpoints::Detached, ..config(shape, Policy::SkipStep) };
            let mut t =
                GpuTrainer::new(ctx.clone(), shape, cfg, TableSource::Random { seed: 1 }, o()).expect("GPU trainer");
            bench_gpu_time(&mut g, format!("step-skip-step-detached/{id}"), &mut t);
        }
        // The evaluation pass (rows read, their sums folded, nothing
        // written), by the default kernel and with 16-byte loads: what the
        // reading and the row's math cost without the update. Bytes: read.
        g.throughput(Throughput::Bytes(shape.bytes()));
        for (name, vec4) in [("eval", None), ("eval-4byte", Some(false))] {
            let opts = GpuOptions { vec4, ..o() };
            let cfg = config(shape, Policy::SkipStep);
            let mut t =
                GpuTrainer::new(ctx.clone(), shape, cfg, TableSource::Random { seed: 1 }, opts).expect("GPU trainer");
            if vec4 == Some(false) && !default_vec4 {
                continue;
            }
            g.bench_function(format!("{name}/{id}"), |b| {
                b.iter_custom(|n| t.gpu_time_evaluations(n as u32).expect("evaluations").expect("timestamps"))
            });
        }
        let bsize = batch_size(hardware);
        g.throughput(Throughput::Bytes(2 * bsize as u64 * shape.dim as u64 * 4));
        // The default, then the random batch with one row block a workgroup,
        // with 4-byte columns (where the default's are 16-byte), with its
        // slots worked out in the step (no sample pass; `sampled` where
        // that is not the default), with a dropped step undone by
        // batch_io.wgsl's indirect scatter (`scatter`, where the reduce
        // pass's own workgroups are the default: a GPU's) and under `ignore`.
        let variant = |opts: GpuOptions, policy: Policy, name: &'static str| {
            batch_trainers(ctx, shape, bsize, opts, policy).take(1).map(move |(_, t)| (name, t))
        };
        let skip = Policy::SkipStep;
        let one_block =
            variant(GpuOptions { row_blocks: Some(1), ..GpuOptions::default() }, skip, "batch-random-1block");
        let b4 = variant(GpuOptions { vec4: Some(false), ..GpuOptions::default() }, skip, "batch-random-4byte");
        let sampled =
            variant(GpuOptions { fused_sample: Some(true), ..GpuOptions::default() }, skip, "batch-random-sampled");
        let scatter =
            variant(GpuOptions { undo_in_reduce: Some(false), ..GpuOptions::default() }, skip, "batch-random-scatter");
        let ignore = variant(GpuOptions::default(), Policy::Ignore, "batch-random-ignore");
        let all = batch_trainers(ctx, shape, bsize, GpuOptions::default(), skip).chain(one_block).chain(b4);
        let (mut default_sampled, mut default_undo) = (false, false);
        for (name, mut t) in all.chain(sampled).chain(scatter).chain(ignore) {
            if name == "batch-random" {
                default_sampled = t.fused_sample();
                default_undo = t.undo_in_reduce();
            }
            if (name.ends_with("-4byte") && !default_vec4)
                || (name.ends_with("-sampled") && default_sampled)
                || (name.ends_with("-scatter") && !default_undo)
            {
                continue;
            }
            bench_gpu_time(&mut g, format!("{name}-{bsize}/{id}"), &mut t);
        }
    }
    // The table scan by its GPU time, beside the 16-byte shader copy of the
    // same table per GiB moved (a copy moves each byte twice, the scan once).
    let (id, mut t) = scan_table(ctx, hardware);
    g.throughput(Throughput::Bytes(t.shape().bytes()));
    g.bench_function(format!("scan-copy/{id}"), |b| {
        b.iter_custom(|n| t.gpu_time_table_copies(n as u32, true).expect("copy").expect("timestamps") / 2)
    });
    for (name, wide) in [("scan", true), ("scan-4byte", false)] {
        g.bench_function(format!("{name}/{id}"), |b| {
            b.iter_custom(|n| t.gpu_time_table_scans(n as u32, wide).expect("scan").expect("timestamps"))
        });
    }
    g.finish();
}

/// The scan benches' table: 1 GiB (64 MiB on a software adapter), 64 wide.
fn scan_table(ctx: &Arc<GpuContext>, hardware: bool) -> (String, GpuTrainer) {
    let shape = Shape::new(if hardware { 1 << 22 } else { 1 << 18 }, 64).expect("valid shape");
    let opts = GpuOptions { fused_scans: false, ..GpuOptions::default() };
    let t = GpuTrainer::new(ctx.clone(), shape, config(shape, Policy::Ignore), TableSource::Random { seed: 2 }, opts)
        .expect("GPU trainer");
    (format!("{}x{}", shape.rows, shape.dim), t)
}

fn cpu(c: &mut Criterion) {
    if !group_wanted("cpu") {
        return;
    }
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    // The GPU's sizes: 1M rows, out of any cache, so the floor is memory's.
    for shape in shapes(true) {
        let mut t = CpuTrainer::new(shape, config(shape, Policy::Ignore), TableSource::Random { seed: 1 })
            .expect("CPU trainer");
        let src = t.read_table().expect("table");
        let mut dst = vec![0.0f32; src.len()];
        g.throughput(Throughput::Bytes(2 * shape.bytes()));
        let id = format!("{}x{}", shape.rows, shape.dim);
        g.bench_function(format!("memcpy/{id}"), |b| b.iter(|| dst.copy_from_slice(std::hint::black_box(&src))));
        // The floor on all cores, as the step runs: the same copy by rayon.
        g.bench_function(format!("memcpy-par/{id}"), |b| {
            b.iter(|| {
                use rayon::prelude::*;
                dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s))
            })
        });
        g.bench_function(format!("step-ignore/{id}"), |b| b.iter(|| t.steps(1).expect("step")));
        let mut s = CpuTrainer::new(shape, config(shape, Policy::SkipStep), TableSource::Random { seed: 1 })
            .expect("CPU trainer");
        g.bench_function(format!("step-skip-step/{id}"), |b| b.iter(|| s.steps(1).expect("step")));
        g.throughput(Throughput::Bytes(shape.bytes()));
        g.bench_function(format!("scan/{id}"), |b| b.iter(|| latent_line::scan::scan_rows(&src, shape.dim, 0)));
        let bsize = batch_size(false);
        g.throughput(Throughput::Bytes(2 * bsize as u64 * shape.dim as u64 * 4));
        let batches = Batches::Random { size: bsize, seed: 3 };
        let mut r =
            CpuTrainer::with_batches(shape, config(shape, Policy::SkipStep), TableSource::Random { seed: 1 }, batches)
                .expect("CPU trainer");
        g.bench_function(format!("batch-random-{bsize}/{id}"), |b| b.iter(|| r.steps(1).expect("step")));
    }
    g.finish();
}

criterion_group!(benches, gpu, cpu);
criterion_main!(benches);
