//! The CPU backend: the shaders' math in f32 Rust, multi-threaded with rayon.
//! Each row is one task's work exactly as in `shaders/fused_step.wgsl`;
//! partial sums are formed over fixed blocks of rows and folded in order, so
//! results do not depend on the number of threads.

use rayon::prelude::*;

use crate::config::{Shape, StepConfig};
use crate::error::{Error, Result};
use crate::record::Record;
use crate::trainer::{DeviceInfo, TableSource, Trainer};

/// Rows per parallel task; fixes the reduction order.
const BLOCK_ROWS: usize = 1024;

pub struct CpuTrainer {
    shape: Shape,
    cfg: StepConfig,
    table: Vec<f32>,
}

impl CpuTrainer {
    pub fn new(shape: Shape, cfg: StepConfig, source: TableSource) -> Result<Self> {
        cfg.validate(shape)?;
        let n =
            usize::try_from(shape.elements()).map_err(|_| shape.too_large("more elements than this host can index"))?;
        let table = match source {
            TableSource::Data(v) => {
                if v.len() != n {
                    return Err(Error::invalid(
                        "table",
                        format!("{} values for {} × {}", v.len(), shape.rows, shape.dim),
                    ));
                }
                v
            }
            TableSource::Random { seed } => {
                let mut v = Vec::new();
                v.try_reserve_exact(n).map_err(|_| shape.too_large("host memory allocation failed"))?;
                v.resize(n, 0.0f32);
                let d = shape.dim;
                v.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
                    for (col, o) in out.iter_mut().enumerate() {
                        *o = crate::rng::normal_f32(seed, row as u32, col as u32);
                    }
                });
                v
            }
        };
        Ok(CpuTrainer { shape, cfg, table })
    }

    /// One pass over the table: forward always, update when `update`.
    fn pass(&mut self, update: bool) -> Record {
        let d = self.shape.dim;
        let cfg = self.cfg;
        let (a, b) = (cfg.anchor_a, cfg.anchor_b);
        let mut pq = Vec::with_capacity(2 * d);
        pq.extend_from_slice(&self.table[a * d..][..d]);
        pq.extend_from_slice(&self.table[b * d..][..d]);
        let (p, q) = pq.split_at(d);
        let mut s0 = 0.0f32;
        for k in 0..d {
            let t = p[k] - q[k];
            s0 += t * t;
        }
        let d0 = safe_dist(s0, cfg.eps);
        let w_red = cfg.w_red(self.shape.rows);
        let partials: Vec<(f64, f32)> = self
            .table
            .par_chunks_mut(BLOCK_ROWS * d)
            .enumerate()
            .map(|(blk, rows)| {
                let (mut sum, mut max) = (0.0f64, 0.0f32);
                for (i, x) in rows.chunks_exact_mut(d).enumerate() {
                    let row = blk * BLOCK_ROWS + i;
                    let (mut s1, mut s2) = (0.0f32, 0.0f32);
                    for k in 0..d {
                        let (t1, t2) = (x[k] - p[k], x[k] - q[k]);
                        s1 += t1 * t1;
                        s2 += t2 * t2;
                    }
                    // pin_anchors of shaders/common.wgsl
                    let s1 = if row == b { s0 } else { s1 };
                    let s2 = if row == a { s0 } else { s2 };
                    let (d1, d2) = (safe_dist(s1, cfg.eps), safe_dist(s2, cfg.eps));
                    let r = d1 + d2 - d0;
                    sum += r.abs() as f64;
                    max = max.max(r.abs());
                    if update && cfg.endpoints.writes_row(row, a, b) {
                        let c = w_red * sign(r);
                        let (inv_d1, inv_d2) = (safe_inv(d1), safe_inv(d2));
                        // naive_blows_up of shaders/common.wgsl (SPEC §6)
                        let blown = cfg.naive && (s1 == 0.0 || s2 == 0.0);
                        for k in 0..d {
                            let g = c * ((x[k] - p[k]) * inv_d1 + (x[k] - q[k]) * inv_d2);
                            x[k] = if blown { f32::NAN } else { x[k] - cfg.lr * g };
                        }
                    }
                }
                (sum, max)
            })
            .collect();
        let (sum, max) = partials.iter().fold((0.0f64, 0.0f32), |(s, m), &(ps, pm)| (s + ps, m.max(pm)));
        Record { excess_sum: sum, excess_max: max as f64, d0: d0 as f64, batch: self.shape.rows }
    }
}

impl Trainer for CpuTrainer {
    fn shape(&self) -> Shape {
        self.shape
    }
    fn config(&self) -> &StepConfig {
        &self.cfg
    }
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            backend: "cpu".into(),
            adapter: format!("{} threads", rayon::current_num_threads()),
            driver: String::new(),
        }
    }
    fn steps(&mut self, n: usize) -> Result<Vec<Record>> {
        Ok((0..n).map(|_| self.pass(true)).collect())
    }
    fn evaluate(&mut self) -> Result<Record> {
        Ok(self.pass(false))
    }
    fn read_table(&mut self) -> Result<Vec<f32>> {
        Ok(self.table.clone())
    }
}

fn safe_dist(s: f32, eps: f32) -> f32 {
    (s + eps).sqrt()
}

/// `safe_inv` of shaders/common.wgsl: 1/d, 0 at d = 0.
fn safe_inv(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// WGSL's `sign`: 0 at 0.
fn sign(r: f32) -> f32 {
    if r > 0.0 {
        1.0
    } else if r < 0.0 {
        -1.0
    } else {
        0.0
    }
}
