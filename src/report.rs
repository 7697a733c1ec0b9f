//! The JSON report of a run (SPEC §12). Fields that need later work (the
//! non-finite scan, guard actions) are absent until it lands.

use serde::Serialize;

use crate::record::Record;
use crate::trainer::DeviceInfo;

#[derive(Serialize)]
pub struct StepEntry {
    pub step: usize,
    pub loss: f64,
    pub mean_excess: f64,
    pub max_excess: f64,
    pub d0: f64,
}

#[derive(Serialize)]
pub struct Summary {
    pub first_loss: f64,
    pub last_loss: f64,
    pub mean_excess_first: f64,
    pub mean_excess_last: f64,
    pub max_excess_last: f64,
    pub d0_first: f64,
    pub d0_last: f64,
    pub all_finite: bool,
    pub median_step_seconds: f64,
    pub bytes_per_step: u64,
    pub effective_gb_per_s: f64,
}

#[derive(Serialize)]
pub struct Report<O: Serialize> {
    pub options: O,
    pub device: DeviceInfo,
    /// One entry per forward evaluation: step k is the table before update k;
    /// the last entry (step = steps) is the final table.
    pub steps: Vec<StepEntry>,
    pub summary: Summary,
}

impl StepEntry {
    pub fn new(step: usize, r: &Record, w_red: f64) -> Self {
        StepEntry { step, loss: r.loss(w_red), mean_excess: r.mean_excess(), max_excess: r.excess_max, d0: r.d0 }
    }
}

/// Median of per-submission step times (seconds per step).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}
