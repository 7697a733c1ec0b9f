//! latent-line: NaN-safe training of embedding tables under the
//! collinearity penalty `|‖p−e‖ + ‖q−e‖ − ‖p−q‖|`, on the GPU with WGSL
//! compute shaders (wgpu) or on the CPU, against a float64 reference.
//! The contract is `SPEC.md` (shared with the project); section numbers in
//! comments (§3, §4, …) refer to it.
//!
//! Where things are:
//! - `shaders/*.wgsl` — one kernel per file, and files of shared functions;
//!   [`gpu::shaders`] composes each kernel with the ones it lists.
//! - [`gpu::GpuTrainer`] — host side of the kernels: buffers, pipelines, steps.
//! - [`cpu::CpuTrainer`] — the same math in Rust (rayon).
//! - [`mod@reference`] — float64 mirror of the shaders, for the tests.
//! - [`scan`], [`guard`], [`record`] — SPEC §7–§9: non-finite scans, the
//!   guard policies, what each step reports.
//! - [`batches`] — SPEC §10: the full table, random batches
//!   ([`Batches::Random`], drawn on the device) or your own
//!   ([`Batches::Indices`]; [`Trainer::step_rows`] for one step on an index
//!   slice), as slots with repeats counted.
//! - [`backend::open`] — a trainer on a hardware GPU or the CPU; see
//!   `examples/train_table.rs` for a whole program.

pub mod backend;
pub mod batches;
pub mod claim;
pub mod config;
pub mod cpu;
pub mod diagnose;
pub mod error;
pub mod gpu;
pub mod guard;
pub mod host;
pub mod npy;
pub mod plot;
pub mod record;
pub mod reference;
pub mod report;
pub mod rng;
pub mod sampler;
pub mod scan;
pub mod tables;
pub mod trainer;

pub use batches::{Batches, IndexBatches, StepSlots};
pub use config::{Endpoints, Reduction, Shape, StepConfig};
pub use error::{Error, Result};
pub use guard::{Action, Guard, Policy};
pub use record::Record;
pub use scan::Scan;
pub use trainer::{DeviceInfo, KernelTime, RunState, TableSource, Trainer};

/// Unit tests' seed: fresh each run (or `LATENT_LINE_TEST_SEED`), printed
/// on stderr, which cargo shows for a failing test, for a replay.
#[cfg(test)]
pub(crate) fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("LATENT_LINE_TEST_SEED")
        .map(|s| s.parse().expect("LATENT_LINE_TEST_SEED is a u64"))
        .unwrap_or_else(|_| rand::random());
    eprintln!("{test}: seed {seed} (replay with LATENT_LINE_TEST_SEED={seed})");
    seed
}
