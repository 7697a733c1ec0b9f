//! The GPU backend: wgpu + the WGSL kernels in `shaders/`.

pub mod context;
pub mod layout;
pub mod shaders;
pub mod trainer;

pub use context::GpuContext;
pub use trainer::{GpuOptions, GpuTrainer, StepPath};
