//! Small wgpu helpers shared by the GPU owners: buffers, bind groups,
//! pipelines with override constants, and mapped readback.

use bytemuck::Pod;

use super::context::GpuContext;
use super::shaders::Kernel;
use crate::error::{Error, Result};
use crate::trainer::Feed;

/// fused_step.wgsl's MAX_KEPT: a lane keeps its row's columns (KEEP) in an
/// array when it has at most this many (a unit test holds the two equal).
pub const KEPT_COLUMNS: usize = 8;

/// fused_step.wgsl's MAX_KEPT_VECTORS: as many in vectors (KEPT_VECTORS).
pub const KEPT_COLUMNS_IN_VECTORS: usize = 16;

/// fused_step.wgsl's KEEP: do `lanes` lanes a row keep a row of `dim`, in
/// vectors (`vectors`) or in an array?
pub fn keeps_columns(dim: u32, lanes: u32, vectors: bool) -> bool {
    let most = if vectors { KEPT_COLUMNS_IN_VECTORS } else { KEPT_COLUMNS };
    dim as usize <= most * lanes as usize
}

/// fused_step.wgsl's MAX_KEPT4: under VEC4 a lane keeps up to this many
/// vec4s of its row, in vectors (a unit test holds the two equal).
pub const KEPT_VEC4S: u32 = 8;

/// fused_step.wgsl's KEPT4: the most vec4s of a row of `dim` that one of
/// `lanes` lanes takes (lane l: vec4s l, l + lanes, …).
pub fn kept_vec4s(dim: u32, lanes: u32) -> u32 {
    (dim / 4).div_ceil(lanes).max(1)
}

/// Can VEC4 apply: `dim` a multiple of 4, each lane's vec4s kept?
pub fn keeps_vec4s(dim: u32, lanes: u32) -> bool {
    dim.is_multiple_of(4) && kept_vec4s(dim, lanes) <= KEPT_VEC4S
}

pub fn storage(ctx: &GpuContext, label: &str, size: u64, extra: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(16).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE | extra,
        mapped_at_creation: false,
    })
}

pub fn uniform<T: Pod>(ctx: &GpuContext, label: &str, value: &T) -> wgpu::Buffer {
    let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: std::mem::size_of::<T>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue.write_buffer(&buf, 0, bytemuck::bytes_of(value));
    buf
}

pub fn readback(ctx: &GpuContext, label: &str, size: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Bytes moved between host and device a block at a time by [`read_blocks`]
/// and [`write_buffers_from`] (`GpuOptions::transfer_block_bytes` where given):
/// what a save or an upload of a table takes in host memory beyond the
/// table, two blocks, whatever the table's size.
pub const TRANSFER_BLOCK_BYTES: u64 = 64 << 20;

/// The transfer block asked for: `asked`, else `LATENT_LINE_TRANSFER_BLOCK`
/// (bytes, at least 4; tests lower it to move tables in many blocks), else
/// `None` (`TRANSFER_BLOCK_BYTES`).
pub fn transfer_block(asked: Option<u64>) -> Result<Option<u64>> {
    match (asked, crate::gpu::context::env_var("LATENT_LINE_TRANSFER_BLOCK")?) {
        (Some(b), _) => Ok(Some(b)),
        (None, None) => Ok(None),
        (None, Some(v)) => v
            .parse::<u64>()
            .ok()
            .filter(|&b| b >= 4)
            .map(Some)
            .ok_or_else(|| Error::invalid("LATENT_LINE_TRANSFER_BLOCK", format!("{v:?}: bytes, at least 4"))),
    }
}

/// `block` rounded down to whole 4-byte values, at least one.
fn block_size(block: u64) -> u64 {
    (block / 4 * 4).max(4)
}

/// `src[..bytes]` (f32 values) handed to `each` a block at a time, in order,
/// through two staging buffers of `block` bytes: while the host takes one
/// block (a save writes it to its file), the GPU copies the next into the
/// other.
pub fn read_blocks(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    bytes: u64,
    block: u64,
    each: &mut dyn FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let block = block_size(block).min(bytes.max(4));
    let staging = [readback(ctx, "readback block", block), readback(ctx, "readback block", block)];
    let blocks = bytes.div_ceil(block);
    // Step 1 for block i: copy it into its staging buffer, ask for the mapping.
    let start = |i: u64| {
        let (at, n) = (i * block, block.min(bytes - i * block));
        let buf = &staging[(i % 2) as usize];
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, at, buf, 0, n);
        ctx.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        buf.slice(..n).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        (n, rx)
    };
    let mut next = (blocks > 0).then(|| start(0));
    for i in 0..blocks {
        let Some((n, rx)) = next.take() else { break };
        // Step 2: wait for it (and for the next block's copy, queued below
        // only after this wait returns, so it runs while the host works).
        ctx.wait()?;
        rx.recv()
            .map_err(|_| Error::Gpu("buffer mapping was dropped".into()))?
            .map_err(|e| Error::Gpu(format!("mapping a buffer for reading: {e}")))?;
        if i + 1 < blocks {
            next = Some(start(i + 1));
        }
        // Step 3: hand the mapped view over, then unmap it for its next block.
        let buf = &staging[(i % 2) as usize];
        let handed = {
            let range =
                buf.slice(..n).get_mapped_range().map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
            match bytemuck::try_cast_slice::<u8, f32>(&range) {
                Ok(values) => each(values),
                // (A mapping promises no alignment: copied where it has none.)
                Err(_) => each(
                    &range.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<_>>(),
                ),
            }
        };
        buf.unmap();
        if let Err(e) = handed {
            // The next block's mapping, if asked for, is left to finish (a
            // GPU error meanwhile is said too, not dropped).
            return Err(match ctx.wait() {
                Ok(()) => e,
                Err(gpu) => Error::Gpu(format!("{e}; the GPU meanwhile: {gpu}")),
            });
        }
    }
    Ok(())
}

/// `feed`'s values written into each of `dsts` (a buffer and its count of
/// values) in turn, from its start, a block of `block` bytes at a time
/// through one host block (filled by the feed: a table streams from its
/// file; a host that cannot give it is an error, not an abort), with at
/// most two blocks' staging memory held besides (`queue.write_buffer` keeps
/// its copy until the submission that carries it has run: one call for a
/// whole table would hold a second copy of it): block i is written once
/// block i − 2 has landed (and a buffer's first once every earlier write
/// has).
pub fn write_buffers_from(ctx: &GpuContext, dsts: &[(&wgpu::Buffer, u64)], block: u64, feed: &mut Feed) -> Result<()> {
    let largest = dsts.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let per = (block_size(block) / 4).min(largest).max(1);
    let mut host = Vec::new();
    usize::try_from(per).ok().and_then(|n| host.try_reserve_exact(n).ok()).ok_or_else(|| {
        Error::invalid("transfer block", format!("{} bytes of host memory, which this host cannot give", per * 4))
    })?;
    host.resize(per as usize, 0.0f32);
    for &(dst, count) in dsts {
        ctx.wait()?;
        let mut landing: std::collections::VecDeque<wgpu::SubmissionIndex> = Default::default();
        let mut at = 0u64;
        while at < count {
            let part = &mut host[..(per.min(count - at)) as usize];
            feed(part)?;
            if landing.len() == 2 {
                ctx.wait_until(landing.pop_front())?;
            }
            ctx.queue.write_buffer(dst, at * 4, bytemuck::cast_slice(part));
            landing.push_back(ctx.queue.submit([]));
            at += part.len() as u64;
        }
    }
    Ok(())
}

/// A bind group of whole buffers at the given binding numbers.
pub fn bind_at(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    buffers: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> =
        buffers.iter().map(|(i, b)| wgpu::BindGroupEntry { binding: *i, resource: b.as_entire_binding() }).collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// Whole-buffer bindings 0, 1, 2, … in order.
pub fn bind(ctx: &GpuContext, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
    let numbered: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
    bind_at(ctx, pipeline, &numbered)
}

/// Maps `buffer[..size]`, waits for the GPU, and copies the bytes out:
/// 1. `map_async` asks for the mapping once the queued work is done;
/// 2. `wait` polls the device until it is (and surfaces any GPU error);
/// 3. the mapped view is copied to host memory and the buffer unmapped.
pub fn read_mapped(ctx: &GpuContext, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u32>> {
    let slice = buffer.slice(..size);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    finish_map(buffer, size, rx)
}

/// Step 3 of [`read_mapped`] for a mapping already requested and polled.
pub fn finish_map(
    buffer: &wgpu::Buffer,
    size: u64,
    rx: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
) -> Result<Vec<u32>> {
    rx.recv()
        .map_err(|_| Error::Gpu("buffer mapping was dropped".into()))?
        .map_err(|e| Error::Gpu(format!("mapping a buffer for reading: {e}")))?;
    // Into 4-byte words (every buffer read back holds u32 or f32 words, and
    // a size a multiple of 4): a Vec<u8> promises no alignment, so casting
    // one to &[f32] may fail, where &[u32] → &[f32] cannot.
    let mut words = vec![0u32; (size / 4) as usize];
    {
        let range =
            buffer.slice(..size).get_mapped_range().map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
        let n = words.len() * 4;
        bytemuck::cast_slice_mut::<u32, u8>(&mut words).copy_from_slice(&range[..n]);
    }
    buffer.unmap();
    Ok(words)
}

/// The override constants a pipeline is built with; each kernel gets only
/// the ones it declares (see `Kernel::overrides`).
pub struct Constants {
    pub wg: u32,
    pub dim: u32,
    pub mode: u32,
    pub naive: bool,
    pub guard: u32,
    /// fused_step.wgsl's L: lanes per row.
    pub lanes: u32,
    /// fold_sg.wgsl's SG: the subgroup size its shuffles rely on (0: unused).
    pub subgroup: u32,
    /// fused_step.wgsl's BLOCKS: row blocks a workgroup steps in turn.
    pub blocks: u32,
    /// SPEC §5 μ > 0: the kernels keep a velocity buffer.
    pub momentum: bool,
    /// SPEC §10: the step runs over a gathered batch's slots.
    pub batched: bool,
    /// SPEC §5: global-norm clipping.
    pub clip: bool,
    /// fused_step.wgsl's and batch_io.wgsl's VEC4: set by the host only
    /// where `keeps_vec4s` holds (`GpuTrainer::with_batches`).
    pub vec4: bool,
    /// fused_step.wgsl's PREFETCH: read the next row block ahead.
    pub prefetch: bool,
    /// fused_step.wgsl's KEEP where it can apply (`keeps_columns`).
    pub keep: bool,
    /// fused_step.wgsl's KEPT_VECTORS: kept 4-byte columns in vectors.
    pub kept_vectors: bool,
    /// fused_step.wgsl's PQ_SHARED: under VEC4, p and q read from
    /// workgroup memory rather than held in registers.
    pub pq_shared: bool,
    /// fused_step.wgsl's POISON_BRANCH: under VEC4, poisoned rows' updates
    /// apart from clean ones'.
    pub poison_branch: bool,
    /// fused_step.wgsl's SAMPLED: a random batch's slots worked out in
    /// the step (no sample pass).
    pub sampled: bool,
}

impl Default for Constants {
    fn default() -> Self {
        Constants {
            wg: 64,
            dim: 1,
            mode: 0,
            naive: false,
            guard: 0,
            lanes: 1,
            subgroup: 0,
            blocks: 1,
            momentum: false,
            batched: false,
            clip: false,
            vec4: false,
            prefetch: true,
            keep: true,
            kept_vectors: false,
            pq_shared: false,
            poison_branch: false,
            sampled: false,
        }
    }
}

impl Constants {
    /// The override values of kernel `k`'s pipelines: these constants,
    /// then `extra` (kernel-specific: UPDATE, SCAN_BUFS), those `k`
    /// declares.
    pub fn overrides(&self, k: &Kernel, extra: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
        let keep = self.keep && keeps_columns(self.dim, self.lanes, self.kept_vectors);
        let base = [
            ("WG", self.wg as f64),
            ("D", self.dim as f64),
            ("MODE", self.mode as f64),
            ("NAIVE", if self.naive { 1.0 } else { 0.0 }),
            ("GUARD", self.guard as f64),
            ("L", self.lanes as f64),
            ("SG", self.subgroup as f64),
            ("BLOCKS", self.blocks as f64),
            ("MOMENTUM", if self.momentum { 1.0 } else { 0.0 }),
            ("BATCHED", if self.batched { 1.0 } else { 0.0 }),
            ("CLIP", if self.clip { 1.0 } else { 0.0 }),
            // fused_step.wgsl keeps a lane's columns in registers up to 8
            // (16 in vectors).
            ("KEEP", if keep { 1.0 } else { 0.0 }),
            ("VEC4", if self.vec4 { 1.0 } else { 0.0 }),
            ("PREFETCH", if self.prefetch { 1.0 } else { 0.0 }),
            ("KEPT_VECTORS", if self.kept_vectors { 1.0 } else { 0.0 }),
            ("PQ_SHARED", if self.pq_shared { 1.0 } else { 0.0 }),
            ("POISON_BRANCH", if self.poison_branch { 1.0 } else { 0.0 }),
            ("SAMPLED", if self.sampled { 1.0 } else { 0.0 }),
            // Workgroup arrays sized to their use (NVIDIA allots even those
            // that only dead code touches): PQ_SHARED's p and q, and the
            // row fold's tree (fold_wg.wgsl: rows of more than one lane;
            // fold_sg.wgsl: rows wider than a subgroup).
            ("PQ_VEC4S", if self.pq_shared { (self.dim / 2).max(1) as f64 } else { 1.0 }),
            ("ROW_TREE", if self.lanes > self.subgroup.max(1) { self.wg as f64 } else { 1.0 }),
            ("KEPT4", kept_vec4s(self.dim, self.lanes).min(KEPT_VEC4S) as f64),
        ];
        base.iter().chain(extra).copied().filter(|(name, _)| k.overrides.contains(name)).collect()
    }

    /// `extra` sets kernel-specific overrides (UPDATE, SCAN_BUFS).
    pub fn pipeline(
        &self,
        ctx: &GpuContext,
        k: &Kernel,
        entry: &str,
        extra: &[(&'static str, f64)],
    ) -> wgpu::ComputePipeline {
        let constants = self.overrides(k, extra);
        if let Ok(mut built) = ctx.built.lock() {
            let b = super::driver_stats::BuiltPipeline {
                kernel: *k,
                entry: entry.to_owned(),
                constants: constants.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            };
            // Once each (benches build the same copy pipeline many times).
            if !built.contains(&b) {
                built.push(b);
            }
        }
        let desc =
            wgpu::ShaderModuleDescriptor { label: Some(k.name), source: wgpu::ShaderSource::Wgsl(k.source().into()) };
        // SAFETY: wgpu still validates the module and keeps its bounds and
        // division checks; `shader_checks` drops only the loop counter, and
        // every loop in shaders/ ends (see `GpuContext::shader_checks`).
        let module = unsafe { ctx.device.create_shader_module_trusted(desc, ctx.shader_checks()) };
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
