//! latent-line as a library: train an embedding table from a Rust program,
//! without the command line.
//!
//! ```sh
//! cargo run --release --example train_table          # auto: a hardware GPU, else the CPU
//! cargo run --release --example train_table -- gpu   # any GPU adapter (lavapipe too)
//! ```
//!
//! It builds a table of codes, opens it on a hardware GPU when there is one
//! (else the CPU backend), trains it in random batches drawn on the device
//! under the NaN guard, takes a step on batches of its own (an index slice,
//! repeats summed), plants a NaN to show the guard refusing a step, reads
//! the metrics and the scans, and saves the table as `.npy`. It exits non-zero if training did not do what
//! it should, so CI runs it as a test.

use anyhow::{ensure, Context};
use latent_line::backend::{self, Backend};
use latent_line::{npy, Action, Batches, Endpoints, Guard, Policy, Shape, StepConfig, TableSource};

fn main() -> anyhow::Result<()> {
    // 1. A table: 20 000 codes of 16 numbers (here made up; yours would come
    //    from a checkpoint: `npy::load` into host memory, or, for a table
    //    larger than host memory, streamed into the device from its file:
    //    `let mut reader = latent_line::tables::open_as(Path::new("t.npy"),
    //    "weight", npy::Overflow::Inf, false)?.reader;` then
    //    `TableSource::Stream(Box::new(move |out| reader.read(out)))`).
    let (rows, dim) = (20_000usize, 16usize);
    let shape = Shape::new(rows, dim)?;
    let table: Vec<f32> = (0..rows * dim).map(|i| ((i * 2_654_435_761) % 10_000) as f32 / 2_500.0 - 2.0).collect();

    // 2. The step: anchors are rows 0 and R−1, kept apart by a margin while
    //    they train with the rest (`detached`), SGD with momentum, and the
    //    default guard (a step that would write NaN or ±Inf is skipped).
    let cfg = StepConfig {
        endpoints: Endpoints::Detached,
        margin: 2.0,
        lr: 0.05,
        momentum: 0.5,
        guard: Guard { policy: Policy::SkipStep, ..Guard::default() },
        ..StepConfig::for_rows(rows)
    };

    // 3. A device: a hardware GPU if there is one, else the CPU backend
    //    (or what the first argument says: auto, gpu, cpu).
    let choice = match std::env::args().nth(1) {
        Some(a) => <Backend as clap::ValueEnum>::from_str(&a, true).map_err(anyhow::Error::msg)?,
        None => Backend::Auto,
    };
    // 4. Batches: 10 000 random rows a step, each epoch a fresh permutation
    //    keyed by the seed, drawn on the device.
    let batches = Batches::Random { size: 10_000, seed: 7 };
    let opened = backend::open(choice, None, shape, cfg, TableSource::Data(table), batches)?;
    let mut t = opened.trainer;
    let dev = t.device_info();
    println!("device: {} · {}", dev.backend, dev.adapter);
    if let Some(why) = opened.note {
        println!("        {why}");
    }

    // 5. Train, and read the metrics: each step's (of its batch), and the
    //    whole table's before and after.
    let first = t.evaluate()?;
    let records = t.steps(200)?;
    ensure!(records.iter().all(|r| r.batch == 10_000), "a step did not take 10 000 rows");
    let last = t.evaluate()?;
    println!(
        "mean excess {:.4} → {:.6} · d0 {:.3} → {:.3} · near-singular rows {}",
        first.mean_excess(),
        last.mean_excess(),
        first.d0,
        last.d0,
        last.near_singular
    );
    ensure!(last.mean_excess() < 0.1 * first.mean_excess(), "the excess did not fall");
    ensure!(last.d0 > 1.5, "the margin did not keep the anchors apart: d0 = {}", last.d0);

    // 6. A step on rows of your choosing: repeats add up, as in
    //    `nn.Embedding`'s backward.
    let rec = t.step_rows(&[5, 5, 5, 17, 4242])?;
    ensure!(rec.batch == 5 && rec.action == Action::Applied, "the step on given rows: {rec:?}");

    // 7. A NaN appears in row 123: the guard refuses the step that would
    //    spread it, and the scans say where it is.
    let mut bad = vec![0.5f32; dim];
    bad[7] = f32::NAN;
    t.write_row(123, &bad)?;
    let rec = t.step_rows(&[120, 123, 123, 9000])?;
    println!("after planting a NaN: action {} · rows written: {}", rec.action.name(), rec.scans.table.describe());
    ensure!(rec.action == Action::SkippedStep, "the guard did not skip the step");
    ensure!(rec.scans.table.rows == vec![123], "the scan did not find row 123");
    let found = t.scan_table()?;
    ensure!(found.first.map(|f| (f.row, f.col)) == Some((123, 7)), "table scan: {}", found.describe());
    t.write_row(123, &[0.5; 16])?; // fixed: training goes on
    ensure!(t.step_rows(&[123])?.action == Action::Applied, "the step after the fix was not applied");

    // 8. Save the table (atomically: a temporary file, then a rename).
    let out = std::env::temp_dir().join("latent-line-example.npy");
    let trained = t.read_table()?;
    npy::save(&out, shape, &trained).with_context(|| format!("saving {}", out.display()))?;
    let back = npy::load(&out)?;
    let same = back.data.iter().zip(&trained).all(|(a, b)| a.to_bits() == b.to_bits());
    ensure!(back.shape == shape && same, "the saved table is not the trained one");
    println!("saved {}", out.display());
    std::fs::remove_file(&out)?;
    Ok(())
}
