//! What a run trains: the table's shape and the step's options (SPEC §2–§5),
//! validated once, before any allocation or file is touched.

use crate::error::{Error, Result};
use crate::guard::Guard;

/// How the per-row terms are weighted (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// `w_red = 1`: a row's step does not shrink as the table grows.
    Sum,
    /// `w_red = 1/B`, PyTorch's `.mean()`.
    Mean,
}

/// Which rows and gradient terms the anchors get (SPEC §4); the shaders
/// take it as the `MODE` override constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoints {
    /// Rows a and b never change.
    Frozen,
    /// The original code: anchors get the row term only, when in the batch.
    Detached,
    /// The full gradient: every batch row pulls on the anchors too.
    Attached,
}

impl Endpoints {
    /// The value of the shaders' `MODE` override constant.
    pub fn shader_mode(self) -> u32 {
        match self {
            Endpoints::Frozen => 0,
            Endpoints::Detached => 1,
            Endpoints::Attached => 2,
        }
    }
    /// May a step write row `row`?
    pub fn writes_row(self, row: usize, a: usize, b: usize) -> bool {
        self != Endpoints::Frozen || (row != a && row != b)
    }
}

/// Widest row: 2^22 columns (16 MiB a row). Scan findings index a
/// workgroup's elements (≤ 256 rows) in 32 bits.
pub const MAX_DIM: usize = 1 << 22;

/// The most `--max-skips` and `--max-rollbacks` allow: the guard counts one
/// failure past the limit (then aborts) in 32 bits.
pub const MAX_GUARD_COUNT: u32 = u32::MAX - 1;
/// Why, for the messages that refuse a wider row.
const WHY_MAX_DIM: &str = "2^22: the non-finite scans index the elements of up to 256 rows in 32 bits";

/// The shape of the table: `rows` × `dim` f32, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    /// Codes in the table (rows).
    pub rows: usize,
    /// Numbers a code (columns).
    pub dim: usize,
}

impl Shape {
    /// A table's shape, checked: at least 2 rows (the two anchors), fewer
    /// than 2^32 (row indices are u32), 1 to [`MAX_DIM`] columns, a size
    /// that fits 64 bits. (A `Shape` built from its fields is checked
    /// where it is used.)
    pub fn new(rows: usize, dim: usize) -> Result<Self> {
        if rows < 2 {
            return Err(Error::invalid("--rows", format!("{rows} rows; the table needs at least 2 (two anchors)")));
        }
        if dim == 0 {
            return Err(Error::invalid("--dim", "0 columns; the table needs at least 1"));
        }
        if rows as u64 > u32::MAX as u64 {
            return Err(Error::too_large(rows, dim, "more than 2^32 − 1 rows (row indices are u32)"));
        }
        if dim > MAX_DIM {
            return Err(Error::invalid("--dim", format!("{dim} columns; at most {MAX_DIM} ({WHY_MAX_DIM})")));
        }
        if (rows as u64).checked_mul(dim as u64).and_then(|n| n.checked_mul(4)).is_none() {
            return Err(Error::too_large(rows, dim, "its size overflows 64 bits"));
        }
        Ok(Shape { rows, dim })
    }
    /// `new` for a file's table: the problem in the file's terms (a file
    /// has no --rows or --dim to blame), for the caller to name the file.
    pub fn of_file(rows: usize, dim: usize) -> std::result::Result<Self, String> {
        Self::of_file_from(rows, dim, 2)
    }
    /// `of_file` with at least `min_rows` rows: 2 to train (the two
    /// anchors), 1 to scan (`latent-line scan` of a one-row table is a
    /// question with an answer). The other limits are `new`'s.
    pub fn of_file_from(rows: usize, dim: usize, min_rows: usize) -> std::result::Result<Self, String> {
        match (rows, dim) {
            (r, _) if r < min_rows && min_rows >= 2 => {
                Err(format!("a table of {r} row(s); latent-line needs at least 2 (the two anchors)"))
            }
            (r, _) if r < min_rows => Err(format!("a table of {r} rows: nothing to scan")),
            (_, 0) => Err("a table of 0 columns".into()),
            // `new`'s checks at 2 rows or more, then the rows themselves; its
            // --dim refusal in the file's terms (a file has no --dim).
            _ => Shape::new(rows.max(2), dim).map(|_| Shape { rows, dim }).map_err(|e| match e {
                Error::InvalidOption { option: "--dim", .. } => {
                    format!("rows of {dim} columns; at most {MAX_DIM} ({WHY_MAX_DIM})")
                }
                e => e.to_string(),
            }),
        }
    }
    /// Rows × columns; saturating at `u64::MAX` for a shape no check has
    /// passed (its fields are public), so that comparing it with a length
    /// fails instead of overflowing.
    pub fn elements(&self) -> u64 {
        (self.rows as u64).saturating_mul(self.dim as u64)
    }
    /// The table's bytes as f32 (saturating, as `elements`).
    pub fn bytes(&self) -> u64 {
        self.elements().saturating_mul(4)
    }
    /// This table does not fit, for `reason`.
    pub fn too_large(&self, reason: impl Into<String>) -> Error {
        Error::too_large(self.rows, self.dim, reason)
    }
}

/// The options of one optimisation step (SPEC §3–§5).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct StepConfig {
    pub anchor_a: usize,
    pub anchor_b: usize,
    pub eps: f32,
    pub lr: f32,
    pub reduction: Reduction,
    pub endpoints: Endpoints,
    /// SPEC §6: autograd's formula with ε = 0, NaN where a distance is 0.
    pub naive: bool,
    /// SPEC §9: what a step that meets a non-finite value does.
    pub guard: Guard,
    /// SPEC §3: the separation term λ·max(0, m − d0) keeps the anchors at
    /// least `margin` apart (0 = off) in modes detached and attached.
    pub margin: f32,
    /// λ of the separation term.
    pub margin_weight: f32,
    /// SPEC §5: SGD momentum μ (0: no velocity buffer).
    pub momentum: f32,
    /// SPEC §5: weight decay, added to the gradient as wd·W.
    pub weight_decay: f32,
    /// SPEC §5: global-norm clipping of the step's gradient (0 = off).
    pub clip_norm: f32,
    /// SPEC §8: a batch row is near-singular when s1 or s2 is below
    /// (τ·d0)² (the audit's count; the step itself does not use it).
    pub tau: f32,
    /// SPEC §8: the collapse warning when d0 falls below this fraction of
    /// its value at step 0 (host only: read from the records).
    pub collapse_fraction: f64,
}

impl StepConfig {
    /// Defaults of SPEC §2–§5 for a table of `rows` rows: anchors 0 and R−1.
    pub fn for_rows(rows: usize) -> Self {
        StepConfig {
            anchor_a: 0,
            anchor_b: rows.saturating_sub(1),
            eps: 1e-8,
            lr: 0.2,
            reduction: Reduction::Sum,
            endpoints: Endpoints::Frozen,
            naive: false,
            guard: Guard::default(),
            margin: 0.0,
            margin_weight: 1.0,
            momentum: 0.0,
            weight_decay: 0.0,
            clip_norm: 0.0,
            tau: crate::guard::TAU,
            collapse_fraction: crate::guard::COLLAPSE_FRACTION,
        }
    }

    /// Checks every option against the table's shape.
    pub fn validate(&self, shape: Shape) -> Result<()> {
        // The shape's own rules too: its fields are public, so it may not
        // have come from `Shape::new`.
        Shape::new(shape.rows, shape.dim)?;
        let (a, b) = (self.anchor_a, self.anchor_b);
        if a >= shape.rows || b >= shape.rows {
            return Err(Error::invalid(
                "--anchors",
                format!("{a},{b} is out of range for a table of {} rows (valid: 0..={})", shape.rows, shape.rows - 1),
            ));
        }
        if a == b {
            return Err(Error::invalid("--anchors", format!("both anchors are row {a}; they must differ")));
        }
        if !self.lr.is_finite() || self.lr < 0.0 {
            return Err(Error::invalid("--lr", format!("{:?} must be finite and ≥ 0", self.lr)));
        }
        if !self.eps.is_finite() || self.eps < 0.0 {
            return Err(Error::invalid("--eps", format!("{:?} must be finite and ≥ 0", self.eps)));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(Error::invalid("--momentum", format!("{} must be in [0, 1)", self.momentum)));
        }
        for (opt, v) in [
            ("--margin", self.margin),
            ("--margin-weight", self.margin_weight),
            ("--weight-decay", self.weight_decay),
            ("--clip-norm", self.clip_norm),
            ("--tau", self.tau),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(opt, format!("{v:?} must be finite and ≥ 0")));
            }
        }
        if !(0.0..=1.0).contains(&self.collapse_fraction) {
            return Err(Error::invalid(
                "--collapse-fraction",
                format!("{:?} must be in [0, 1]", self.collapse_fraction),
            ));
        }
        let g = &self.guard;
        // (A limit's counter counts one failure past it, in 32 bits.)
        for (opt, n) in [("--max-skips", g.max_skips), ("--max-rollbacks", g.max_rollbacks)] {
            if n > MAX_GUARD_COUNT {
                return Err(Error::invalid(
                    opt,
                    format!("{n} is more than {MAX_GUARD_COUNT} (a 32-bit count of one failure past it)"),
                ));
            }
        }
        if g.snapshot_every == 0 {
            return Err(Error::invalid("--snapshot-every", "0 must be at least 1"));
        }
        if !(g.backoff.is_finite() && g.backoff > 0.0 && g.backoff <= 1.0) {
            return Err(Error::invalid("--backoff", format!("{:?} must be in (0, 1]", g.backoff)));
        }
        if self.naive && self.eps != 0.0 {
            return Err(Error::invalid("--eps", "the naive formula has no ε (it is 0 by definition)"));
        }
        Ok(())
    }

    /// SPEC §3's separation term λ·max(0, m − d0) of the loss.
    pub fn separation(&self, d0: f64) -> f64 {
        if self.margin > 0.0 {
            self.margin_weight as f64 * (self.margin as f64 - d0).max(0.0)
        } else {
            0.0
        }
    }

    /// SPEC §4: the separation gradient of row `row` is `sep·(p − q)`:
    /// −λ/d0 for row a, +λ/d0 for row b, 0 otherwise or when d0 ≥ m.
    /// (`fused_step.wgsl` computes the same in `separation_coef`.)
    pub fn separation_coef(&self, row: usize, d0: f32) -> f32 {
        let active = self.endpoints != Endpoints::Frozen && self.margin > 0.0 && d0 < self.margin;
        if !active {
            0.0
        } else if row == self.anchor_a {
            self.over_d0(-self.margin_weight, d0)
        } else if row == self.anchor_b {
            self.over_d0(self.margin_weight, d0)
        } else {
            0.0
        }
    }

    /// x/d0 in the terms of d0's gradient: 0 where d0 = 0 (ε = 0, the
    /// anchors equal; the subgradient the distances take), autograd's x/d0
    /// under --naive. (`over_d0` of shaders/common.wgsl.)
    pub fn over_d0(&self, x: f32, d0: f32) -> f32 {
        if d0 == 0.0 && !self.naive {
            0.0
        } else {
            x / d0
        }
    }

    /// Do the anchors' gradients need the whole step reduced first
    /// (attached mode's anchor term), or does the update need the step's
    /// norm (clipping)? Then a step reads its rows twice (SPEC §4–§5).
    pub fn needs_prepass(&self) -> bool {
        self.endpoints == Endpoints::Attached || self.clip_norm > 0.0
    }

    /// Is an anchor row updated this step? In the batch, the anchor term of
    /// `attached`, or an active separation term.
    pub fn anchor_touched(&self, in_batch: bool, d0: f32) -> bool {
        match self.endpoints {
            Endpoints::Frozen => false,
            Endpoints::Attached => true,
            Endpoints::Detached => in_batch || (self.margin > 0.0 && d0 < self.margin),
        }
    }

    /// `w_red` of SPEC §3 for a batch of `batch` rows.
    pub fn w_red(&self, batch: usize) -> f32 {
        match self.reduction {
            Reduction::Sum => 1.0,
            Reduction::Mean => 1.0 / batch as f32,
        }
    }
}
