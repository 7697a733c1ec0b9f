//! The GPU backend: wgpu + the WGSL kernels in `shaders/`.

mod batch;
pub mod context;
pub mod driver_stats;
pub mod layout;
mod pipes;
pub mod sampler;
pub mod scan;
pub mod shaders;
pub mod timer;
pub mod trainer;

pub use context::GpuContext;
pub use pipes::transfer_block;
pub use sampler::GpuSampler;
pub use scan::{scan_from, scan_values, TableScanner};
pub use trainer::{GpuOptions, GpuTrainer, StepPath};
