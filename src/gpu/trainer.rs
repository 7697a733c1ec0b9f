//! The GPU trainer: owns the table's buffers, the pipelines and their bind
//! groups, and encodes steps. Kernels live in `shaders/`, their composition
//! in [`super::shaders`], the f64 reference in `crate::reference`.
//!
//! A full-table step is, in one compute pass after two small copies:
//!   copy rows a, b → `anchors`   (the step's snapshot p, q; SPEC §2)
//!   anchors.wgsl                 (s0, d0 into `state`)
//!   fused_step.wgsl per chunk    (read row, loss, gradient, write row)
//!   reduce.wgsl                  (partials → one record, fixed order)
//! Many steps go into one command buffer; records come back once per
//! submission, so nothing waits on the host between steps.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::context::GpuContext;
use super::layout::{grid, ChunkLayout, ChunkSpan};
use super::shaders::{self, Kernel};
use crate::config::{Shape, StepConfig};
use crate::error::{Error, Result};
use crate::record::Record;
use crate::trainer::{DeviceInfo, TableSource, Trainer};

/// Steps encoded into one submission (and records read back per submission).
const STEPS_PER_SUBMIT: usize = 256;
const RECORD_BYTES: u64 = 16;

/// Which kernels a full-table step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPath {
    /// One fused pass per chunk: the fast path.
    Fused,
    /// gather → distances → loss forward → loss backward → SGD, each its own
    /// kernel over a gathered copy of the batch (the path batches will take).
    Staged,
}

/// Tuning and test knobs of the GPU backend.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Cap on rows per storage binding; tests set it to force several chunks.
    pub max_chunk_rows: Option<usize>,
    /// Workgroup size wanted (clamped to the device, power of two ≤ 256).
    pub workgroup: u32,
    /// Cap on workgroups per dispatch dimension (the device's limit when
    /// `None`); tests lower it to exercise the 2-D grids on small tables.
    pub max_groups: Option<u32>,
    pub path: StepPath,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { max_chunk_rows: None, workgroup: 64, max_groups: None, path: StepPath::Fused }
    }
}

// Host mirrors of the WGSL uniform structs in shaders/common.wgsl.
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
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ChunkU {
    row_base: u32,
    rows: u32,
    partial_base: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceU {
    count: u32,
    pad: [u32; 3],
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
        pad: [0; 3],
    }
}

struct GpuChunk {
    span: ChunkSpan,
    buffer: wgpu::Buffer,
    uniform: wgpu::Buffer,
    /// Workgroups of one-row-per-invocation kernels over this chunk.
    row_groups: u32,
}

/// A pipeline with the bind groups it is dispatched with (one per chunk for
/// chunk kernels, one otherwise).
struct Pass {
    pipeline: wgpu::ComputePipeline,
    groups: Vec<wgpu::BindGroup>,
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
    wg: u32,
    max_groups: u32,
    layout: ChunkLayout,
    chunks: Vec<GpuChunk>,
    params: wgpu::Buffer,
    anchors: wgpu::Buffer,
    state: wgpu::Buffer,
    records: wgpu::Buffer,
    readback: wgpu::Buffer,
    anchors_pass: Pass,
    fused_update: Pass,
    fused_eval: Pass,
    reduce: Pass,
    staged: Option<Staged>,
}

fn storage(ctx: &GpuContext, label: &str, size: u64, extra: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(16),
        usage: wgpu::BufferUsages::STORAGE | extra,
        mapped_at_creation: false,
    })
}

fn uniform<T: Pod>(ctx: &GpuContext, label: &str, value: &T) -> wgpu::Buffer {
    let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: std::mem::size_of::<T>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue.write_buffer(&buf, 0, bytemuck::bytes_of(value));
    buf
}

/// Whole-buffer bindings 0, 1, 2, … in order.
fn bind(ctx: &GpuContext, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

impl GpuTrainer {
    pub fn new(
        ctx: Arc<GpuContext>,
        shape: Shape,
        cfg: StepConfig,
        source: TableSource,
        opts: GpuOptions,
    ) -> Result<Self> {
        cfg.validate(shape)?;
        if let TableSource::Data(v) = &source {
            if v.len() as u64 != shape.elements() {
                return Err(Error::invalid("table", format!("{} values for {} × {}", v.len(), shape.rows, shape.dim)));
            }
        }
        let wg = ctx.workgroup_size(opts.workgroup.min(256));
        let max_groups = opts.max_groups.unwrap_or(u32::MAX).clamp(1, ctx.max_groups());
        let layout = ChunkLayout::new(shape, ctx.max_binding_bytes(), opts.max_chunk_rows, wg, max_groups)?;

        // Allocation and pipeline creation inside error scopes: an
        // out-of-memory becomes a typed error naming the sizes, not a panic.
        let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = Self::build(ctx.clone(), shape, cfg, opts, wg, max_groups, layout);
        let validation = pollster::block_on(invalid.pop());
        let out_of_memory = pollster::block_on(oom.pop());
        if let Some(e) = out_of_memory {
            return Err(shape.too_large(format!("the GPU could not allocate it ({e})")));
        }
        if let Some(e) = validation {
            return Err(Error::Gpu(e.to_string()));
        }
        let mut t = built;
        t.upload(source)?;
        Ok(t)
    }

    fn build(
        ctx: Arc<GpuContext>,
        shape: Shape,
        cfg: StepConfig,
        opts: GpuOptions,
        wg: u32,
        max_groups: u32,
        layout: ChunkLayout,
    ) -> Self {
        let d = shape.dim as u64;
        let params = uniform(&ctx, "params", &params_u(shape, &cfg));
        let mut partial_base = 0u32;
        let chunks: Vec<GpuChunk> = layout
            .spans
            .iter()
            .map(|&span| {
                let row_groups = (span.rows as u32).div_ceil(wg);
                let c = GpuChunk {
                    span,
                    buffer: storage(
                        &ctx,
                        "table chunk",
                        span.rows as u64 * d * 4,
                        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    ),
                    uniform: uniform(
                        &ctx,
                        "chunk",
                        &ChunkU { row_base: span.row_base as u32, rows: span.rows as u32, partial_base, pad: 0 },
                    ),
                    row_groups,
                };
                partial_base += row_groups;
                c
            })
            .collect();
        let anchors = storage(&ctx, "anchors", 2 * d * 4, wgpu::BufferUsages::COPY_DST);
        let state = storage(&ctx, "state", 16, wgpu::BufferUsages::COPY_DST);
        let partials = storage(&ctx, "partials", partial_base as u64 * 8, wgpu::BufferUsages::empty());
        let records_size = (STEPS_PER_SUBMIT as u64 + 1) * RECORD_BYTES;
        let records = storage(&ctx, "records", records_size, wgpu::BufferUsages::COPY_SRC);
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("records readback"),
            size: records_size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let reduce_u = uniform(&ctx, "reduce", &ReduceU { count: partial_base, pad: [0; 3] });

        let consts = Constants::new(shape, &cfg, wg);
        let p = consts.pipeline(&ctx, &shaders::ANCHORS, "main", None);
        let anchors_pass = Pass { groups: vec![bind(&ctx, &p, &[&anchors, &state, &params])], pipeline: p };
        let fused = |update: bool| {
            let p = consts.pipeline(&ctx, &shaders::FUSED_STEP, "main", Some(update));
            let groups = chunks
                .iter()
                .map(|c| bind(&ctx, &p, &[&c.buffer, &anchors, &state, &partials, &params, &c.uniform]))
                .collect();
            Pass { pipeline: p, groups }
        };
        let fused_update = fused(true);
        let fused_eval = fused(false);
        let p = consts.pipeline(&ctx, &shaders::REDUCE, "main", None);
        let reduce = Pass { groups: vec![bind(&ctx, &p, &[&partials, &state, &records, &reduce_u])], pipeline: p };

        GpuTrainer {
            ctx,
            shape,
            cfg,
            opts,
            wg,
            max_groups,
            layout,
            chunks,
            params,
            anchors,
            state,
            records,
            readback,
            anchors_pass,
            fused_update,
            fused_eval,
            reduce,
            staged: None,
        }
    }

    /// Writes the initial table: generated in place, or copied from the host.
    fn upload(&mut self, source: TableSource) -> Result<()> {
        match source {
            TableSource::Data(v) => {
                let d = self.shape.dim;
                for c in &self.chunks {
                    let part = &v[c.span.row_base * d..][..c.span.rows * d];
                    self.ctx.queue.write_buffer(&c.buffer, 0, bytemuck::cast_slice(part));
                }
            }
            TableSource::Random { seed } => self.encode_generate(seed),
        }
        self.ctx.wait()
    }

    /// Overwrites the table with N(0,1) from the counter RNG keyed by `seed`,
    /// generated on the device (init.wgsl).
    pub fn generate(&mut self, seed: u64) -> Result<()> {
        self.encode_generate(seed);
        self.ctx.wait()
    }

    fn encode_generate(&self, seed: u64) {
        let ctx = &self.ctx;
        let mut p = params_u(self.shape, &self.cfg);
        p.seed_lo = seed as u32;
        p.seed_hi = (seed >> 32) as u32;
        let seeded = uniform(ctx, "init params", &p);
        let consts = self.constants();
        let pipeline = consts.pipeline(ctx, &shaders::INIT, "main", None);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            for c in &self.chunks {
                let bg = bind(ctx, &pipeline, &[&c.buffer, &seeded, &c.uniform]);
                pass.set_bind_group(0, &bg, &[]);
                let groups = (c.span.rows as u64 * self.shape.dim as u64).div_ceil(self.wg as u64) as u32;
                let (x, y) = grid(groups, self.max_groups);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        ctx.queue.submit([enc.finish()]);
    }

    fn constants(&self) -> Constants {
        Constants::new(self.shape, &self.cfg, self.wg)
    }

    /// Wall time of `iters` plain device copies of the whole table (each
    /// chunk into a scratch buffer of its size), in one submission: the
    /// floor a full-table step is measured against (SPEC §15).
    pub fn time_table_copies(&self, iters: u64) -> Result<std::time::Duration> {
        let largest = self.chunks.iter().map(|c| c.buffer.size()).max().unwrap_or(16);
        let scratch = storage(&self.ctx, "copy scratch", largest, wgpu::BufferUsages::COPY_DST);
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        for _ in 0..iters {
            for c in &self.chunks {
                enc.copy_buffer_to_buffer(&c.buffer, 0, &scratch, 0, c.buffer.size());
            }
        }
        let t = std::time::Instant::now();
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()?;
        Ok(t.elapsed())
    }

    /// The chunk layout in use (tests check that several bindings are used).
    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    /// Copies rows a and b into `anchors`: the step's snapshot p, q.
    fn encode_snapshot(&self, enc: &mut wgpu::CommandEncoder) {
        let row_bytes = self.shape.dim as u64 * 4;
        for (slot, row) in [self.cfg.anchor_a, self.cfg.anchor_b].into_iter().enumerate() {
            let (c, i) = self.layout.locate(row);
            enc.copy_buffer_to_buffer(
                &self.chunks[c].buffer,
                i as u64 * row_bytes,
                &self.anchors,
                slot as u64 * row_bytes,
                row_bytes,
            );
        }
    }

    fn dispatch_one(pass: &mut wgpu::ComputePass, p: &Pass) {
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &p.groups[0], &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// One full-table step (or, with `update == false`, one evaluation).
    fn encode_fused(&self, enc: &mut wgpu::CommandEncoder, update: bool) {
        self.encode_snapshot(enc);
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("fused step"), timestamp_writes: None });
        Self::dispatch_one(&mut pass, &self.anchors_pass);
        let fused = if update { &self.fused_update } else { &self.fused_eval };
        pass.set_pipeline(&fused.pipeline);
        for (c, bg) in self.chunks.iter().zip(&fused.groups) {
            pass.set_bind_group(0, bg, &[]);
            let (x, y) = grid(c.row_groups, self.max_groups);
            pass.dispatch_workgroups(x, y, 1);
        }
        Self::dispatch_one(&mut pass, &self.reduce);
    }

    /// One full-table step through the staged kernels.
    fn encode_staged(&self, enc: &mut wgpu::CommandEncoder) {
        let s = self.staged.as_ref().expect("staged buffers are built before encoding");
        let b = self.shape.rows as u64;
        let d = self.shape.dim as u64;
        let max = self.max_groups;
        let elem_groups = (b * d).div_ceil(self.wg as u64) as u32;
        let row_groups = (b as u32).div_ceil(self.wg);
        self.encode_snapshot(enc);
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("staged step"), timestamp_writes: None });
        Self::dispatch_one(&mut pass, &self.anchors_pass);
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
        Self::dispatch_one(&mut pass, &s.reduce);
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
        if (b * d).div_ceil(self.wg as u64) > self.max_groups as u64 * self.max_groups as u64 {
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
        let row_groups = (b as u32).div_ceil(self.wg);
        let partials = storage(&ctx, "staged partials", row_groups as u64 * 8, wgpu::BufferUsages::empty());
        let reduce_u = uniform(&ctx, "staged reduce", &ReduceU { count: row_groups, pad: [0; 3] });
        let c = self.constants();
        let (params, anchors, state) = (&self.params, &self.anchors, &self.state);
        let gather_p = c.pipeline(&ctx, &shaders::GATHER, "main", None);
        let sgd_p = c.pipeline(&ctx, &shaders::SGD, "main", None);
        let gather = Pass {
            groups: self
                .chunks
                .iter()
                .map(|ch| bind(&ctx, &gather_p, &[&ch.buffer, &idx, &xs, params, &ch.uniform]))
                .collect(),
            pipeline: gather_p,
        };
        let sgd = Pass {
            groups: self
                .chunks
                .iter()
                .map(|ch| bind(&ctx, &sgd_p, &[&ch.buffer, &idx, &grads, params, &ch.uniform]))
                .collect(),
            pipeline: sgd_p,
        };
        let single = |k: &Kernel, entry: &str, bufs: &[(u32, &wgpu::Buffer)]| {
            let p = c.pipeline(&ctx, k, entry, None);
            let entries: Vec<wgpu::BindGroupEntry> = bufs
                .iter()
                .map(|(i, b)| wgpu::BindGroupEntry { binding: *i, resource: b.as_entire_binding() })
                .collect();
            let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &p.get_bind_group_layout(0),
                entries: &entries,
            });
            Pass { pipeline: p, groups: vec![bg] }
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
        let reduce =
            single(&shaders::REDUCE, "main", &[(0, &partials), (1, state), (2, &self.records), (3, &reduce_u)]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(e.to_string()));
        }
        self.staged = Some(Staged { gather, distances, forward, backward, sgd, reduce });
        Ok(())
    }

    /// Encodes `n` steps (or one evaluation when `n == 0`) in one submission,
    /// then reads back the `max(n, 1)` records they wrote.
    fn run(&mut self, n: usize) -> Result<Vec<Record>> {
        if n > 0 && self.opts.path == StepPath::Staged {
            self.build_staged()?;
        }
        let ctx = self.ctx.clone();
        ctx.queue.write_buffer(&self.state, 0, bytemuck::bytes_of(&0u32));
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        if n == 0 {
            self.encode_fused(&mut enc, false);
        }
        for _ in 0..n {
            match self.opts.path {
                StepPath::Fused => self.encode_fused(&mut enc, true),
                StepPath::Staged => self.encode_staged(&mut enc),
            }
        }
        let count = n.max(1) as u64;
        enc.copy_buffer_to_buffer(&self.records, 0, &self.readback, 0, count * RECORD_BYTES);
        ctx.queue.submit([enc.finish()]);
        let raw = read_mapped(&ctx, &self.readback, count * RECORD_BYTES)?;
        let values: &[[f32; 4]] = bytemuck::cast_slice(&raw);
        Ok(values
            .iter()
            .map(|v| Record {
                excess_sum: v[0] as f64,
                excess_max: v[1] as f64,
                d0: v[2] as f64,
                batch: self.shape.rows,
            })
            .collect())
    }
}

/// Maps `buffer[..size]`, waits for the GPU, and copies the bytes out:
/// 1. `map_async` asks for the mapping once the queued work is done;
/// 2. `wait` polls the device until it is (and surfaces any GPU error);
/// 3. the mapped view is copied to host memory and the buffer unmapped.
fn read_mapped(ctx: &GpuContext, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    let slice = buffer.slice(..size);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    rx.recv()
        .map_err(|_| Error::Gpu("buffer mapping was dropped".into()))?
        .map_err(|e| Error::Gpu(format!("mapping a buffer for reading: {e}")))?;
    let bytes = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?.to_vec();
    buffer.unmap();
    Ok(bytes)
}

/// The override constants a pipeline is built with; each kernel gets only
/// the ones it declares (see `Kernel::overrides`).
struct Constants {
    wg: u32,
    dim: u32,
    mode: u32,
    naive: bool,
}

impl Constants {
    fn new(shape: Shape, cfg: &StepConfig, wg: u32) -> Self {
        Constants { wg, dim: shape.dim as u32, mode: cfg.endpoints.shader_mode(), naive: cfg.naive }
    }

    fn pipeline(&self, ctx: &GpuContext, k: &Kernel, entry: &str, update: Option<bool>) -> wgpu::ComputePipeline {
        let all = [
            ("WG", self.wg as f64),
            ("D", self.dim as f64),
            ("MODE", self.mode as f64),
            ("NAIVE", if self.naive { 1.0 } else { 0.0 }),
            ("UPDATE", if update.unwrap_or(true) { 1.0 } else { 0.0 }),
        ];
        let constants: Vec<(&str, f64)> = all.into_iter().filter(|(name, _)| k.overrides.contains(name)).collect();
        let module = ctx.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(k.name),
            source: wgpu::ShaderSource::Wgsl(k.source().into()),
        });
        ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(k.name),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
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
        }
    }
    fn steps(&mut self, n: usize) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(n);
        let mut left = n;
        while left > 0 {
            let m = left.min(STEPS_PER_SUBMIT);
            out.extend(self.run(m)?);
            left -= m;
        }
        Ok(out)
    }
    fn evaluate(&mut self) -> Result<Record> {
        Ok(self.run(0)?[0])
    }
    fn read_table(&mut self) -> Result<Vec<f32>> {
        let d = self.shape.dim as u64;
        let largest = self.layout.rows_per_chunk.min(self.shape.rows) as u64 * d * 4;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("table readback"),
            size: largest,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut out = Vec::with_capacity(self.shape.elements() as usize);
        for c in &self.chunks {
            let bytes = c.span.rows as u64 * d * 4;
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&c.buffer, 0, &staging, 0, bytes);
            self.ctx.queue.submit([enc.finish()]);
            out.extend_from_slice(bytemuck::cast_slice(&read_mapped(&self.ctx, &staging, bytes)?));
        }
        Ok(out)
    }
}
