//! The backend-neutral face of a training run: a [`Trainer`] owns a table
//! on its device and steps it. [`crate::gpu::GpuTrainer`] and
//! [`crate::cpu::CpuTrainer`] implement it with the same math.

use crate::config::{Shape, StepConfig};
use crate::error::Result;
use crate::record::Record;
use crate::scan::Scan;

/// What a run needs besides the table to go on exactly where it stopped
/// (SPEC §13 `--resume`): saved beside a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// Steps done (the rollback snapshots' schedule follows it).
    pub steps: u64,
    /// The learning rate now (rollbacks back it off).
    pub lr: f32,
    /// Consecutive skipped steps (skip-step).
    pub skips: u32,
    /// Rollbacks so far.
    pub rollbacks: u32,
    /// The momentum velocity was saved beside the table (see
    /// [`crate::tables::Sidecar`]).
    #[serde(default)]
    pub velocity: bool,
    /// rollback: the snapshot a rollback would restore was saved beside the
    /// table (a resume between two snapshot steps needs it to match an
    /// unbroken run).
    #[serde(default)]
    pub snapshot: bool,
    /// d0 at step 0 of the run, which the collapse audit measures against
    /// (SPEC §8) across resumes.
    #[serde(default)]
    pub d0_start: Option<f64>,
    /// The step at which d0 first fell below the collapse fraction of
    /// `d0_start` (SPEC §8), once it has: a resumed run reports that step,
    /// and warns no more.
    #[serde(default)]
    pub collapse_step: Option<u64>,
    /// skip-row: the strike counts so far, `(row, strikes)` for each row
    /// that has any, by row (SPEC §9: a resumed run counts on).
    #[serde(default)]
    pub strikes: Vec<(u32, u32)>,
    /// Fingerprints ([`crate::tables::fingerprint`]) of the table and the
    /// sidecars saved with this state, checked on resume.
    #[serde(default)]
    pub table_fingerprint: Option<u64>,
    #[serde(default)]
    pub velocity_fingerprint: Option<u64>,
    #[serde(default)]
    pub snapshot_fingerprint: Option<u64>,
    /// The options that shape the run's course, as the command line spells
    /// them (`--lr 0.2`, …): a resume must give the same ones (`None`: a
    /// state saved before they were recorded, or by the library).
    #[serde(default)]
    pub options: Option<Vec<(String, String)>>,
    /// A `.safetensors` checkpoint's table tensor (`--tensor`): a resume
    /// that asks for another is refused naming this one (`None`: an
    /// `.npy` checkpoint, or a state saved before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
}

impl RunState {
    /// Whether a run of `cfg` could have written this state (checked by
    /// `Trainer::set_run_state`): an lr from 0 (rollbacks may underflow it
    /// in f32) to `cfg.lr`, which rollbacks only back off; counters with
    /// room to count on; a starting d0 that is a distance.
    pub fn check(&self, cfg: &StepConfig) -> Result<()> {
        let bad = |what: String| Err(crate::error::Error::invalid("run state", what));
        if !(self.lr.is_finite() && self.lr >= 0.0 && self.lr <= cfg.lr) {
            return bad(format!("lr {}: a run with lr {} has one from 0 to that", self.lr, cfg.lr));
        }
        if self.steps >= 1 << 62 {
            return bad(format!("{} steps done: more than any run takes", self.steps));
        }
        if self.skips == u32::MAX || self.rollbacks == u32::MAX {
            return bad(format!("{} skips, {} rollbacks: more than any run counts", self.skips, self.rollbacks));
        }
        if self.d0_start.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
            return bad(format!("d0_start {:?}: it is a distance", self.d0_start));
        }
        if self.collapse_step.is_some_and(|s| s > self.steps) {
            return bad(format!("collapse at step {:?}, after the {} steps done", self.collapse_step, self.steps));
        }
        Ok(())
    }

    /// Whether the strike counts fit a `rows`-row table: rows in range, in
    /// order, each once, with a count (checked by a resume before any
    /// work, and again by `strikes_per_row`).
    pub fn check_strikes(&self, rows: usize) -> Result<()> {
        let mut last = None;
        for &(row, n) in &self.strikes {
            // (u32::MAX: no room to count on.)
            if row as usize >= rows || last.is_some_and(|l| row <= l) || n == 0 || n == u32::MAX {
                return Err(crate::error::Error::invalid(
                    "run state",
                    format!(
                        "strikes ({row}, {n}): a row of the {rows} rows, listed once and in order, with a count \
                         from 1 to {}",
                        u32::MAX - 1
                    ),
                ));
            }
            last = Some(row);
        }
        Ok(())
    }

    /// The strike counts as one per row of a `rows`-row table (checked:
    /// `check_strikes`), for `Trainer::set_run_state` under skip-row.
    pub fn strikes_per_row(&self, rows: usize) -> Result<Vec<u32>> {
        self.check_strikes(rows)?;
        let mut per_row = vec![0u32; rows];
        for &(row, n) in &self.strikes {
            per_row[row as usize] = n;
        }
        Ok(per_row)
    }

    /// `strikes` from one count per row.
    pub fn strikes_of(per_row: &[u32]) -> Vec<(u32, u32)> {
        per_row.iter().enumerate().filter(|(_, &n)| n > 0).map(|(r, &n)| (r as u32, n)).collect()
    }
}

/// GPU time and bytes of one kernel over the profiled steps (`--profile`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct KernelTime {
    /// The kernel: its file, and entry point or mode where there are several.
    pub kernel: String,
    /// Dispatch passes timed (one a step; a pass covers every chunk).
    pub calls: u64,
    /// GPU time, from timestamp queries around the kernel's pass.
    pub seconds: f64,
    /// Nominal bytes read and written: the buffers the kernel goes over.
    pub bytes: u64,
}

/// Where the initial table comes from.
pub enum TableSource {
    /// N(0,1) from the counter RNG keyed by the seed (`crate::rng`),
    /// generated where the table is (on a GPU, by init.wgsl): the same
    /// uniforms on every backend, the normals within the last bits (a
    /// GPU's log and cos are not the CPU's), so one seed's tables agree
    /// closely, not bit for bit, across backends.
    Random { seed: u64 },
    /// A table at hand, row-major, `rows × dim` values.
    Data(Vec<f32>),
    /// A table streamed in, row-major (a file's, through
    /// [`crate::tables::TableReader`]): the feed is asked for exactly
    /// `rows × dim` values, a block at a time (the GPU's upload: no host copy
    /// of the whole table).
    Stream(Box<Feed<'static>>),
}

impl std::fmt::Debug for TableSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableSource::Random { seed } => write!(f, "Random {{ seed: {seed} }}"),
            TableSource::Data(v) => write!(f, "Data({} values)", v.len()),
            TableSource::Stream(_) => write!(f, "Stream"),
        }
    }
}

/// What ran the work, for the summary and the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    /// `gpu` or `cpu`.
    pub backend: String,
    /// Adapter name (GPU) or thread count (CPU).
    pub adapter: String,
    /// Graphics API and driver (GPU), or empty.
    pub driver: String,
    /// How the GPU's fused step was built for this table (workgroup size,
    /// lanes a row, which row fold), or empty.
    pub kernel: String,
}

/// Where a full-table array goes, a block of values at a time in row-major
/// order (a save streams it into its file, so that no host copy of the
/// whole table is made: a table may fill a GPU larger than host memory).
pub type Sink<'a> = dyn FnMut(&[f32]) -> Result<()> + 'a;

/// A full-table array to be saved: hands its values to the sink it is
/// given, a block at a time, in row-major order (`|sink| sink(&table)` for
/// one at hand; `|sink| trainer.read_table_into(sink)` for a device's).
pub type Fill<'a> = dyn FnMut(&mut Sink) -> Result<()> + 'a;

/// Where a full-table array comes from, the mirror of a [`Sink`]: each
/// call fills the block it is given with the next values in row-major order
/// (a load streams a table from its file into the device).
pub type Feed<'a> = dyn FnMut(&mut [f32]) -> Result<()> + 'a;

/// A table on a device, trained by steps (the full table, or the batches it
/// was opened with) under a guard (SPEC §9).
pub trait Trainer {
    /// The table's shape.
    fn shape(&self) -> Shape;
    /// The step's settings the trainer was opened with (the learning rate
    /// now, after rollbacks' backoff, is [`Trainer::run_state`]'s).
    fn config(&self) -> &StepConfig;
    /// What runs the steps: backend, adapter, the kernels' shape.
    fn device_info(&self) -> DeviceInfo;
    /// Runs `n` steps. Returns one record per step, each taken by
    /// that step's forward pass (so at the table before its update). After
    /// the guard aborts, the remaining steps do nothing (`Action::NotRun`).
    fn steps(&mut self, n: usize) -> Result<Vec<Record>>;
    /// Runs `n` steps like [`Trainer::steps`], handing the records to `on`
    /// a group at a time as they come back, while later steps already run
    /// (SPEC §15: nothing waits on the host between steps). `on` returns
    /// false to stop: steps already under way still finish and are handed
    /// over. Returns the steps run.
    fn steps_streamed(&mut self, n: usize, on: &mut dyn FnMut(Vec<Record>) -> bool) -> Result<usize> {
        let mut done = 0;
        while done < n {
            let group = self.steps((n - done).min(8))?;
            if group.is_empty() {
                break; // stopped (Ctrl-C)
            }
            done += group.len();
            if !on(group) {
                break;
            }
        }
        Ok(done)
    }
    /// One step on the given rows (SPEC §10: repeats allowed, summed), for
    /// programs that choose their own batches. The trainer must have been
    /// built with batches (any [`crate::Batches`] but `Full`). The step
    /// counts as one (the run's steps, the guard's snapshots): it takes the
    /// place of the batch the trainer's plan would have stepped next, which
    /// is passed over (a random batch's rows come round again in the next
    /// epoch; [`Trainer::steps`] goes on with the plan's batch after it).
    /// Any number of rows: a GPU trainer's batch buffers, sized for the
    /// plan's largest batch, grow to a larger one (reserve room up front
    /// with `GpuOptions::batch_rows`, sparing the rebuild; the plan's
    /// steps dispatch over the plan's slots whatever the room).
    fn step_rows(&mut self, rows: &[u32]) -> Result<Record>;
    /// The forward record of the current table, without an update.
    fn evaluate(&mut self) -> Result<Record>;
    /// Copies the current table back to the host (after an abort: the table
    /// before the failing step).
    fn read_table(&mut self) -> Result<Vec<f32>>;
    /// [`Trainer::read_table`] handed to `sink` a block at a time (the GPU
    /// reads back through a bounded staging buffer; the CPU hands over its
    /// table as it is).
    fn read_table_into(&mut self, sink: &mut Sink) -> Result<()> {
        sink(&self.read_table()?)
    }
    /// [`Trainer::read_velocity`] likewise; false without momentum (`sink`
    /// not called).
    fn read_velocity_into(&mut self, sink: &mut Sink) -> Result<bool> {
        self.read_velocity()?.map(|v| sink(&v)).transpose().map(|r| r.is_some())
    }
    /// [`Trainer::read_snapshot`] likewise; false where it has none.
    fn read_snapshot_into(&mut self, sink: &mut Sink) -> Result<bool> {
        self.read_snapshot()?.map(|t| sink(&t)).transpose().map(|r| r.is_some())
    }
    /// Whether [`Trainer::read_velocity`] has one (momentum).
    fn has_velocity(&self) -> bool;
    /// Whether [`Trainer::read_snapshot`] has one (rollback, once taken).
    fn has_snapshot(&self) -> bool;
    /// Overwrites one row of the current table (fault injection, fixes).
    fn write_row(&mut self, row: usize, values: &[f32]) -> Result<()>;
    /// SPEC §7 scan of the current table, on the trainer's device.
    fn scan_table(&mut self) -> Result<Scan>;
    /// The SGD velocity (SPEC §5), row-major like the table; `None`
    /// without momentum.
    fn read_velocity(&mut self) -> Result<Option<Vec<f32>>>;
    /// Overwrites the velocity (resuming a run with momentum).
    fn set_velocity(&mut self, v: &[f32]) -> Result<()>;
    /// [`Trainer::set_velocity`] from a feed, asked for the table's count of
    /// values a block at a time (the GPU streams them into its buffers).
    fn set_velocity_from(&mut self, feed: &mut Feed) -> Result<()>;
    /// `rollback`: the table the next rollback would restore; `None` under
    /// other policies, or before the first snapshot.
    fn read_snapshot(&mut self) -> Result<Option<Vec<f32>>>;
    /// `rollback`: sets that table (resuming between two snapshot steps),
    /// after `set_run_state`; the resumed run then takes no snapshot of its own
    /// before the schedule's next one.
    fn set_snapshot(&mut self, t: &[f32]) -> Result<()>;
    /// [`Trainer::set_snapshot`] from a feed, likewise.
    fn set_snapshot_from(&mut self, feed: &mut Feed) -> Result<()>;
    /// The run's state besides the table (for checkpoints). After an
    /// abort, the guard's counters are those before the aborted step (which
    /// is not done: a resume runs it again), one failure fewer than the
    /// trainer counted (`guard::resume_counters`).
    fn run_state(&mut self) -> Result<RunState>;
    /// Continues a run from `state`, before any step of this trainer
    /// (after one, refused), and where a run of this trainer's config
    /// could have written it ([`RunState::check`]).
    fn set_run_state(&mut self, state: RunState) -> Result<()>;
    /// A flag that, once set (by a Ctrl-C handler, say), makes `steps`
    /// return early: after the current step on the CPU, after the
    /// submissions in flight on the GPU. The records say how many ran.
    fn set_stop(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>);
    /// `--profile`: time each kernel of the steps that follow, in a pass of
    /// its own (GPU, with timestamp queries). Returns whether this trainer
    /// can; the CPU backend has no kernels to time.
    fn set_profile(&mut self, on: bool) -> Result<bool> {
        let _ = on;
        Ok(false)
    }
    /// Per-kernel GPU time and bytes of the profiled steps.
    fn profile(&self) -> Result<Vec<KernelTime>> {
        Ok(Vec::new())
    }
    /// `--profile`: what the driver made of every pipeline built so far
    /// (registers, spills, …; GPU on Vulkan). `None`: no kernels (CPU).
    fn driver_stats(&self) -> Result<Option<crate::gpu::driver_stats::DriverStats>> {
        Ok(None)
    }
}

/// `Trainer::set_run_state`'s order: a run's state is set before its
/// trainer steps (set after, it would silently rewrite the steps counted).
pub(crate) fn before_any_step(stepped: bool) -> Result<()> {
    if stepped {
        return Err(crate::Error::invalid("run state", "set before any step; this trainer has already stepped"));
    }
    Ok(())
}
