//! The float64 reference of SPEC §3–§5, written to mirror the shaders
//! (`shaders/common.wgsl`, `fused_step.wgsl`) operation by operation, so a
//! disagreement points at one line. Used by the tests of both backends.

use crate::config::{Shape, StepConfig};
use crate::record::Record;

/// One full-table step of `table` (R × D, row-major) in f64, without
/// momentum. Returns the forward record at the table before the update.
pub fn step(table: &mut [f64], shape: Shape, cfg: &StepConfig) -> Record {
    assert!(cfg.momentum == 0.0, "with momentum, use step_with_velocity");
    step_with_velocity(table, &mut [], shape, cfg)
}

/// One full-table step with SPEC §5's velocity `vel` (R × D, zeros at the
/// start; empty when μ = 0).
pub fn step_with_velocity(table: &mut [f64], vel: &mut [f64], shape: Shape, cfg: &StepConfig) -> Record {
    let rows: Vec<usize> = (0..shape.rows).collect();
    step_batch(table, vel, shape, cfg, &rows)
}

/// One step over the batch `rows` (no duplicates), in f64.
pub fn step_batch(table: &mut [f64], vel: &mut [f64], shape: Shape, cfg: &StepConfig, rows: &[usize]) -> Record {
    let d = shape.dim;
    let eps = cfg.eps as f64;
    // SPEC §2: the whole step reads the snapshot, whatever it writes to a, b.
    let p: Vec<f64> = table[cfg.anchor_a * d..][..d].to_vec();
    let q: Vec<f64> = table[cfg.anchor_b * d..][..d].to_vec();
    let s0: f64 = (0..d).map(|k| (p[k] - q[k]) * (p[k] - q[k])).sum();
    let d0 = safe_dist(s0, eps);
    let w_red = match cfg.reduction {
        crate::config::Reduction::Sum => 1.0,
        crate::config::Reduction::Mean => 1.0 / rows.len() as f64,
    };
    let near = (crate::guard::TAU as f64 * d0).powi(2);
    let mut rec = Record {
        excess_sum: 0.0,
        excess_max: 0.0,
        d0,
        batch: rows.len(),
        near_singular: 0,
        lr: cfg.lr as f64,
        separation: cfg.separation(d0),
        action: crate::guard::Action::Applied,
        scans: Default::default(),
    };
    let mut updates: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::with_capacity(rows.len());
    for &i in rows {
        let x = &table[i * d..][..d];
        let s1: f64 = (0..d).map(|k| (x[k] - p[k]) * (x[k] - p[k])).sum();
        let s2: f64 = (0..d).map(|k| (x[k] - q[k]) * (x[k] - q[k])).sum();
        // pin_anchors: row a is p and row b is q, so these are s0 exactly.
        let s1 = if i == cfg.anchor_b { s0 } else { s1 };
        let s2 = if i == cfg.anchor_a { s0 } else { s2 };
        let (d1, d2) = (safe_dist(s1, eps), safe_dist(s2, eps));
        let r = d1 + d2 - d0;
        rec.excess_sum += r.abs();
        rec.excess_max = rec.excess_max.max(r.abs());
        if s1 < near || s2 < near {
            rec.near_singular += 1;
        }
        if cfg.endpoints.writes_row(i, cfg.anchor_a, cfg.anchor_b) {
            let c = w_red * sign(r);
            // SPEC §4's separation term: g[a] −= λ(p − q)/d0, g[b] −= λ(q − p)/d0.
            let active =
                cfg.endpoints != crate::config::Endpoints::Frozen && cfg.margin > 0.0 && d0 < cfg.margin as f64;
            let lambda = cfg.margin_weight as f64;
            let sep = match (active, i) {
                (true, i) if i == cfg.anchor_a => -lambda / d0,
                (true, i) if i == cfg.anchor_b => lambda / d0,
                _ => 0.0,
            };
            let (inv_d1, inv_d2) = (safe_inv(d1), safe_inv(d2));
            // SPEC §6: autograd's 0·(1/sqrt(0)) = NaN in every column; a row
            // that read a non-finite value is NaN too (fused_step.wgsl).
            let blown = (cfg.naive && (s1 == 0.0 || s2 == 0.0)) || x.iter().any(|v| !v.is_finite());
            // SPEC §5: v = μ·v_old + (g + wd·x), x ← x − lr·v.
            let (mu, wd) = (cfg.momentum as f64, cfg.weight_decay as f64);
            let (new, v): (Vec<f64>, Vec<f64>) = (0..d)
                .map(|k| {
                    let g = c * ((x[k] - p[k]) * inv_d1 + (x[k] - q[k]) * inv_d2) + sep * (p[k] - q[k]);
                    let v_old = if vel.is_empty() { 0.0 } else { vel[i * d + k] };
                    let v = mu * v_old + (g + wd * x[k]);
                    if blown {
                        (f64::NAN, f64::NAN)
                    } else {
                        (x[k] - cfg.lr as f64 * v, v)
                    }
                })
                .unzip();
            updates.push((i, new, v));
        }
    }
    for (i, new, v) in updates {
        table[i * d..][..d].copy_from_slice(&new);
        if !vel.is_empty() {
            vel[i * d..][..d].copy_from_slice(&v);
        }
    }
    rec
}

/// Forward evaluation of the full table, no update.
pub fn evaluate(table: &[f64], shape: Shape, cfg: &StepConfig) -> Record {
    let mut copy = table.to_vec();
    let frozen = StepConfig { lr: 0.0, momentum: 0.0, ..*cfg };
    step(&mut copy, shape, &frozen)
}

fn safe_dist(s: f64, eps: f64) -> f64 {
    (s + eps).sqrt()
}

fn safe_inv(d: f64) -> f64 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// WGSL's `sign`: 0 at 0 (Rust's `signum` gives 1 there).
fn sign(r: f64) -> f64 {
    if r > 0.0 {
        1.0
    } else if r < 0.0 {
        -1.0
    } else {
        0.0
    }
}
