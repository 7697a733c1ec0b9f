//! The GPU context, built once per process: instance, adapter, device and
//! queue, the adapter's own limits, the optional features it has, and the
//! error plumbing that turns wgpu's callbacks into [`Error`]s.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Optional features used when present (timestamp queries, for per-pass GPU
/// time; subgroups, for fold_sg.wgsl); intersected with what the adapter
/// offers, never required.
const WANTED: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::SUBGROUP);

pub struct GpuContext {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// The device's limits: exactly the adapter's (we ask for all it has).
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Whether wgpu bounds every shader loop with a 64-bit counter of its
    /// own (`LATENT_LINE_LOOP_BOUNDING=1`); off by default (see
    /// [`Self::shader_checks`]).
    pub loop_bounding: bool,
    /// Every pipeline `Constants::pipeline` built, in order: what
    /// `driver_stats` compiles again to ask the driver about.
    pub built: Mutex<Vec<super::driver_stats::BuiltPipeline>>,
    /// Errors wgpu reported outside an error scope, oldest first.
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
}

/// A short description of one adapter.
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?}, driver {} {})", info.name, info.backend, info.device_type, info.driver, info.driver_info)
}

/// Adapters that the instance (honouring `WGPU_BACKEND`) can see, best
/// first (`rank`), so that the first one a name matches is the best-ranked.
pub fn adapters() -> Result<Vec<wgpu::Adapter>> {
    check_backend_env()?;
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // Refuse allocations past 95% of the driver's memory budget with an
    // out-of-memory error (which `GpuTrainer::new` reports with the table's
    // sizes) instead of oversubscribing the device.
    desc.memory_budget_thresholds.for_resource_creation = Some(95);
    // wgpu checks each indirect dispatch's arguments on the device by
    // default (release builds too): one more dispatch and two barriers
    // before each. Ours are written only by reduce.wgsl: a grid the host
    // checked against the device's limits (`GpuTrainer::new`), or no
    // workgroups, so the check can never fire; without it a batch's empty
    // undo scatter took 0.009–0.014 ms a pass on lavapipe against
    // 0.093–0.121 with it (BENCHMARKS.md, eleventh session). Kept on
    // Windows, where D3D12 then reports `num_workgroups` as 0, which our
    // kernels read; `WGPU_VALIDATION_INDIRECT_CALL`, where set, decides.
    if !cfg!(windows) && std::env::var_os("WGPU_VALIDATION_INDIRECT_CALL").is_none() {
        desc.flags.remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
    }
    let instance = wgpu::Instance::new(desc);
    let mut all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    all.sort_by_key(|a| rank(a.get_info().device_type));
    Ok(all)
}

/// Environment variable `name`: `None` where unset; a value that is not
/// UTF-8 is refused, naming it (read as unset, it would silently do
/// nothing).
pub fn env_var(name: &'static str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(Error::invalid(name, format!("{v:?} is not UTF-8 text"))),
    }
}

/// `WGPU_BACKEND`, where set: every name in it must be one wgpu knows
/// (wgpu skips an unknown one with a log line no one sees, and a typo
/// then reads as "no driver installed").
fn check_backend_env() -> Result<()> {
    let Some(v) = env_var("WGPU_BACKEND")? else { return Ok(()) };
    // Each name by wgpu's own parser (no list of ours to keep in step);
    // empty names, as in "vulkan,", wgpu skips.
    let unknown = |b: &&str| !b.trim().is_empty() && wgpu::Backends::from_comma_list(b).is_empty();
    match v.split(',').find(unknown).map(str::trim) {
        Some(b) => Err(Error::invalid(
            "WGPU_BACKEND",
            format!("{v:?}: unknown backend {b:?}; use vulkan, dx12, metal or gl (several: comma-separated)"),
        )),
        None => Ok(()),
    }
}

/// `WGPU_ADAPTER_NAME`, where set and not blank: a request for that
/// adapter (blank, it would name every one).
pub fn env_adapter_name() -> Result<Option<String>> {
    Ok(env_var("WGPU_ADAPTER_NAME")?.filter(|n| !n.trim().is_empty()))
}

/// An on/off switch as given, else from the environment variable `name`
/// (`0` or `1`; anything else is refused, naming it): `None` when neither.
pub fn or_env_flag(given: Option<bool>, name: &'static str) -> Result<Option<bool>> {
    if given.is_some() {
        return Ok(given);
    }
    match env_var(name)?.as_deref() {
        None => Ok(None),
        Some("1") => Ok(Some(true)),
        Some("0") => Ok(Some(false)),
        Some(v) => Err(Error::invalid(name, format!("{v:?}: use 0 (off) or 1 (on)"))),
    }
}

/// The first of `all` whose name contains `name`, case-insensitively.
pub fn find_named(all: &[wgpu::Adapter], name: &str) -> Option<usize> {
    let want = name.to_lowercase();
    all.iter().position(|a| a.get_info().name.to_lowercase().contains(&want))
}

/// Hardware first: discrete, integrated, virtual, then software.
pub fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    /// Picks an adapter: the first whose name contains `name` (from
    /// `--adapter`, else `WGPU_ADAPTER_NAME`), case-insensitively; otherwise the
    /// best-ranked one. Fails when there is none: a GPU test must not skip.
    pub fn new(name: Option<&str>) -> Result<Self> {
        let name = match name {
            Some(n) => Some(n.to_owned()),
            None => env_adapter_name()?,
        };
        let mut all = adapters()?;
        if all.is_empty() {
            return Err(Error::NoAdapter(match std::env::var("WGPU_BACKEND") {
                Ok(v) => format!("wgpu found none through WGPU_BACKEND={v:?}"),
                Err(_) => {
                    "wgpu found none (is a Vulkan, Metal or DX12 driver installed? on Linux: mesa-vulkan-drivers)"
                        .into()
                }
            }));
        }
        let adapter = match &name {
            Some(n) => match find_named(&all, n) {
                Some(i) => all.swap_remove(i),
                None => {
                    let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                    return Err(Error::NoAdapter(format!("none matches \"{n}\"; available: {}", names.join(", "))));
                }
            },
            None => all.swap_remove(0),
        };
        Self::from_adapter(adapter)
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features() & WANTED;
        let desc = wgpu::DeviceDescriptor {
            label: Some("latent-line"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::RequestDevice(format!("{}: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        let loop_bounding = or_env_flag(None, "LATENT_LINE_LOOP_BOUNDING")?.unwrap_or(false);
        Ok(GpuContext {
            adapter,
            device,
            queue,
            info,
            limits,
            features,
            loop_bounding,
            built: Mutex::new(Vec::new()),
            errors,
            lost,
        })
    }

    /// The checks wgpu builds into our shaders: all of them (bounds, integer
    /// division), except, unless asked for, the counter wgpu adds to every
    /// loop in case it never ends. Ours all end (counted `for` loops;
    /// `while (m != 0u)` loops that clear a bit each turn; sampler.wgsl's
    /// cycle walk, which ends because the permutation is a bijection), and
    /// the counter — a `vec2<u32>` in function memory, read, decremented and
    /// tested every turn — stands between a driver and unrolling the
    /// fixed-count loops over a lane's kept values.
    pub fn shader_checks(&self) -> wgpu::ShaderRuntimeChecks {
        wgpu::ShaderRuntimeChecks { force_loop_bounding: self.loop_bounding, ..wgpu::ShaderRuntimeChecks::checked() }
    }

    /// A software rasteriser such as lavapipe or WARP.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Turns any error reported since the last call into an [`Error`].
    pub fn check(&self) -> Result<()> {
        if let Some(l) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(l));
        }
        let mut errs = self.errors.lock().map_err(|_| Error::Gpu("error sink poisoned".into()))?;
        if let Some(first) = errs.first().cloned() {
            errs.clear();
            return Err(Error::Gpu(first));
        }
        Ok(())
    }

    /// Blocks until all submitted work is done, then [`Self::check`]s.
    pub fn wait(&self) -> Result<()> {
        self.wait_until(None)
    }

    /// Blocks until the submission `index` (all, for `None`) is done, then
    /// [`Self::check`]s.
    pub fn wait_until(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: index, timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Most workgroups one dispatch dimension may have.
    pub fn max_groups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    /// Largest power-of-two workgroup size ≤ `want` that the device allows.
    pub fn workgroup_size(&self, want: u32) -> u32 {
        let cap = want
            .min(self.limits.max_compute_invocations_per_workgroup)
            .min(self.limits.max_compute_workgroup_size_x)
            .max(1);
        1 << (31 - cap.leading_zeros())
    }

    /// The largest storage binding a table chunk may use, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }
}
