//! The GPU trainer: owns the table's buffers, the pipelines and their bind
//! groups, and encodes steps. Kernels live in `shaders/`, their composition
//! in [`super::shaders`], the CPU mirror in `crate::cpu`, the f64 reference
//! in `crate::reference`.
//!
//! A step is one compute pass (one per kernel with `--profile`; `Phase`
//! names them):
//!   [sample.wgsl batch]          (random batches: the step's slots)
//!   [copy_table.wgsl snapshot]   (rollback, every N steps)
//!   [anchors.wgsl]               (p, q from the current table; s0, d0:
//!                                 frozen anchors once, and after a host
//!                                 write to the table; every step otherwise)
//!   [batch_io.wgsl gather]       (batches on a table of several bindings)
//!   [fused_step.wgsl PREP, anchor_sum.wgsl, prepare.wgsl]
//!                                (attached anchors, clipping: the whole
//!                                step's sums before any row is written)
//!   fused_step.wgsl per chunk    (read row, loss, gradient, scans, write row;
//!                                 or over the batch's slots)
//!   reduce.wgsl                  (fixed-order fold, scans, guard, record)
//!   [batch_io.wgsl scatter]      (batches: gathered rows back; rows read
//!                                 in place, double-buffered guard: only a
//!                                 dropped step's, from its undo log)
//!   [copy_table.wgsl restore]    (rollback: an indirect dispatch, empty
//!                                 unless the guard asked)
//! The guard decides on the device (SPEC §9). A few steps go into each
//! submission, whose records are copied into one buffer of a small ring
//! and mapped asynchronously: the host never waits on a step, only on the
//! oldest submission when the ring is full, so it hears of a non-finite
//! event at most `RING × STEPS_PER_SUBMIT` steps late, with its step.

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::batch::{slot_words, BatchDev, SlotSource};
use super::context::{or_env_flag, GpuContext};
use super::layout::{grid, row_blocks, ChunkLayout, ChunkSpan};
use super::pipes::{
    bind, bind_at, finish_map, keeps_columns, keeps_vec4s, read_mapped, readback, storage, uniform, Constants,
};
use super::sampler::SampleU;
use super::scan::{TableScanner, DETAIL_BYTES};
use super::shaders::{self, Kernel};
use super::timer::{in_timed_rounds, PassTimer};
use crate::batches::{Batches, Schedule, StepSlots};
use crate::config::{Shape, StepConfig};
use crate::error::{Error, Result};
use crate::guard::{Policy, TAU};
use crate::record::{Record, RECORD_WORDS};
use crate::scan::Scan;
use crate::trainer::{DeviceInfo, KernelTime, RunState, TableSource, Trainer};

/// Buffers the fused step scans (loss, gradient, rows written): the
/// SCAN_BUFS of fused_step.wgsl and reduce.wgsl, and of the detail buffer's size.
const FUSED_SCAN_BUFS: u64 = 3;

/// Steps encoded into one submission.
const STEPS_PER_SUBMIT: usize = 8;
/// Submissions in flight, each with its own mapped readback buffer.
const RING: usize = 4;
const RECORD_BYTES: u64 = RECORD_WORDS as u64 * 4;

/// Which kernels a full-table step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPath {
    /// One fused pass per chunk: the fast path, with scans and guards.
    Fused,
    /// gather → distances → loss forward → loss backward → SGD, each its own
    /// kernel over a gathered copy of the batch: a cross-check of the math
    /// (and the shape batches will take). No scans or audit; `ignore` only.
    Staged,
}

/// Tuning and test knobs of the GPU backend.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Cap on rows per storage binding; tests set it to force several chunks.
    pub max_chunk_rows: Option<usize>,
    /// Workgroup size wanted (a power of two ≤ 256, else refused; lowered to
    /// the device's limit where that is smaller).
    /// `None`: `LATENT_LINE_WORKGROUP` where set, else 256 on a hardware
    /// GPU, 64 on a software adapter (lavapipe runs each workgroup barrier
    /// as a thread switch).
    pub workgroup: Option<u32>,
    /// Cap on workgroups per dispatch dimension (the device's limit when
    /// `None`); tests lower it to exercise the 2-D grids on small tables.
    pub max_groups: Option<u32>,
    pub path: StepPath,
    /// The fused non-finite scans (SPEC §7). Off only to measure their cost:
    /// without them no guard can act, so only `ignore` is allowed then.
    pub fused_scans: bool,
    /// Lanes that share a row in the fused step (a power of two ≤ the
    /// workgroup and ≤ 32). `None`: `LATENT_LINE_LANES` where set, else
    /// [`GpuTrainer::default_lanes`].
    /// Fewer are used when a huge table's per-workgroup scan records would
    /// not fit one binding with this many (more rows per workgroup).
    pub lanes_per_row: Option<u32>,
    /// Cap on the bytes of one storage binding (the device's limit when
    /// `None`); tests lower it to stand for a device with a huge table.
    pub max_binding_bytes: Option<u64>,
    /// The row fold by subgroup shuffles (fold_sg.wgsl, the same bits as the
    /// portable fold_wg.wgsl). `None`: `LATENT_LINE_SUBGROUPS` (`0` or `1`)
    /// where set — a switch for a driver that gets subgroups wrong — else
    /// wherever the device has `Features::SUBGROUP`, except on software
    /// adapters (there L = 1 and nothing is folded). `Some(true)` on a
    /// device without them is refused.
    pub subgroups: Option<bool>,
    /// Row blocks each workgroup of the fused step works through in turn
    /// (a power of two; at most 256 rows a workgroup in all). `None`:
    /// `LATENT_LINE_ROW_BLOCKS` where set, else as many as keep at least
    /// `MIN_GROUPS` workgroups in a pass.
    pub row_blocks: Option<u32>,
    /// 16-byte loads and stores of a lane's kept columns in the fused step,
    /// with p and q of them held from the start (fused_step.wgsl's VEC4),
    /// and of a batch's rows in batch_io.wgsl, where D is a multiple of 4
    /// and each lane's vec4s are kept (D ≤ 16 × lanes: `pipes::keeps_vec4s`);
    /// elsewhere it has no effect. `None`: `LATENT_LINE_VEC4` (`0` or `1`) where set, else off
    /// (until a GPU has timed it).
    pub vec4: Option<bool>,
    /// The fused step reads a workgroup's next row block while it works on
    /// this one (fused_step.wgsl's PREFETCH: more bytes in flight a lane,
    /// more registers). `None`: `LATENT_LINE_PREFETCH` (`0` or `1`) where
    /// set, else on. The same bits either way.
    pub prefetch: Option<bool>,
    /// A lane keeps its row's columns in registers between the row's sums
    /// and its update (fused_step.wgsl's KEEP, where D ≤ 8 × lanes), rather
    /// than reading them again. `None`: `LATENT_LINE_KEEP` (`0` or `1`)
    /// where set, else on. The same bits either way.
    pub keep_columns: Option<bool>,
    /// Where a lane keeps its 4-byte columns (KEEP), it holds them in the
    /// fields of a struct of vectors, as VEC4 does, instead of an array
    /// (fused_step.wgsl's KEPT_VECTORS). `None`: `LATENT_LINE_KEPT_VECTORS`
    /// (`0` or `1`) where set, else off (until a GPU has timed it). The
    /// same bits either way.
    pub kept_vectors: Option<bool>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            max_chunk_rows: None,
            workgroup: None,
            max_groups: None,
            path: StepPath::Fused,
            fused_scans: true,
            lanes_per_row: None,
            max_binding_bytes: None,
            subgroups: None,
            row_blocks: None,
            vec4: None,
            prefetch: None,
            keep_columns: None,
            kept_vectors: None,
        }
    }
}

/// The fused step's shape as `GpuTrainer::new` settled it.
#[derive(Clone, Copy)]
struct FusedShape {
    /// The workgroup size of every kernel.
    wg: u32,
    /// fused_step.wgsl's lanes per row.
    lanes: u32,
    /// fold_sg.wgsl's SG (the adapter's smallest subgroup), 0 for fold_wg.wgsl.
    subgroup: u32,
    /// fused_step.wgsl's BLOCKS: row blocks a workgroup steps in turn.
    blocks: u32,
    /// VEC4 of fused_step.wgsl and batch_io.wgsl: kept columns and batch
    /// rows 16 bytes at a time.
    vec4: bool,
    /// fused_step.wgsl's PREFETCH and KEEP (as asked; KEEP applies only
    /// where D ≤ 8 × lanes): see [`GpuOptions::prefetch`], [`GpuOptions::keep_columns`].
    prefetch: bool,
    keep: bool,
    /// fused_step.wgsl's KEPT_VECTORS (as asked): [`GpuOptions::kept_vectors`].
    kept_vectors: bool,
}

impl FusedShape {
    /// The override constants of the step's pipelines.
    fn constants(&self, shape: Shape, cfg: &StepConfig) -> Constants {
        Constants {
            lanes: self.lanes,
            subgroup: self.subgroup,
            blocks: self.blocks,
            vec4: self.vec4,
            prefetch: self.prefetch,
            keep: self.keep,
            kept_vectors: self.kept_vectors,
            ..Constants::new(shape, cfg, self.wg)
        }
    }
}

// Host mirrors of the WGSL structs in shaders/common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ParamsU {
    rows: u32,
    anchor_a: u32,
    anchor_b: u32,
    batch: u32,
    eps: f32,
    lr: f32,
    w_red: f32,
    seed_lo: u32,
    seed_hi: u32,
    tau: f32,
    max_skips: u32,
    max_rollbacks: u32,
    backoff: f32,
    margin: f32,
    margin_weight: f32,
    momentum: f32,
    weight_decay: f32,
    clip_norm: f32,
    pad: [u32; 2],
}

/// The device's `State` (common.wgsl), as the host writes and reads it.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct StateU {
    record: u32,
    stamp: u32,
    cur: u32,
    halted: u32,
    s0: f32,
    d0: f32,
    lr: f32,
    skips: u32,
    rollbacks: u32,
    restore: u32,
    clip: f32,
    norm: f32,
    undo: u32,
}

const STATE_BYTES: u64 = std::mem::size_of::<StateU>() as u64;

/// The flag (w of a guard grid) that opens an indirect dispatch: reduce.wgsl's
/// `state.restore` (rollback's copy-back) or `state.undo` (a dropped batch).
const GRID_ON_RESTORE: u32 = 0;
const GRID_ON_UNDO: u32 = 1;

/// batch_io.wgsl's workgroups over `cap` slots: an invocation per element
/// (VEC4: per vec4).
fn slot_groups(cap: u32, dim: u64, vec4: bool, wg: u32) -> u32 {
    let per_invocation = if vec4 { 4 } else { 1 };
    (cap as u64 * dim / per_invocation).div_ceil(wg as u64) as u32
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ChunkU {
    row_base: u32,
    rows: u32,
    partial_base: u32,
    seg_base: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PrepareU {
    count: u32,
    segs: u32,
    slot_a: u32,
    slot_b: u32,
}

/// Slots per segment of anchor_sum.wgsl (its SEG).
const SEG: u32 = 256;

/// The kernels of a step, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Sample,
    Snapshot,
    Anchors,
    Gather,
    Prep,
    AnchorSum,
    Prepare,
    Fused,
    Reduce,
    Scatter,
    Restore,
}

impl Phase {
    /// The kernel, as `--profile` names it.
    fn kernel(self) -> &'static str {
        match self {
            Phase::Sample => "sample.wgsl batch",
            Phase::Snapshot => "copy_table.wgsl snapshot",
            Phase::Anchors => "anchors.wgsl",
            Phase::Gather => "batch_io.wgsl gather",
            Phase::Prep => "fused_step.wgsl PREP",
            Phase::AnchorSum => "anchor_sum.wgsl",
            Phase::Prepare => "prepare.wgsl",
            Phase::Fused => "fused_step.wgsl",
            Phase::Reduce => "reduce.wgsl",
            Phase::Scatter => "batch_io.wgsl scatter",
            Phase::Restore => "copy_table.wgsl restore",
        }
    }
}

/// Kinds of kernel a step can run (the most passes one step's profile needs).
const PHASES: u32 = 11;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceU {
    count: u32,
    update: u32,
    pad: [u32; 2],
}

fn params_u(shape: Shape, cfg: &StepConfig) -> ParamsU {
    ParamsU {
        rows: shape.rows as u32,
        anchor_a: cfg.anchor_a as u32,
        anchor_b: cfg.anchor_b as u32,
        batch: shape.rows as u32,
        eps: cfg.eps,
        lr: cfg.lr,
        w_red: cfg.w_red(shape.rows),
        seed_lo: 0,
        seed_hi: 0,
        tau: TAU,
        max_skips: cfg.guard.max_skips,
        max_rollbacks: cfg.guard.max_rollbacks,
        backoff: cfg.guard.backoff,
        margin: cfg.margin,
        margin_weight: cfg.margin_weight,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        clip_norm: cfg.clip_norm,
        pad: [0; 2],
    }
}

struct GpuChunk {
    span: ChunkSpan,
    /// Table A, and table B for double-buffered guards.
    a: wgpu::Buffer,
    b: Option<wgpu::Buffer>,
    /// rollback: this chunk's snapshot.
    snap: Option<wgpu::Buffer>,
    /// momentum: the velocity, A and B like the table.
    vel: Option<(wgpu::Buffer, Option<wgpu::Buffer>)>,
    uniform: wgpu::Buffer,
    /// Workgroups of one-row-per-invocation kernels over this chunk.
    row_groups: u32,
}

impl GpuChunk {
    fn buffer(&self, cur: u32) -> &wgpu::Buffer {
        match (cur, &self.b) {
            (1, Some(b)) => b,
            _ => &self.a,
        }
    }
}

/// A pipeline with the bind groups it is dispatched with (one per chunk for
/// chunk kernels, one otherwise).
pub(super) struct Pass {
    pipeline: wgpu::ComputePipeline,
    groups: Vec<wgpu::BindGroup>,
}

impl Pass {
    pub(super) fn dispatch_one(&self, pass: &mut wgpu::ComputePass) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.groups[0], &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
}

/// Buffers and passes of the staged path, built on first use.
struct Staged {
    gather: Pass,
    distances: Pass,
    forward: Pass,
    backward: Pass,
    sgd: Pass,
    reduce: Pass,
}

type MapDone = Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// One readback buffer of the ring and the submission it waits for.
struct Slot {
    buffer: wgpu::Buffer,
    /// (records, the mapping's completion, the submission, the first
    /// step's number — `None` for an evaluation).
    pending: Option<(usize, MapDone, wgpu::SubmissionIndex, Option<u64>)>,
}

pub struct GpuTrainer {
    ctx: Arc<GpuContext>,
    shape: Shape,
    cfg: StepConfig,
    opts: GpuOptions,
    fused: FusedShape,
    max_groups: u32,
    layout: ChunkLayout,
    chunks: Vec<GpuChunk>,
    params: wgpu::Buffer,
    anchors: wgpu::Buffer,
    state: wgpu::Buffer,
    records: wgpu::Buffer,
    detail: wgpu::Buffer,
    hits: wgpu::Buffer,
    /// skip-row's strike counts (a stand-in buffer for other policies).
    strikes: wgpu::Buffer,
    anchors_pass: Pass,
    fused_update: Pass,
    fused_eval: Pass,
    reduce_update: Pass,
    reduce_eval: Pass,
    /// rollback: (snapshot, restore) passes over the chunks.
    rollback: Option<(Pass, Pass)>,
    /// Indirect dispatch arguments that reduce.wgsl writes from the guard's
    /// decision (`guard_grids`): rollback's restore, one per chunk, then a
    /// batch's undo scatter; no workgroups unless the step asked for them.
    guard_args: wgpu::Buffer,
    ring: Vec<Slot>,
    steps_done: u64,
    /// A resumed run snapshots at its first step (it has no earlier one).
    snapshot_due: bool,
    /// `anchors` and state's s0, d0 hold rows a and b of the table as it
    /// is, and no step can change them (`keeps_anchors`): the next step
    /// needs no anchors.wgsl pass. Cleared by every host write to the table.
    anchors_fresh: bool,
    /// Once set, no further submission starts (`Trainer::set_stop`).
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    staged: Option<Staged>,
    scanner: Option<TableScanner>,
    /// SPEC §10: batched steps' device side (`None`: full-table steps).
    batch: Option<BatchDev>,
    /// Attached anchors, clipping: the steps read their rows twice.
    prepass: Option<Prepass>,
    /// `Trainer::step_rows`: the slots already written for the next step.
    manual: Option<StepSlots>,
    /// --profile: GPU time and bytes per kernel, in the order first run.
    profile: Option<Vec<KernelTime>>,
    profile_error: Option<String>,
}

/// The first read of a two-read step and what follows it (SPEC §4–§5).
struct Prepass {
    prep: Pass,
    /// attached: the anchor term's segment sums.
    anchor_sum: Option<Pass>,
    prepare: Pass,
}

impl GpuTrainer {
    pub fn new(
        ctx: Arc<GpuContext>,
        shape: Shape,
        cfg: StepConfig,
        source: TableSource,
        opts: GpuOptions,
    ) -> Result<Self> {
        Self::with_batches(ctx, shape, cfg, source, opts, Batches::Full)
    }

    /// A trainer whose steps take their rows from `batches` (SPEC §10).
    pub fn with_batches(
        ctx: Arc<GpuContext>,
        shape: Shape,
        cfg: StepConfig,
        source: TableSource,
        opts: GpuOptions,
        batches: Batches,
    ) -> Result<Self> {
        cfg.validate(shape)?;
        let schedule = Schedule::new(&batches, shape.rows, cfg.anchor_a as u32, cfg.anchor_b as u32)?;
        if opts.path == StepPath::Staged && (!schedule.is_full() || cfg.needs_prepass()) {
            return Err(Error::invalid(
                "--batch",
                "the staged GPU path has full-table steps only (no batches, attached anchors or clipping)",
            ));
        }
        if let TableSource::Data(v) = &source {
            if v.len() as u64 != shape.elements() {
                return Err(Error::invalid("table", format!("{} values for {} × {}", v.len(), shape.rows, shape.dim)));
            }
        }
        if opts.path == StepPath::Staged && cfg.guard.policy != Policy::Ignore {
            return Err(Error::invalid("--on-nonfinite", "the staged GPU path has no guard; use `ignore` with it"));
        }
        if opts.path == StepPath::Staged && (cfg.margin > 0.0 || cfg.momentum > 0.0 || cfg.weight_decay > 0.0) {
            return Err(Error::invalid(
                "--margin",
                "the staged GPU path has plain SGD only (no margin, momentum or decay)",
            ));
        }
        if !opts.fused_scans && cfg.guard.policy != Policy::Ignore {
            return Err(Error::invalid("--on-nonfinite", "a guard needs the fused scans; use `ignore` without them"));
        }
        // Asked for: at most what the kernels are written for (the device
        // may lower the workgroup further; the kernel line says).
        let wg_asked = or_env(opts.workgroup, "LATENT_LINE_WORKGROUP", 256)?;
        let wg = ctx.workgroup_size(wg_asked.unwrap_or(if ctx.is_software() { 64 } else { 256 }));
        let auto_lanes = Self::default_lanes(&ctx, shape.dim);
        let lanes_asked = or_env(opts.lanes_per_row, "LATENT_LINE_LANES", 32)?;
        let mut lanes = lanes_asked.unwrap_or(auto_lanes).clamp(1, wg.min(32));
        // The adapter's smallest subgroup: rows of up to that many lanes fold
        // by shuffles alone (fold_sg.wgsl).
        let sg_min = ctx.info.subgroup_min_size;
        let usable = ctx.features.contains(wgpu::Features::SUBGROUP) && sg_min.is_power_of_two();
        let asked = or_env_flag(opts.subgroups, "LATENT_LINE_SUBGROUPS")?;
        if asked == Some(true) && !usable {
            return Err(Error::invalid(
                "subgroups",
                format!(
                    "the adapter {} has no usable subgroup operations (Features::SUBGROUP, smallest subgroup {sg_min})",
                    ctx.info.name
                ),
            ));
        }
        let subgroup = if usable && asked.unwrap_or(!ctx.is_software()) { sg_min } else { 0 };
        let max_binding = opts.max_binding_bytes.unwrap_or(u64::MAX).min(ctx.max_binding_bytes());
        let max_groups = opts.max_groups.unwrap_or(u32::MAX).clamp(1, ctx.max_groups());
        let layout = ChunkLayout::new(shape, max_binding, opts.max_chunk_rows, wg, max_groups)?;
        // The per-workgroup partials and scan findings, and skip-row's
        // strikes, are single bindings over the whole table: refuse, with
        // sizes, what they cannot hold, before anything is allocated.
        let d = shape.dim as u64;
        let cap = schedule.max_slots() as u64;
        let blocks_asked = or_env(opts.row_blocks, "LATENT_LINE_ROW_BLOCKS", 256)?;
        // The rows one pass of the fused step covers: the largest chunk's,
        // or a batch's slots.
        let pass_rows =
            if schedule.is_full() { layout.spans.iter().map(|s| s.rows as u64).max().unwrap_or(0) } else { cap };
        let blocks_for = |lanes: u32| row_blocks(pass_rows, wg / lanes, blocks_asked);
        let records = |lanes: u32| {
            let rows_per_group = (wg / lanes * blocks_for(lanes)) as u64;
            let groups: u64 = layout.spans.iter().map(|s| (s.rows as u64).div_ceil(rows_per_group)).sum();
            groups.max(cap.div_ceil(rows_per_group)) * FUSED_SCAN_BUFS * DETAIL_BYTES
        };
        // A huge table (100M rows): fewer lanes a row, more rows a
        // workgroup, until its scan records fit one binding.
        while records(lanes) > max_binding && lanes > 1 {
            lanes /= 2;
        }
        let blocks = blocks_for(lanes);
        let vec4_asked = or_env_flag(opts.vec4, "LATENT_LINE_VEC4")?.unwrap_or(false);
        // Whether the fused step takes its kept columns 16 bytes at a time.
        let vec4 = vec4_asked && keeps_vec4s(shape.dim as u32, lanes);
        let prefetch = or_env_flag(opts.prefetch, "LATENT_LINE_PREFETCH")?.unwrap_or(true);
        let keep = or_env_flag(opts.keep_columns, "LATENT_LINE_KEEP")?.unwrap_or(true);
        let kept_vectors = or_env_flag(opts.kept_vectors, "LATENT_LINE_KEPT_VECTORS")?.unwrap_or(false);
        let strikes = if cfg.guard.policy == Policy::SkipRow { shape.rows as u64 * 4 } else { 0 };
        let biggest = records(lanes).max(strikes);
        // The batch buffers and the two-read steps' per-slot coefficients
        // are single bindings too.
        let coef =
            if cfg.needs_prepass() { (if schedule.is_full() { shape.rows as u64 } else { cap }) * 16 } else { 0 };
        for (what, bytes) in [("batch buffer (its slots × D × 4)", cap * d * 4), ("per-slot coefficients", coef)] {
            if bytes > max_binding {
                return Err(shape.too_large(format!(
                    "its {what} need a {bytes}-byte binding, over the device's {max_binding}-byte limit"
                )));
            }
        }
        if let Schedule::Given(all) = &schedule {
            let bytes = all.len() as u64 * cap * 16;
            if bytes > ctx.limits.max_buffer_size {
                return Err(Error::invalid(
                    "--indices",
                    format!("{} batches of up to {cap} slots need {bytes} bytes on the device, over its {}-byte buffer limit", all.len(), ctx.limits.max_buffer_size),
                ));
            }
        }
        if biggest > max_binding {
            return Err(shape.too_large(format!(
                "its per-workgroup scan records need a {biggest}-byte binding, over the device's {max_binding}-byte limit"
            )));
        }

        // Allocation and pipeline creation inside error scopes: an
        // out-of-memory becomes a typed error naming the sizes, not a panic.
        let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = Self::build(
            ctx.clone(),
            shape,
            cfg,
            opts,
            FusedShape { wg, lanes, subgroup, blocks, vec4, prefetch, keep, kept_vectors },
            max_groups,
            layout,
            schedule,
        );
        let validation = pollster::block_on(invalid.pop());
        let out_of_memory = pollster::block_on(oom.pop());
        if let Some(e) = out_of_memory {
            return Err(shape.too_large(format!(
                "the GPU could not allocate it ({e}); the `{:?}` guard keeps {} cop{} of the table",
                cfg.guard.policy,
                copies(cfg.guard.policy),
                if copies(cfg.guard.policy) == 1 { "y" } else { "ies" }
            )));
        }
        if let Some(e) = validation {
            return Err(Error::Gpu(e.to_string()));
        }
        let mut t = built;
        t.upload(source)?;
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        ctx: Arc<GpuContext>,
        shape: Shape,
        cfg: StepConfig,
        opts: GpuOptions,
        fused_shape: FusedShape,
        max_groups: u32,
        layout: ChunkLayout,
        schedule: Schedule,
    ) -> Self {
        let FusedShape { wg, lanes, subgroup, blocks, vec4, .. } = fused_shape;
        let d = shape.dim as u64;
        let policy = cfg.guard.policy;
        let batched = !schedule.is_full();
        // A batched step's table is single-buffered: its slots are.
        let double = policy.double_buffered() && !batched;
        let cap = schedule.max_slots() as u32;
        let params = uniform(&ctx, "params", &params_u(shape, &cfg));
        let table_usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let mut partial_base = 0u32;
        let mut seg_base = 0u32;
        let chunks: Vec<GpuChunk> = layout
            .spans
            .iter()
            .map(|&span| {
                let row_groups = (span.rows as u32).div_ceil(wg / lanes * blocks);
                let bytes = span.rows as u64 * d * 4;
                let c = GpuChunk {
                    span,
                    a: storage(&ctx, "table A", bytes, table_usage),
                    b: double.then(|| storage(&ctx, "table B", bytes, table_usage)),
                    snap: (policy == Policy::Rollback).then(|| storage(&ctx, "snapshot", bytes, table_usage)),
                    vel: (cfg.momentum > 0.0).then(|| {
                        let b = double.then(|| storage(&ctx, "velocity B", bytes, table_usage));
                        (storage(&ctx, "velocity A", bytes, table_usage), b)
                    }),
                    uniform: uniform(
                        &ctx,
                        "chunk",
                        &ChunkU { row_base: span.row_base as u32, rows: span.rows as u32, partial_base, seg_base },
                    ),
                    row_groups,
                };
                partial_base += row_groups;
                seg_base += (span.rows as u32).div_ceil(SEG);
                c
            })
            .collect();
        let anchors = storage(&ctx, "anchors", 2 * d * 4, wgpu::BufferUsages::COPY_DST);
        let state = storage(&ctx, "state", STATE_BYTES, wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC);
        ctx.queue.write_buffer(
            &state,
            0,
            bytemuck::bytes_of(&StateU {
                record: 0,
                stamp: 1, // the first pass's: never 0, the scan details' initial stamp
                cur: 0,
                halted: 0,
                s0: 0.0,
                d0: 0.0,
                lr: cfg.lr,
                skips: 0,
                rollbacks: 0,
                restore: 0,
                clip: 1.0,
                norm: 0.0,
                undo: 0,
            }),
        );
        // The batch buffers: the step's slots, gathered (A, and B for the
        // double-buffered guards), with their velocity.
        let x_groups = cap.div_ceil(wg / lanes * blocks);
        let x_bytes = cap as u64 * d * 4;
        // A table in one binding is read in place (DIRECT): no gather, and
        // no batch buffer A.
        let direct = batched && chunks.len() == 1;
        let (xa, xb, xva, xvb) = if batched {
            let mk = |label: &str, on: bool| on.then(|| storage(&ctx, label, x_bytes, wgpu::BufferUsages::empty()));
            let momentum = cfg.momentum > 0.0;
            (
                mk("batch A", !direct),
                mk("batch B", policy.double_buffered()),
                mk("batch velocity A", momentum && !direct),
                mk("batch velocity B", momentum && policy.double_buffered()),
            )
        } else {
            (None, None, None, None)
        };
        let x_uniform = uniform(&ctx, "batch chunk", &ChunkU { row_base: 0, rows: cap, partial_base: 0, seg_base: 0 });
        let groups_max = partial_base.max(if batched { x_groups } else { 0 });
        let partials = storage(&ctx, "partials", groups_max as u64 * 16, wgpu::BufferUsages::empty());
        let detail = storage(
            &ctx,
            "scan details",
            groups_max as u64 * FUSED_SCAN_BUFS * DETAIL_BYTES,
            wgpu::BufferUsages::empty(),
        );
        let hits = storage(&ctx, "scan hits", 16, wgpu::BufferUsages::empty());
        let dummy = storage(&ctx, "unused binding", 16, wgpu::BufferUsages::empty());
        let strikes = if policy == Policy::SkipRow {
            storage(&ctx, "strikes", shape.rows as u64 * 4, wgpu::BufferUsages::COPY_SRC)
        } else {
            storage(&ctx, "unused strikes", 16, wgpu::BufferUsages::empty())
        };
        let records = storage(
            &ctx,
            "records",
            STEPS_PER_SUBMIT as u64 * RECORD_BYTES,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let ring = (0..RING)
            .map(|_| Slot {
                buffer: readback(&ctx, "records ring", STEPS_PER_SUBMIT as u64 * RECORD_BYTES),
                pending: None,
            })
            .collect();

        let consts = fused_shape.constants(shape, &cfg);
        // anchors: rows a and b in both table buffers of their chunks.
        let p = consts.pipeline(&ctx, &shaders::ANCHORS, "main", &[]);
        let (ca, ia) = layout.locate(cfg.anchor_a);
        let (cb, ib) = layout.locate(cfg.anchor_b);
        let at = uniform(&ctx, "anchor rows", &[(ia as u64 * d) as u32, (ib as u64 * d) as u32, 0, 0]);
        fn b_or_a(c: &GpuChunk) -> &wgpu::Buffer {
            c.b.as_ref().unwrap_or(&c.a)
        }
        // Velocity bindings, or 16-byte stand-ins without momentum (B: A
        // again when single-buffered would alias a writable binding).
        fn vel_a<'a>(c: &'a GpuChunk, dummy: &'a wgpu::Buffer) -> &'a wgpu::Buffer {
            c.vel.as_ref().map_or(dummy, |v| &v.0)
        }
        fn vel_b<'a>(c: &'a GpuChunk, dummy: &'a wgpu::Buffer) -> &'a wgpu::Buffer {
            c.vel.as_ref().and_then(|v| v.1.as_ref()).unwrap_or(dummy)
        }
        let group = bind(
            &ctx,
            &p,
            &[&anchors, &state, &params, &chunks[ca].a, b_or_a(&chunks[ca]), &chunks[cb].a, b_or_a(&chunks[cb]), &at],
        );
        let anchors_pass = Pass { pipeline: p, groups: vec![group] };

        // The buffers a fused pass works on: the table's chunks, or the
        // batch buffers (one "chunk" of slots).
        let slots = if batched {
            storage(&ctx, "batch slots", cap as u64 * 16, wgpu::BufferUsages::COPY_DST)
        } else {
            storage(&ctx, "unused slots", 16, wgpu::BufferUsages::empty())
        };
        let prepass_on = cfg.needs_prepass();
        let attached = cfg.endpoints == crate::config::Endpoints::Attached;
        let coef_slots = if batched { cap as u64 } else { shape.rows as u64 };
        let coef = storage(
            &ctx,
            "slot coefficients",
            if prepass_on { coef_slots * 16 } else { 16 },
            wgpu::BufferUsages::empty(),
        );
        let segs = if batched { cap.div_ceil(SEG) } else { seg_base };
        let colpart = storage(
            &ctx,
            "anchor-term sums",
            if attached { segs as u64 * 2 * d * 4 } else { 16 },
            wgpu::BufferUsages::empty(),
        );
        let agrad =
            storage(&ctx, "anchor gradients", if attached { 2 * d * 4 } else { 16 }, wgpu::BufferUsages::empty());
        // (buffer A, buffer B, velocity A, velocity B, chunk uniform) per bind group.
        let targets: Vec<[&wgpu::Buffer; 5]> = chunks
            .iter()
            .map(|c| [&c.a, c.b.as_ref().unwrap_or(&dummy), vel_a(c, &dummy), vel_b(c, &dummy), &c.uniform])
            .collect();
        // DIRECT: A is the table (and its velocity), read by row.
        let x_targets: Vec<[&wgpu::Buffer; 5]> = if !batched {
            Vec::new()
        } else if direct {
            let c = &chunks[0];
            vec![[&c.a, xb.as_ref().unwrap_or(&dummy), vel_a(c, &dummy), xvb.as_ref().unwrap_or(&dummy), &x_uniform]]
        } else {
            vec![[
                xa.as_ref().expect("batch A"),
                xb.as_ref().unwrap_or(&dummy),
                xva.as_ref().unwrap_or(&dummy),
                xvb.as_ref().unwrap_or(&dummy),
                &x_uniform,
            ]]
        };
        let direct_flag = ("DIRECT", if direct { 1.0 } else { 0.0 });
        let fused = |update: bool, prep: bool, over: &[[&wgpu::Buffer; 5]], over_x: bool| {
            let flags = [
                ("UPDATE", if update { 1.0 } else { 0.0 }),
                ("SCAN", if opts.fused_scans && !prep { 1.0 } else { 0.0 }),
                ("PREP", if prep { 1.0 } else { 0.0 }),
                ("DIRECT", if direct && over_x { 1.0 } else { 0.0 }),
                ("SCAN_BUFS", FUSED_SCAN_BUFS as f64),
            ];
            let c = Constants { batched: over_x, ..consts };
            let kernel = if subgroup > 0 { &shaders::FUSED_STEP_SG } else { &shaders::FUSED_STEP };
            let p = c.pipeline(&ctx, kernel, "main", &flags);
            let groups = over
                .iter()
                .map(|[a, b, va, vb, u]| {
                    bind_at(
                        &ctx,
                        &p,
                        &[
                            (0, *a),
                            (1, *b),
                            (2, &anchors),
                            (3, &state),
                            (4, &partials),
                            (5, &params),
                            (6, *u),
                            (7, &strikes),
                            (8, &detail),
                            (9, &hits),
                            (11, *va),
                            (12, *vb),
                            (13, &slots),
                            (14, &coef),
                            (15, &agrad),
                            // VEC4's views of 0, 1, 11, 12.
                            (16, if vec4 { *a } else { &dummy }),
                            (17, if vec4 { *b } else { &dummy }),
                            (18, if vec4 { *va } else { &dummy }),
                            (19, if vec4 { *vb } else { &dummy }),
                        ],
                    )
                })
                .collect();
            Pass { pipeline: p, groups }
        };
        let fused_update =
            if batched { fused(true, false, &x_targets, true) } else { fused(true, false, &targets, false) };
        let fused_eval = fused(false, false, &targets, false);
        // Grids that only the guard's decision opens, and their indirect
        // arguments (written by reduce.wgsl: the grid when the flag in w is
        // set, no workgroups otherwise): rollback's restore per chunk
        // (state.restore), then the undo scatter of a batch read in place
        // under a double-buffered guard (state.undo).
        let mut guard_grids: Vec<[u32; 4]> = Vec::new();
        if policy == Policy::Rollback {
            guard_grids.extend(chunks.iter().map(|c| {
                let (x, y) = grid((c.span.rows as u64 * d).div_ceil(wg as u64) as u32, max_groups);
                [x, y, 1, GRID_ON_RESTORE]
            }));
        }
        if direct && policy.double_buffered() {
            let (x, y) = grid(slot_groups(cap, d, vec4, wg), max_groups);
            guard_grids.push([x, y, 1, GRID_ON_UNDO]);
        }
        let (grid_buf, guard_args) = if !guard_grids.is_empty() {
            let bytes = guard_grids.len() as u64 * 16;
            let g = storage(&ctx, "guard grids", bytes, wgpu::BufferUsages::COPY_DST);
            ctx.queue.write_buffer(&g, 0, bytemuck::cast_slice(&guard_grids));
            (g, storage(&ctx, "guard dispatches", bytes, wgpu::BufferUsages::INDIRECT))
        } else {
            (
                storage(&ctx, "unused grid", 16, wgpu::BufferUsages::empty()),
                storage(&ctx, "unused dispatch", 16, wgpu::BufferUsages::empty()),
            )
        };
        let reduce = |update: bool, over_x: bool| {
            let c = Constants { batched: over_x, ..consts };
            let p = c.pipeline(&ctx, &shaders::REDUCE, "main", &[("SCAN_BUFS", FUSED_SCAN_BUFS as f64)]);
            let count = if over_x { x_groups } else { partial_base };
            let rp = uniform(&ctx, "reduce", &ReduceU { count, update: update as u32, pad: [0; 2] });
            let g = bind_at(
                &ctx,
                &p,
                &[
                    (0, &partials),
                    (1, &state),
                    (2, &params),
                    (3, &rp),
                    (4, &strikes),
                    (5, &slots),
                    (6, &grid_buf),
                    (7, &guard_args),
                    (8, &detail),
                    (9, &hits),
                    (10, &records),
                ],
            );
            Pass { pipeline: p, groups: vec![g] }
        };
        let reduce_update = reduce(true, batched);
        let reduce_eval = reduce(false, false);
        let rollback = (policy == Policy::Rollback).then(|| {
            let make = |entry: &str| {
                let p = consts.pipeline(&ctx, &shaders::COPY_TABLE, entry, &[]);
                let groups = chunks
                    .iter()
                    .map(|c| {
                        let (b, s) = (c.b.as_ref().unwrap_or(&dummy), c.snap.as_ref().unwrap_or(&dummy));
                        let mut bufs = vec![&c.a, b, s, &state, &c.uniform];
                        if entry == "restore" {
                            bufs.extend([vel_a(c, &dummy), vel_b(c, &dummy)]);
                        }
                        bind(&ctx, &p, &bufs)
                    })
                    .collect();
                Pass { pipeline: p, groups }
            };
            (make("snapshot"), make("restore"))
        });

        // Two-read steps: PREP, the anchor term's sums, prepare.
        let prepass = prepass_on.then(|| {
            let over: &[[&wgpu::Buffer; 5]] = if batched { &x_targets } else { &targets };
            let prep = fused(false, true, over, batched);
            let anchor_sum = attached.then(|| {
                let c = Constants { batched, ..consts };
                let p = c.pipeline(&ctx, &shaders::ANCHOR_SUM, "main", &[direct_flag]);
                let groups = over
                    .iter()
                    .map(|[a, b, _, _, u]| {
                        // Read-only here: single-buffered, A stands in for B.
                        let b = if std::ptr::eq(*b, &dummy) { *a } else { *b };
                        bind_at(
                            &ctx,
                            &p,
                            &[
                                (0, *a),
                                (1, b),
                                (2, &anchors),
                                (3, &state),
                                (6, *u),
                                (13, &slots),
                                (14, &coef),
                                (16, &colpart),
                            ],
                        )
                    })
                    .collect();
                Pass { pipeline: p, groups }
            });
            let p = consts.pipeline(&ctx, &shaders::PREPARE, "main", &[]);
            let (slot_a, slot_b) = if batched { (0, 1) } else { (cfg.anchor_a as u32, cfg.anchor_b as u32) };
            let pu = uniform(
                &ctx,
                "prepare",
                &PrepareU { count: if batched { x_groups } else { partial_base }, segs, slot_a, slot_b },
            );
            let g = bind_at(
                &ctx,
                &p,
                &[
                    (0, &partials),
                    (1, &state),
                    (2, &params),
                    (3, &pu),
                    (4, &anchors),
                    (5, &coef),
                    (6, &colpart),
                    (7, &agrad),
                ],
            );
            Prepass { prep, anchor_sum, prepare: Pass { pipeline: p, groups: vec![g] } }
        });

        // Batches: gather and scatter per table chunk, the slots' source.
        let batch = batched.then(|| {
            let xa = xa.as_ref().unwrap_or(&dummy);
            let io_u = uniform(&ctx, "batch io", &[cap, 0u32, 0, 0]);
            let io = |entry: &str| {
                let p = consts.pipeline(&ctx, &shaders::BATCH_IO, entry, &[direct_flag]);
                let groups = chunks
                    .iter()
                    .map(|c| {
                        let all = [
                            (0, &c.a),
                            (1, vel_a(c, &dummy)),
                            (2, xa),
                            (3, xb.as_ref().unwrap_or(&dummy)),
                            (4, xva.as_ref().unwrap_or(&dummy)),
                            (5, xvb.as_ref().unwrap_or(&dummy)),
                            (6, &slots),
                            (7, &c.uniform),
                            (8, &state),
                            (9, &io_u),
                            // VEC4's views of 0–5.
                            (10, if vec4 { &c.a } else { &dummy }),
                            (11, if vec4 { vel_a(c, &dummy) } else { &dummy }),
                            (12, if vec4 { xa } else { &dummy }),
                            (13, if vec4 { xb.as_ref().unwrap_or(&dummy) } else { &dummy }),
                            (14, if vec4 { xva.as_ref().unwrap_or(&dummy) } else { &dummy }),
                            (15, if vec4 { xvb.as_ref().unwrap_or(&dummy) } else { &dummy }),
                        ];
                        // gather fills buffer A only.
                        let b_only = [3, 5, 13, 15];
                        let used: Vec<(u32, &wgpu::Buffer)> =
                            all.into_iter().filter(|(i, _)| entry == "scatter" || !b_only.contains(i)).collect();
                        bind_at(&ctx, &p, &used)
                    })
                    .collect();
                Pass { pipeline: p, groups }
            };
            let source = match schedule {
                Schedule::Random { sampler, .. } => {
                    let schedule = storage(
                        &ctx,
                        "sample schedule",
                        STEPS_PER_SUBMIT as u64 * std::mem::size_of::<SampleU>() as u64,
                        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    );
                    let p = consts.pipeline(&ctx, &shaders::SAMPLE, "batch", &[]);
                    let g = bind_at(&ctx, &p, &[(2, &params), (3, &slots), (4, &schedule), (5, &state)]);
                    SlotSource::Random { sampler, schedule, pass: Pass { pipeline: p, groups: vec![g] } }
                }
                Schedule::Given(host) => {
                    let words: Vec<[u32; 4]> = host.iter().flat_map(|h| slot_words(h, &cfg, cap)).collect();
                    let all = storage(
                        &ctx,
                        "all batches",
                        words.len() as u64 * 16,
                        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    );
                    ctx.queue.write_buffer(&all, 0, bytemuck::cast_slice(&words));
                    SlotSource::Given { all, entries: host.iter().map(|h| h.entries).collect() }
                }
                Schedule::Full => unreachable!("batched"),
            };
            BatchDev {
                cap,
                direct,
                slots: slots.clone(),
                groups: x_groups,
                gather: io("gather"),
                scatter: io("scatter"),
                source,
            }
        });

        GpuTrainer {
            ctx,
            shape,
            cfg,
            opts,
            fused: fused_shape,
            max_groups,
            layout,
            chunks,
            params,
            anchors,
            state,
            records,
            detail,
            hits,
            strikes,
            anchors_pass,
            fused_update,
            fused_eval,
            reduce_update,
            reduce_eval,
            rollback,
            guard_args,
            ring,
            steps_done: 0,
            snapshot_due: false,
            anchors_fresh: false,
            stop: None,
            staged: None,
            scanner: None,
            batch,
            prepass,
            manual: None,
            profile: None,
            profile_error: None,
        }
    }

    /// Writes the initial table: generated in place, or copied from the host.
    fn upload(&mut self, source: TableSource) -> Result<()> {
        self.anchors_fresh = false;
        match source {
            TableSource::Data(v) => {
                let d = self.shape.dim;
                for c in &self.chunks {
                    let part = &v[c.span.row_base * d..][..c.span.rows * d];
                    self.ctx.queue.write_buffer(&c.a, 0, bytemuck::cast_slice(part));
                }
            }
            TableSource::Random { seed } => self.encode_generate(seed),
        }
        self.ctx.wait()
    }

    /// Overwrites the current table with N(0,1) from the counter RNG keyed
    /// by `seed`, generated on the device (init.wgsl).
    pub fn generate(&mut self, seed: u64) -> Result<()> {
        if self.steps_done != 0 {
            return Err(Error::invalid("generate", "only before the first step"));
        }
        self.anchors_fresh = false;
        self.encode_generate(seed);
        self.ctx.wait()
    }

    /// Do steps leave rows a and b as they are? So when frozen (SPEC §4),
    /// except under rollback, whose restore may bring back a snapshot
    /// taken before the host wrote an anchor's row. The anchors pass then
    /// runs once, and again after any host write to the table.
    fn keeps_anchors(&self) -> bool {
        self.cfg.endpoints == crate::config::Endpoints::Frozen && self.cfg.guard.policy != Policy::Rollback
    }

    fn encode_generate(&self, seed: u64) {
        let ctx = &self.ctx;
        let mut p = params_u(self.shape, &self.cfg);
        p.seed_lo = seed as u32;
        p.seed_hi = (seed >> 32) as u32;
        let seeded = uniform(ctx, "init params", &p);
        let pipeline = self.constants().pipeline(ctx, &shaders::INIT, "main", &[]);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            for c in &self.chunks {
                let bg = bind(ctx, &pipeline, &[&c.a, &seeded, &c.uniform]);
                pass.set_bind_group(0, &bg, &[]);
                let groups = (c.span.rows as u64 * self.shape.dim as u64).div_ceil(self.fused.wg as u64) as u32;
                let (x, y) = grid(groups, self.max_groups);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        ctx.queue.submit([enc.finish()]);
    }

    /// Copies one buffer of each chunk (`which`) back to the host, in row order.
    fn read_chunks(&self, which: impl Fn(&GpuChunk) -> &wgpu::Buffer) -> Result<Vec<f32>> {
        let d = self.shape.dim as u64;
        let largest = self.layout.rows_per_chunk.min(self.shape.rows) as u64 * d * 4;
        let staging = readback(&self.ctx, "table readback", largest);
        let mut out = Vec::with_capacity(self.shape.elements() as usize);
        for c in &self.chunks {
            let bytes = c.span.rows as u64 * d * 4;
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(which(c), 0, &staging, 0, bytes);
            self.ctx.queue.submit([enc.finish()]);
            out.extend_from_slice(bytemuck::cast_slice(&read_mapped(&self.ctx, &staging, bytes)?));
        }
        Ok(out)
    }

    fn constants(&self) -> Constants {
        Constants::new(self.shape, &self.cfg, self.fused.wg)
    }

    /// Wall time of `iters` plain device copies of the whole table (each
    /// chunk into a scratch buffer of its size), in one submission: the
    /// floor a full-table step is measured against (SPEC §15).
    pub fn time_table_copies(&self, iters: u64) -> Result<std::time::Duration> {
        let largest = self.chunks.iter().map(|c| c.a.size()).max().unwrap_or(16);
        let scratch = storage(&self.ctx, "copy scratch", largest, wgpu::BufferUsages::COPY_DST);
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        for _ in 0..iters {
            for c in &self.chunks {
                enc.copy_buffer_to_buffer(&c.a, 0, &scratch, 0, c.a.size());
            }
        }
        let t = std::time::Instant::now();
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()?;
        Ok(t.elapsed())
    }

    /// GPU time of `n` full-table steps from timestamp queries (one pass a
    /// step), or `None` without them. The guard acts as in `steps`; the
    /// records are not read. For benchmarks (SPEC §15).
    pub fn gpu_time_steps(&mut self, n: u32) -> Result<Option<std::time::Duration>> {
        in_timed_rounds(n, |m| self.gpu_time_passes_once(m, true))
    }

    /// GPU time of `n` evaluations of the table (the fused pass with
    /// UPDATE = false: every row read, its sums folded, its loss scanned,
    /// nothing written; then reduce.wgsl), or `None` without timestamp
    /// queries: beside the step, what the reading and the row's math cost
    /// without the update and the writes (benches).
    pub fn gpu_time_evaluations(&mut self, n: u32) -> Result<Option<std::time::Duration>> {
        in_timed_rounds(n, |m| self.gpu_time_passes_once(m, false))
    }

    fn gpu_time_passes_once(&mut self, n: u32, update: bool) -> Result<Option<std::time::Duration>> {
        let Some(timer) = PassTimer::new(&self.ctx, n.max(1)) else { return Ok(None) };
        let ctx = self.ctx.clone();
        let every = self.cfg.guard.snapshot_every as u64;
        let mut done = 0u32;
        while done < n {
            let m = (n - done).min(STEPS_PER_SUBMIT as u32);
            ctx.queue.write_buffer(&self.state, 0, bytemuck::bytes_of(&0u32));
            if let Some(b) = &self.batch {
                b.write_schedule(&ctx, &self.cfg, self.steps_done, m as usize);
            }
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            for i in 0..m {
                let snapshot = update && self.steps_done.is_multiple_of(every);
                self.encode_fused(&mut enc, update, snapshot, Some(timer.writes(done + i)), None, self.steps_done);
                self.steps_done += update as u64;
            }
            done += m;
            if done == n {
                timer.resolve(&mut enc, n);
            }
            ctx.queue.submit([enc.finish()]);
        }
        let secs: f64 = timer.read(&ctx, n)?.iter().sum();
        Ok(Some(std::time::Duration::from_secs_f64(secs)))
    }

    /// GPU time of `iters` copies of the table by `copy.wgsl` (the floor of
    /// SPEC §15 through the same API as the step), or `None` without
    /// timestamp queries.
    /// With `vec4`, copy_vec4.wgsl (16-byte accesses; D a multiple of 4).
    pub fn gpu_time_table_copies(&self, iters: u32, vec4: bool) -> Result<Option<std::time::Duration>> {
        if vec4 && !self.shape.dim.is_multiple_of(4) {
            return Err(Error::invalid(
                "copy",
                format!("a 16-byte copy needs D a multiple of 4, not {}", self.shape.dim),
            ));
        }
        in_timed_rounds(iters, |m| self.gpu_time_copies_once(m, vec4))
    }

    fn gpu_time_copies_once(&self, iters: u32, vec4: bool) -> Result<Option<std::time::Duration>> {
        let Some(timer) = PassTimer::new(&self.ctx, iters.max(1)) else { return Ok(None) };
        let ctx = &self.ctx;
        let kernel = if vec4 { &shaders::COPY_VEC4 } else { &shaders::COPY };
        let pipeline = self.constants().pipeline(ctx, kernel, "main", &[]);
        let per_invocation = if vec4 { 4 } else { 1 };
        let largest = self.chunks.iter().map(|c| c.a.size()).max().unwrap_or(16);
        let scratch = storage(ctx, "copy scratch", largest, wgpu::BufferUsages::empty());
        let groups: Vec<wgpu::BindGroup> =
            self.chunks.iter().map(|c| bind(ctx, &pipeline, &[&c.a, &scratch, &c.uniform])).collect();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        for i in 0..iters {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("copy"),
                timestamp_writes: Some(timer.writes(i)),
            });
            pass.set_pipeline(&pipeline);
            for (c, g) in self.chunks.iter().zip(&groups) {
                pass.set_bind_group(0, g, &[]);
                let n =
                    (c.span.rows as u64 * self.shape.dim as u64).div_ceil(self.fused.wg as u64 * per_invocation) as u32;
                let (x, y) = grid(n, self.max_groups);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        timer.resolve(&mut enc, iters);
        ctx.queue.submit([enc.finish()]);
        let secs: f64 = timer.read(ctx, iters)?.iter().sum();
        Ok(Some(std::time::Duration::from_secs_f64(secs)))
    }

    /// Wall time of `iters` table scans in one submission (benchmarks).
    pub fn time_table_scans(&mut self, iters: u32) -> Result<std::time::Duration> {
        self.with_table_scanner(true, |s, t| s.time(t, iters))
    }

    /// `time_table_scans` with 4-byte loads (scan_table.wgsl `main`), where
    /// the default takes 16 bytes a load: the benches' comparison.
    pub fn time_table_scans_4byte(&mut self, iters: u32) -> Result<std::time::Duration> {
        self.with_table_scanner(false, |s, t| s.time(t, iters))
    }

    /// The GPU's own time of `iters` table scans from timestamp queries, or
    /// `None` without them; `wide`: 16-byte loads where D allows (the
    /// default), else 4-byte (benchmarks).
    pub fn gpu_time_table_scans(&mut self, iters: u32, wide: bool) -> Result<Option<std::time::Duration>> {
        self.with_table_scanner(wide, |s, t| s.gpu_time(t, iters))
    }

    /// Runs `f` with a scanner of the current table: the trainer's own
    /// (16-byte loads where D allows) for `wide`, else a 4-byte one.
    fn with_table_scanner<R>(
        &mut self,
        wide: bool,
        f: impl FnOnce(&mut TableScanner, &super::scan::PreparedScan) -> Result<R>,
    ) -> Result<R> {
        let cur = self.current()?;
        let mut narrow = None;
        let scanner = if wide {
            self.ensure_scanner();
            self.scanner.as_mut().expect("built above")
        } else {
            narrow.insert(TableScanner::with_loads(
                self.ctx.clone(),
                self.shape,
                &self.layout,
                self.fused.wg,
                self.max_groups,
                false,
            ))
        };
        let bufs: Vec<&wgpu::Buffer> = self.chunks.iter().map(|c| c.buffer(cur)).collect();
        let prepared = scanner.prepare(&bufs);
        f(scanner, &prepared)
    }

    /// The fused step's lanes a row when not asked for. On a software
    /// adapter one (lavapipe runs each workgroup barrier as a thread
    /// switch, and a lane per row needs none). On a GPU, about 8 columns a
    /// lane: every lane of a row repeats the row's scalar work
    /// (distances, coefficients, bookkeeping), so at 32 lanes (2 columns
    /// each) that work, not memory, set the pace (H200, 1M × 64: 1.11 ms
    /// at 32 lanes, 0.77 at 16, 0.55 at 8; BENCHMARKS.md).
    pub fn default_lanes(ctx: &GpuContext, dim: usize) -> u32 {
        if ctx.is_software() {
            1
        } else {
            (dim as u32).div_ceil(8).next_power_of_two().min(32)
        }
    }

    /// (workgroup size, lanes per row of the fused step) as chosen.
    pub fn kernel_shape(&self) -> (u32, u32) {
        (self.fused.wg, self.fused.lanes)
    }

    /// Row blocks each workgroup of the fused step works through.
    pub fn row_blocks(&self) -> u32 {
        self.fused.blocks
    }

    /// Whether the fused step reads and writes its kept columns 16 bytes at
    /// a time ([`GpuOptions::vec4`], where it applies).
    pub fn vec4(&self) -> bool {
        self.fused.vec4
    }

    /// Whether a lane of the fused step holds its 4-byte columns in
    /// registers between the row's sums and its update (KEEP: as asked,
    /// where D ≤ 8 × lanes, without VEC4).
    pub fn keeps_columns(&self) -> bool {
        self.fused.keep && !self.fused.vec4 && keeps_columns(self.shape.dim as u32, self.fused.lanes)
    }

    /// Whether those kept columns are in vectors ([`GpuOptions::kept_vectors`]).
    pub fn kept_in_vectors(&self) -> bool {
        self.keeps_columns() && self.fused.kept_vectors
    }

    /// The subgroup size the row fold relies on (fold_sg.wgsl), or `None`
    /// for the portable fold.
    pub fn subgroup_fold(&self) -> Option<u32> {
        (self.fused.subgroup > 0).then_some(self.fused.subgroup)
    }

    /// The chunk layout in use (tests check that several bindings are used).
    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    fn ensure_scanner(&mut self) {
        if self.scanner.is_none() {
            self.scanner =
                Some(TableScanner::new(self.ctx.clone(), self.shape, &self.layout, self.fused.wg, self.max_groups));
        }
    }

    /// Which table buffer is current (read from the device; no work in flight).
    fn current(&self) -> Result<u32> {
        Ok(self.read_state()?.cur)
    }

    fn read_state(&self) -> Result<StateU> {
        let staging = readback(&self.ctx, "state readback", STATE_BYTES);
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&self.state, 0, &staging, 0, STATE_BYTES);
        self.ctx.queue.submit([enc.finish()]);
        let raw = read_mapped(&self.ctx, &staging, STATE_BYTES)?;
        Ok(bytemuck::pod_read_unaligned::<StateU>(&raw))
    }

    /// One step (or, with `update == false`, one evaluation), as one pass
    /// (or, with `phase_timer`, a timed pass per kernel from that timer's
    /// pass `first`). `step` is its number. Returns the kernels encoded.
    fn encode_fused(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        update: bool,
        snapshot: bool,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
        phase_timer: Option<(&PassTimer, u32)>,
        step: u64,
    ) -> Vec<Phase> {
        let batch = self.batch.as_ref().filter(|_| update);
        // The step's slots: copied from the resident batches (copies go
        // between passes); random ones are sampled by the step's first
        // kernel, from its entry of the submission's schedule.
        if let (Some(b), None) = (batch, &self.manual) {
            if let SlotSource::Given { all, entries } = &b.source {
                let bytes = b.cap as u64 * 16;
                let at = (step % entries.len() as u64) * bytes;
                enc.copy_buffer_to_buffer(all, at, &b.slots, 0, bytes);
            }
        }
        let phases = self.phases(update, snapshot);
        // After this step the anchors are as it left them: fresh for the
        // next one when no step can change rows a and b.
        self.anchors_fresh = self.keeps_anchors();
        match phase_timer {
            // --profile: each kernel in a pass of its own, timed.
            Some((timer, first)) => {
                for (i, &ph) in phases.iter().enumerate() {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(ph.kernel()),
                        timestamp_writes: Some(timer.writes(first + i as u32)),
                    });
                    self.encode_phase(&mut pass, ph, update);
                }
            }
            None => {
                let mut pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("fused step"), timestamp_writes });
                for &ph in &phases {
                    self.encode_phase(&mut pass, ph, update);
                }
            }
        }
        phases
    }

    /// The kernels of one step (or evaluation), in order.
    fn phases(&self, update: bool, snapshot: bool) -> Vec<Phase> {
        let batch = self.batch.as_ref().filter(|_| update);
        let random = matches!(batch, Some(BatchDev { source: SlotSource::Random { .. }, .. }));
        let pre = self.prepass.as_ref().filter(|_| update);
        let rollback = self.rollback.is_some();
        [
            (Phase::Sample, random && self.manual.is_none()),
            (Phase::Snapshot, snapshot && rollback),
            (Phase::Anchors, !self.anchors_fresh),
            (Phase::Gather, batch.is_some_and(|b| !b.direct)),
            (Phase::Prep, pre.is_some()),
            (Phase::AnchorSum, pre.is_some_and(|p| p.anchor_sum.is_some())),
            (Phase::Prepare, pre.is_some()),
            (Phase::Fused, true),
            (Phase::Reduce, true),
            // (A batch read in place has rows to put back only under a
            // double-buffered guard, and only after a dropped step.)
            (Phase::Scatter, batch.is_some_and(|b| !b.direct || self.cfg.guard.policy.double_buffered())),
            (Phase::Restore, update && rollback),
        ]
        .into_iter()
        .filter_map(|(ph, on)| on.then_some(ph))
        .collect()
    }

    /// Encodes one kernel of a step (its dispatches over every chunk).
    fn encode_phase(&self, pass: &mut wgpu::ComputePass, phase: Phase, update: bool) {
        let batch = self.batch.as_ref().filter(|_| update);
        let max = self.max_groups;
        let each_chunk = |pass: &mut wgpu::ComputePass, p: &Pass, groups: &dyn Fn(&GpuChunk) -> u32| {
            pass.set_pipeline(&p.pipeline);
            for (c, bg) in self.chunks.iter().zip(&p.groups) {
                pass.set_bind_group(0, bg, &[]);
                let (x, y) = grid(groups(c), max);
                pass.dispatch_workgroups(x, y, 1);
            }
        };
        let once = |pass: &mut wgpu::ComputePass, p: &Pass, groups: u32| {
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, &p.groups[0], &[]);
            let (x, y) = grid(groups, max);
            pass.dispatch_workgroups(x, y, 1);
        };
        let d = self.shape.dim as u64;
        let wg = self.fused.wg as u64;
        let elements = |c: &GpuChunk| (c.span.rows as u64 * d).div_ceil(wg) as u32;
        let rows = |c: &GpuChunk| c.row_groups;
        let slot_elements = |b: &BatchDev| slot_groups(b.cap, d, self.vec4(), self.fused.wg);
        // The fused kernel's passes, over the batch's slots or the chunks.
        let fused = |pass: &mut wgpu::ComputePass, p: &Pass| match batch {
            Some(b) => once(pass, p, b.groups),
            None => each_chunk(pass, p, &rows),
        };
        let pre = self.prepass.as_ref();
        match phase {
            Phase::Sample => {
                if let Some(BatchDev { source: SlotSource::Random { pass: sample, .. }, cap, .. }) = batch {
                    once(pass, sample, cap.div_ceil(self.fused.wg));
                }
            }
            Phase::Snapshot => {
                if let Some((snap, _)) = &self.rollback {
                    each_chunk(pass, snap, &elements);
                }
            }
            Phase::Anchors => self.anchors_pass.dispatch_one(pass),
            Phase::Gather => {
                if let Some(b) = batch {
                    each_chunk(pass, &b.gather, &|_| slot_elements(b));
                }
            }
            Phase::Prep => {
                if let Some(pre) = pre {
                    fused(pass, &pre.prep);
                }
            }
            Phase::AnchorSum => {
                if let Some(sum) = pre.and_then(|p| p.anchor_sum.as_ref()) {
                    let blocks = (d as u32).div_ceil(self.fused.wg);
                    match batch {
                        Some(b) => once(pass, sum, blocks * b.cap.div_ceil(SEG)),
                        None => each_chunk(pass, sum, &|c| blocks * (c.span.rows as u32).div_ceil(SEG)),
                    }
                }
            }
            Phase::Prepare => {
                if let Some(pre) = pre {
                    pre.prepare.dispatch_one(pass);
                }
            }
            Phase::Fused => {
                if update {
                    fused(pass, &self.fused_update);
                } else {
                    each_chunk(pass, &self.fused_eval, &rows);
                }
            }
            Phase::Reduce => if update { &self.reduce_update } else { &self.reduce_eval }.dispatch_one(pass),
            Phase::Scatter => {
                if let Some(b) = batch {
                    if b.direct {
                        // Indirect: no workgroups unless reduce.wgsl dropped
                        // the step (its grid follows rollback's, if any).
                        let at = if self.rollback.is_some() { self.chunks.len() } else { 0 };
                        pass.set_pipeline(&b.scatter.pipeline);
                        pass.set_bind_group(0, &b.scatter.groups[0], &[]);
                        pass.dispatch_workgroups_indirect(&self.guard_args, at as u64 * 16);
                    } else {
                        each_chunk(pass, &b.scatter, &|_| slot_elements(b));
                    }
                }
            }
            Phase::Restore => {
                // Indirect: reduce.wgsl gave no workgroups unless it rolled back.
                if let Some((_, restore)) = &self.rollback {
                    pass.set_pipeline(&restore.pipeline);
                    for (i, bg) in restore.groups.iter().enumerate() {
                        pass.set_bind_group(0, bg, &[]);
                        pass.dispatch_workgroups_indirect(&self.guard_args, i as u64 * 16);
                    }
                }
            }
        }
    }

    /// Nominal bytes `phase` reads and writes in one step: the buffers it
    /// goes over in full.
    fn phase_bytes(&self, phase: Phase) -> u64 {
        let d = self.shape.dim as u64;
        let table = self.shape.bytes();
        let vel = if self.cfg.momentum > 0.0 { 2 } else { 1 };
        // Rows a step's kernels go over: the batch's slots or the table's rows.
        let slots = self.batch.as_ref().map_or(self.shape.rows as u64, |b| b.cap as u64);
        let direct = self.batch.as_ref().is_some_and(|b| b.direct);
        match phase {
            Phase::Sample => slots * 16,
            Phase::Snapshot => 2 * table,
            // Copies only after a rollback (an indirect dispatch, empty
            // otherwise): not counted.
            Phase::Restore => 0,
            Phase::Anchors => 4 * d * 4,
            // DIRECT: no gather; the scatter copies only after a dropped
            // step (not counted), the fused pass writes a double-buffered
            // guard's undo log beside the rows.
            Phase::Gather | Phase::Scatter if direct => 0,
            Phase::Fused if direct && self.cfg.guard.policy.double_buffered() => 3 * vel * slots * d * 4,
            Phase::Gather | Phase::Scatter | Phase::Fused => 2 * vel * slots * d * 4,
            Phase::Prep | Phase::AnchorSum => slots * d * 4 + slots * 16,
            Phase::Prepare => slots.div_ceil(SEG as u64) * 2 * d * 4,
            Phase::Reduce => slots * 16,
        }
    }

    /// One full-table step through the staged kernels.
    fn encode_staged(&self, enc: &mut wgpu::CommandEncoder) {
        let s = self.staged.as_ref().expect("staged buffers are built before encoding");
        let b = self.shape.rows as u64;
        let d = self.shape.dim as u64;
        let max = self.max_groups;
        let elem_groups = (b * d).div_ceil(self.fused.wg as u64) as u32;
        let row_groups = (b as u32).div_ceil(self.fused.wg);
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("staged step"), timestamp_writes: None });
        self.anchors_pass.dispatch_one(&mut pass);
        let per_chunk = |pass: &mut wgpu::ComputePass, p: &Pass| {
            pass.set_pipeline(&p.pipeline);
            for bg in &p.groups {
                pass.set_bind_group(0, bg, &[]);
                let (x, y) = grid(elem_groups, max);
                pass.dispatch_workgroups(x, y, 1);
            }
        };
        let once = |pass: &mut wgpu::ComputePass, p: &Pass, groups: u32| {
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, &p.groups[0], &[]);
            let (x, y) = grid(groups, max);
            pass.dispatch_workgroups(x, y, 1);
        };
        per_chunk(&mut pass, &s.gather);
        once(&mut pass, &s.distances, row_groups);
        once(&mut pass, &s.forward, row_groups);
        s.reduce.dispatch_one(&mut pass);
        once(&mut pass, &s.backward, elem_groups);
        per_chunk(&mut pass, &s.sgd);
    }

    fn build_staged(&mut self) -> Result<()> {
        if self.staged.is_some() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let (b, d) = (self.shape.rows as u64, self.shape.dim as u64);
        if b * d * 4 > ctx.max_binding_bytes() {
            return Err(self.shape.too_large("the staged path gathers the batch into one storage binding"));
        }
        if (b * d).div_ceil(self.fused.wg as u64) > self.max_groups as u64 * self.max_groups as u64 {
            return Err(self.shape.too_large("the staged path's per-element grid exceeds the dispatch limit"));
        }
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let indices: Vec<u32> = (0..b as u32).collect();
        let idx = storage(&ctx, "indices", b * 4, wgpu::BufferUsages::COPY_DST);
        ctx.queue.write_buffer(&idx, 0, bytemuck::cast_slice(&indices));
        let xs = storage(&ctx, "gathered rows", b * d * 4, wgpu::BufferUsages::empty());
        let dist = storage(&ctx, "distances", b * 16, wgpu::BufferUsages::empty());
        let coef = storage(&ctx, "coefficients", b * 4, wgpu::BufferUsages::empty());
        let grads = storage(&ctx, "gradients", b * d * 4, wgpu::BufferUsages::empty());
        let row_groups = (b as u32).div_ceil(self.fused.wg);
        let partials = storage(&ctx, "staged partials", row_groups as u64 * 16, wgpu::BufferUsages::empty());
        let reduce_u = uniform(&ctx, "staged reduce", &ReduceU { count: row_groups, update: 1, pad: [0; 2] });
        let c = self.constants();
        let (params, anchors, state) = (&self.params, &self.anchors, &self.state);
        let gather_p = c.pipeline(&ctx, &shaders::GATHER, "main", &[]);
        let sgd_p = c.pipeline(&ctx, &shaders::SGD, "main", &[]);
        let gather = Pass {
            groups: self
                .chunks
                .iter()
                .map(|ch| bind(&ctx, &gather_p, &[&ch.a, &idx, &xs, params, &ch.uniform]))
                .collect(),
            pipeline: gather_p,
        };
        let sgd = Pass {
            groups: self
                .chunks
                .iter()
                .map(|ch| bind(&ctx, &sgd_p, &[&ch.a, &idx, &grads, params, &ch.uniform, state]))
                .collect(),
            pipeline: sgd_p,
        };
        let single = |k: &Kernel, entry: &str, bufs: &[(u32, &wgpu::Buffer)]| {
            let p = c.pipeline(&ctx, k, entry, &[]);
            let g = bind_at(&ctx, &p, bufs);
            Pass { pipeline: p, groups: vec![g] }
        };
        let distances = single(
            &shaders::DISTANCES,
            "main",
            &[(0, &xs), (1, anchors), (2, &dist), (3, params), (4, &idx), (5, state)],
        );
        let forward =
            single(&shaders::LOSS, "forward", &[(2, &dist), (3, state), (4, &coef), (5, &partials), (7, params)]);
        let backward = single(
            &shaders::LOSS,
            "backward",
            &[(0, &xs), (1, anchors), (2, &dist), (4, &coef), (6, &grads), (7, params)],
        );
        let reduce = single(
            &shaders::REDUCE,
            "main",
            &[
                (0, &partials),
                (1, state),
                (2, params),
                (3, &reduce_u),
                (4, &self.strikes),
                (5, &storage(&ctx, "unused slots", 16, wgpu::BufferUsages::empty())),
                (6, &storage(&ctx, "unused grid", 16, wgpu::BufferUsages::empty())),
                (7, &storage(&ctx, "unused dispatch", 16, wgpu::BufferUsages::empty())),
                (8, &self.detail),
                (9, &self.hits),
                (10, &self.records),
            ],
        );
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(e.to_string()));
        }
        self.staged = Some(Staged { gather, distances, forward, backward, sgd, reduce });
        Ok(())
    }

    /// Encodes `n` steps (or one evaluation when `n == 0`) into one
    /// submission whose records land in ring slot `slot`, mapped
    /// asynchronously.
    fn submit(&mut self, n: usize, slot: usize) {
        let ctx = self.ctx.clone();
        ctx.queue.write_buffer(&self.state, 0, bytemuck::bytes_of(&0u32));
        let first = self.steps_done;
        if let Some(b) = &self.batch {
            b.write_schedule(&self.ctx, &self.cfg, first, n);
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        if n == 0 {
            self.encode_fused(&mut enc, false, false, None, None, first);
        }
        // --profile: a timed pass per kernel, read back after the submission.
        let timer = if n > 0 && self.profile.is_some() { PassTimer::new(&ctx, n as u32 * PHASES) } else { None };
        let mut timed: Vec<Phase> = Vec::new();
        for _ in 0..n {
            match self.opts.path {
                StepPath::Fused => {
                    let every = self.cfg.guard.snapshot_every as u64;
                    let snapshot = self.steps_done.is_multiple_of(every) || self.snapshot_due;
                    self.snapshot_due = false;
                    let t = timer.as_ref().map(|t| (t, timed.len() as u32));
                    let phases = self.encode_fused(&mut enc, true, snapshot, None, t, self.steps_done);
                    if t.is_some() {
                        timed.extend(phases);
                    }
                }
                StepPath::Staged => self.encode_staged(&mut enc),
            }
            self.steps_done += 1;
        }
        if let Some(t) = &timer {
            t.resolve(&mut enc, timed.len() as u32);
        }
        let count = n.max(1);
        let bytes = count as u64 * RECORD_BYTES;
        let s = &mut self.ring[slot];
        enc.copy_buffer_to_buffer(&self.records, 0, &s.buffer, 0, bytes);
        let index = ctx.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        s.buffer.slice(..bytes).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        s.pending = Some((count, rx, index, (n > 0).then_some(first)));
        if let Some(t) = &timer {
            // Waits for this submission: profiling trades the overlap for
            // the kernels' own times.
            match t.read(&ctx, timed.len() as u32) {
                Ok(secs) => {
                    for (ph, sec) in timed.iter().zip(secs) {
                        let bytes = self.phase_bytes(*ph);
                        let all = self.profile.as_mut().expect("profiling");
                        let at = match all.iter().position(|k| k.kernel == ph.kernel()) {
                            Some(i) => i,
                            None => {
                                all.push(KernelTime { kernel: ph.kernel().into(), ..KernelTime::default() });
                                all.len() - 1
                            }
                        };
                        let k = &mut all[at];
                        k.calls += 1;
                        k.seconds += sec;
                        k.bytes += bytes;
                    }
                }
                Err(e) => self.profile_error = Some(e.to_string()),
            }
        }
    }

    /// Waits for ring slot `slot`'s submission and decodes its records.
    fn collect(&mut self, slot: usize) -> Result<Vec<Record>> {
        let s = &mut self.ring[slot];
        let (count, rx, index, first) = s.pending.take().expect("collect is called on a pending slot");
        self.ctx
            .device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.ctx.check()?;
        let raw = finish_map(&s.buffer, count as u64 * RECORD_BYTES, rx)?;
        let words: &[u32] = bytemuck::cast_slice(&raw);
        let records: Vec<Record> = words
            .chunks_exact(RECORD_WORDS)
            .enumerate()
            .map(|(i, w)| {
                let mut r = Record::from_words(w, self.shape.rows);
                if r.action != crate::guard::Action::NotRun {
                    r.separation = self.cfg.separation(r.d0);
                }
                if let (Some(first), Some(b)) = (first, &self.batch) {
                    r.batch = b.batch_size(first + i as u64, self.manual.as_ref());
                }
                r
            })
            .collect();
        // Every step encoded was counted; the aborted one (the table is as
        // before it: a resume takes it again) and those after it, which did
        // nothing, are not done.
        if first.is_some() {
            use crate::guard::Action::{Aborted, NotRun};
            self.steps_done -= records.iter().filter(|r| matches!(r.action, Aborted | NotRun)).count() as u64;
        }
        Ok(records)
    }

    /// After a failed wait: let the device finish, and free every slot, so
    /// that a later call starts from an empty ring.
    fn reset_ring(&mut self) {
        let _ = self.ctx.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
        for s in &mut self.ring {
            if s.pending.take().is_some() {
                s.buffer.unmap();
            }
        }
    }

    /// Runs `n` steps through the ring, or one evaluation when `n == 0`.
    fn run(&mut self, n: usize) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(n.max(1));
        self.run_streamed(n, &mut |records| {
            out.extend(records);
            true
        })?;
        Ok(out)
    }

    /// `n` steps (0: one evaluation) in submissions of up to
    /// STEPS_PER_SUBMIT, up to RING of them in flight; each submission's
    /// records go to `on` as they come back, and `on` returning false stops
    /// further submissions. Returns the passes run.
    fn run_streamed(&mut self, n: usize, on: &mut dyn FnMut(Vec<Record>) -> bool) -> Result<usize> {
        if n > 0 && self.opts.path == StepPath::Staged {
            self.build_staged()?;
        }
        // Submission sizes: one evaluation, or the steps in groups.
        let sizes: Vec<usize> = if n == 0 {
            vec![0]
        } else {
            (0..n).step_by(STEPS_PER_SUBMIT).map(|s| STEPS_PER_SUBMIT.min(n - s)).collect()
        };
        let mut sizes = sizes.into_iter().peekable();
        let mut ran = 0usize;
        let mut halted = false;
        let mut in_flight: VecDeque<usize> = VecDeque::new();
        let mut next = 0usize;
        loop {
            let stopped =
                halted || n > 0 && self.stop.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
            if self.ring[next].pending.is_none() && !stopped {
                if let Some(m) = sizes.next() {
                    self.submit(m, next);
                    in_flight.push_back(next);
                    next = (next + 1) % RING;
                    continue;
                }
            }
            match in_flight.pop_front() {
                Some(s) => match self.collect(s) {
                    Ok(records) => {
                        ran += records.len();
                        halted |= !on(records);
                    }
                    Err(e) => {
                        self.reset_ring();
                        return Err(e);
                    }
                },
                None => break,
            }
        }
        Ok(ran)
    }
}

/// A shape option as given, else its tuning switch from the environment
/// (no rebuild): a power of two, or `None` when unset.
fn or_env(given: Option<u32>, name: &'static str, max: u32) -> Result<Option<u32>> {
    // An error names where the value came from: the option, or the variable.
    let (v, from, also) = match (given, std::env::var(name)) {
        (Some(n), _) => (n.to_string(), "GpuOptions", format!(" (as {name})")),
        (None, Err(_)) => return Ok(None),
        (None, Ok(v)) => (v, name, String::new()),
    };
    match v.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= max => Ok(Some(n)),
        _ => Err(Error::invalid(from, format!("{v:?}{also}: use a power of two, at most {max}"))),
    }
}

/// Table copies kept on the device by a policy (for out-of-memory messages).
fn copies(p: Policy) -> u32 {
    1 + p.double_buffered() as u32 + (p == Policy::Rollback) as u32
}

impl Constants {
    fn new(shape: Shape, cfg: &StepConfig, wg: u32) -> Self {
        Constants {
            wg,
            dim: shape.dim as u32,
            mode: cfg.endpoints.shader_mode(),
            naive: cfg.naive,
            guard: cfg.guard.policy.shader_value(),
            momentum: cfg.momentum > 0.0,
            clip: cfg.clip_norm > 0.0,
            ..Constants::default()
        }
    }
}

impl Trainer for GpuTrainer {
    fn shape(&self) -> Shape {
        self.shape
    }
    fn config(&self) -> &StepConfig {
        &self.cfg
    }
    fn device_info(&self) -> DeviceInfo {
        let i = &self.ctx.info;
        DeviceInfo {
            backend: "gpu".into(),
            adapter: format!("{} ({:?})", i.name, i.device_type),
            driver: format!("{:?} {} {}", i.backend, i.driver, i.driver_info).trim().to_string(),
            kernel: format!(
                "{}workgroups of {}, {}{}{}{}{}{}{}",
                if self.opts.path == StepPath::Staged { "staged kernels; fused step: " } else { "" },
                self.fused.wg,
                match (self.fused.lanes, self.subgroup_fold()) {
                    (1, _) => "one lane a row".to_string(),
                    (l, Some(sg)) => format!("{l} lanes a row, folded by subgroup shuffles (subgroups of ≥ {sg})"),
                    (l, None) => format!("{l} lanes a row, folded in workgroup memory"),
                },
                match self.fused.blocks {
                    1 => String::new(),
                    b => format!(", {b} row blocks a workgroup ({} rows)", self.fused.wg / self.fused.lanes * b),
                },
                if self.fused.vec4 { ", 16-byte loads" } else { "" },
                if self.fused.prefetch || self.fused.blocks == 1 { "" } else { ", no read-ahead" },
                if self.fused.keep || !keeps_columns(self.shape.dim as u32, self.fused.lanes) || self.fused.vec4 {
                    ""
                } else {
                    ", columns read twice"
                },
                if self.kept_in_vectors() { ", kept in vectors" } else { "" },
                if self.ctx.loop_bounding { ", loops bounded by wgpu" } else { "" }
            ),
        }
    }
    fn steps(&mut self, n: usize) -> Result<Vec<Record>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.run(n)
    }
    fn steps_streamed(&mut self, n: usize, on: &mut dyn FnMut(Vec<Record>) -> bool) -> Result<usize> {
        if n == 0 {
            return Ok(0);
        }
        self.run_streamed(n, on)
    }
    fn step_rows(&mut self, rows: &[u32]) -> Result<Record> {
        let Some(b) = &self.batch else {
            return Err(Error::invalid(
                "step_rows",
                "this GPU trainer was built for full-table steps: build it with `GpuTrainer::with_batches` \
                 (Batches::Indices or Batches::Random) to step on given rows",
            ));
        };
        let ib = crate::batches::IndexBatches::new(vec![rows.to_vec()], self.shape.rows)?;
        let slots = StepSlots::new(ib.batch(0), self.cfg.anchor_a as u32, self.cfg.anchor_b as u32, true);
        if slots.slots.len() > b.cap as usize {
            return Err(Error::invalid(
                "step_rows",
                format!(
                    "{} distinct rows with the anchors; this trainer's batch buffers hold {} (its largest planned batch)",
                    slots.slots.len(),
                    b.cap
                ),
            ));
        }
        self.ctx.queue.write_buffer(&b.slots, 0, bytemuck::cast_slice(&slot_words(&slots, &self.cfg, b.cap)));
        self.manual = Some(slots);
        let out = self.run(1);
        self.manual = None;
        out?.pop().ok_or_else(|| Error::Gpu("the step wrote no record".into()))
    }
    fn evaluate(&mut self) -> Result<Record> {
        self.run(0)?.pop().ok_or_else(|| Error::Gpu("the evaluation wrote no record".into()))
    }
    fn read_velocity(&mut self) -> Result<Option<Vec<f32>>> {
        if self.chunks.iter().any(|c| c.vel.is_none()) {
            return Ok(None);
        }
        let cur = self.current()?;
        self.read_chunks(|c| {
            let (a, b) = c.vel.as_ref().expect("momentum");
            if cur == 1 {
                b.as_ref().unwrap_or(a)
            } else {
                a
            }
        })
        .map(Some)
    }
    fn set_velocity(&mut self, v: &[f32]) -> Result<()> {
        if v.len() as u64 != self.shape.elements() || self.chunks.iter().any(|c| c.vel.is_none()) {
            return Err(Error::invalid("velocity", format!("{} values: momentum off, or another shape", v.len())));
        }
        let cur = self.current()?;
        let d = self.shape.dim;
        for c in &self.chunks {
            let (a, b) = c.vel.as_ref().expect("momentum");
            let buf = if cur == 1 { b.as_ref().unwrap_or(a) } else { a };
            self.ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(&v[c.span.row_base * d..][..c.span.rows * d]));
        }
        self.ctx.wait()
    }
    fn read_table(&mut self) -> Result<Vec<f32>> {
        let cur = self.current()?;
        self.read_chunks(|c| c.buffer(cur))
    }
    fn write_row(&mut self, row: usize, values: &[f32]) -> Result<()> {
        crate::cpu::check_row(self.shape, row, values)?;
        let cur = self.current()?;
        let (c, i) = self.layout.locate(row);
        let at = i as u64 * self.shape.dim as u64 * 4;
        self.ctx.queue.write_buffer(self.chunks[c].buffer(cur), at, bytemuck::cast_slice(values));
        self.anchors_fresh = false;
        self.ctx.wait()
    }
    fn read_snapshot(&mut self) -> Result<Option<Vec<f32>>> {
        let taken = self.cfg.guard.policy == Policy::Rollback && self.steps_done > 0 && !self.snapshot_due;
        if !taken {
            return Ok(None);
        }
        self.read_chunks(|c| c.snap.as_ref().expect("rollback keeps a snapshot")).map(Some)
    }
    fn set_snapshot(&mut self, t: &[f32]) -> Result<()> {
        if self.cfg.guard.policy != Policy::Rollback || t.len() as u64 != self.shape.elements() {
            return Err(Error::invalid(
                "snapshot",
                format!("{} values: not a rollback run, or another shape", t.len()),
            ));
        }
        let d = self.shape.dim;
        for c in &self.chunks {
            let snap = c.snap.as_ref().expect("rollback keeps a snapshot");
            self.ctx.queue.write_buffer(snap, 0, bytemuck::cast_slice(&t[c.span.row_base * d..][..c.span.rows * d]));
        }
        self.snapshot_due = false;
        self.ctx.wait()
    }
    fn run_state(&mut self) -> Result<RunState> {
        let s = self.read_state()?;
        Ok(RunState { steps: self.steps_done, lr: s.lr, skips: s.skips, rollbacks: s.rollbacks, ..RunState::default() })
    }
    fn set_run_state(&mut self, r: RunState) -> Result<()> {
        // lr, skips, rollbacks are consecutive words of `State` (24..36).
        let words = [r.lr.to_bits(), r.skips, r.rollbacks];
        self.ctx.queue.write_buffer(&self.state, 24, bytemuck::cast_slice(&words));
        self.steps_done = r.steps;
        self.snapshot_due = true;
        self.ctx.wait()
    }
    fn set_stop(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(flag);
    }
    fn set_profile(&mut self, on: bool) -> Result<bool> {
        let can = self.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) && self.opts.path == StepPath::Fused;
        self.profile = (on && can).then(Vec::new);
        Ok(can)
    }
    fn profile(&self) -> Result<Vec<KernelTime>> {
        match &self.profile_error {
            Some(e) => Err(Error::Gpu(format!("reading the profile's timestamps: {e}"))),
            None => Ok(self.profile.clone().unwrap_or_default()),
        }
    }
    fn driver_stats(&self) -> Result<Option<super::driver_stats::DriverStats>> {
        let built = self.ctx.built.lock().map(|b| b.clone()).unwrap_or_default();
        super::driver_stats::of_pipelines(&self.ctx, &built).map(Some)
    }
    fn scan_table(&mut self) -> Result<Scan> {
        let cur = self.current()?;
        self.ensure_scanner();
        let bufs: Vec<&wgpu::Buffer> = self.chunks.iter().map(|c| c.buffer(cur)).collect();
        let scanner = self.scanner.as_mut().expect("built above");
        let prepared = scanner.prepare(&bufs);
        scanner.run(&prepared)
    }
}
