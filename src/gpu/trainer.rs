//! The GPU trainer: owns the table's buffers, the pipelines and their bind
//! groups, and encodes steps. Kernels live in `shaders/`, their composition
//! in [`super::shaders`], the CPU mirror in `crate::cpu`, the f64 reference
//! in `crate::reference`. This file holds the types, the construction's
//! checks and the [`Trainer`] interface; the methods by concern are in
//! `trainer/`: `build.rs` (buffers, pipelines, bind groups), `encode.rs`
//! (a step's kernels and their dispatches), `stream.rs` (submissions and
//! the records' ring), `timing.rs` (GPU and wall times for `cargo bench`).
//!
//! A step is one compute pass (one per kernel with `--profile`; `Phase`
//! names them):
//!   [sample.wgsl batch]          (random batches: the step's slots;
//!                                 not under SAMPLED, where the fused
//!                                 step works them out itself)
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

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::batch::{slot_words, BatchDev, SlotSource};
use super::context::{or_env_flag, GpuContext};
use super::layout::{grid, row_blocks, ChunkLayout, ChunkSpan};
use super::pipes::{
    bind, keeps_columns, keeps_vec4s, kept_vec4s, read_blocks, read_mapped, readback, storage, transfer_block, uniform,
    write_buffers_from, Constants, TRANSFER_BLOCK_BYTES,
};
use super::scan::{TableScanner, DETAIL_BYTES};
use super::shaders;
use crate::batches::{Batches, Schedule, StepSlots};
use crate::config::{Shape, StepConfig};
use crate::error::{Error, Result};
use crate::guard::Policy;
use crate::record::{Record, RECORD_WORDS};
use crate::scan::Scan;
use crate::trainer::{DeviceInfo, Feed, KernelTime, RunState, Sink, TableSource, Trainer};

// GpuTrainer's methods, by concern (each file one `impl GpuTrainer`).
mod build;
mod encode;
mod stream;
mod timing;
use stream::Slot;

/// Buffers the fused step scans (loss, gradient, rows written): the
/// SCAN_BUFS of fused_step.wgsl and reduce.wgsl, and of the detail buffer's size.
const FUSED_SCAN_BUFS: u64 = 3;

/// Steps encoded into one submission.
const STEPS_PER_SUBMIT: usize = 8;
/// reduce.wgsl's UNDO: at most this many workgroups after its first (each
/// of a clean step's only reads the marks; a dropped step's rows, rare,
/// are copied back over them all), except on a software adapter, where
/// a large batch may need more to stay within its loop budget.
const UNDO_GROUPS: u32 = 64;
/// Submissions in flight, each with its own mapped readback buffer.
const RING: usize = 4;
/// The device time of the steps in flight, at most (by the pace of the
/// last submission, and never fewer than one step): what a stop waits on.
const QUEUED_SECONDS: f64 = 0.5;
const RECORD_BYTES: u64 = RECORD_WORDS as u64 * 4;

/// Which kernels a full-table step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPath {
    /// One fused pass per chunk: the fast path, with scans and guards.
    Fused,
    /// gather → distances → loss forward → loss backward → SGD, each its own
    /// kernel over a gathered copy of the table: a cross-check of the math
    /// (full table only: batches take the fused pass). No scans or audit;
    /// `ignore` only.
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
    /// and each lane's vec4s are kept (D ≤ 32 × lanes: `pipes::keeps_vec4s`);
    /// elsewhere it has no effect. `None`: `LATENT_LINE_VEC4` (`0` or `1`) where set, else on
    /// where a lane keeps at most four vec4s (H200, 1M × 64, by
    /// `--profile`: 0.2085 ms a step at 4 lanes against 0.2218 for the
    /// previous default, 4-byte columns at 8 lanes in vectors, and 0.2156
    /// for those in an array; BENCHMARKS.md, tenth session).
    pub vec4: Option<bool>,
    /// The fused step reads a workgroup's next row block while it works on
    /// this one (fused_step.wgsl's PREFETCH: more bytes in flight a lane,
    /// more registers). `None`: `LATENT_LINE_PREFETCH` (`0` or `1`) where
    /// set, else on for the 4-byte path and off for 16-byte columns (H200,
    /// 1M × 64 by `--profile`: 16-byte at 4 lanes 0.1857 ms a step without,
    /// 0.1934 with, 107 registers against 128; 4-byte at 8 lanes 0.2218
    /// with, 0.2262 without; BENCHMARKS.md, tenth session). The same
    /// values either way (the same bits where the driver rounds as written).
    pub prefetch: Option<bool>,
    /// A lane keeps its row's columns in registers between the row's sums
    /// and its update (fused_step.wgsl's KEEP, where D ≤ 16 × lanes in
    /// vectors, 8 × lanes in an array), rather
    /// than reading them again. `None`: `LATENT_LINE_KEEP` (`0` or `1`)
    /// where set, else on. The same bits either way.
    pub keep_columns: Option<bool>,
    /// Where a lane keeps its 4-byte columns (KEEP), it holds them in the
    /// fields of a struct of vectors, as VEC4 does, instead of an array
    /// (fused_step.wgsl's KEPT_VECTORS). `None`: `LATENT_LINE_KEPT_VECTORS`
    /// (`0` or `1`) where set, else on: an array indexed by a loop counter
    /// is what NVIDIA's SPIR-V compiler is known to put in local memory
    /// even where every bound is constant, and the H200 ran 16 kept columns
    /// slower than 8 where only 8 were used (whole-array copies); RADV
    /// keeps either in the same registers (BENCHMARKS.md, ninth session).
    /// Timed once on an H200 (tenth session, 8 lanes, D = 64): 0.2218 ms in
    /// vectors, 0.2156 in an array, within that call's spread; on for the
    /// reason above. Only the 4-byte path (D not a multiple of 4) takes it.
    /// The same bits either way.
    pub kept_vectors: Option<bool>,
    /// Under VEC4, p and q of a lane's columns read from workgroup memory
    /// at each use instead of held in registers across the workgroup's
    /// rows (fused_step.wgsl's PQ_SHARED: fewer registers, hence more
    /// workgroups an SM). `None`: `LATENT_LINE_PQ_SHARED` (`0` or `1`)
    /// where set, else off. The same bits either way.
    pub pq_shared: Option<bool>,
    /// Under VEC4, a row that read a non-finite value takes its own branch
    /// of the update, so that a clean row's carries no per-column selects
    /// of the NaN bits (fused_step.wgsl's POISON_BRANCH: fewer
    /// instructions a column, a divergent branch where a poisoned row
    /// shares a subgroup with clean ones). `None`:
    /// `LATENT_LINE_POISON_BRANCH` (`0` or `1`) where set, else on (H200,
    /// 1M × 64 by `--profile`: 0.1620 ms a step against 0.1808 without;
    /// BENCHMARKS.md, thirteenth session). The same bits either way.
    pub poison_branch: Option<bool>,
    /// Random batches on a table in one binding, with no first read
    /// (attached anchors, clipping): the fused step works out its slots
    /// itself and no sample pass runs before it (fused_step.wgsl's
    /// SAMPLED: one dispatch and one barrier fewer a step, a few integer
    /// hashes a row more). `None`: `LATENT_LINE_FUSED_SAMPLE` (`0` or `1`)
    /// where set, else on (H200, batches of 65 536 of 1M × 64 by
    /// `--profile`: 0.0404 ms a step against 0.0438 with the sample pass;
    /// BENCHMARKS.md, thirteenth session). The same bits either way.
    pub fused_sample: Option<bool>,
    /// A batch read in place (a table in one binding) under a
    /// double-buffered guard: a dropped step's rows are put back by the
    /// other workgroups of reduce.wgsl's pass (UNDO), where batch_io.wgsl's
    /// scatter took an indirect dispatch of its own after it, every step
    /// (no workgroups unless the step was dropped): one dispatch and one
    /// barrier fewer a step. `None`: `LATENT_LINE_UNDO_IN_REDUCE` (`0` or
    /// `1`) where set, else on a GPU (not yet timed on one: BENCHMARKS.md,
    /// fourteenth session), off on a software adapter (lavapipe pays for
    /// every workgroup, however little it does). The same bits either way.
    pub undo_in_reduce: Option<bool>,
    /// User batches (`--indices`) kept on the device at once. `None`: all
    /// of them where they fit in [`RESIDENT_BATCH_BYTES`] (16 bytes a slot,
    /// every batch padded to the largest), written once; else as many as
    /// fit, the rest streamed: each submission writes its steps' batches
    /// over ones already stepped. At least a submission's steps (8), at
    /// most the batches there are. The same bits either way.
    pub resident_batches: Option<usize>,
    /// Each fused step's pass timed by timestamp queries, where the device
    /// has them (`Record::gpu_seconds`, the report's median step time).
    /// `None`: `LATENT_LINE_STEP_TIMESTAMPS` (`0` or `1`) where set, else
    /// on: two timestamps a step, whose cost on a GPU is to be measured
    /// (BENCHMARKS.md, fourteenth session). The same bits either way.
    pub step_timestamps: Option<bool>,
    /// Bytes a table moves between host and device at a time when it is
    /// uploaded, read back or saved (`None`: `TRANSFER_BLOCK_BYTES`, 64
    /// MiB): a save streams the table into its file through two such
    /// blocks, so a table that fills the GPU needs no host copy of itself.
    /// `LATENT_LINE_TRANSFER_BLOCK` where set; tests lower it to
    /// exercise many blocks.
    pub transfer_block_bytes: Option<u64>,
    /// Distinct rows (besides the anchors) that a batched trainer's batch
    /// buffers hold at least: room reserved for [`Trainer::step_rows`]
    /// batches larger than any the trainer's [`crate::Batches`] plan.
    /// `None`: the planned batches' largest. A `step_rows` batch past the
    /// room grows it (the trainer rebuilt, its state copied across on the
    /// device, which holds the table twice meanwhile). The same bits
    /// either way (the kernel's shape is chosen for the plan), and the
    /// plan's steps as fast (they dispatch over the plan's slots, not the
    /// room: `BatchDev::active`); the room costs device memory, and a
    /// growth a rebuild.
    pub batch_rows: Option<usize>,
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
            pq_shared: None,
            poison_branch: None,
            fused_sample: None,
            undo_in_reduce: None,
            resident_batches: None,
            step_timestamps: None,
            transfer_block_bytes: None,
            batch_rows: None,
        }
    }
}

/// Without `LATENT_LINE_VEC4` or [`GpuOptions::vec4`], 16-byte columns
/// apply where a lane keeps at most this many vec4s (H200: four at 4
/// lanes, D = 64, 0.1857 ms a step; eight at 2 lanes, 0.1956 at best).
const DEFAULT_KEPT_VEC4S: u32 = 4;

/// PQ_SHARED's workgroup array holds p and q for D up to this.
const PQ_SHARED_MAX_DIM: usize = 512;

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
    /// where D ≤ 16 × lanes in vectors, 8 × lanes in an array): see [`GpuOptions::prefetch`], [`GpuOptions::keep_columns`].
    prefetch: bool,
    keep: bool,
    /// fused_step.wgsl's KEPT_VECTORS (as asked): [`GpuOptions::kept_vectors`].
    kept_vectors: bool,
    /// fused_step.wgsl's PQ_SHARED as applied (asked, under VEC4, D ≤
    /// PQ_SHARED_MAX_DIM): [`GpuOptions::pq_shared`].
    pq_shared: bool,
    /// fused_step.wgsl's POISON_BRANCH as applied (asked, under VEC4, not
    /// with skip-row, whose update is a loop of its own without step4):
    /// [`GpuOptions::poison_branch`].
    poison_branch: bool,
    /// fused_step.wgsl's SAMPLED as applied (asked, random batches read in
    /// place, no first read): [`GpuOptions::fused_sample`].
    sampled: bool,
    /// reduce.wgsl's UNDO as applied (asked, batches read in place under a
    /// double-buffered guard): [`GpuOptions::undo_in_reduce`].
    undo_in_reduce: bool,
    /// The workgroup size of the passes of one workgroup (reduce.wgsl,
    /// prepare.wgsl) and of the table scans: `wg`, or on a software
    /// adapter, unless a size was asked for, 256 (each lane's share of the
    /// findings a quarter of 64's, against its loop limit: `LoopBudget`).
    single_wg: u32,
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
            pq_shared: self.pq_shared,
            poison_branch: self.poison_branch,
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

/// The uniforms that bound a batched step's `slots` (`BatchDev::active`),
/// with `rows_per_group` slots a workgroup of the fused step: its batch
/// chunk (anchor_sum.wgsl's too), the update reduce's partial count and
/// slots, batch_io.wgsl's slots, prepare.wgsl's partials and segments.
/// What `build` makes them with, and `set_active` writes.
struct SlotUniforms {
    chunk: ChunkU,
    reduce: ReduceU,
    io: [u32; 4],
    prepare: PrepareU,
}

fn slot_uniforms(slots: u32, rows_per_group: u32) -> SlotUniforms {
    let groups = slots.div_ceil(rows_per_group);
    SlotUniforms {
        chunk: ChunkU { row_base: 0, rows: slots, partial_base: 0, seg_base: 0 },
        reduce: ReduceU { count: groups, update: 1, slots, pad: 0 },
        io: [slots, 0, 0, 0],
        // (The anchors are a batch's slots 0 and 1.)
        prepare: PrepareU { count: groups, segs: slots.div_ceil(SEG), slot_a: 0, slot_b: 1 },
    }
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
    /// UNDO: the batch's slots.
    slots: u32,
    pad: u32,
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
        tau: cfg.tau,
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
        self.dispatch(pass, 1, 1);
    }

    /// Its first bind group over `groups` workgroups, as a grid within
    /// `max` a dimension.
    pub(super) fn dispatch(&self, pass: &mut wgpu::ComputePass, groups: u32, max: u32) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.groups[0], &[]);
        let (x, y) = grid(groups, max);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// Each bind group (one a chunk) over its workgroups from `groups`, in
    /// turn, as grids within `max` a dimension.
    pub(super) fn dispatch_each(&self, pass: &mut wgpu::ComputePass, groups: impl IntoIterator<Item = u32>, max: u32) {
        pass.set_pipeline(&self.pipeline);
        for (bg, n) in self.groups.iter().zip(groups) {
            pass.set_bind_group(0, bg, &[]);
            let (x, y) = grid(n, max);
            pass.dispatch_workgroups(x, y, 1);
        }
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
    /// reduce_update's workgroups: 1, or with UNDO 1 + its undo workgroups.
    reduce_groups: u32,
    /// UNDO: the fused pass's marks (fused_step.wgsl's `undo_mark`).
    undo_mark: wgpu::Buffer,
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
    /// `gpu_time_fused_passes`: steps encoded without their reduce pass
    /// (set only for that timing).
    without_reduce: bool,
    /// A step was asked of this trainer (`Trainer::set_run_state` then
    /// refused).
    stepped: bool,
    /// Seconds a step took, by the last submission collected (`None`
    /// before the first): how many steps `run_streamed` keeps in flight.
    pace: Option<f64>,
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
    /// The copy floor's workgroup size (4-byte, 16-byte), picked at its
    /// first timing (`copy_workgroup`, benches).
    copy_wg: [std::sync::OnceLock<u32>; 2],
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
    /// prepare.wgsl's `PrepareU` (a batch's partials and segments follow
    /// `BatchDev::active`).
    prepare_u: wgpu::Buffer,
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
        if let TableSource::Data(v) = &source {
            if v.len() as u64 != shape.elements() {
                return Err(Error::invalid("table", format!("{} values for {} × {}", v.len(), shape.rows, shape.dim)));
            }
        }
        let mut t = Self::from_schedule(ctx, shape, cfg, opts, schedule, 0)?;
        t.upload(source)?;
        Ok(t)
    }

    /// A trainer for `schedule`, its table not yet written, its batch
    /// buffers holding at least `min_slots` slots (`grow_batches`).
    fn from_schedule(
        ctx: Arc<GpuContext>,
        shape: Shape,
        cfg: StepConfig,
        opts: GpuOptions,
        schedule: Schedule,
        min_slots: usize,
    ) -> Result<Self> {
        if opts.path == StepPath::Staged && (!schedule.is_full() || cfg.needs_prepass()) {
            return Err(Error::invalid(
                "--batch",
                "the staged GPU path has full-table steps only (no batches, attached anchors or clipping)",
            ));
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
        let wg_asked = or_env(opts.workgroup, "workgroup", "LATENT_LINE_WORKGROUP", 256)?;
        let wg = ctx.workgroup_size(wg_asked.unwrap_or(if ctx.is_software() { 64 } else { 256 }));
        let vec4_set = or_env_flag(opts.vec4, "LATENT_LINE_VEC4")?;
        let vec4_asked = vec4_set.unwrap_or(true);
        let auto_lanes = Self::default_lanes(&ctx, shape.dim, vec4_asked);
        let lanes_asked = or_env(opts.lanes_per_row, "lanes_per_row", "LATENT_LINE_LANES", 32)?;
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
        // A full table's two-read steps keep 16 bytes of coefficients a row
        // in buffers split as the table is: at D < 4 they, not the rows,
        // set the chunks' size.
        let coef_rows = (cfg.needs_prepass() && schedule.is_full()).then_some((max_binding / 16) as usize);
        let chunk_rows = match (opts.max_chunk_rows, coef_rows) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let layout = ChunkLayout::new(shape, max_binding, chunk_rows, wg, max_groups)?;
        // The per-workgroup partials and scan findings, and skip-row's
        // strikes, are single bindings over the whole table: refuse, with
        // sizes, what they cannot hold, before anything is allocated.
        let d = shape.dim as u64;
        // (No batch has more distinct rows than the table.)
        let reserved = if schedule.is_full() { 0 } else { opts.batch_rows.map_or(0, |r| r.min(shape.rows) + 2) };
        let cap = schedule.max_slots().max(min_slots).max(reserved) as u64;
        let mut blocks_asked = or_env(opts.row_blocks, "row_blocks", "LATENT_LINE_ROW_BLOCKS", 256)?;
        let shape_asked = lanes_asked.is_some() || blocks_asked.is_some();
        // The rows one pass of the fused step covers: the largest chunk's,
        // or the plan's largest batch's slots (not room reserved or grown
        // for `step_rows`: the kernel's shape, and so its bits, are the
        // plan's whatever the room).
        let pass_rows = if schedule.is_full() {
            layout.spans.iter().map(|s| s.rows as u64).max().unwrap_or(0)
        } else {
            schedule.max_slots() as u64
        };
        // A software adapter's loop budget (`LoopBudget`): where the fused
        // step's loops would pass it, more lanes a row and one row block a
        // workgroup, unless asked otherwise.
        let software = ctx.is_software();
        // (Not where a workgroup size was asked for: tests ask for small
        // ones to give each lane of reduce.wgsl many partials.)
        let single_wg = if software && wg_asked.is_none() { ctx.workgroup_size(256).max(wg) } else { wg };
        let budget = LoopBudget { wg: single_wg, dim: d, cap };
        if software && lanes_asked.is_none() {
            while budget.fused(lanes, 1) > LOOP_BUDGET && lanes < wg.min(32) {
                lanes *= 2;
            }
        }
        if software
            && blocks_asked.is_none()
            && budget.fused(lanes, row_blocks(pass_rows, wg / lanes, None)) > LOOP_BUDGET
        {
            blocks_asked = Some(1);
        }
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
        // Whether the fused step takes its kept columns 16 bytes at a time:
        // by default only up to the four vec4s a lane that a GPU has timed
        // (more, 2 lanes at D = 64, ran slower; asked for, up to eight).
        let dim32 = shape.dim as u32;
        let vec4 = keeps_vec4s(dim32, lanes) && vec4_set.unwrap_or(kept_vec4s(dim32, lanes) <= DEFAULT_KEPT_VEC4S);
        let prefetch = or_env_flag(opts.prefetch, "LATENT_LINE_PREFETCH")?.unwrap_or(!vec4);
        let keep = or_env_flag(opts.keep_columns, "LATENT_LINE_KEEP")?.unwrap_or(true);
        let kept_vectors = or_env_flag(opts.kept_vectors, "LATENT_LINE_KEPT_VECTORS")?.unwrap_or(true);
        // Applied where they can be (each asked value checked all the same).
        let pq_asked = or_env_flag(opts.pq_shared, "LATENT_LINE_PQ_SHARED")?.unwrap_or(false);
        let pq_shared = pq_asked && vec4 && shape.dim <= PQ_SHARED_MAX_DIM;
        let branch_asked = or_env_flag(opts.poison_branch, "LATENT_LINE_POISON_BRANCH")?.unwrap_or(true);
        let poison_branch = branch_asked && vec4 && cfg.guard.policy != Policy::SkipRow;
        let sample_asked = or_env_flag(opts.fused_sample, "LATENT_LINE_FUSED_SAMPLE")?.unwrap_or(true);
        // (Random batches read in place, as `build` makes them.)
        let sampled =
            sample_asked && matches!(schedule, Schedule::Random { .. }) && layout.one_binding() && !cfg.needs_prepass();
        // (Off by default on a software adapter: lavapipe pays about 20 µs
        // for each workgroup however little it does, 64 of them 1.3 ms a
        // step at 1024 slots × 64 against the indirect dispatch's nothing.)
        let undo_asked = or_env_flag(opts.undo_in_reduce, "LATENT_LINE_UNDO_IN_REDUCE")?.unwrap_or(!software);
        // (Batches read in place, as `build` makes them, logging their rows.)
        let undo_in_reduce =
            undo_asked && !schedule.is_full() && layout.one_binding() && cfg.guard.policy.double_buffered();
        let stamps = or_env_flag(opts.step_timestamps, "LATENT_LINE_STEP_TIMESTAMPS")?.unwrap_or(true);
        let transfer = transfer_block(opts.transfer_block_bytes)?;
        let opts = GpuOptions { step_timestamps: Some(stamps), transfer_block_bytes: transfer, ..opts };
        // The batch buffers and a batch's per-slot coefficients are single
        // bindings too (a full table's coefficients are split as the table
        // is, within the limit by the chunks' rows above).
        let coef = if cfg.needs_prepass() {
            (if schedule.is_full() { layout.rows_per_chunk as u64 } else { cap }) * 16
        } else {
            0
        };
        let strikes = if cfg.guard.policy == Policy::SkipRow { shape.rows as u64 * 4 } else { 0 };
        // (A batch's buffers grow with the batch, not the table: a smaller
        // batch fits.)
        let smaller = if schedule.is_full() { "" } else { "; a smaller batch fits" };
        for (what, bytes, hint) in [
            ("per-workgroup scan records need", records(lanes), ""),
            ("skip-row strike counts (4 bytes a row) need", strikes, ""),
            ("batch buffer (its slots × D × 4) needs", cap * d * 4, smaller),
            ("slots (16 bytes each) need", cap * 16, smaller),
            ("per-slot coefficients need", coef, smaller),
        ] {
            if bytes > max_binding {
                let of = if hint.is_empty() { String::new() } else { format!("in batches of {cap} slots, ") };
                return Err(shape.too_large(format!(
                    "{of}its {what} a {bytes}-byte binding, over the device's {max_binding}-byte limit{hint}"
                )));
            }
        }
        // (After the binding limits: a shape over both is told of those.)
        if software {
            // Workgroups (and anchor_sum.wgsl's segments) over the table's
            // chunks, or over a batch's slots.
            let table = |per: u64| -> u64 { layout.spans.iter().map(|s| (s.rows as u64).div_ceil(per)).sum() };
            let over = |per: u64| if schedule.is_full() { table(per) } else { cap.div_ceil(per) };
            let rows_per_group = (wg / lanes * blocks) as u64;
            let (groups, segs) = (over(rows_per_group), over(SEG as u64));
            let mut loops = vec![
                ("fused_step.wgsl", budget.fused(lanes, blocks)),
                ("reduce.wgsl", budget.reduce(groups, !schedule.is_full(), 3)),
            ];
            if !schedule.is_full() {
                // A batched run's evaluations are of the whole table.
                loops.push(("reduce.wgsl", budget.reduce(table(rows_per_group), false, 1)));
            }
            if cfg.needs_prepass() {
                let attached = cfg.endpoints == crate::config::Endpoints::Attached;
                loops.push(("prepare.wgsl", budget.prepare(groups, attached.then_some(segs))));
            }
            // The table's scans (the run's last, and `Trainer::scan_table`).
            for wide in [false, shape.dim.is_multiple_of(4)] {
                crate::gpu::scan::scan_plan(&ctx, shape, &layout, single_wg, wide)?;
            }
            if let Some((kernel, n)) = loops.into_iter().find(|&(_, n)| n > LOOP_BUDGET) {
                return Err(loop_limit(
                    &ctx,
                    format!(
                        "a {} × {} table{}",
                        shape.rows,
                        shape.dim,
                        if schedule.is_full() { String::new() } else { format!(" in batches of {cap} slots") }
                    ),
                    format!(
                        "an invocation of {kernel} may run about {n}{}",
                        if shape_asked { " with the lanes and row blocks asked for" } else { "" }
                    ),
                ));
            }
        }
        let resident = match &schedule {
            Schedule::Given(all) => {
                resident_batches(all.len(), cap, opts.resident_batches, ctx.limits.max_buffer_size)?
            }
            _ => 0,
        };

        // A software adapter's buffers are host memory, which Linux
        // overcommits: checked first, so that a table that cannot fit is
        // refused rather than killed. (Its copies: the guard's, and as many
        // again of the velocity's.)
        if software {
            // The buffers `build` makes (src/gpu/trainer/build.rs): the
            // table's copies (a second one where a full table's guard
            // double-buffers, rollback's snapshot, the velocity and its
            // second), a batch's (gathered unless read in place, the
            // double-buffered guards' new rows or undo log, their velocity)
            // and a two-read step's coefficients (16 bytes a row or slot).
            let p = cfg.guard.policy;
            let (batched, momentum) = (!schedule.is_full(), cfg.momentum > 0.0);
            let double = p.double_buffered() && !batched;
            let copies = 1 + double as u64 + (p == Policy::Rollback) as u64 + momentum as u64 * (1 + double as u64);
            let direct = batched && layout.one_binding();
            let batch_copies =
                if batched { (1 + momentum as u64) * (!direct as u64 + p.double_buffered() as u64) } else { 0 };
            let coef_rows = if batched { cap } else { shape.rows as u64 };
            let parts = [
                (
                    copies.saturating_mul(shape.bytes()),
                    format!("{copies} table-sized buffer{}", if copies == 1 { "" } else { "s" }),
                ),
                (batch_copies.saturating_mul(cap * d * 4), format!("{batch_copies} batch-sized ({cap} slots)")),
                // User batches: their slot lists on the host
                // (`Schedule::lists_bytes`) and their slots on the device
                // (16 bytes each).
                (
                    schedule.lists_bytes().saturating_add(schedule.total_slots().saturating_mul(16)),
                    "the batches' slots".to_owned(),
                ),
                // (On the device and read back: 8 bytes a row.)
                (if p == Policy::SkipRow { shape.rows as u64 * 8 } else { 0 }, "skip-row's strike counts".to_owned()),
                (if cfg.needs_prepass() { coef_rows * 16 } else { 0 }, "the two-read step's coefficients".to_owned()),
            ];
            crate::host::check(shape, &parts, crate::host::RESERVE_SOFTWARE_GPU)?;
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
            FusedShape {
                wg,
                lanes,
                subgroup,
                blocks,
                vec4,
                prefetch,
                keep,
                kept_vectors,
                pq_shared,
                poison_branch,
                sampled,
                undo_in_reduce,
                single_wg,
            },
            max_groups,
            layout,
            schedule,
            cap as u32,
            resident,
        );
        let validation = pollster::block_on(invalid.pop());
        let out_of_memory = pollster::block_on(oom.pop());
        if let Some(e) = out_of_memory {
            return Err(shape.too_large(format!(
                "the GPU could not allocate it ({e}); the `{}` guard keeps {} cop{} of the table",
                cfg.guard.policy.name(),
                copies(cfg.guard.policy),
                if copies(cfg.guard.policy) == 1 { "y" } else { "ies" }
            )));
        }
        if let Some(e) = validation {
            return Err(Error::Gpu(e.to_string()));
        }
        Ok(built)
    }

    /// Writes the initial table: generated in place, or copied from the host.
    fn upload(&mut self, source: TableSource) -> Result<()> {
        self.anchors_fresh = false;
        match source {
            TableSource::Data(v) => self.write_chunks(&v, |c| &c.a)?,
            TableSource::Stream(mut feed) => self.write_chunks_from(&mut *feed, |c| &c.a)?,
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

    /// Copies one buffer of each chunk (`which`) back to the host, in row order.
    fn read_chunks(&self, which: impl Fn(&GpuChunk) -> &wgpu::Buffer) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.shape.elements() as usize);
        self.read_chunks_into(which, &mut |v| {
            out.extend_from_slice(v);
            Ok(())
        })?;
        Ok(out)
    }

    /// A full-table array, chunk after chunk, handed to `sink` a transfer
    /// block at a time (`pipes::read_blocks`).
    fn read_chunks_into(&self, which: impl Fn(&GpuChunk) -> &wgpu::Buffer, sink: &mut Sink) -> Result<()> {
        let d = self.shape.dim as u64;
        for c in &self.chunks {
            read_blocks(&self.ctx, which(c), c.span.rows as u64 * d * 4, self.transfer_block(), sink)?;
        }
        Ok(())
    }

    /// A full-table array written from the host, chunk after chunk
    /// (`pipes::write_buffers_from`).
    fn write_chunks(&self, v: &[f32], which: impl Fn(&GpuChunk) -> &wgpu::Buffer) -> Result<()> {
        self.write_chunks_from(&mut crate::tables::reader::slice_feed(v), which)
    }

    /// One buffer of each chunk (`which`) written from `feed`, in row order.
    fn write_chunks_from(&self, feed: &mut Feed, which: impl Fn(&GpuChunk) -> &wgpu::Buffer) -> Result<()> {
        let d = self.shape.dim as u64;
        let dsts: Vec<_> = self.chunks.iter().map(|c| (which(c), c.span.rows as u64 * d)).collect();
        write_buffers_from(&self.ctx, &dsts, self.transfer_block(), feed)
    }

    fn transfer_block(&self) -> u64 {
        self.opts.transfer_block_bytes.unwrap_or(TRANSFER_BLOCK_BYTES)
    }

    fn constants(&self) -> Constants {
        Constants::new(self.shape, &self.cfg, self.fused.wg)
    }

    /// The fused step's lanes a row when not asked for. On a software
    /// adapter one (lavapipe runs each workgroup barrier as a thread
    /// switch, and a lane per row needs none). On a GPU as few as still
    /// keep a row's columns in registers, since every lane of a row repeats
    /// the row's scalar work (distances, coefficients, bookkeeping): 16
    /// columns a lane (four vec4s) where D is a multiple of 4 and the
    /// 16-byte path takes it (`vec4`: asked for), else about 8. H200 by `--profile`, 1M × 64:
    /// 16-byte columns at 4 lanes 0.2085 ms a step, at 8 0.2574, at 16
    /// 0.2287; 4-byte ones at 8 lanes 0.2218, at 4 0.3021; 1M × 128,
    /// 16-byte at 8 lanes 0.354 against 0.708 at 4 (columns not kept);
    /// BENCHMARKS.md, tenth session.
    pub fn default_lanes(ctx: &GpuContext, dim: usize, vec4: bool) -> u32 {
        if ctx.is_software() {
            1
        } else if vec4 && dim.is_multiple_of(4) {
            (dim as u32).div_ceil(4 * DEFAULT_KEPT_VEC4S).next_power_of_two().min(32)
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

    /// Whether a workgroup of the fused step reads its next row block
    /// while it works on this one ([`GpuOptions::prefetch`], where it
    /// steps more than one).
    pub fn reads_ahead(&self) -> bool {
        self.fused.prefetch && self.fused.blocks > 1
    }

    /// Whether, under VEC4, poisoned rows' updates take their own branch
    /// ([`GpuOptions::poison_branch`]).
    pub fn poison_branch(&self) -> bool {
        self.fused.poison_branch
    }

    /// User batches on the device at once, and whether the others are
    /// streamed a submission at a time ([`GpuOptions::resident_batches`]);
    /// `None` without user batches.
    pub fn resident_batches(&self) -> Option<(usize, bool)> {
        match &self.batch.as_ref()?.source {
            SlotSource::Given { resident, streamed, .. } => Some((*resident, streamed.is_some())),
            SlotSource::Random { .. } => None,
        }
    }

    /// Sets the slots a batched step dispatches over and its uniforms
    /// bound (`BatchDev::active`); queue order puts the writes between the
    /// submissions before and after.
    fn set_active(&mut self, slots: u32) {
        let Some(b) = self.batch.as_mut() else { return };
        let slots = slots.min(b.cap);
        if b.active == slots {
            return;
        }
        b.active = slots;
        let (u, q) = (slot_uniforms(slots, b.rows_per_group), &self.ctx.queue);
        q.write_buffer(&b.x_uniform, 0, bytemuck::bytes_of(&u.chunk));
        q.write_buffer(&b.reduce_u, 0, bytemuck::bytes_of(&u.reduce));
        q.write_buffer(&b.io_u, 0, bytemuck::cast_slice(&u.io));
        if let Some(pre) = &self.prepass {
            q.write_buffer(&pre.prepare_u, 0, bytemuck::bytes_of(&u.prepare));
        }
    }

    /// Slots besides the anchors that a planned step dispatches over: the
    /// plan's largest batch, whatever the room (`None` without batches).
    pub fn dispatched_batch_rows(&self) -> Option<usize> {
        self.batch.as_ref().map(|b| b.active as usize - 2)
    }

    /// Distinct rows besides the anchors that the batch buffers hold
    /// ([`GpuOptions::batch_rows`]); `None` without batches.
    pub fn batch_rows(&self) -> Option<usize> {
        self.batch.as_ref().map(|b| b.cap as usize - 2)
    }

    /// Whether the fused step works out a random batch's slots itself, with
    /// no sample pass ([`GpuOptions::fused_sample`]).
    pub fn fused_sample(&self) -> bool {
        self.fused.sampled
    }

    /// Whether a dropped batch's rows are put back by the reduce pass's own
    /// workgroups ([`GpuOptions::undo_in_reduce`]).
    pub fn undo_in_reduce(&self) -> bool {
        self.fused.undo_in_reduce
    }

    /// Before a submission's passes: its records from slot 0 (`state.record`),
    /// and UNDO's marks zeroed, so that none is left from an earlier
    /// submission (the marks hold stamps, and a stamp comes round again
    /// after 2³² passes).
    fn start_submission(&self) {
        self.ctx.queue.write_buffer(&self.state, 0, bytemuck::bytes_of(&0u32));
        if self.fused.undo_in_reduce {
            self.ctx.queue.write_buffer(&self.undo_mark, 0, &[0u8; 16]);
        }
    }

    /// Whether, under VEC4, p and q are read from workgroup memory
    /// ([`GpuOptions::pq_shared`]).
    pub fn pq_shared(&self) -> bool {
        self.fused.pq_shared
    }

    /// Whether a lane of the fused step holds its 4-byte columns in
    /// registers between the row's sums and its update (KEEP: as asked,
    /// where D ≤ 8 × lanes, or 16 × lanes in vectors, without VEC4).
    pub fn keeps_columns(&self) -> bool {
        self.fused.keep
            && !self.fused.vec4
            && keeps_columns(self.shape.dim as u32, self.fused.lanes, self.fused.kept_vectors)
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

    fn ensure_scanner(&mut self) -> Result<()> {
        if self.scanner.is_none() {
            self.scanner = Some(TableScanner::new(
                self.ctx.clone(),
                self.shape,
                &self.layout,
                self.fused.single_wg,
                self.max_groups,
            )?);
        }
        Ok(())
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
        Ok(bytemuck::pod_read_unaligned::<StateU>(bytemuck::cast_slice(&raw)))
    }
}

/// A shape option as given, else its tuning switch from the environment
/// (no rebuild): a power of two, or `None` when unset.
fn or_env(given: Option<u32>, field: &str, name: &'static str, max: u32) -> Result<Option<u32>> {
    // An error names where the value came from: the option's field, or the variable.
    let (v, from, also) = match (given, crate::gpu::context::env_var(name)?) {
        (Some(n), _) => (n.to_string(), "GpuOptions", format!(" (GpuOptions::{field}, or {name})")),
        (None, None) => return Ok(None),
        (None, Some(v)) => (v, name, String::new()),
    };
    match v.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= max => Ok(Some(n)),
        _ => Err(Error::invalid(from, format!("{v:?}{also}: use a power of two, at most {max}"))),
    }
}

/// Loop iterations an invocation may run in all on a software adapter:
/// lavapipe (Mesa's gallivm, `LP_MAX_TGSI_LOOP_ITERATIONS`) ends every
/// loop of an invocation once its loops together have run 65 535 times,
/// silently, a guard against endless loops; the rest of the invocation
/// then runs each loop body once. Kept under it with a margin.
pub(super) const LOOP_BUDGET: u64 = 60_000;

/// The refusal of `what` on a software adapter where `why` would pass
/// its loop limit ([`LOOP_BUDGET`]): an invalid `--backend`.
pub(super) fn loop_limit(ctx: &GpuContext, what: String, why: String) -> Error {
    // (A workgroup size asked for by the environment is the likely cause:
    // smaller workgroups give each invocation more to loop over.)
    // (Only one under the software adapter's default, 64.)
    let asked = match std::env::var("LATENT_LINE_WORKGROUP").ok().and_then(|v| v.parse::<u32>().ok()) {
        Some(v) if v < 64 => format!(" (with LATENT_LINE_WORKGROUP={v}: without it, larger workgroups loop less)"),
        _ => String::new(),
    };
    Error::invalid(
        "--backend",
        format!(
            "{what} on the software adapter {}, whose driver ends a shader invocation's loops once they have run \
             65 535 iterations in all (lavapipe; with no error): {why}{asked}; the CPU backend (--backend cpu) has \
             no such limit",
            ctx.info.name
        ),
    )
}

/// Upper bounds of the loop iterations one invocation of a step's kernels
/// runs, for [`LOOP_BUDGET`] (counted from the shaders' loops, rounded up;
/// the fused step's by lavapipe too: one row of D columns at one lane a
/// row goes wrong from D = 21 842, about three loops over the columns).
struct LoopBudget {
    wg: u32,
    dim: u64,
    /// A batch's slots (0 for the full table).
    cap: u64,
}

impl LoopBudget {
    /// fused_step.wgsl: each row block's row, up to four loops over a
    /// lane's columns (sums, update, scans or skip-row's decision, PREP's
    /// norm) and the row's fixed loops.
    fn fused(&self, lanes: u32, blocks: u32) -> u64 {
        blocks as u64 * (4 * self.dim.div_ceil(lanes as u64) + 64)
    }

    /// reduce.wgsl over `groups` partials: the fold and three buffers'
    /// findings (a lane's share of the workgroups, a few loops each); a
    /// batch's also the radix select's five visits of every bad row (all
    /// of its slots, at worst). Counted as if each of `buffers` (the
    /// step's three, an evaluation's loss) found something.
    fn reduce(&self, groups: u64, batched: bool, buffers: u64) -> u64 {
        let per_lane = groups.div_ceil(self.wg as u64);
        // Per buffer (three): scan_collect's totals and listing, about 40
        // iterations a lane's workgroup; a batch's radix select and listing
        // about 65 more, and every bad slot five times; lane 0's digit
        // searches, 3 060.
        let batch = if batched { 200 * per_lane + 15 * self.cap.div_ceil(self.wg as u64) } else { 0 };
        (5 + 42 * buffers) * per_lane + batch + 3_500
    }

    /// prepare.wgsl: the norm's partials, then (attached anchors: `segs`)
    /// each of a lane's columns summing every segment of anchor_sum.wgsl.
    fn prepare(&self, groups: u64, segs: Option<u64>) -> u64 {
        groups.div_ceil(self.wg as u64) + segs.map_or(0, |segs| self.dim.div_ceil(self.wg as u64) * (segs + 2)) + 500
    }
}

/// User batches (16 bytes a slot) kept on the device at once by default,
/// at most: all of a run's when they fit (no writes after the first),
/// else this many bytes of them, the rest streamed a submission at a time.
pub const RESIDENT_BATCH_BYTES: u64 = 1 << 30;

/// How many of `batches` user batches of up to `cap` slots stay on the
/// device ([`GpuOptions::resident_batches`]): at least a submission's
/// steps, so that none of them overwrites another's entry.
fn resident_batches(batches: usize, cap: u64, asked: Option<usize>, max_buffer: u64) -> Result<usize> {
    let bytes = cap * 16;
    let fit = (RESIDENT_BATCH_BYTES.min(max_buffer) / bytes) as usize;
    let resident = asked.unwrap_or(fit).max(STEPS_PER_SUBMIT).min(batches);
    if resident as u64 * bytes > max_buffer {
        return Err(Error::invalid(
            "--indices",
            format!(
                "{resident} batches of up to {cap} slots (16 bytes each) on the device at once need {} bytes, over its {max_buffer}-byte buffer limit",
                resident as u64 * bytes
            ),
        ));
    }
    Ok(resident)
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

/// The velocity buffer of chunk `c` that the current table `cur` goes with.
fn velocity_buffer(c: &GpuChunk, cur: u32) -> &wgpu::Buffer {
    let (a, b) = c.vel.as_ref().expect("momentum");
    if cur == 1 {
        b.as_ref().unwrap_or(a)
    } else {
        a
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
                "{}workgroups of {}, {}{}{}{}{}{}{}{}{}{}{}",
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
                match (self.fused.vec4, self.fused.pq_shared) {
                    (true, true) => ", 16-byte loads, p and q in workgroup memory",
                    (true, false) => ", 16-byte loads",
                    _ => "",
                },
                if self.fused.poison_branch { ", poisoned rows apart" } else { "" },
                if self.fused.sampled { ", batches sampled in the step" } else { "" },
                if self.fused.undo_in_reduce { ", dropped batches undone in the reduce pass" } else { "" },
                if self.fused.prefetch || self.fused.blocks == 1 { "" } else { ", no read-ahead" },
                // (4-byte columns not held in registers, by LATENT_LINE_KEEP=0
                // or because a lane has more than it keeps: read again for
                // the update.)
                if self.fused.vec4 || self.keeps_columns() { "" } else { ", columns read twice" },
                if self.keeps_columns() && !self.fused.kept_vectors { ", kept in an array" } else { "" },
                if self.ctx.loop_bounding { ", loops bounded by wgpu" } else { "" },
                match self.resident_batches() {
                    Some((n, true)) => format!(", user batches streamed ({n} on the device at once)"),
                    _ => String::new(),
                }
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
        let ib = crate::cpu::step_rows_batch(rows, self.shape.rows, self.batch.is_some(), "GpuTrainer")?;
        let slots = StepSlots::new(ib.batch(0), self.cfg.anchor_a as u32, self.cfg.anchor_b as u32, true);
        let cap = self.batch.as_ref().map_or(0, |b| b.cap as usize);
        // (A halted run's step does nothing, whatever its rows: its record
        // says so, as the CPU's, with no growth; `slot_words` keeps what
        // fits.)
        if slots.slots.len() > cap && self.read_state()?.halted == 0 {
            // More distinct rows than the largest planned batch: its buffers
            // grown to them (the CPU takes any batch as it comes).
            let rows = slots.slots.len() - 2;
            self.grow_batches(slots.slots.len()).map_err(|e| match e {
                // (A device that failed is said as such: not the call's fault.)
                Error::Gpu(_) | Error::DeviceLost(_) => e,
                e => Error::invalid(
                    "step_rows",
                    format!(
                        "{rows} distinct rows besides the anchors, more than this trainer's batch buffers hold \
                         ({}), and they could not grow to them: {e}",
                        cap - 2
                    ),
                ),
            })?;
        }
        // The step dispatched over its own slots where they are more than
        // the plan's, then the plan's again.
        let plan = self.batch.as_ref().map_or(0, |b| b.plan);
        self.set_active(plan.max(slots.slots.len() as u32));
        let Some(b) = &self.batch else { unreachable!("step_rows_batch checked it") };
        self.ctx.queue.write_buffer(&b.slots, 0, bytemuck::cast_slice(&slot_words(&slots, &self.cfg, b.cap)));
        self.manual = Some(slots);
        let out = self.run(1);
        self.manual = None;
        self.set_active(plan);
        out?.pop().ok_or_else(|| Error::Gpu("the step wrote no record".into()))
    }
    fn evaluate(&mut self) -> Result<Record> {
        self.run(0)?.pop().ok_or_else(|| Error::Gpu("the evaluation wrote no record".into()))
    }
    fn read_velocity(&mut self) -> Result<Option<Vec<f32>>> {
        if !self.has_velocity() {
            return Ok(None);
        }
        let cur = self.current()?;
        self.read_chunks(|c| velocity_buffer(c, cur)).map(Some)
    }
    fn has_velocity(&self) -> bool {
        self.chunks.iter().all(|c| c.vel.is_some())
    }
    /// rollback: the snapshot holds a table once a step ran, until it is
    /// due again.
    fn has_snapshot(&self) -> bool {
        self.cfg.guard.policy == Policy::Rollback && self.steps_done > 0 && !self.snapshot_due
    }
    fn read_velocity_into(&mut self, sink: &mut Sink) -> Result<bool> {
        if !self.has_velocity() {
            return Ok(false);
        }
        let cur = self.current()?;
        self.read_chunks_into(|c| velocity_buffer(c, cur), sink).map(|_| true)
    }
    fn set_velocity(&mut self, v: &[f32]) -> Result<()> {
        if v.len() as u64 != self.shape.elements() || !self.has_velocity() {
            return Err(Error::invalid("velocity", format!("{} values: momentum off, or another shape", v.len())));
        }
        self.set_velocity_from(&mut crate::tables::reader::slice_feed(v))
    }
    fn set_velocity_from(&mut self, feed: &mut Feed) -> Result<()> {
        if !self.has_velocity() {
            return Err(Error::invalid("velocity", "momentum off: this run has no velocity"));
        }
        let cur = self.current()?;
        self.write_chunks_from(feed, |c| velocity_buffer(c, cur))?;
        self.ctx.wait()
    }
    fn read_table(&mut self) -> Result<Vec<f32>> {
        let cur = self.current()?;
        self.read_chunks(|c| c.buffer(cur))
    }
    fn read_table_into(&mut self, sink: &mut Sink) -> Result<()> {
        let cur = self.current()?;
        self.read_chunks_into(|c| c.buffer(cur), sink)
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
        if !self.has_snapshot() {
            return Ok(None);
        }
        self.read_chunks(|c| c.snap.as_ref().expect("rollback keeps a snapshot")).map(Some)
    }
    fn read_snapshot_into(&mut self, sink: &mut Sink) -> Result<bool> {
        if !self.has_snapshot() {
            return Ok(false);
        }
        self.read_chunks_into(|c| c.snap.as_ref().expect("rollback keeps a snapshot"), sink).map(|_| true)
    }
    fn set_snapshot(&mut self, t: &[f32]) -> Result<()> {
        if self.cfg.guard.policy != Policy::Rollback || t.len() as u64 != self.shape.elements() {
            return Err(Error::invalid(
                "snapshot",
                format!("{} values: not a rollback run, or another shape", t.len()),
            ));
        }
        self.set_snapshot_from(&mut crate::tables::reader::slice_feed(t))
    }
    fn set_snapshot_from(&mut self, feed: &mut Feed) -> Result<()> {
        if self.cfg.guard.policy != Policy::Rollback {
            return Err(Error::invalid("snapshot", "not a rollback run"));
        }
        self.write_chunks_from(feed, |c| c.snap.as_ref().expect("rollback keeps a snapshot"))?;
        self.snapshot_due = false;
        self.ctx.wait()
    }
    fn run_state(&mut self) -> Result<RunState> {
        let s = self.read_state()?;
        let (skips, rollbacks) =
            crate::guard::resume_counters(self.cfg.guard.policy, s.halted != 0, s.skips, s.rollbacks);
        // skip-row's strike counts (a buffer of one u32 a row).
        let strikes = if self.cfg.guard.policy == Policy::SkipRow {
            let bytes = self.shape.rows as u64 * 4;
            let staging = readback(&self.ctx, "strikes readback", bytes);
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&self.strikes, 0, &staging, 0, bytes);
            self.ctx.queue.submit([enc.finish()]);
            RunState::strikes_of(&read_mapped(&self.ctx, &staging, bytes)?)
        } else {
            Vec::new()
        };
        Ok(RunState { steps: self.steps_done, lr: s.lr, skips, rollbacks, strikes, ..RunState::default() })
    }
    fn set_run_state(&mut self, r: RunState) -> Result<()> {
        crate::trainer::before_any_step(self.stepped)?;
        r.check(&self.cfg)?;
        if self.cfg.guard.policy == Policy::SkipRow {
            let per_row = r.strikes_per_row(self.shape.rows)?;
            self.ctx.queue.write_buffer(&self.strikes, 0, bytemuck::cast_slice(&per_row));
        }
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
        self.ensure_scanner()?;
        let bufs: Vec<&wgpu::Buffer> = self.chunks.iter().map(|c| c.buffer(cur)).collect();
        let scanner = self.scanner.as_mut().expect("built above");
        let prepared = scanner.prepare(&bufs);
        scanner.run(&prepared)
    }
}
