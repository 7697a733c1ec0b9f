//! `latent-line devices`: the adapters, their limits, and what `auto`
//! picks.

use crate::Outcome;

/// `latent-line devices`: the adapters wgpu sees (honouring `WGPU_BACKEND`),
/// and what `--backend auto` would run on.
pub(crate) fn devices() -> anyhow::Result<Outcome> {
    use latent_line::gpu::context::{adapters, env_adapter_name, find_named};
    let all = adapters()?;
    if all.is_empty() {
        match std::env::var("WGPU_BACKEND") {
            Ok(v) => out!("no GPU adapter through WGPU_BACKEND={v:?}"),
            Err(_) => {
                out!("no GPU adapter (is a Vulkan, Metal or DX12 driver installed? on Linux: mesa-vulkan-drivers)")
            }
        }
    }
    for (i, a) in all.iter().enumerate() {
        let (info, l, f) = (a.get_info(), a.limits(), a.features());
        out!("adapter {i}: {}", info.name);
        out!(
            "  backend {:?} · type {:?} · driver {} {}",
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );
        out!(
            "  storage binding ≤ {} MiB · buffer ≤ {} MiB · workgroup memory {} KiB · {} invocations · {} groups/dim",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension
        );
        let subgroups = if !f.contains(wgpu::Features::SUBGROUP) {
            "no".to_string()
        } else if info.subgroup_min_size == info.subgroup_max_size {
            format!("yes, of {}", info.subgroup_min_size)
        } else {
            format!("yes, of {}–{}", info.subgroup_min_size, info.subgroup_max_size)
        };
        out!(
            "  timestamp queries {} · subgroups {subgroups}",
            if f.contains(wgpu::Features::TIMESTAMP_QUERY) { "yes" } else { "no" },
        );
    }
    let named = env_adapter_name()?;
    let by_name = named.as_ref().map(|n| (n, find_named(&all, n).map(|i| &all[i])));
    let pick = match (by_name, all.first()) {
        (Some((n, Some(a))), _) => {
            format!("the GPU backend on {}, named by WGPU_ADAPTER_NAME={n}", a.get_info().name)
        }
        (Some((n, None)), _) => {
            format!("nothing: WGPU_ADAPTER_NAME={n} names no adapter, so a run fails with an error")
        }
        // (Opened as a run opens it: one that refuses a device sends `auto`
        // to the CPU.)
        (None, Some(a)) if a.get_info().device_type != wgpu::DeviceType::Cpu => {
            match latent_line::gpu::GpuContext::new(None) {
                Err(latent_line::Error::RequestDevice(why)) => format!(
                    "the CPU backend ({} threads): the best-ranked hardware adapter could not be opened ({why})",
                    rayon::current_num_threads()
                ),
                _ => format!("the GPU backend on adapter 0 ({}), the best-ranked hardware adapter", a.get_info().name),
            }
        }
        (None, Some(a)) => {
            let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
            format!(
                "the CPU backend ({} threads): the only adapters are software ones ({}); `--backend gpu` would use {}",
                rayon::current_num_threads(),
                names.join(", "),
                if all.len() == 1 { "it".to_owned() } else { format!("the first, {}", a.get_info().name) }
            )
        }
        (None, None) => format!("the CPU backend ({} threads): there is no GPU adapter", rayon::current_num_threads()),
    };
    out!("auto     {pick}");
    Ok(Outcome::Done)
}
