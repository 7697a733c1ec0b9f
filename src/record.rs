//! What one pass over the table reports (SPEC §3, §7–§9): the loss, the
//! audit, the scans and the guard's action. The GPU writes it as u32 words
//! (layout in `shaders/common.wgsl`), decoded by `Record::from_words`.

use crate::guard::Action;
use crate::scan::{Scan, ROW_CAP, SCAN_WORDS};

/// u32 words of one record on the GPU: header, three scans, strikes.
pub const RECORD_WORDS: usize = HEADER_WORDS + 3 * SCAN_WORDS + ROW_CAP;
const HEADER_WORDS: usize = 10;

/// The scans of one pass (SPEC §7).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepScans {
    /// The per-row loss terms r_j.
    pub loss: Scan,
    /// The gradient (`gradient` in the report, as in its events).
    #[serde(rename = "gradient")]
    pub grad: Scan,
    /// The new values of the rows written (before the guard drops them).
    pub table: Scan,
    /// skip-row: strike counts of `table.rows`, in the same order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strikes: Vec<u32>,
}

impl StepScans {
    pub fn is_clean(&self) -> bool {
        self.loss.is_clean() && self.grad.is_clean() && self.table.is_clean()
    }
}

/// Metrics of one pass, at the table before its update.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Record {
    /// Σ_j |r_j| over the batch rows whose r_j is finite.
    pub excess_sum: f64,
    /// max_j |r_j| over the same rows.
    pub excess_max: f64,
    /// Anchor separation d0 = sqrt(‖p − q‖² + ε).
    pub d0: f64,
    /// Rows in the batch.
    pub batch: usize,
    /// SPEC §8: rows with s1 or s2 below (τ·d0)².
    pub near_singular: u64,
    /// Learning rate this step used.
    pub lr: f64,
    /// SPEC §3's separation term λ·max(0, m − d0) (0 without a margin).
    pub separation: f64,
    pub action: Action,
    /// SPEC §5: the step's gradient norm before clipping (with `--clip-norm`).
    pub grad_norm: Option<f64>,
    pub scans: StepScans,
    /// The step's GPU time from timestamp queries around its pass, where
    /// the device has them (under --profile, which times each kernel in a
    /// pass of its own, the sum of those, whatever
    /// `LATENT_LINE_STEP_TIMESTAMPS` says); `None` on the staged path,
    /// with `LATENT_LINE_STEP_TIMESTAMPS=0` (not profiling), on a device
    /// without timestamp queries, and on the CPU.
    pub gpu_seconds: Option<f64>,
}

/// Records are equal when their passes computed the same: the time a
/// step took (`gpu_seconds`) is not part of what it computed.
impl PartialEq for Record {
    fn eq(&self, o: &Self) -> bool {
        let Record {
            excess_sum,
            excess_max,
            d0,
            batch,
            near_singular,
            lr,
            separation,
            action,
            grad_norm,
            scans,
            gpu_seconds: _,
        } = self;
        *excess_sum == o.excess_sum
            && *excess_max == o.excess_max
            && *d0 == o.d0
            && *batch == o.batch
            && *near_singular == o.near_singular
            && *lr == o.lr
            && *separation == o.separation
            && *action == o.action
            && *grad_norm == o.grad_norm
            && *scans == o.scans
    }
}

/// A record's loss over its finite terms ([`Record::finite_terms`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FiniteTerms {
    /// w_red · Σ|r_j| over the finite terms, plus the separation term.
    pub loss: f64,
    /// Σ|r_j| ÷ their count.
    pub mean_excess: f64,
    /// The non-finite terms left out.
    pub left_out: u64,
}

impl Record {
    /// Decodes one record written by `shaders/reduce.wgsl`.
    pub(crate) fn from_words(w: &[u32], batch: usize) -> Record {
        let f = |i: usize| f32::from_bits(w[i]) as f64;
        let block = |b: usize| Scan::from_words(&w[HEADER_WORDS + b * SCAN_WORDS..][..SCAN_WORDS]);
        let table = block(2);
        let strikes_at = HEADER_WORDS + 3 * SCAN_WORDS;
        let strikes = w[strikes_at..strikes_at + table.rows.len()].to_vec();
        Record {
            excess_sum: f(0),
            excess_max: f(1),
            d0: f(2),
            batch,
            near_singular: w[4] as u64,
            lr: f(6),
            separation: 0.0,
            action: Action::from_code(w[5]),
            grad_norm: (w[9] != 0).then(|| f(8)),
            gpu_seconds: None,
            scans: StepScans {
                loss: block(0),
                grad: block(1),
                table,
                strikes: if strikes.iter().any(|&s| s > 0) { strikes } else { Vec::new() },
            },
        }
    }

    /// Is the loss finite (no row's term is non-finite)?
    pub fn loss_finite(&self) -> bool {
        self.scans.loss.is_clean()
    }
    /// What a sum over the terms is when one is not finite, as PyTorch's
    /// would be: NaN when a term is NaN, else +Inf (|±Inf| = +Inf).
    fn nonfinite_sum(&self) -> f64 {
        if self.scans.loss.nan > 0 {
            f64::NAN
        } else {
            f64::INFINITY
        }
    }
    /// Mean |r_j| over the batch: the "mean excess"; NaN or +Inf when a
    /// term is not finite (`nonfinite_sum`).
    pub fn mean_excess(&self) -> f64 {
        if self.loss_finite() {
            self.excess_sum / self.batch as f64
        } else {
            self.nonfinite_sum()
        }
    }
    /// max |r_j| over the batch; NaN or +Inf when a term is not finite
    /// (as PyTorch's max would be: 0, the max over no finite term, would
    /// read as a perfect step).
    pub fn max_excess(&self) -> f64 {
        if self.loss_finite() {
            self.excess_max
        } else {
            self.nonfinite_sum()
        }
    }
    /// The loss and mean excess over the finite terms, and how many terms
    /// were left out (0 where all are finite: `loss` and `mean_excess`
    /// themselves); `None` where none is finite.
    pub fn terms(&self, w_red: f64) -> Option<FiniteTerms> {
        let left_out = self.scans.loss.nonfinite();
        let kept = (self.batch as u64).checked_sub(left_out).filter(|&k| k > 0)?;
        Some(FiniteTerms {
            loss: w_red * self.excess_sum + self.separation,
            mean_excess: self.excess_sum / kept as f64,
            left_out,
        })
    }
    /// `terms` where some are left out: where a table has non-finite rows
    /// (that `skip-row` keeps as they are), what shows the others train.
    /// `None` where every term is finite (`loss` says it all) or none is.
    pub fn finite_terms(&self, w_red: f64) -> Option<FiniteTerms> {
        self.terms(w_red).filter(|t| t.left_out > 0)
    }
    /// L = w_red · Σ|r_j| + λ·max(0, m − d0); NaN or +Inf when a term is
    /// not finite, as PyTorch's sum would be.
    pub fn loss(&self, w_red: f64) -> f64 {
        if self.loss_finite() {
            w_red * self.excess_sum + self.separation
        } else {
            self.nonfinite_sum()
        }
    }
}
