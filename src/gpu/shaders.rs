//! The shader composition step, in one place.
//!
//! Each kernel in `shaders/` is one `.wgsl` file with one job. Shared
//! functions live in helper files; a kernel's module is the concatenation,
//! in order, of `common.wgsl`, the helpers listed for it in [`KERNELS`], and
//! the kernel file itself. That is the whole composition step: no
//! templating, no string substitution. Sizes and modes are WGSL `override`
//! constants set when a pipeline is built, so every composed module is valid
//! WGSL that naga checks as it is (see the tests below).

use crate::error::{Error, Result};

/// Shared declarations and the math of SPEC §3–§5.
const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// One compute kernel: its file, the helper files it is joined with, its
/// entry points, the override constants the host sets for it, and the naga
/// capabilities it needs (the device features the host must have asked for).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    helpers: &'static [&'static str],
    source: &'static str,
    pub entry_points: &'static [&'static str],
    pub overrides: &'static [&'static str],
    pub capabilities: naga::valid::Capabilities,
}

const REDUCE_WG: &str = include_str!("../../shaders/reduce_wg.wgsl");
const RNG: &str = include_str!("../../shaders/rng.wgsl");
const SCAN: &str = include_str!("../../shaders/scan.wgsl");
const SAMPLER: &str = include_str!("../../shaders/sampler.wgsl");
/// fused_step.wgsl's row fold: portable, or by subgroup shuffles (same bits).
const FOLD_WG: &str = include_str!("../../shaders/fold_wg.wgsl");
const FOLD_SG: &str = include_str!("../../shaders/fold_sg.wgsl");

macro_rules! kernel {
    ($name:literal, [$($helper:expr),*], [$($entry:literal),+], [$($ov:literal),*]) => {
        Kernel {
            name: $name,
            helpers: &[$($helper),*],
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            entry_points: &[$($entry),+],
            overrides: &[$($ov),*],
            capabilities: naga::valid::Capabilities::empty(),
        }
    };
}

pub const INIT: Kernel = kernel!("init", [RNG], ["main"], ["WG", "D"]);
pub const ANCHORS: Kernel = kernel!("anchors", [], ["main"], ["D", "L", "VEC4"]);
/// The fused step's overrides, and `$extra`.
macro_rules! fused_overrides {
    ($($extra:literal),*) => {
        &[
            "WG", "D", "MODE", "NAIVE", "GUARD", "UPDATE", "SCAN", "L", "KEEP", "MOMENTUM", "SCAN_BUFS", "BATCHED",
            "CLIP", "PREP", "DIRECT", "BLOCKS", "VEC4", "KEPT4", "PREFETCH", "KEPT_VECTORS", "PQ_SHARED", "PQ_VEC4S",
            "ROW_TREE", "POISON_BRANCH", "SAMPLED", "UNDO_MARK" $(, $extra)*
        ]
    };
}
pub const FUSED_STEP: Kernel = Kernel {
    overrides: fused_overrides!(),
    ..kernel!("fused_step", [REDUCE_WG, SCAN, RNG, SAMPLER, FOLD_WG], ["main"], [])
};
/// The fused step with fold_sg.wgsl: for devices with `Features::SUBGROUP`.
pub const FUSED_STEP_SG: Kernel = Kernel {
    helpers: &[REDUCE_WG, SCAN, RNG, SAMPLER, FOLD_SG],
    overrides: fused_overrides!("SG"),
    capabilities: naga::valid::Capabilities::SUBGROUP,
    ..FUSED_STEP
};
pub const REDUCE: Kernel = kernel!(
    "reduce",
    [REDUCE_WG, SCAN],
    ["main"],
    ["WG", "D", "GUARD", "SCAN_BUFS", "BATCHED", "CLIP", "GRIDS", "UNDO", "MOMENTUM"]
);
pub const ANCHOR_SUM: Kernel = kernel!("anchor_sum", [], ["main"], ["WG", "D", "BATCHED", "DIRECT", "NAIVE"]);
pub const PREPARE: Kernel = kernel!("prepare", [REDUCE_WG], ["main"], ["WG", "D", "MODE", "NAIVE"]);
pub const BATCH_IO: Kernel =
    kernel!("batch_io", [], ["gather", "scatter"], ["WG", "D", "GUARD", "MOMENTUM", "DIRECT", "VEC4"]);
pub const COPY_TABLE: Kernel = kernel!("copy_table", [], ["snapshot", "restore"], ["WG", "D", "MOMENTUM"]);
pub const SCAN_TABLE: Kernel =
    kernel!("scan_table", [REDUCE_WG, SCAN], ["main", "main_vec4"], ["WG", "D", "SCAN_BUFS", "TILE"]);
pub const SCAN_FINISH: Kernel = kernel!("scan_finish", [REDUCE_WG, SCAN], ["main"], ["WG", "D", "SCAN_BUFS"]);
pub const COPY: Kernel = kernel!("copy", [], ["main"], ["WG", "D"]);
/// copy.wgsl with 16-byte accesses (D a multiple of 4): the benches' floor.
pub const COPY_VEC4: Kernel = kernel!("copy_vec4", [], ["main"], ["WG", "D"]);
pub const SAMPLE: Kernel = kernel!("sample", [RNG, SAMPLER], ["main", "batch"], ["WG"]);
pub const GATHER: Kernel = kernel!("gather", [], ["main"], ["WG", "D"]);
pub const DISTANCES: Kernel = kernel!("distances", [], ["main"], ["WG", "D"]);
pub const LOSS: Kernel = kernel!("loss", [REDUCE_WG], ["forward", "backward"], ["WG", "D", "NAIVE"]);
pub const SGD: Kernel = kernel!("sgd", [], ["main"], ["WG", "D", "MODE"]);

/// Every kernel, for validation and for anyone looking for one.
pub const KERNELS: &[Kernel] = &[
    INIT,
    ANCHORS,
    FUSED_STEP,
    FUSED_STEP_SG,
    REDUCE,
    ANCHOR_SUM,
    PREPARE,
    BATCH_IO,
    COPY_TABLE,
    SCAN_TABLE,
    SCAN_FINISH,
    COPY,
    COPY_VEC4,
    SAMPLE,
    GATHER,
    DISTANCES,
    LOSS,
    SGD,
];

/// naga capabilities a kernel may need, with the device features that give
/// them (the context asks for them where the adapter has them).
const FEATURES_OF: [(naga::valid::Capabilities, wgpu::Features); 1] =
    [(naga::valid::Capabilities::SUBGROUP, wgpu::Features::SUBGROUP)];

impl Kernel {
    /// The composed WGSL source of this kernel.
    pub fn source(&self) -> String {
        let mut s = String::with_capacity(
            COMMON.len() + self.helpers.iter().map(|h| h.len()).sum::<usize>() + self.source.len() + 8,
        );
        s.push_str(COMMON);
        for h in self.helpers {
            s.push('\n');
            s.push_str(h);
        }
        s.push('\n');
        s.push_str(self.source);
        s
    }

    /// The device features the kernel's capabilities need: a pipeline of it
    /// may be built only on a device that has them.
    pub fn features(&self) -> wgpu::Features {
        FEATURES_OF
            .iter()
            .filter(|(c, _)| self.capabilities.contains(*c))
            .fold(wgpu::Features::empty(), |f, (_, x)| f | *x)
    }

    /// Parses and validates the composed module with exactly the kernel's
    /// capabilities.
    pub fn validate(&self) -> Result<naga::Module> {
        self.validate_with_info().map(|(module, _)| module)
    }

    /// [`Self::validate`], with what the validator found (what naga's
    /// back ends need: `driver_stats`).
    pub fn validate_with_info(&self) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
        let src = self.source();
        let module = naga::front::wgsl::parse_str(&src)
            .map_err(|e| Error::Shader { name: self.name, message: e.emit_to_string(&src) })?;
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), self.capabilities)
            .validate(&module)
            .map_err(|e| Error::Shader { name: self.name, message: e.emit_to_string(&src) })?;
        Ok((module, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_composed_kernel_validates_with_the_requested_capabilities() {
        for k in KERNELS {
            let module = k.validate().unwrap_or_else(|e| panic!("{e}"));
            // The table above must match the module: entry points and overrides.
            let entries: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(entries, k.entry_points, "entry points of {}", k.name);
            let declared: Vec<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
            for ov in k.overrides {
                assert!(declared.contains(ov), "{} does not declare override {ov}", k.name);
            }
            // … and the other way for the overrides of the kernel and its
            // helpers: one missing from the table would silently never be set.
            let own = k
                .helpers
                .iter()
                .chain([&k.source])
                .flat_map(|f| f.lines())
                .filter_map(|l| l.strip_prefix("override "))
                .filter_map(|l| l.split(':').next());
            for ov in own {
                assert!(
                    k.overrides.contains(&ov.trim()),
                    "{} declares override {ov}, which the host never sets",
                    k.name
                );
            }
        }
    }

    /// The overrides each kernel's entry points use, through any function
    /// they call (common.wgsl's too: `over_d0` reads NAIVE), are all in its
    /// table: one left out would keep its default in silence (PREPARE once
    /// computed `separation_coef` with NAIVE never set).
    #[test]
    fn every_override_a_kernel_uses_is_set() {
        fn calls(block: &naga::Block, out: &mut Vec<naga::Handle<naga::Function>>) {
            for st in block.iter() {
                match st {
                    naga::Statement::Call { function, .. } => out.push(*function),
                    naga::Statement::Block(b) => calls(b, out),
                    naga::Statement::If { accept, reject, .. } => {
                        calls(accept, out);
                        calls(reject, out);
                    }
                    naga::Statement::Switch { cases, .. } => cases.iter().for_each(|c| calls(&c.body, out)),
                    naga::Statement::Loop { body, continuing, .. } => {
                        calls(body, out);
                        calls(continuing, out);
                    }
                    _ => {}
                }
            }
        }
        for k in KERNELS {
            let module = k.validate().unwrap_or_else(|e| panic!("{e}"));
            let mut used = std::collections::BTreeSet::new();
            for entry in &module.entry_points {
                let mut todo = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut visit = |f: &naga::Function, todo: &mut Vec<_>| {
                    for (_, e) in f.expressions.iter() {
                        if let naga::Expression::Override(h) = e {
                            used.insert(module.overrides[*h].name.clone().unwrap_or_default());
                        }
                    }
                    calls(&f.body, todo);
                };
                visit(&entry.function, &mut todo);
                while let Some(h) = todo.pop() {
                    if seen.insert(h) {
                        visit(&module.functions[h], &mut todo);
                    }
                }
            }
            for ov in &used {
                assert!(k.overrides.contains(&ov.as_str()), "{} uses override {ov}, which the host never sets", k.name);
            }
        }
    }

    /// "Exactly": a kernel that declares a capability fails without it.
    #[test]
    fn declared_capabilities_are_needed() {
        for k in KERNELS.iter().filter(|k| !k.capabilities.is_empty()) {
            assert!(
                Kernel { capabilities: naga::valid::Capabilities::empty(), ..*k }.validate().is_err(),
                "{}",
                k.name
            );
            assert!(!k.features().is_empty(), "{}: no device feature gives its capabilities", k.name);
        }
        assert_eq!(FUSED_STEP_SG.features(), wgpu::Features::SUBGROUP);
        assert_eq!(FUSED_STEP.features(), wgpu::Features::empty());
    }

    /// The host decides KEEP from MAX_KEPT's value, VEC4 from MAX_KEPT4's.
    #[test]
    fn the_hosts_kept_columns_are_the_kernels() {
        let lines = [
            format!("const MAX_KEPT: u32 = {}u;", crate::gpu::pipes::KEPT_COLUMNS),
            format!("const MAX_KEPT_VECTORS: u32 = {}u;", crate::gpu::pipes::KEPT_COLUMNS_IN_VECTORS),
            format!("const MAX_KEPT4: u32 = {}u;", crate::gpu::pipes::KEPT_VEC4S),
        ];
        for line in lines {
            assert!(FUSED_STEP.source.lines().any(|l| l.trim() == line), "fused_step.wgsl lacks `{line}`");
        }
    }

    /// Override values are applied at pipeline creation, where naga
    /// evaluates what they make constant (a division by a D / 4 that is 0
    /// was refused there, for D < 4, with every test above passing): each
    /// kernel's entry points take small and usual D at 1 and 4 lanes.
    /// Kernel `k`'s module and its validation, as pipeline creation starts
    /// from them.
    fn validated(k: &Kernel) -> (naga::Module, naga::valid::ModuleInfo) {
        let module = k.validate().unwrap_or_else(|e| panic!("{e}"));
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), k.capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", k.name));
        (module, info)
    }

    /// Pipeline `constants` applied to entry point `entry` of a validated
    /// module, as at pipeline creation: whether naga takes them.
    fn apply_overrides(
        (module, info): &(naga::Module, naga::valid::ModuleInfo),
        entry: &str,
        constants: &naga::back::PipelineConstants,
    ) -> std::result::Result<(), String> {
        naga::back::pipeline_constants::process_overrides(
            module,
            info,
            Some((naga::ShaderStage::Compute, entry)),
            constants,
        )
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn every_kernel_takes_its_override_values() {
        for k in KERNELS {
            let module = validated(k);
            for d in [1.0, 2.0, 3.0, 4.0, 6.0, 64.0] {
                for lanes in [1.0, 4.0] {
                    let constants: naga::back::PipelineConstants = [("WG", 64.0), ("D", d), ("L", lanes), ("SG", 4.0)]
                        .into_iter()
                        .filter(|(n, _)| k.overrides.contains(n))
                        .map(|(n, v)| (n.to_string(), v))
                        .collect();
                    for entry in k.entry_points {
                        let r = apply_overrides(&module, entry, &constants);
                        assert!(r.is_ok(), "{} {entry}, D {d}, L {lanes}: {:?}", k.name, r.err());
                    }
                }
            }
        }
    }

    /// The fused step with the override values the host gives it
    /// (`Constants::overrides`: the workgroup arrays sized to their use,
    /// KEPT4, PQ_SHARED's PQ_VEC4S) over the shapes it builds: 16-byte
    /// columns up to eight vec4s a lane, p and q shared up to D = 512, rows
    /// wider and narrower than a subgroup, batches sampled in the step.
    #[test]
    fn the_fused_step_takes_the_hosts_override_values() {
        use crate::gpu::pipes::{keeps_vec4s, Constants};
        for (k, sg) in [(FUSED_STEP, 0u32), (FUSED_STEP_SG, 8)] {
            let module = validated(&k);
            for (dim, lanes) in [(3u32, 1u32), (4, 1), (64, 4), (64, 2), (60, 2), (512, 16), (1024, 32), (44, 32)] {
                for (vec4, pq_shared, prefetch, poison_branch, sampled) in [
                    (false, false, true, false, true),
                    (true, false, false, true, false),
                    (true, true, true, false, true),
                ] {
                    let vec4 = vec4 && keeps_vec4s(dim, lanes);
                    let c = Constants {
                        wg: 64,
                        dim,
                        lanes,
                        subgroup: sg,
                        blocks: 2,
                        vec4,
                        prefetch,
                        pq_shared: pq_shared && vec4 && dim <= 512,
                        poison_branch: poison_branch && vec4,
                        batched: sampled,
                        sampled,
                        ..Constants::default()
                    };
                    for update in [0.0, 1.0] {
                        let constants: naga::back::PipelineConstants = c
                            .overrides(&k, &[("UPDATE", update)])
                            .into_iter()
                            .map(|(n, v)| (n.to_string(), v))
                            .collect();
                        let r = apply_overrides(&module, "main", &constants);
                        assert!(r.is_ok(), "{} D {dim}, L {lanes}, SG {sg}, {constants:?}: {:?}", k.name, r.err());
                    }
                }
            }
        }
    }

    /// Every other kernel with override values as the host makes them
    /// (`Constants::overrides`, and each kernel's own extras) over random
    /// draws of the modes: guards, endpoint modes, momentum, batches,
    /// clipping, 16-byte columns where they apply, D and lanes, and the
    /// extras' ranges (scan buffers, guard grids, the undo in the reduce, a
    /// forward-only pass, batches read in place, scan tiles). Pipeline
    /// creation on a device checks only the draws that the device tests
    /// happen to build.
    #[test]
    fn every_kernel_takes_the_hosts_override_values_in_every_mode() {
        use crate::gpu::pipes::{keeps_vec4s, Constants};
        use rand::{Rng, SeedableRng};
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let others = KERNELS.iter().filter(|k| k.name != FUSED_STEP.name);
        for k in others {
            let module = validated(k);
            for _ in 0..200 {
                let dim = [1u32, 2, 3, 4, 5, 8, 64, 131, 1024][r.random_range(0..9)];
                let lanes = [1u32, 2, 4, 8, 32][r.random_range(0..5)];
                let flag = |r: &mut rand::rngs::StdRng| if r.random_bool(0.5) { 1.0 } else { 0.0 };
                let c = Constants {
                    wg: [1u32, 8, 64, 256][r.random_range(0..4)],
                    dim,
                    lanes,
                    mode: r.random_range(0..3),
                    guard: r.random_range(0..5),
                    naive: r.random_bool(0.5),
                    momentum: r.random_bool(0.5),
                    batched: r.random_bool(0.5),
                    clip: r.random_bool(0.5),
                    vec4: r.random_bool(0.5) && keeps_vec4s(dim, lanes),
                    ..Constants::default()
                };
                let extra = [
                    ("SCAN_BUFS", r.random_range(1..=3) as f64),
                    ("GRIDS", r.random_range(0..=4) as f64),
                    ("UNDO", flag(&mut r)),
                    ("UPDATE", flag(&mut r)),
                    ("SCAN", flag(&mut r)),
                    ("DIRECT", flag(&mut r)),
                    ("TILE", [1u32, 16, 64, 256][r.random_range(0..4)] as f64),
                ];
                let constants: naga::back::PipelineConstants =
                    c.overrides(k, &extra).into_iter().map(|(n, v)| (n.to_string(), v)).collect();
                for entry in k.entry_points {
                    let got = apply_overrides(&module, entry, &constants);
                    assert!(got.is_ok(), "{} {entry}, {constants:?}, seed {seed}: {:?}", k.name, got.err());
                }
            }
        }
    }

    /// Every file in shaders/ is a kernel or a helper joined to one, so
    /// the tests above validated it: none lies there unchecked.
    #[test]
    fn every_shader_file_is_composed_into_a_kernel() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let used: Vec<&str> =
            KERNELS.iter().flat_map(|k| k.helpers.iter().copied().chain([k.source])).chain([COMMON]).collect();
        let mut files = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "wgsl") {
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(used.contains(&text.as_str()), "{} is in no kernel", path.display());
            }
        }
        assert!(files >= KERNELS.len(), "{files} files in {}", dir.display());
    }

    #[test]
    fn validation_rejects_a_broken_module() {
        // Guards the test above against passing vacuously.
        let broken = Kernel { source: "fn main() { let x: u32 = 1.5; }", ..ANCHORS };
        assert!(broken.validate().is_err());
    }
}
