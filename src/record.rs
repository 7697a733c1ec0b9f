//! What one forward evaluation of the loss reports (SPEC §3, §8).

/// Metrics of one forward pass over a batch, at the table before the update.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Record {
    /// Σ_j |r_j| over the batch.
    pub excess_sum: f64,
    /// max_j |r_j|.
    pub excess_max: f64,
    /// Anchor separation d0 = sqrt(‖p − q‖² + ε).
    pub d0: f64,
    /// Rows in the batch.
    pub batch: usize,
}

impl Record {
    /// Mean |r_j| over the batch: the "mean excess".
    pub fn mean_excess(&self) -> f64 {
        self.excess_sum / self.batch as f64
    }
    /// L = w_red · Σ|r_j| (the separation term arrives with `--margin`).
    pub fn loss(&self, w_red: f64) -> f64 {
        w_red * self.excess_sum
    }
}
