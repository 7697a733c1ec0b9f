//! What the Vulkan driver made of our pipelines: registers, local memory
//! (spills), instruction counts, whatever it reports through
//! `VK_KHR_pipeline_executable_properties`. `--profile` prints them beside
//! each kernel's time, so that a slow kernel's cause (too many registers,
//! hence few resident warps; values spilled to local memory) is read off
//! the card instead of guessed.
//!
//! wgpu neither enables that extension nor asks the driver to keep the
//! statistics, so this module compiles each pipeline a second time on a
//! device of its own (through `ash`, on the same physical device): the same
//! WGSL, the same override constants, turned into SPIR-V by naga with the
//! options wgpu-hal uses (`wgpu-hal/src/vulkan/adapter.rs`, `naga_options`;
//! `device.rs`, `compile_stage`), so the driver sees what wgpu hands it.
//! The pipelines it compiles are only inspected, never run. Known
//! differences, none of which changes a compute kernel's code: wgpu
//! numbers a layout's bindings 0, 1, … (`binding_map`) where this keeps
//! the WGSL's numbers; it may add debug information (debug builds); and
//! it drops robustness2 on some old Intel drivers.

use std::ffi::CStr;

use ash::vk;
use serde::Serialize;

use super::context::GpuContext;
use super::shaders::Kernel;
use crate::error::{Error, Result};

/// The environment variable that points the probe at another Vulkan
/// device by (part of) its name: a run on one adapter, the statistics of
/// another's compiler. Mesa's RADV makes a device with no AMD card at all
/// (`RADV_FORCE_FAMILY=navi21`, its "Null hardware": it compiles, never
/// runs), so a machine without a GPU still sees what a GPU compiler makes
/// of the kernels: registers, spills, scratch (README, under `--profile`).
pub const STATS_DEVICE: &str = "LATENT_LINE_STATS_DEVICE";

/// A pipeline as `Constants::pipeline` built it: enough to build it again.
#[derive(Clone, Debug)]
pub struct BuiltPipeline {
    pub kernel: Kernel,
    pub entry: String,
    pub constants: Vec<(String, f64)>,
}

impl PartialEq for BuiltPipeline {
    fn eq(&self, o: &Self) -> bool {
        self.kernel.name == o.kernel.name
            && self.kernel.capabilities == o.kernel.capabilities
            && self.entry == o.entry
            && self.constants == o.constants
    }
}

/// One statistic of a pipeline executable, as the driver names it.
#[derive(Clone, Debug, Serialize)]
pub struct Stat {
    pub name: String,
    pub value: String,
}

/// One executable the driver made of a pipeline (a compute pipeline
/// usually has one).
#[derive(Clone, Debug, Serialize)]
pub struct Executable {
    pub name: String,
    pub stats: Vec<Stat>,
}

/// A pipeline's statistics: `kernel` is its file and entry point, `setting`
/// the override constants that tell it from the kernel's other pipelines
/// of the run (empty when it is the only one).
#[derive(Clone, Debug, Serialize)]
pub struct PipelineStats {
    pub kernel: String,
    pub setting: String,
    pub executables: Vec<Executable>,
}

/// What `--profile` reports of the driver: every pipeline built so far,
/// with its statistics, or why there are none.
#[derive(Clone, Debug, Serialize)]
pub struct DriverStats {
    /// The Vulkan device that compiled them: the run's own, or the one
    /// `LATENT_LINE_STATS_DEVICE` names.
    pub device: String,
    /// Why the pipelines have no statistics (no Vulkan, or a driver without
    /// the extension: the pipelines listed were still compiled, so their
    /// SPIR-V is known to be accepted).
    pub unavailable: Option<String>,
    pub pipelines: Vec<PipelineStats>,
}

/// The driver's statistics of `built` (as `GpuContext::built` holds them:
/// each once, in order), compiled on `ctx`'s physical device.
pub fn of_pipelines(ctx: &GpuContext, built: &[BuiltPipeline]) -> Result<DriverStats> {
    let none =
        |why: String| Ok(DriverStats { device: ctx.info.name.clone(), unavailable: Some(why), pipelines: Vec::new() });
    if ctx.info.backend != wgpu::Backend::Vulkan {
        return none(format!("the {:?} backend has no Vulkan driver to ask", ctx.info.backend));
    }
    let probe = match Probe::new(ctx)? {
        Ok(p) => p,
        Err(why) => return none(why),
    };
    let mut out = Vec::new();
    for b in built {
        let executables = probe.compile(ctx, b)?;
        let same_kernel: Vec<&BuiltPipeline> =
            built.iter().filter(|o| o.kernel.name == b.kernel.name && o.entry == b.entry).collect();
        out.push(PipelineStats {
            kernel: format!("{}.wgsl {}", b.kernel.name, b.entry),
            setting: distinguishing(b, &same_kernel),
            executables,
        });
    }
    let unavailable = (!probe.has_stats).then(|| format!("{} lacks VK_KHR_pipeline_executable_properties", probe.name));
    Ok(DriverStats { device: probe.name.clone(), unavailable, pipelines: out })
}

/// The constants in which `b` differs from another pipeline of `same`.
fn distinguishing(b: &BuiltPipeline, same: &[&BuiltPipeline]) -> String {
    b.constants
        .iter()
        .filter(|(name, v)| same.iter().any(|o| o.constants.iter().find(|(n, _)| n == name).map(|(_, w)| w) != Some(v)))
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Vulkan instance and device of our own on the context's adapter.
struct Probe {
    /// The device's name, as Vulkan gives it.
    name: String,
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    /// The extension is present and enabled: pipelines keep statistics.
    has_stats: bool,
    /// Buffer accesses go unchecked in the SPIR-V: the device has
    /// `robustBufferAccess2` (as wgpu-hal decides).
    robust2: bool,
    /// `VK_PIPELINE_SHADER_STAGE_CREATE_ALLOW_VARYING_SUBGROUP_SIZE`, as
    /// wgpu-hal sets it on a device with subgroups.
    varying_subgroup: bool,
    /// The SPIR-V version wgpu-hal picks for the device's Vulkan version.
    spv_version: (u8, u8),
}

impl Drop for Probe {
    fn drop(&mut self) {
        // SAFETY: both were created by `Probe::new`, every object made on
        // the device is destroyed before `compile` returns, and nothing
        // else holds them.
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

fn vk_err(what: &str) -> impl Fn(vk::Result) -> Error + '_ {
    move |e| Error::Gpu(format!("driver statistics: {what}: {e}"))
}

impl Probe {
    /// `Ok(Err(why))` where this machine gives no way in (no loader, no
    /// matching device): not an error of the run.
    fn new(ctx: &GpuContext) -> Result<std::result::Result<Probe, String>> {
        // SAFETY: loading the system's Vulkan loader, as wgpu itself does.
        let entry = match unsafe { ash::Entry::load() } {
            Ok(e) => e,
            Err(e) => return Ok(Err(format!("no Vulkan loader: {e}"))),
        };
        // SAFETY: plain queries and object creation with valid create
        // infos; every handle is destroyed (Drop, or below on failure).
        unsafe {
            let loader_version = entry
                .try_enumerate_instance_version()
                .map_err(vk_err("instance version"))?
                .unwrap_or(vk::API_VERSION_1_0);
            let api = loader_version.min(vk::API_VERSION_1_3);
            if api < vk::API_VERSION_1_1 {
                return Ok(Err("the Vulkan loader is older than 1.1".into()));
            }
            let app =
                vk::ApplicationInfo::default().application_name(c"latent-line driver statistics").api_version(api);
            let instance = entry
                .create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None)
                .map_err(vk_err("instance"))?;
            match Self::open(&entry, &instance, ctx, api) {
                Ok(Ok(p)) => Ok(Ok(p)),
                other => {
                    instance.destroy_instance(None);
                    other
                }
            }
        }
    }

    /// SAFETY: `instance` is live; on `Ok(Ok)` the probe owns it.
    unsafe fn open(
        entry: &ash::Entry,
        instance: &ash::Instance,
        ctx: &GpuContext,
        api: u32,
    ) -> Result<std::result::Result<Probe, String>> {
        let physical = instance.enumerate_physical_devices().map_err(vk_err("physical devices"))?;
        let name_of = |pd| {
            let p = instance.get_physical_device_properties(pd);
            p.device_name_as_c_str().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        };
        // Another device's compiler may be asked instead (a run on one
        // adapter, the statistics of another): see `STATS_DEVICE`.
        let elsewhere = std::env::var(STATS_DEVICE).ok().filter(|s| !s.is_empty());
        let found = physical.into_iter().find(|&pd| match &elsewhere {
            Some(want) => name_of(pd).to_lowercase().contains(&want.to_lowercase()),
            None => {
                let p = instance.get_physical_device_properties(pd);
                p.vendor_id == ctx.info.vendor && p.device_id == ctx.info.device && name_of(pd) == ctx.info.name
            }
        });
        let Some(pd) = found else {
            return Ok(Err(match &elsewhere {
                Some(want) => format!("Vulkan lists no device whose name contains {want:?} ({STATS_DEVICE})"),
                None => format!("Vulkan lists no device named {} (vendor {:#x})", ctx.info.name, ctx.info.vendor),
            }));
        };
        let props = instance.get_physical_device_properties(pd);
        let device_api = props.api_version.min(api);
        let exts = instance.enumerate_device_extension_properties(pd).map_err(vk_err("device extensions"))?;
        let has = |name: &CStr| exts.iter().any(|e| e.extension_name_as_c_str() == Ok(name));
        let has_stats_ext = has(ash::khr::pipeline_executable_properties::NAME);
        let has_robust2_ext = has(ash::ext::robustness2::NAME);
        // Subgroup size control: core in 1.3, an extension before.
        let size_ext = device_api < vk::API_VERSION_1_3 && has(ash::ext::subgroup_size_control::NAME);
        let size_struct = device_api >= vk::API_VERSION_1_3 || size_ext;

        // What the device offers, asked for in one chain.
        let mut f_stats = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default();
        let mut f_robust2 = vk::PhysicalDeviceRobustness2FeaturesEXT::default();
        let mut f_size = vk::PhysicalDeviceSubgroupSizeControlFeatures::default();
        {
            let mut all = vk::PhysicalDeviceFeatures2::default();
            if has_stats_ext {
                all = all.push_next(&mut f_stats);
            }
            if has_robust2_ext {
                all = all.push_next(&mut f_robust2);
            }
            if size_struct {
                all = all.push_next(&mut f_size);
            }
            instance.get_physical_device_features2(pd, &mut all);
        }
        let core = instance.get_physical_device_features(pd);
        let has_stats = has_stats_ext && f_stats.pipeline_executable_info == vk::TRUE;
        let robust2 = has_robust2_ext && f_robust2.robust_buffer_access2 == vk::TRUE;
        let size_control = size_struct && f_size.subgroup_size_control == vk::TRUE;

        let Some(family) = instance
            .get_physical_device_queue_family_properties(pd)
            .iter()
            .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
        else {
            return Ok(Err(format!("{} has no compute queue", name_of(pd))));
        };
        let priorities = [1.0];
        let queues =
            [vk::DeviceQueueCreateInfo::default().queue_family_index(family as u32).queue_priorities(&priorities)];
        let mut names = Vec::new();
        // Enable what wgpu enables where the device has it (it changes the
        // code the driver makes: robust buffer access adds bounds checks).
        let mut want_stats =
            vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default().pipeline_executable_info(has_stats);
        let mut want_robust2 = vk::PhysicalDeviceRobustness2FeaturesEXT::default().robust_buffer_access2(robust2);
        let mut want_size =
            vk::PhysicalDeviceSubgroupSizeControlFeatures::default().subgroup_size_control(size_control);
        let mut want = vk::PhysicalDeviceFeatures2::default().features(
            vk::PhysicalDeviceFeatures::default().robust_buffer_access(core.robust_buffer_access == vk::TRUE),
        );
        if has_stats {
            names.push(ash::khr::pipeline_executable_properties::NAME.as_ptr());
            want = want.push_next(&mut want_stats);
        }
        if has_robust2_ext {
            names.push(ash::ext::robustness2::NAME.as_ptr());
            want = want.push_next(&mut want_robust2);
        }
        if size_control {
            if size_ext {
                names.push(ash::ext::subgroup_size_control::NAME.as_ptr());
            }
            want = want.push_next(&mut want_size);
        }
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&names)
            .push_next(&mut want);
        let device = instance.create_device(pd, &info, None).map_err(vk_err("device"))?;
        // wgpu-hal picks it from the device's own Vulkan version.
        let spv_version = match props.api_version {
            v if v >= vk::API_VERSION_1_3 => (1, 6),
            v if v >= vk::API_VERSION_1_2 => (1, 5),
            _ => (1, 3),
        };
        Ok(Ok(Probe {
            name: name_of(pd),
            _entry: entry.clone(),
            instance: instance.clone(),
            device,
            has_stats,
            robust2,
            varying_subgroup: size_control && ctx.features.contains(wgpu::Features::SUBGROUP),
            spv_version,
        }))
    }

    /// naga's SPIR-V of the pipeline, with wgpu-hal's options for this
    /// device and our `shader_checks`.
    fn spirv(
        &self,
        ctx: &GpuContext,
        b: &BuiltPipeline,
        module: &naga::Module,
        info: &naga::valid::ModuleInfo,
    ) -> Result<Vec<u32>> {
        let shader = |message: String| Error::Shader { name: b.kernel.name, message };
        let constants: naga::back::PipelineConstants = b.constants.iter().cloned().collect();
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            module,
            info,
            Some((naga::ShaderStage::Compute, &b.entry)),
            &constants,
        )
        .map_err(|e| shader(format!("override constants: {e}")))?;
        use naga::back::spv;
        use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
        let checks = ctx.shader_checks();
        let options = spv::Options {
            lang_version: self.spv_version,
            flags: spv::WriterFlags::FORCE_POINT_SIZE | spv::WriterFlags::LABEL_VARYINGS,
            bounds_check_policies: BoundsCheckPolicies {
                index: BoundsCheckPolicy::Restrict,
                buffer: if self.robust2 { BoundsCheckPolicy::Unchecked } else { BoundsCheckPolicy::Restrict },
                image_load: BoundsCheckPolicy::Restrict,
                binding_array: BoundsCheckPolicy::Unchecked,
            },
            // `Constants::pipeline` asks for none.
            zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
            force_loop_bounding: checks.force_loop_bounding,
            emit_int_div_checks: checks.int_div_checks,
            ..spv::Options::default()
        };
        let pipeline_options =
            spv::PipelineOptions { entry_point: b.entry.clone(), shader_stage: naga::ShaderStage::Compute };
        spv::write_vec(&module, &info, &options, Some(&pipeline_options)).map_err(|e| shader(format!("SPIR-V: {e}")))
    }

    /// Builds the pipeline (with statistics where the driver keeps them)
    /// and reads them. The module's resources become one descriptor set
    /// layout per group: uniform and storage buffers, as ours all are.
    fn compile(&self, ctx: &GpuContext, b: &BuiltPipeline) -> Result<Vec<Executable>> {
        let (module, info) = b.kernel.validate_with_info()?;
        let spv = self.spirv(ctx, b, &module, &info)?;
        let mut groups: Vec<Vec<vk::DescriptorSetLayoutBinding>> = Vec::new();
        for (_, gv) in module.global_variables.iter() {
            let Some(rb) = &gv.binding else { continue };
            let kind = match gv.space {
                naga::AddressSpace::Uniform => vk::DescriptorType::UNIFORM_BUFFER,
                naga::AddressSpace::Storage { .. } => vk::DescriptorType::STORAGE_BUFFER,
                other => {
                    return Err(Error::Gpu(format!(
                        "driver statistics: {} binds a {other:?} resource, which this probe cannot lay out",
                        b.kernel.name
                    )))
                }
            };
            let g = rb.group as usize;
            if groups.len() <= g {
                groups.resize(g + 1, Vec::new());
            }
            groups[g].push(
                vk::DescriptorSetLayoutBinding::default()
                    .binding(rb.binding)
                    .descriptor_type(kind)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE),
            );
        }
        let d = &self.device;
        // SAFETY: valid create infos; every object is destroyed by `Made`.
        unsafe {
            let mut made = Made::default_on(d);
            for bindings in &groups {
                let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(bindings);
                made.set_layouts.push(d.create_descriptor_set_layout(&info, None).map_err(vk_err("set layout"))?);
            }
            made.layout = d
                .create_pipeline_layout(&vk::PipelineLayoutCreateInfo::default().set_layouts(&made.set_layouts), None)
                .map_err(vk_err("pipeline layout"))?;
            made.module = d
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&spv), None)
                .map_err(vk_err("shader module"))?;
            let entry = std::ffi::CString::new(b.entry.as_str())
                .map_err(|_| Error::Gpu(format!("driver statistics: entry point {:?}", b.entry)))?;
            let mut stage_flags = vk::PipelineShaderStageCreateFlags::empty();
            if self.varying_subgroup {
                stage_flags |= vk::PipelineShaderStageCreateFlags::ALLOW_VARYING_SUBGROUP_SIZE;
            }
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .flags(stage_flags)
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(made.module)
                .name(&entry);
            let flags = if self.has_stats {
                vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR
            } else {
                vk::PipelineCreateFlags::empty()
            };
            let info = vk::ComputePipelineCreateInfo::default().flags(flags).stage(stage).layout(made.layout);
            made.pipeline = match d.create_compute_pipelines(vk::PipelineCache::null(), &[info], None) {
                Ok(p) => p[0],
                Err((_, e)) => return Err(vk_err(&format!("{}.wgsl {}: pipeline", b.kernel.name, b.entry))(e)),
            };
            if !self.has_stats {
                return Ok(Vec::new());
            }
            let ext = ash::khr::pipeline_executable_properties::Device::new(&self.instance, d);
            let execs = ext
                .get_pipeline_executable_properties(&vk::PipelineInfoKHR::default().pipeline(made.pipeline))
                .map_err(vk_err("executables"))?;
            let mut out = Vec::new();
            for (i, e) in execs.iter().enumerate() {
                let which = vk::PipelineExecutableInfoKHR::default().pipeline(made.pipeline).executable_index(i as u32);
                let stats = ext.get_pipeline_executable_statistics(&which).map_err(vk_err("statistics"))?;
                out.push(Executable {
                    name: e.name_as_c_str().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    stats: stats
                        .iter()
                        .map(|s| Stat {
                            name: s.name_as_c_str().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                            value: stat_value(s.format, s.value),
                        })
                        .collect(),
                });
            }
            Ok(out)
        }
    }
}

/// A statistic's value as text, by its declared format.
fn stat_value(format: vk::PipelineExecutableStatisticFormatKHR, v: vk::PipelineExecutableStatisticValueKHR) -> String {
    // SAFETY: the union is read as the member `format` names.
    unsafe {
        match format {
            vk::PipelineExecutableStatisticFormatKHR::BOOL32 => (v.b32 != 0).to_string(),
            vk::PipelineExecutableStatisticFormatKHR::INT64 => v.i64.to_string(),
            vk::PipelineExecutableStatisticFormatKHR::UINT64 => v.u64.to_string(),
            vk::PipelineExecutableStatisticFormatKHR::FLOAT64 => format!("{:.3}", v.f64),
            other => format!("(format {other:?})"),
        }
    }
}

/// The objects of one `compile`, destroyed in reverse on every path.
struct Made<'a> {
    device: &'a ash::Device,
    set_layouts: Vec<vk::DescriptorSetLayout>,
    layout: vk::PipelineLayout,
    module: vk::ShaderModule,
    pipeline: vk::Pipeline,
}

impl<'a> Made<'a> {
    fn default_on(device: &'a ash::Device) -> Self {
        Made {
            device,
            set_layouts: Vec::new(),
            layout: vk::PipelineLayout::null(),
            module: vk::ShaderModule::null(),
            pipeline: vk::Pipeline::null(),
        }
    }
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        // SAFETY: made on `device`, never used by any submitted work;
        // destroying a null handle is allowed.
        unsafe {
            self.device.destroy_pipeline(self.pipeline, None);
            self.device.destroy_shader_module(self.module, None);
            self.device.destroy_pipeline_layout(self.layout, None);
            for l in &self.set_layouts {
                self.device.destroy_descriptor_set_layout(*l, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(entry: &str, constants: &[(&str, f64)]) -> BuiltPipeline {
        BuiltPipeline {
            kernel: crate::gpu::shaders::FUSED_STEP,
            entry: entry.into(),
            constants: constants.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_pipeline_is_told_from_its_kernels_others_by_what_differs() {
        let a = built("main", &[("WG", 256.0), ("UPDATE", 1.0), ("PREP", 0.0)]);
        let b = built("main", &[("WG", 256.0), ("UPDATE", 0.0), ("PREP", 1.0)]);
        let same = [&a, &b];
        assert_eq!(distinguishing(&a, &same), "UPDATE=1 PREP=0");
        assert_eq!(distinguishing(&b, &same), "UPDATE=0 PREP=1");
        assert_eq!(distinguishing(&a, &[&a]), "");
        assert!(a != b && a == a.clone());
        assert!(a != built("gather", &[("WG", 256.0), ("UPDATE", 1.0), ("PREP", 0.0)]));
    }
}
