//! The float64 reference of SPEC §3–§5, written to mirror the shaders
//! (`shaders/common.wgsl`, `fused_step.wgsl`) operation by operation, so a
//! disagreement points at one line. Used by the tests of both backends.
//!
//! An oracle, not a trainer: it takes its inputs as given and panics when
//! they do not fit together (a table of other than R × D values, a
//! velocity of another length when μ > 0, a row out of range). The
//! trainers check what a caller gives them.

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

/// One step over the batch `rows` (repeats allowed: a row's gradient is
/// summed over its copies, as `nn.Embedding`'s backward does), in f64:
/// SPEC §3–§5 with every endpoint mode, the separation term, momentum,
/// weight decay and global-norm clipping. Rows outside the batch are not
/// touched, except the anchors when `attached` or an active separation term
/// gives them a gradient.
pub fn step_batch(table: &mut [f64], vel: &mut [f64], shape: Shape, cfg: &StepConfig, rows: &[usize]) -> Record {
    use crate::config::{Endpoints, Reduction};
    let d = shape.dim;
    let eps = cfg.eps as f64;
    let (a, b) = (cfg.anchor_a, cfg.anchor_b);
    // SPEC §2: the whole step reads the snapshot, whatever it writes to a, b.
    let p: Vec<f64> = table[a * d..][..d].to_vec();
    let q: Vec<f64> = table[b * d..][..d].to_vec();
    let s0: f64 = (0..d).map(|k| (p[k] - q[k]) * (p[k] - q[k])).sum();
    let d0 = safe_dist(s0, eps);
    let w_red = match cfg.reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => 1.0 / rows.len() as f64,
    };
    // SPEC §8's τ, an option (its default, 1e-3, checked against SPEC by
    // `rows_at_the_anchors_take_epsilon_and_tau_as_spec_says`).
    let near = (cfg.tau as f64 * d0).powi(2);
    let mut rec = Record {
        excess_sum: 0.0,
        excess_max: 0.0,
        d0,
        batch: rows.len(),
        near_singular: 0,
        lr: cfg.lr as f64,
        // SPEC §3: λ·max(0, m − d0), m = 0 meaning off.
        separation: if cfg.margin > 0.0 { cfg.margin_weight as f64 * (cfg.margin as f64 - d0).max(0.0) } else { 0.0 },
        action: crate::guard::Action::Applied,
        grad_norm: None,
        scans: Default::default(),
        gpu_seconds: None,
    };
    let mut mult = std::collections::BTreeMap::<usize, usize>::new();
    for &i in rows {
        *mult.entry(i).or_default() += 1;
    }
    // Gradients of the rows the step touches, summed over repeats.
    let mut grads = std::collections::BTreeMap::<usize, Vec<f64>>::new();
    let attached = cfg.endpoints == Endpoints::Attached;
    // SPEC §4's endpoint modes, written out here rather than taken from
    // the code under test: `frozen` never changes rows a and b.
    let frozen = cfg.endpoints == Endpoints::Frozen;
    let writes_row = |i: usize| !frozen || (i != a && i != b);
    let (mut extra_a, mut extra_b) = (vec![0.0; d], vec![0.0; d]);
    for (&i, &m) in &mult {
        let x = &table[i * d..][..d];
        let s1: f64 = (0..d).map(|k| (x[k] - p[k]) * (x[k] - p[k])).sum();
        let s2: f64 = (0..d).map(|k| (x[k] - q[k]) * (x[k] - q[k])).sum();
        // pin_anchors: row a is p and row b is q, so these are s0 exactly.
        let s1 = if i == b { s0 } else { s1 };
        let s2 = if i == a { s0 } else { s2 };
        let (d1, d2) = (safe_dist(s1, eps), safe_dist(s2, eps));
        let r = d1 + d2 - d0;
        rec.excess_sum += m as f64 * r.abs();
        rec.excess_max = rec.excess_max.max(r.abs());
        if s1 < near || s2 < near {
            rec.near_singular += m as u64;
        }
        let c = m as f64 * w_red * sign(r);
        let (inv_d1, inv_d2) = (safe_inv(d1), safe_inv(d2));
        // SPEC §6: autograd's 0·(1/sqrt(0)) = NaN in every column; a row
        // that read a non-finite value is NaN too (fused_step.wgsl).
        // Each distance's NaN goes where autograd's backward takes it:
        // s1's to the row and p, s2's to the row and q.
        let bad = x.iter().any(|v| !v.is_finite());
        let (blown1, blown2) = (bad || cfg.naive && s1 == 0.0, bad || cfg.naive && s2 == 0.0);
        let blown = blown1 || blown2;
        let nan_if = |v: f64| if blown { f64::NAN } else { v };
        if attached {
            // SPEC §4's anchor term, summed over the batch's entries.
            for k in 0..d {
                let ta = c * ((p[k] - x[k]) * inv_d1 - over_d0(p[k] - q[k], d0, cfg.naive));
                let tb = c * ((q[k] - x[k]) * inv_d2 - over_d0(q[k] - p[k], d0, cfg.naive));
                extra_a[k] += if blown1 { f64::NAN } else { ta };
                extra_b[k] += if blown2 { f64::NAN } else { tb };
            }
        }
        if writes_row(i) {
            let g: Vec<f64> = (0..d).map(|k| nan_if(c * ((x[k] - p[k]) * inv_d1 + (x[k] - q[k]) * inv_d2))).collect();
            grads.insert(i, g);
        }
    }
    // The anchors: their own row term (when in the batch), the anchor term
    // (attached), and SPEC §4's separation term g[a] −= λ(p − q)/d0,
    // g[b] −= λ(q − p)/d0 when d0 < m.
    // The separation term is active when d0 < m (compared in f32, as the
    // devices compute d0).
    let active = cfg.margin > 0.0 && (d0 as f32) < cfg.margin;
    for (row, extra) in [(a, &extra_a), (b, &extra_b)] {
        // `attached`: always a gradient; `detached`: the row term when in
        // the batch, and the separation term when active; `frozen`: none.
        let touched = match cfg.endpoints {
            Endpoints::Frozen => false,
            Endpoints::Attached => true,
            Endpoints::Detached => mult.contains_key(&row) || active,
        };
        if !touched {
            continue;
        }
        let lambda = if active { over_d0(cfg.margin_weight as f64, d0, cfg.naive) } else { 0.0 };
        let sep = if row == a { -lambda } else { lambda };
        let g = grads.entry(row).or_insert_with(|| vec![0.0; d]);
        for k in 0..d {
            g[k] += extra[k] + sep * (p[k] - q[k]);
        }
    }
    // SPEC §5 clipping: the norm over the whole step (rows whose gradient
    // is not finite are left to the guard); a norm that is itself not
    // finite makes every update non-finite, so the guard acts on it. The
    // devices sum g² in f32: a row's sum or the total past f32's range is
    // +Inf there, and so here.
    let mut scale = 1.0;
    if cfg.clip_norm > 0.0 {
        // (Past f32's range as f32 rounds: to +Inf beyond MAX + half an ulp.)
        let f32_sum = |v: f64| if (v as f32).is_infinite() { f64::INFINITY } else { v };
        let finite = grads.values().filter(|g| g.iter().all(|&v| (v as f32).is_finite()));
        let n2: f64 = f32_sum(finite.map(|g| f32_sum(g.iter().map(|v| v * v).sum::<f64>())).sum());
        let norm = n2.sqrt();
        rec.grad_norm = Some(norm);
        if !norm.is_finite() {
            scale = f64::NAN;
        } else if norm > cfg.clip_norm as f64 {
            scale = cfg.clip_norm as f64 / norm;
        }
    }
    let (mu, wd) = (cfg.momentum as f64, cfg.weight_decay as f64);
    for (i, g) in grads {
        for k in 0..d {
            // SPEC §5: v = μ·v_old + (g + wd·x), x ← x − lr·v.
            let x = table[i * d + k];
            let v_old = if vel.is_empty() { 0.0 } else { vel[i * d + k] };
            let v = mu * v_old + (g[k] * scale + wd * x);
            let v = if g[k].is_nan() { f64::NAN } else { v };
            table[i * d + k] = x - cfg.lr as f64 * v;
            if !vel.is_empty() {
                vel[i * d + k] = v;
            }
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

/// x/d0 in d0's gradient terms: the subgradient 0 where d0 = 0 (ε = 0,
/// the anchors equal) as for the distances; autograd's x/d0 under --naive.
fn over_d0(x: f64, d0: f64, naive: bool) -> f64 {
    if d0 == 0.0 && !naive {
        0.0
    } else {
        x / d0
    }
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
