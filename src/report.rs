//! The JSON report of a run (SPEC §12): options, device, one entry per
//! pass, every non-finite event, and a summary.

use serde::Serialize;

use crate::guard::Action;
use crate::record::{FiniteTerms, Record, StepScans};
use crate::scan::Scan;
use crate::trainer::DeviceInfo;

#[derive(Serialize)]
pub struct StepEntry {
    pub step: usize,
    /// Rows the pass took (SPEC §10: B, repeats counted).
    pub batch: usize,
    /// `null` when a loss term is not finite.
    pub loss: f64,
    pub mean_excess: f64,
    pub max_excess: f64,
    pub d0: f64,
    pub near_singular: u64,
    /// The f32 the step used, written as such.
    pub lr: f32,
    pub action: Action,
    /// The step's scans (SPEC §7) of the loss, the gradient and the rows
    /// written, clean ones included (counts 0, `first` null, no rows), so
    /// every entry has the same keys.
    pub nonfinite: StepScans,
    /// SPEC §5: ‖g‖ before clipping (with `--clip-norm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// The step's GPU time (timestamp queries around its pass), where the
    /// device timed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_seconds: Option<f64>,
}

/// One buffer of one pass with non-finite values (SPEC §7, §9).
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// The step (pass index); `None` for the table as loaded.
    pub step: Option<usize>,
    /// `input`, `loss`, `gradient` or `table` (the rows written).
    pub buffer: &'static str,
    #[serde(flatten)]
    pub scan: Scan,
    /// skip-row: strike counts of `rows`, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strikes: Vec<u32>,
    pub action: Option<Action>,
}

impl Event {
    /// The events of one pass: one per scanned buffer with findings.
    pub fn of_record(step: usize, r: &Record) -> Vec<Event> {
        let s = &r.scans;
        [("loss", &s.loss), ("gradient", &s.grad), ("table", &s.table)]
            .into_iter()
            .filter(|(_, scan)| !scan.is_clean())
            .map(|(buffer, scan)| Event {
                step: Some(step),
                buffer,
                scan: scan.clone(),
                strikes: if buffer == "table" { s.strikes.clone() } else { Vec::new() },
                action: Some(r.action),
            })
            .collect()
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let when = match self.step {
            Some(s) => format!("step {s}"),
            None => "before training".into(),
        };
        let what = match self.buffer {
            "table" => "rows written",
            "input" => "loaded table",
            b => b,
        };
        // (A loss term is a row's: no column to name.)
        let mut line = format!("{when}: {what}: {}", self.scan.describe_of(self.buffer != "loss"));
        if !self.strikes.is_empty() {
            let s: Vec<String> = self.strikes.iter().map(|n| n.to_string()).collect();
            line += &format!("; strikes {}", s.join(", "));
        }
        if let Some(a) = self.action {
            line += &format!(" → {}", action_words(a));
        }
        line
    }
}

/// What an action means, in words.
pub fn action_words(a: Action) -> &'static str {
    match a {
        Action::Applied => "applied",
        Action::Ignored => "written anyway (--on-nonfinite ignore)",
        Action::SkippedStep => "step skipped, table unchanged",
        Action::SkippedRows => "those rows kept their old values",
        Action::RolledBack => "rolled back to the last snapshot, lr backed off",
        Action::Aborted => "aborted, table left as before this step",
        Action::NotRun => "not run (aborted earlier)",
        Action::Evaluated => "evaluation only",
    }
}

#[derive(Serialize)]
pub struct Summary {
    pub first_loss: f64,
    pub last_loss: f64,
    pub mean_excess_first: f64,
    pub mean_excess_last: f64,
    pub max_excess_first: f64,
    pub max_excess_last: f64,
    /// Where the first (last) loss is not finite but some of its terms
    /// are: the loss and mean excess over those alone, and how many were
    /// left out (`null` otherwise).
    pub first_finite_terms: Option<FiniteTerms>,
    pub last_finite_terms: Option<FiniteTerms>,
    pub d0_first: f64,
    pub d0_last: f64,
    /// First step whose d0 fell below the collapse fraction of d0 at step 0.
    pub collapse_step: Option<usize>,
    pub near_singular_last: u64,
    pub nonfinite_events: usize,
    pub skipped_steps: usize,
    pub steps_with_skipped_rows: usize,
    pub rollbacks: usize,
    /// The step the guard aborted at, if it did.
    pub aborted_at: Option<usize>,
    /// Steps of the run done, from its start (a resumed run's included);
    /// an aborted step is not done (the table is as before it), so after an
    /// abort this is `aborted_at`, where a resume goes on.
    pub steps_done: usize,
    /// Ctrl-C stopped the run before its --steps (exit code 130).
    pub interrupted: bool,
    /// Where the table was saved: `--save`, or, for a run that aborted or
    /// was interrupted whose `--save` is its input, beside it (`t.npy` →
    /// `t.aborted.npy`, `t.interrupted.npy`: SPEC §12, such a run never
    /// overwrites its input); `null` without `--save`.
    pub saved: Option<String>,
    /// The step a `--resume` went on from. The step counts (`steps_done`,
    /// `aborted_at`, `collapse_step`) are the whole run's; the rest of the
    /// summary (first values, events, skips, rollbacks) is of this run's
    /// own steps, from this one.
    pub resumed_from: Option<usize>,
    /// (The f32 the step used, written as such: 0.05, not 0.05000000074505806.)
    pub lr_last: f32,
    /// The device scan of the final table.
    pub final_scan: Scan,
    pub all_finite: bool,
    /// Wall clock of the steps (each segment from its first submission to
    /// its last record) over the steps run: what `speed` prints.
    pub step_seconds: Option<f64>,
    /// The median step time (SPEC §12): of each step's own GPU time
    /// (`median_step_clock` "gpu-timestamps", `gpu_seconds` of the steps)
    /// where the device timed the steps' passes (under --profile, each the
    /// sum of its kernels' passes); otherwise ("wall-clock")
    /// the median spacing of the record groups (one per submission), per
    /// step: the device's step time while it is the bottleneck, reading low
    /// when groups arrive in bursts (synchronous submission, a slow consumer).
    pub median_step_seconds: Option<f64>,
    pub median_step_clock: &'static str,
    /// SPEC §15's bytes a step moves, each row it touches read and written
    /// once: 2·R·D·4 for a full-table step; for batches, their distinct
    /// rows and the two anchors, averaged over the steps run (the first
    /// step's where none ran).
    pub bytes_per_step: u64,
    /// `bytes_per_step` over `step_seconds`. (The times and this are
    /// `null` where no step ran: a run of `--steps 0`, a resume with its
    /// steps done.)
    pub effective_gb_per_s: Option<f64>,
}

#[derive(Serialize)]
pub struct Report<O: Serialize, S: Serialize = Vec<StepEntry>, E: Serialize = Vec<Event>> {
    /// The command line: every option's value, defaults filled in (one
    /// whose default depends on others, such as --eps or --anchors, is
    /// `null` when left out), and `given`, the options the command line
    /// named …
    pub options: O,
    /// … and what the run used: the table's shape and the step's every
    /// value, defaults resolved (ε, anchors, lr, guard, …).
    pub shape: crate::Shape,
    pub config: crate::StepConfig,
    pub device: DeviceInfo,
    /// One entry per pass: step k is the table before update k; the last
    /// entry (step = steps) is the evaluation of the final table.
    /// (`S`, `E`: the binary streams them from a file, as they came.)
    pub steps: S,
    pub events: E,
    pub summary: Summary,
    /// `--profile`: GPU time and nominal bytes per kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<crate::trainer::KernelTime>>,
    /// `--profile` on a GPU: the driver's statistics of each pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_stats: Option<crate::gpu::driver_stats::DriverStats>,
}

impl StepEntry {
    pub fn new(step: usize, r: &Record, w_red: f64) -> Self {
        StepEntry {
            step,
            batch: r.batch,
            loss: r.loss(w_red),
            mean_excess: r.mean_excess(),
            max_excess: r.max_excess(),
            d0: r.d0,
            near_singular: r.near_singular,
            lr: r.lr as f32,
            action: r.action,
            nonfinite: r.scans.clone(),
            grad_norm: r.grad_norm,
            gpu_seconds: r.gpu_seconds,
        }
    }
}

/// SPEC §8: the first record whose d0 is below `fraction` (the default:
/// [`crate::guard::COLLAPSE_FRACTION`]) of d0 at step 0 of the run
/// (`d0_start`; a resumed run keeps it in its run state).
pub fn collapse_step(records: &[Record], d0_start: f64, fraction: f64) -> Option<usize> {
    records.iter().position(|r| r.action != Action::NotRun && r.d0 < fraction * d0_start)
}

/// Median of step times (seconds per step).
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
