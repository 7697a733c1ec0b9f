//! Host side of the table scan (SPEC §7): `shaders/scan_table.wgsl` over
//! each chunk, then `scan_finish.wgsl` folds the findings into one block.
//! Used by `latent-line scan` ([`scan_values`]) and by
//! `GpuTrainer::scan_table` (the `Trainer` trait). CPU mirror: `crate::scan::scan_rows`.

use std::sync::Arc;

use super::context::GpuContext;
use super::layout::{grid, ChunkLayout};
use super::pipes::{
    bind_at, read_mapped, readback, storage, transfer_block, uniform, write_buffers_from, Constants,
    TRANSFER_BLOCK_BYTES,
};
use super::shaders;
use super::timer::{in_timed_rounds, PassTimer};
use super::trainer::{loop_limit, LOOP_BUDGET};
use crate::config::Shape;
use crate::error::{Error, Result};
use crate::scan::{Scan, SCAN_WORDS};
use crate::trainer::Feed;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScanParamsU {
    stamp: u32,
    count: u32,
    pad: [u32; 2],
}

/// Bytes of one workgroup's finding in one scanned buffer: DETAIL_WORDS
/// u32 of shaders/scan.wgsl.
pub(super) const DETAIL_BYTES: u64 = 16 * 4;

/// Pipelines and scratch buffers for scanning tables of one layout.
pub struct TableScanner {
    ctx: Arc<GpuContext>,
    max_groups: u32,
    /// (chunk uniform, workgroups) per chunk.
    chunks: Vec<(wgpu::Buffer, u32)>,
    groups_total: u32,
    scan: wgpu::ComputePipeline,
    /// The table's binding in `scan`: 0 (4-byte loads) or 3 (16-byte).
    table_binding: u32,
    finish: wgpu::ComputePipeline,
    finish_group: wgpu::BindGroup,
    detail: wgpu::Buffer,
    hits: wgpu::Buffer,
    params: wgpu::Buffer,
    out: wgpu::Buffer,
    readback: wgpu::Buffer,
    stamp: u32,
}

/// Bind groups over one table's chunk buffers, ready to scan repeatedly.
pub struct PreparedScan {
    groups: Vec<wgpu::BindGroup>,
}

impl TableScanner {
    /// 16-byte loads where D is a multiple of 4. Refuses, on a software
    /// adapter, a table whose scan would pass its loop limit (`scan_tile`).
    pub fn new(ctx: Arc<GpuContext>, shape: Shape, layout: &ChunkLayout, wg: u32, max_groups: u32) -> Result<Self> {
        Self::with_loads(ctx, shape, layout, wg, max_groups, shape.dim.is_multiple_of(4))
    }

    /// `wide`: 16-byte loads (`main_vec4`, D a multiple of 4), else 4-byte.
    pub fn with_loads(
        ctx: Arc<GpuContext>,
        shape: Shape,
        layout: &ChunkLayout,
        wg: u32,
        max_groups: u32,
        wide: bool,
    ) -> Result<Self> {
        let wide = wide && shape.dim.is_multiple_of(4);
        let tile = scan_plan(&ctx, shape, layout, wg, wide)?;
        let mut base = 0u32;
        let chunks: Vec<(wgpu::Buffer, u32)> = layout
            .spans
            .iter()
            .map(|s| {
                let groups = (s.rows as u32).div_ceil(tile);
                let u = uniform(&ctx, "scan chunk", &[s.row_base as u32, s.rows as u32, base, 0]);
                base += groups;
                (u, groups)
            })
            .collect();
        let consts = Constants { wg, dim: shape.dim as u32, ..Constants::default() };
        let entry = if wide { "main_vec4" } else { "main" };
        let scan = consts.pipeline(&ctx, &shaders::SCAN_TABLE, entry, &[("SCAN_BUFS", 1.0), ("TILE", tile as f64)]);
        let finish = consts.pipeline(&ctx, &shaders::SCAN_FINISH, "main", &[("SCAN_BUFS", 1.0)]);
        let detail = storage(&ctx, "scan details", base as u64 * DETAIL_BYTES, wgpu::BufferUsages::empty());
        let hits = storage(&ctx, "scan hits", 16, wgpu::BufferUsages::empty());
        let params = uniform(&ctx, "scan params", &ScanParamsU { stamp: 0, count: base, pad: [0; 2] });
        let bytes = SCAN_WORDS as u64 * 4;
        let out = storage(&ctx, "scan result", bytes, wgpu::BufferUsages::COPY_SRC);
        let readback = readback(&ctx, "scan readback", bytes);
        let finish_group = bind_at(&ctx, &finish, &[(2, &params), (8, &detail), (9, &hits), (10, &out)]);
        Ok(TableScanner {
            ctx,
            max_groups,
            chunks,
            groups_total: base,
            scan,
            table_binding: if wide { 3 } else { 0 },
            finish,
            finish_group,
            detail,
            hits,
            params,
            out,
            readback,
            stamp: 0,
        })
    }

    /// Bind groups for `buffers`, one per chunk of the layout, in order.
    pub fn prepare(&self, buffers: &[&wgpu::Buffer]) -> PreparedScan {
        let groups = buffers
            .iter()
            .zip(&self.chunks)
            .map(|(b, (u, _))| {
                let at = self.table_binding;
                bind_at(
                    &self.ctx,
                    &self.scan,
                    &[(at, b), (1, u), (2, &self.params), (8, &self.detail), (9, &self.hits)],
                )
            })
            .collect();
        PreparedScan { groups }
    }

    /// Encodes one scan of the table: each chunk, then the fold.
    pub fn encode(&mut self, enc: &mut wgpu::CommandEncoder, table: &PreparedScan) {
        self.encode_pass(enc, table, None);
    }

    /// `encode`, the pass's begin and end written to `timestamps` if given.
    fn encode_pass(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        table: &PreparedScan,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        self.stamp += 1;
        let p = ScanParamsU { stamp: self.stamp, count: self.groups_total, pad: [0; 2] };
        self.ctx.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("scan"), timestamp_writes: timestamps });
        pass.set_pipeline(&self.scan);
        for (g, (_, groups)) in table.groups.iter().zip(&self.chunks) {
            pass.set_bind_group(0, g, &[]);
            let (x, y) = grid(*groups, self.max_groups);
            pass.dispatch_workgroups(x, y, 1);
        }
        pass.set_pipeline(&self.finish);
        pass.set_bind_group(0, &self.finish_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Scans the table and reads the result back.
    pub fn run(&mut self, table: &PreparedScan) -> Result<Scan> {
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.encode(&mut enc, table);
        let bytes = SCAN_WORDS as u64 * 4;
        enc.copy_buffer_to_buffer(&self.out, 0, &self.readback, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let raw = read_mapped(&self.ctx, &self.readback, bytes)?;
        Ok(Scan::from_words(&raw))
    }

    /// Wall time of `iters` scans in one submission (for benchmarks without
    /// timestamp queries).
    pub fn time(&mut self, table: &PreparedScan, iters: u32) -> Result<std::time::Duration> {
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        for _ in 0..iters {
            // The stamp must differ per scan; params are written per submit,
            // so one submission repeats one stamp: findings stay correct
            // because every scan of the same table finds the same things.
            self.encode(&mut enc, table);
        }
        let t = std::time::Instant::now();
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()?;
        Ok(t.elapsed())
    }

    /// The GPU's own time of `iters` scans (each one pass: the chunks, then
    /// the fold) from timestamp queries, or `None` without them
    /// (benchmarks). Stamps repeat within a submission, as in `time`.
    pub fn gpu_time(&mut self, table: &PreparedScan, iters: u32) -> Result<Option<std::time::Duration>> {
        in_timed_rounds(iters, |m| {
            let Some(timer) = PassTimer::new(&self.ctx, m) else { return Ok(None) };
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            for i in 0..m {
                self.encode_pass(&mut enc, table, Some(timer.writes(i)));
            }
            timer.resolve(&mut enc, m);
            self.ctx.queue.submit([enc.finish()]);
            let secs: f64 = timer.read(&self.ctx, m)?.iter().sum();
            Ok(Some(std::time::Duration::from_secs_f64(secs)))
        })
    }
}

/// Uploads a host table chunk by chunk and scans it on the GPU.
pub fn scan_values(ctx: Arc<GpuContext>, values: &[f32], shape: Shape, max_chunk_rows: Option<usize>) -> Result<Scan> {
    if values.len() as u64 != shape.elements() {
        return Err(Error::invalid("table", format!("{} values for {} × {}", values.len(), shape.rows, shape.dim)));
    }
    scan_from(ctx, shape, &mut crate::tables::reader::slice_feed(values), max_chunk_rows)
}

/// [`scan_values`] of a table whose values come from `feed` (a file's
/// reader: streamed into the device a block at a time, no host copy of
/// the whole).
pub fn scan_from(ctx: Arc<GpuContext>, shape: Shape, feed: &mut Feed, max_chunk_rows: Option<usize>) -> Result<Scan> {
    // (A scan takes a one-row table; training needs two rows.)
    Shape::of_file_from(shape.rows, shape.dim, 1).map_err(|e| Error::invalid("table", e))?;
    let wg = ctx.workgroup_size(256);
    let max_groups = ctx.max_groups();
    let layout = ChunkLayout::new(shape, ctx.max_binding_bytes(), max_chunk_rows, wg, max_groups)?;
    if ctx.is_software() {
        // (Its buffers are host memory: see `crate::host`.)
        let table = (shape.bytes(), "the table uploaded to the software adapter".to_owned());
        crate::host::check(shape, &[table], crate::host::RESERVE_SOFTWARE_GPU)?;
    }
    let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let d = shape.dim;
    let buffers: Vec<wgpu::Buffer> = layout
        .spans
        .iter()
        .map(|s| storage(&ctx, "scanned chunk", (s.rows * d * 4) as u64, wgpu::BufferUsages::COPY_DST))
        .collect();
    if let Some(e) = pollster::block_on(oom.pop()) {
        return Err(shape.too_large(format!("the GPU could not allocate it ({e})")));
    }
    let block = transfer_block(None)?.unwrap_or(TRANSFER_BLOCK_BYTES);
    let dsts: Vec<_> = buffers.iter().zip(&layout.spans).map(|(b, s)| (b, (s.rows * d) as u64)).collect();
    write_buffers_from(&ctx, &dsts, block, feed)?;
    let mut scanner = TableScanner::new(ctx, shape, &layout, wg, max_groups)?;
    let refs: Vec<&wgpu::Buffer> = buffers.iter().collect();
    let prepared = scanner.prepare(&refs);
    scanner.run(&prepared)
}

/// scan_table.wgsl's TILE for `shape` (`scan_tile`), or, on a software
/// adapter, a refusal of a scan that would pass its loop limit (the
/// trainer asks before it builds anything: its last scan is the table's).
pub(super) fn scan_plan(ctx: &GpuContext, shape: Shape, layout: &ChunkLayout, wg: u32, wide: bool) -> Result<u32> {
    let tile = scan_tile(ctx.is_software(), wg, shape.dim as u64, wide);
    let groups: u64 = layout.spans.iter().map(|s| (s.rows as u64).div_ceil(tile.unwrap_or(1) as u64)).sum();
    // scan_finish.wgsl: scan.wgsl's scan_collect over the tiles' findings.
    let finish = 45 * groups.div_ceil(wg as u64) + 1_000;
    match tile {
        Some(t) if !ctx.is_software() || finish <= LOOP_BUDGET => Ok(t),
        _ => Err(loop_limit(
            ctx,
            format!("a {} × {} table's scan", shape.rows, shape.dim),
            format!(
                "{} would pass it",
                if tile.is_none() { "scan_table.wgsl, a row's columns," } else { "scan_finish.wgsl, its tiles," }
            ),
        )),
    }
}

/// Rows a workgroup of scan_table.wgsl scans (its TILE): the workgroup's
/// size, or on a software adapter the most, halving, whose loops a lane
/// keeps under [`LOOP_BUDGET`] (a whole tile: D loads a lane, D again
/// where one is not finite, vec4s four elements each; a smaller one the
/// plain loop over its elements); `None` when not even one row's do.
fn scan_tile(software: bool, wg: u32, dim: u64, wide: bool) -> Option<u32> {
    if !software {
        return Some(wg);
    }
    let loops = |tile: u32| {
        let per_lane = (tile as u64 * dim).div_ceil(if wide { 4 } else { 1 } * wg as u64);
        let whole = if wide { 6 * dim.div_ceil(4) } else { 2 * dim };
        (if tile == wg { whole } else { per_lane * if wide { 5 } else { 1 } }) + 200
    };
    std::iter::successors(Some(wg), |&t| (t > 1).then_some(t / 2)).find(|&t| loops(t) <= LOOP_BUDGET)
}
