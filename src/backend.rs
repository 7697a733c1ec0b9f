//! Choosing where a table trains (SPEC §14): `auto` takes a hardware GPU and
//! otherwise the CPU backend, saying why. Shared by the command line and by
//! programs that use the library directly (see `examples/train_table.rs`).

use std::sync::Arc;

use crate::batches::Batches;
use crate::config::{Shape, StepConfig};
use crate::cpu::CpuTrainer;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuOptions, GpuTrainer};
use crate::trainer::{TableSource, Trainer};

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A hardware GPU if there is one, otherwise the CPU backend.
    Auto,
    /// wgpu, on whatever adapter is chosen (software ones included).
    Gpu,
    /// The multi-threaded CPU backend.
    Cpu,
}

/// A trainer, and why `auto` chose what it chose (when it had to choose).
pub struct Opened {
    /// The trainer, its table written.
    pub trainer: Box<dyn Trainer>,
    /// Why `auto` took the CPU (no GPU adapter, only a software one, or
    /// one that could not be opened), for the user; `None` otherwise.
    pub note: Option<String>,
}

/// Opens a trainer for `shape` and `cfg` on `backend`, whose steps take their
/// rows from `batches`; `adapter` picks a GPU adapter by name (else
/// `WGPU_ADAPTER_NAME`).
pub fn open(
    backend: Backend,
    adapter: Option<&str>,
    shape: Shape,
    cfg: StepConfig,
    source: TableSource,
    batches: Batches,
) -> Result<Opened> {
    // A name, from `--adapter` or the environment, is a request for that
    // adapter: `auto` then never falls back to the CPU.
    let env = crate::gpu::context::env_adapter_name()?;
    let adapter = adapter.or(env.as_deref());
    let b = batches.clone();
    let cpu = |source, note| -> Result<Opened> {
        Ok(Opened { trainer: Box::new(CpuTrainer::with_batches(shape, cfg, source, b)?), note })
    };
    let gpu = |ctx: GpuContext, source| -> Result<Opened> {
        let t = GpuTrainer::with_batches(Arc::new(ctx), shape, cfg, source, GpuOptions::default(), batches)?;
        Ok(Opened { trainer: Box::new(t), note: None })
    };
    match backend {
        Backend::Cpu => cpu(source, None),
        Backend::Gpu => gpu(GpuContext::new(adapter)?, source),
        Backend::Auto => match GpuContext::new(adapter) {
            Ok(ctx) if ctx.is_software() && adapter.is_none() => {
                let why = format!(
                    "auto: the only GPU adapter is a software one ({}), so the CPU backend runs instead",
                    ctx.info.name
                );
                cpu(source, Some(why))
            }
            Ok(ctx) => gpu(ctx, source),
            Err(Error::NoAdapter(why)) if adapter.is_none() => {
                cpu(source, Some(format!("auto: no GPU adapter ({why}); the CPU backend runs instead")))
            }
            // The adapter ranked first refused a device (a driver without
            // its card, a GPU in a bad state): `auto` goes on without it.
            Err(Error::RequestDevice(why)) if adapter.is_none() => cpu(
                source,
                Some(format!(
                    "auto: the GPU adapter could not be opened ({why}); the CPU backend runs instead (--adapter \
                     NAME picks another GPU: `latent-line devices` lists them)"
                )),
            ),
            Err(e) => Err(e),
        },
    }
}
