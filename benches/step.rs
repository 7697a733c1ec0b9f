//! `cargo bench`: the full-table step on each backend beside its floor, a
//! plain copy of the same bytes on the same device (SPEC §15). Sizes are
//! 1M × 64 and 1M × 128 on a hardware GPU, smaller on a software adapter
//! or the CPU. Times are wall clock around whole submissions (GPU work
//! included: each measurement waits for the device). Throughput is reported
//! in bytes read + written, so criterion's GB/s compares directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use latent_line::cpu::CpuTrainer;
use latent_line::gpu::{GpuContext, GpuOptions, GpuTrainer};
use latent_line::{Shape, StepConfig, TableSource, Trainer};

fn shapes(hardware: bool) -> Vec<Shape> {
    let rows = if hardware { 1_000_000 } else { 100_000 };
    [64, 128].iter().map(|&d| Shape::new(rows, d).expect("valid shape")).collect()
}

fn gpu(c: &mut Criterion) {
    let ctx = match GpuContext::new(None) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("no GPU adapter ({e}); GPU benches not run");
            return;
        }
    };
    let label = format!("gpu[{}]", ctx.info.name);
    let mut g = c.benchmark_group(&label);
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for shape in shapes(!ctx.is_software()) {
        let cfg = StepConfig::for_rows(shape.rows);
        let mut t = GpuTrainer::new(ctx.clone(), shape, cfg, TableSource::Random { seed: 1 }, GpuOptions::default())
            .expect("GPU trainer");
        g.throughput(Throughput::Bytes(2 * shape.bytes()));
        let id = format!("{}x{}", shape.rows, shape.dim);
        g.bench_function(format!("copy/{id}"), |b| b.iter_custom(|n| t.time_table_copies(n).expect("copy")));
        g.bench_function(format!("fused_step/{id}"), |b| {
            b.iter_custom(|n| {
                let start = Instant::now();
                t.steps(n as usize).expect("steps");
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for shape in shapes(false) {
        let cfg = StepConfig::for_rows(shape.rows);
        let mut t = CpuTrainer::new(shape, cfg, TableSource::Random { seed: 1 }).expect("CPU trainer");
        let src = t.read_table().expect("table");
        let mut dst = vec![0.0f32; src.len()];
        g.throughput(Throughput::Bytes(2 * shape.bytes()));
        let id = format!("{}x{}", shape.rows, shape.dim);
        g.bench_function(format!("memcpy/{id}"), |b| b.iter(|| dst.copy_from_slice(std::hint::black_box(&src))));
        g.bench_function(format!("step/{id}"), |b| b.iter(|| t.steps(1).expect("step")));
    }
    g.finish();
}

criterion_group!(benches, gpu, cpu);
criterion_main!(benches);
