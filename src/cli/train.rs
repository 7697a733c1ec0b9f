//! `latent-line [train]`: a run (SPEC §2–§13): the options checked, the
//! table loaded or resumed, the steps streamed with their events and
//! warnings, checkpoints, the summary, the saved table and the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use latent_line::guard::{Action, Guard, Policy};
use latent_line::report::{action_words, collapse_step, Event, Report, Summary};
use latent_line::tables::{self, Sidecar};
use latent_line::{npy, Batches, Endpoints, IndexBatches, Reduction, Shape, StepConfig, TableSource, Trainer};

use super::checks::{
    adapter_arg, anchors_arg, check_adapter, check_output, claim_outputs, parse_anchors, same_file, tensor_arg,
};
use super::runlog::RunLog;
use crate::{interrupted, name, print_json, BackendChoice, Outcome, INTERRUPTED, QUIET};

#[derive(Args, Clone, Debug, serde::Serialize)]
pub(crate) struct TrainArgs {
    /// The options given on the command line (the others took their
    /// defaults), for the report: set after parsing.
    #[arg(skip)]
    pub(crate) given: Vec<String>,
    /// Rows of a generated table [default: 1000000]; with --load, must match the file.
    #[arg(long, allow_negative_numbers = true)]
    rows: Option<usize>,
    /// Columns of a generated table [default: 64]; with --load, must match the file.
    #[arg(long, allow_negative_numbers = true)]
    dim: Option<usize>,
    /// Optimisation steps.
    #[arg(long, allow_negative_numbers = true, default_value_t = 100)]
    steps: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.2, allow_hyphen_values = true)]
    lr: f64,
    /// ε added inside each square root [default: 1e-8; 0 with --naive].
    #[arg(long, allow_hyphen_values = true)]
    eps: Option<f64>,
    /// Reproduce the original bug: autograd's formula, ε = 0 (SPEC §6); the
    /// anchors turn NaN with --endpoints detached (frozen ones are never written).
    #[arg(long)]
    naive: bool,
    /// sum: w = 1; mean: w = 1/B.
    #[arg(long, value_enum, default_value_t = Reduction::Sum)]
    reduction: Reduction,
    /// Seed of the generated table.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    seed: u64,
    /// Anchor rows A,B [default: 0,R-1].
    // (Checked as it is parsed: a value that is not two row numbers is a
    // usage error, exit code 2; rows out of range are checked against the
    // table, exit code 1.)
    #[arg(long, value_name = "A,B", allow_hyphen_values = true, value_parser = anchors_arg)]
    anchors: Option<String>,
    /// frozen: anchors never change; detached: anchors get the row term only;
    /// attached: the full gradient (every batch row pulls on the anchors).
    #[arg(long, value_enum, default_value_t = Endpoints::Frozen)]
    endpoints: Endpoints,
    /// SGD momentum μ in [0, 1) (PyTorch semantics; 0: no velocity buffer).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    momentum: f64,
    /// Weight decay: wd·W added to the gradient.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    weight_decay: f64,
    /// Clip the step's gradient to this global norm (0 = off).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    clip_norm: f64,
    /// Random batches of B rows: each epoch a permutation keyed by --seed
    /// [default: the full table every step].
    #[arg(long, allow_negative_numbers = true, value_name = "B", conflicts_with = "indices")]
    batch: Option<usize>,
    /// Batches from a .npy of integer row indices (any width, signed or not): 1-D (one batch) or
    /// 2-D (a batch per row, cycled); repeats are summed.
    #[arg(long, value_name = "FILE.npy")]
    #[serde(serialize_with = "lossy_path")]
    indices: Option<PathBuf>,
    /// Keep the anchors at least this far apart (detached, attached; 0 = off).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    margin: f64,
    /// Weight λ of the separation term λ·max(0, m − d0).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    margin_weight: f64,
    /// The audit's near-singular rows: s1 or s2 below (τ·d0)² (SPEC §8).
    #[arg(long, default_value_t = TAU, allow_hyphen_values = true)]
    tau: f64,
    /// Warn of a collapse when d0 falls below this fraction of its value
    /// at step 0 (SPEC §8).
    #[arg(long, default_value_t = latent_line::guard::COLLAPSE_FRACTION, allow_hyphen_values = true)]
    collapse_fraction: f64,
    /// What a step that meets NaN or ±Inf does (SPEC §9).
    #[arg(long, value_enum, default_value_t = Policy::SkipStep)]
    on_nonfinite: Policy,
    /// skip-step: this many consecutive skipped steps are allowed; the next
    /// failing step in a row aborts.
    #[arg(long, allow_negative_numbers = true, default_value_t = 10)]
    max_skips: u64,
    /// rollback: snapshot the table every this many steps.
    #[arg(long, allow_negative_numbers = true, default_value_t = 100)]
    snapshot_every: u64,
    /// rollback: multiply lr by this at each rollback.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5)]
    backoff: f64,
    /// rollback: abort when a failure would need more rollbacks than this.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3)]
    max_rollbacks: u64,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// GPU adapter whose name contains this (else WGPU_ADAPTER_NAME); a
    /// name that matches none is an error (as is one with --backend cpu).
    #[arg(long, value_parser = adapter_arg)]
    adapter: Option<String>,
    /// Start from this table (.npy: 2-D float32/float64; .safetensors: tensor --tensor).
    #[arg(long, value_name = "FILE")]
    #[serde(serialize_with = "lossy_path")]
    load: Option<PathBuf>,
    /// Save the trained table here (.npy or .safetensors), atomically; a
    /// .safetensors input's other tensors are carried over to a .safetensors output.
    /// May be the --load file: a run that aborts or is interrupted then
    /// saves beside it (t.npy → t.aborted.npy, t.interrupted.npy).
    #[arg(long, value_name = "FILE")]
    #[serde(serialize_with = "lossy_path")]
    save: Option<PathBuf>,
    /// The tensor of a .safetensors file that is the table.
    #[arg(long, default_value = latent_line::tables::DEFAULT_TENSOR, value_parser = tensor_arg)]
    tensor: String,
    /// Continue a run from this checkpoint (a table saved by latent-line,
    /// with its step count and options: give the same ones; the guard may
    /// change); --steps is the total, as for an unbroken run.
    #[arg(long, value_name = "FILE", conflicts_with = "load")]
    #[serde(serialize_with = "lossy_path")]
    resume: Option<PathBuf>,
    /// Save the table (and the run state) to --save every N steps.
    #[arg(long, allow_negative_numbers = true, value_name = "N", requires = "save")]
    checkpoint_every: Option<usize>,
    /// Draw the mean excess per step and the codes before/after (SVG).
    #[arg(long, value_name = "FILE.svg")]
    #[serde(serialize_with = "lossy_path")]
    plot: Option<PathBuf>,
    /// GPU time and bytes per kernel over the run (timestamp queries; each
    /// kernel gets a pass of its own, so the run itself is a little slower).
    #[arg(long)]
    profile: bool,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
    /// Print the JSON report on standard output instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write a JSON report here, atomically.
    #[arg(long, value_name = "FILE.json")]
    #[serde(serialize_with = "lossy_path")]
    report: Option<PathBuf>,
}

/// A path in JSON, as text even where it is not UTF-8 (serde refuses
/// those, which lost the whole report).
fn lossy_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&p.as_ref().map(|p| p.to_string_lossy()), s)
}

pub(crate) fn train(args: &TrainArgs) -> anyhow::Result<Outcome> {
    // A resume reads its files once, into the trainer, and checks their
    // fingerprints after; where one differs (a save killed between its
    // files, or a file changed), nothing has been printed or written yet,
    // and the run starts again checking each file by a pass of its own
    // first, which finds what a killed save left or says what is wrong.
    // (The files it writes claimed once, for both: another run could take
    // them between the two.)
    let mut claims = None;
    match train_checked(args, false, &mut claims) {
        Err(e) if e.is::<Recheck>() => train_checked(args, true, &mut claims),
        r => r,
    }
}

/// A resumed file whose values, read into the trainer, are not those its
/// run state recorded: `train` starts again, checking each file first.
#[derive(Debug)]
struct Recheck;

impl std::fmt::Display for Recheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a resumed file differs from its run state's fingerprint")
    }
}

impl std::error::Error for Recheck {}

/// `n` `thing`s, "1 step", "2 steps".
fn count(n: impl Into<u64>, thing: &str) -> String {
    let n: u64 = n.into();
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A size in MB (one decimal), or in bytes under 0.1 MB (a small table's
/// "0.0 MB" said nothing).
fn megabytes(bytes: u64) -> String {
    if bytes < 100_000 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// Where the run is, for the signal handler: `STARTING` (options and
/// files checked: a signal is noted, and the run ends at `Preparing`'s
/// start), `PREPARING` (before the first step, nothing saved yet: a signal
/// ends the run at once), `RUNNING` (the steps in flight finish, then the
/// run saves). The handler holds the lock while it ends the process, so
/// the run cannot go on past a phase's end meanwhile.
static PHASE: std::sync::Mutex<u8> = std::sync::Mutex::new(STARTING);
const STARTING: u8 = 0;
const PREPARING: u8 = 1;
const RUNNING: u8 = 2;

/// Sets `PREPARING` while it lives; `run` sets `RUNNING`, and a drop
/// otherwise (an error return, a `Recheck`) `STARTING`, where a signal is
/// only noted (the process is about to end, or to start the run again).
struct Preparing;

impl Preparing {
    fn start() -> Preparing {
        *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = PREPARING;
        Preparing
    }

    fn run(self) {
        std::mem::forget(self);
        *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = RUNNING;
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = STARTING;
    }
}

/// A training run; `checked`: a resume's files are checked against their
/// fingerprints by a pass of their own before they are read into the
/// trainer (else as they are, and `Recheck` where one differs).
fn train_checked(
    args: &TrainArgs,
    checked: bool,
    claims: &mut Option<Vec<latent_line::claim::Claim>>,
) -> anyhow::Result<Outcome> {
    QUIET.store(args.quiet || args.json, std::sync::atomic::Ordering::Relaxed);
    // Ctrl-C (or SIGTERM, SIGHUP): before the first step (opening,
    // loading, checking) the run ends at once, exit 130, nothing written;
    // once steps run, the trainer finishes the step in flight (the GPU:
    // the submissions in flight), then the table and the report are saved
    // and the exit code is 130. A signal that comes a second or more after
    // the first ends the run at once, wherever it is (a save blocked on a
    // pipe, a long save), its temporary files removed: saves are atomic, so
    // that loses only the save in progress. (Sooner, it is the same signal
    // twice: `timeout` signals the process and then its group, a closed
    // terminal hangs up twice.)
    let stop_flag = INTERRUPTED.get_or_init(|| Arc::new(std::sync::atomic::AtomicBool::new(false))).clone();
    let handler_flag = stop_flag.clone();
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = STARTING;
    crate::on_signals(move || {
        use crate::Signal;
        let which = crate::which_signal();
        handler_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let phase = PHASE.lock().unwrap_or_else(|e| e.into_inner());
        match (*phase, which) {
            // (Seen once the files are checked: `Preparing::start`.)
            (STARTING, _) => {}
            // (Its lock files removed: `claim_saves` lists them.)
            (PREPARING, _) => crate::end_now("interrupted before the first step: nothing written"),
            (_, Signal::First) if !QUIET.load(std::sync::atomic::Ordering::Relaxed) => {
                crate::tell(
                    "interrupted: the steps in flight finish, then the run saves what it was asked to and ends \
                     (another signal, a second from now, ends it at once, unsaved)"
                        .into(),
                );
            }
            (_, Signal::Again) => crate::end_now(
                "interrupted again: ending now, unsaved (a save in progress is left unfinished: its file is as it \
                 was)",
            ),
            _ => {}
        }
    });
    // Everything is validated before any allocation or output (the files
    // the run writes are claimed first: lock files beside them, removed as
    // the run ends, whatever ends it).
    // (Claimed first: a file another run is writing is that run's, not
    // an earlier run's, say the checks of what lies there.)
    if claims.is_none() {
        *claims = Some(claim_saves(args)?);
    }
    check_files(args)?;
    // (After check_files, whose probe of the save's folder is a temporary
    // file that an exit would leave behind.)
    let preparing = Preparing::start();
    if interrupted() {
        // (A signal before it: nothing written yet either.)
        crate::end_now("interrupted before the first step: nothing written");
    }
    let mut carried = None;
    // --resume's run state, read once (with the table's header): its
    // tensor is checked at once, the rest by `resume` before any work.
    let mut resume_state = None;
    if args.checkpoint_every == Some(0) {
        bail!("invalid --checkpoint-every: 0; it must be at least 1");
    }
    // A loaded table is opened and checked here; its values stream from
    // the file into the trainer (no host copy of the whole: a GPU's table
    // may be larger than host memory).
    let (shape, mut input) = match args.resume.as_ref().or(args.load.as_ref()) {
        Some(path) => {
            // A .safetensors input's other tensors are read only when a
            // .safetensors save will carry them (or a resume reads its run
            // state from its metadata).
            let carry = args.resume.is_some() || args.save.as_deref().is_some_and(tables::is_safetensors);
            let l = tables::open_as(path, &args.tensor, npy::Overflow::Inf, carry)?;
            carried = l.carried;
            // A checkpoint saved under another --tensor holds its table there: the
            // tensor read is not that table (it may be another of its tensors), so
            // before anything is checked against its shape. (A state that cannot
            // be read is resume()'s to report.)
            if let Some(path) = &args.resume {
                let state = resume_state.insert(tables::load_state(path, carried.as_ref()));
                if let Ok(Some(state)) = state {
                    if let Some(saved) = state.tensor.as_deref().filter(|t| *t != args.tensor) {
                        bail!(
                            "invalid --tensor: {}'s table is its tensor \"{saved}\" (saved with --tensor {saved}), not \"{}\"; \
                             resume it with --tensor {saved}",
                            path.display(),
                            args.tensor
                        );
                    }
                }
            }
            let shape = l.reader.shape;
            for (opt, given, have) in [("--rows", args.rows, shape.rows), ("--dim", args.dim, shape.dim)] {
                if let Some(g) = given {
                    if g != have {
                        bail!("invalid {opt}: {g} disagrees with {} ({} × {})", path.display(), shape.rows, shape.dim);
                    }
                }
            }
            (shape, Some(l.reader))
        }
        None => (Shape::new(args.rows.unwrap_or(1_000_000), args.dim.unwrap_or(64))?, None),
    };
    let cfg = step_config(args, shape)?;
    // SPEC §10: before any step, the index file is read and every index
    // checked (an error names the first bad position).
    let batches = match (args.batch, &args.indices) {
        (Some(b), _) => {
            let plan = Batches::Random { size: b, seed: args.seed };
            plan.validate(shape.rows)?;
            plan
        }
        (None, Some(path)) => Batches::Indices(IndexBatches::load(path, shape.rows)?),
        (None, None) => Batches::Full,
    };
    // --resume: the run state saved beside the checkpoint, checked before
    // any work.
    // The options that shape the run: checked against a resumed
    // checkpoint's, saved in this run's.
    let options = run_options(&cfg, &batches);
    let resumed = match &args.resume {
        Some(path) => {
            let state = resume_state.take().expect("read with the table's header");
            Some(resume(path, state, args, &cfg, shape, input.as_mut(), &options, checked)?)
        }
        None => None,
    };
    let resumed_lr = resumed.as_ref().map(|r| r.state.lr);
    let batched = !batches.is_full();
    // User batches: the rows each of them moves (its distinct rows and the
    // anchors: its slots), for the bytes a step moves.
    let sampler = match &batches {
        Batches::Random { size, seed } => Some(latent_line::sampler::Sampler::new(shape.rows, *size, *seed)?),
        _ => None,
    };
    let slot_counts: Option<Vec<usize>> = match &batches {
        Batches::Indices(ib) => Some(
            (0..ib.len() as u64)
                .map(|i| {
                    latent_line::batches::StepSlots::new(ib.batch(i), cfg.anchor_a as u32, cfg.anchor_b as u32, true)
                        .slots
                        .len()
                })
                .collect(),
        ),
        _ => None,
    };
    // The table streams from its file as the trainer takes it (shared: its
    // note and fingerprint are read once it has).
    let input = input.map(|r| std::rc::Rc::new(std::cell::RefCell::new(r)));
    // The anchor rows, taken as they stream past (as the trainer gets
    // them: converted to f32), checked before any step.
    let anchor_rows = std::rc::Rc::new(std::cell::RefCell::new(AnchorRows::new(&cfg, shape.dim)));
    let source = match &input {
        Some(r) => {
            let (r, rows) = (r.clone(), anchor_rows.clone());
            TableSource::Stream(Box::new(move |out| {
                r.borrow_mut().read(out)?;
                rows.borrow_mut().take(out);
                Ok(())
            }))
        }
        None => TableSource::Random { seed: args.seed },
    };
    let (mut trainer, why) = open_trainer(args, shape, cfg, source, batches).map_err(|e| {
        // A loaded table the backend cannot hold: said of its file.
        match (&input, e.downcast_ref::<latent_line::Error>()) {
            (Some(r), Some(latent_line::Error::TooLarge { .. })) => e.context(r.borrow().path().display().to_string()),
            _ => e,
        }
    })?;
    let note = match &input {
        Some(r) => {
            let r = r.borrow();
            // (A resumed table: the values read are those its run state
            // recorded.)
            unchanged(r.path(), r.fingerprint(), resumed.as_ref().and_then(|r| r.state.table_fingerprint), checked)?;
            r.note()
        }
        None => None,
    };
    let anchors_warning = match &input {
        Some(r) => anchor_rows.borrow().check(r.borrow().path(), args, &cfg, note.as_deref())?,
        None => None,
    };
    // The file let go (a checkpoint that replaces it at its path frees its
    // disk space at once).
    let loaded = input.is_some();
    drop(input);
    // SPEC §7 on the loaded table, where it now lies (the device's scan: one
    // pass at memory speed).
    let mut input_events = Vec::new();
    if loaded {
        let s = trainer.scan_table()?;
        if !s.is_clean() {
            input_events.push(Event { step: None, buffer: "input", scan: s, strikes: Vec::new(), action: None });
        }
    }
    trainer.set_stop(stop_flag);
    let profiling = args.profile && trainer.set_profile(true)?;
    let (start, d0_saved, collapse_saved) = match resumed {
        Some(Resumed { state, velocity, snapshot }) => {
            trainer.set_run_state(state.clone())?;
            if let Some(mut v) = velocity {
                trainer.set_velocity_from(&mut v.feed())?;
                unchanged(v.path(), v.fingerprint(), state.velocity_fingerprint, checked)?;
            }
            if let Some(mut t) = snapshot {
                trainer.set_snapshot_from(&mut t.feed())?;
                unchanged(t.path(), t.fingerprint(), state.snapshot_fingerprint, checked)?;
            }
            (state.steps as usize, state.d0_start, state.collapse_step)
        }
        None => (0, None, None),
    };
    // A resumed run trains at the lr its rollbacks left (the table line
    // gives --lr).
    let lr_now = resumed_lr.filter(|&lr| lr != cfg.lr);
    let dev = trainer.device_info();
    out!(
        "device   {} · {}{}",
        dev.backend,
        dev.adapter,
        if dev.driver.is_empty() { String::new() } else { format!(" · {}", dev.driver) }
    );
    if !dev.kernel.is_empty() {
        out!("kernel   {}", dev.kernel);
    }
    if let Some(w) = why {
        out!("         {w}");
    }
    if let Some(n) = note {
        out!("         {n}{}", if args.save.is_some() { " (--save writes f32)" } else { "" });
    }
    if cfg.naive {
        // Which rows: under `frozen` the anchors (each at distance 0 from
        // itself) are never written, so only other rows equal to an anchor
        // blow up; the original bug needs the anchors' own row terms.
        let guard = if cfg.guard.policy == Policy::Ignore { "" } else { " (the guard refuses to write them)" };
        let which = if cfg.endpoints == Endpoints::Frozen {
            format!(
                "rows other than the anchors at distance 0 from one turn NaN{guard}; frozen anchors are never \
                 written (--endpoints detached reproduces the original bug)"
            )
        } else {
            format!("rows at distance 0 from an anchor turn NaN, the anchors themselves when their rows are in the step{guard}")
        };
        out!("         naive: autograd's formula with ε = 0; {which}");
    }
    out!(
        "table    {} × {} f32 ({}) · anchors {},{} · endpoints {} · reduction {} · ε {} · lr {}{}",
        shape.rows,
        shape.dim,
        megabytes(shape.bytes()),
        cfg.anchor_a,
        cfg.anchor_b,
        name(cfg.endpoints),
        name(cfg.reduction),
        // (0, not "0e0", where --naive sets it.)
        if cfg.eps == 0.0 { "0".into() } else { format!("{:e}", cfg.eps) },
        cfg.lr,
        lr_now.map_or(String::new(), |lr| format!(" (now {lr}, backed off by the rollbacks before the resume)"))
    );

    for e in &input_events {
        out!("input    {}", e.describe());
    }
    if let Some(w) = &anchors_warning {
        out!("warning  {w}");
    }
    out!("guard    --on-nonfinite {}", name(cfg.guard.policy));
    // A table that comes in with non-finite rows: what the guard will make
    // of them, before the run finds out step by step.
    if let Some(hint) = input_events.first().and_then(|_| guard_hint(&cfg, batched)) {
        out!("         {hint}");
    }
    if let Some(n) = unused_options(args, &cfg) {
        out!("note     {n}");
    }
    // A table loaded (or resumed) to be trained, with nowhere to go: said
    // before the run, and again at its end.
    let unsaved = (args.save.is_none() && (args.load.is_some() || args.resume.is_some())).then(|| match &args.resume {
        Some(r) => format!("--save {} goes on with the checkpoint", r.display()),
        None => "--save FILE keeps it".into(),
    });
    if let Some(u) = &unsaved {
        out!("note     no --save: the trained table will not be kept ({u})");
    }

    const SHOWN_EVENTS: usize = 12;
    // What the summary, the plot and the report need of each step's record
    // (not the records: a run of many short steps would keep gigabytes).
    let mut log = RunLog::new(args.plot.is_some(), args.report.is_some() || args.json)
        .map_err(|e| anyhow::anyhow!("a temporary file for the report's steps: {e}"))?;
    for e in &input_events {
        log.event(e);
    }
    // Step time: the wall clock from each segment's start to its last
    // record, over the steps it ran (throughput: the host never waits
    // between steps, so spacing of arrivals alone can mislead, e.g. on an
    // adapter whose submissions run synchronously). The spacing of the
    // record groups is tallied too, for the report's median (within 0.05 %:
    // spacings are all distinct, so an exact tally would grow with the run).
    let mut per_step = super::runlog::Tally::coarse();
    let (mut wall, mut wall_steps) = (std::time::Duration::ZERO, 0usize);
    // --plot: the rows it draws, taken as the table streams past (no host
    // copy of it kept for the run).
    let drawn = |trainer: &mut dyn Trainer| -> anyhow::Result<latent_line::plot::Drawn> {
        let mut d = latent_line::plot::Drawn::new(shape.rows, shape.dim, (cfg.anchor_a, cfg.anchor_b))?;
        trainer.read_table_into(&mut |v: &[f32]| {
            d.take(v);
            Ok(())
        })?;
        Ok(d)
    };
    let before = if args.plot.is_some() { Some(drawn(trainer.as_mut())?) } else { None };
    // A batch's record covers its rows; the summary's start is the table's.
    let start_eval = if batched { Some(trainer.evaluate()?) } else { None };
    let mut done = start;
    if start > 0 {
        out!("resume   from step {start} of {}", args.steps);
    }
    // From here a signal lets the step in flight finish and saves.
    preparing.run();
    // A progress bar on a terminal for runs long enough to want one (on
    // stderr; not with --quiet or --json, nor when stdout is not a terminal).
    let bar = (std::io::IsTerminal::is_terminal(&std::io::stdout())
        && !QUIET.load(std::sync::atomic::Ordering::Relaxed)
        && args.steps - start.min(args.steps) > 100)
        .then(|| {
            let b = indicatif::ProgressBar::new(args.steps as u64);
            // The rate: this run's steps (not a resume's earlier ones) over
            // the time since the bar began, in whole steps a second. (The
            // message brings its own separator: none dangles before it.)
            let first = start as u64;
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps · {rate}{msg}")
                    .map(|s| {
                        s.with_key("rate", move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let t = st.elapsed().as_secs_f64();
                            let rate = if t > 0.0 { st.pos().saturating_sub(first) as f64 / t } else { 0.0 };
                            // (A slow run's rate with a decimal: "0 steps/s" said nothing.)
                            let _ = if rate < 10.0 {
                                write!(w, "{rate:.1} steps/s")
                            } else {
                                write!(w, "{rate:.0} steps/s")
                            };
                        })
                    })
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_position(first);
            // (Shared with the signal handler's messages: above the bar.)
            *crate::BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
            b
        });
    let mut shown = 0;
    let mut hidden = 0;
    let mut last_said: Vec<(&str, String)> = Vec::new();
    // (Warned before the resume: not again.)
    let mut collapse_warned = collapse_saved.is_some();
    // rollback's backoff can take lr to 0 in f32, from where the steps
    // change nothing: said once, at the first step it is 0.
    let mut lr_zero_warned = false;
    // Steps stream: each group of records (a GPU submission's) is handled
    // while the later ones run, so the device never waits on this loop. A
    // segment runs to the next checkpoint (or the end), where the table is
    // read back and saved.
    let mut halted = false;
    // Stopped by a signal before its --steps (exit 130).
    let mut stopped = false;
    // Where checkpoints go: --save, or beside it where --save is the
    // --load table (`checkpoint_path`: the input is replaced only by a run
    // that ends well, SPEC §12).
    let ck_path = args.save.as_deref().map(|p| checkpoint_path(args, p));
    // A checkpoint of this run was written (at `ck_path`).
    let mut checkpointed = false;
    // d0 at the run's step 0 (SPEC §8): saved by a resumed run's checkpoint,
    // else the first step's.
    let d0_start_of = |log: &RunLog| d0_saved.or(log.first.as_ref().map(|r| r.d0));
    // The position and d0 of the record d0 first fell below its fraction
    // in (SPEC §8), found as records arrive (each group's only). A
    // collapse before the resume is the saved step.
    let mut collapse_at: Option<(usize, f64)> = None;
    let collapse_in = |records: &[latent_line::Record], from: usize, d0_start: Option<f64>| {
        collapse_step(records, d0_start?, cfg.collapse_fraction).map(|i| (from + i, records[i].d0))
    };
    while done < args.steps && !halted {
        let mut n = args.steps - done;
        if let Some(k) = args.checkpoint_every {
            n = n.min(k - done % k);
        }
        let segment = Instant::now();
        let mut last = segment;
        let ran = trainer.steps_streamed(n, &mut |group: Vec<latent_line::Record>| {
            let now = Instant::now();
            // Steps that ran (after an abort the rest of a submission does nothing).
            let ran_here = group.iter().filter(|r| r.action != Action::NotRun).count();
            if ran_here > 0 {
                per_step.add(now.duration_since(last).as_secs_f64() / ran_here as f64);
            }
            wall_steps += ran_here;
            last = now;
            for (i, r) in group.iter().enumerate() {
                for e in Event::of_record(done + i, r) {
                    // A finding that repeats the previous step's is not printed again.
                    let what = e.describe();
                    let what = what.split_once(": ").map_or(what.clone(), |(_, w)| w.to_owned());
                    let repeat = last_said.iter().any(|(b, w)| *b == e.buffer && *w == what);
                    if shown < SHOWN_EVENTS && !repeat {
                        say(&bar, format!("event    {}", e.describe()));
                        shown += 1;
                    } else {
                        hidden += 1;
                    }
                    last_said.retain(|(b, _)| *b != e.buffer);
                    last_said.push((e.buffer, what));
                    log.event(&e);
                }
            }
            if let (Some(b), Some(last)) = (&bar, group.last()) {
                b.set_position((done + group.len()) as u64);
                b.set_message(format!(
                    " · loss {:.4e} · d0 {:.4} · non-finite events {}",
                    last.loss(cfg.w_red(last.batch) as f64),
                    last.d0,
                    log.event_count
                ));
            }
            done += group.len();
            // The guard aborted on the device: nothing more will run.
            halted = group.last().is_some_and(|r| matches!(r.action, Action::NotRun | Action::Aborted));
            // Each record looked at for the collapse as it is logged (none
            // is past an aborted step: the log refuses those).
            let d0_start = d0_start_of(&log).or(group.first().map(|r| r.d0));
            for r in group {
                if r.lr == 0.0 && r.action != Action::NotRun && cfg.lr > 0.0 && !lr_zero_warned {
                    lr_zero_warned = true;
                    say(
                        &bar,
                        format!(
                            "warning  step {}: lr has backed off to 0 (rollbacks × --backoff {}, in float32): \
                             the steps change nothing from here",
                            start + log.len,
                            match cfg.guard.backoff {
                                b if b < 1e-5 => format!("{b:e}"),
                                b => format!("{b}"),
                            }
                        ),
                    );
                }
                collapse_at = collapse_at.or_else(|| collapse_in(std::slice::from_ref(&r), log.len, d0_start));
                let w_red = cfg.w_red(r.batch) as f64;
                if !log.push(start + log.len, r, w_red) {
                    break;
                }
            }
            if let (Some((at, d0)), false) = (collapse_at, collapse_warned) {
                collapse_warned = true;
                say(&bar, collapse_warning(start + at, d0, cfg.collapse_fraction, d0_start.unwrap_or(0.0)));
            }
            !halted && !interrupted()
        })?;
        wall += last.duration_since(segment);
        // Interrupted: stopped before its steps were done (a signal that
        // comes after the last step, while the run saves, stops nothing).
        if done < args.steps && !halted && (ran == 0 || interrupted()) {
            stopped = true;
            say(&bar, format!("stopped after {}: saving and reporting", count(done as u64, "step")));
            break;
        }
        if let (Some(k), Some(path)) = (args.checkpoint_every, &ck_path) {
            if done % k == 0 && done < args.steps && !halted {
                let audit = (d0_start_of(&log), collapse_saved.or(collapse_at.map(|(at, _)| (start + at) as u64)));
                save_checkpoint(trainer.as_mut(), path, &args.tensor, carried.as_ref(), audit, &options)?;
                // The tensors carried over come from this checkpoint now
                // (the same bytes): the file loaded, replaced at its path
                // or not, is let go. (Not from a checkpoint beside the
                // input, which stays, and which a run that ends well
                // removes.)
                if let Some(c) = carried.as_mut().filter(|_| Some(path) == args.save.as_ref()) {
                    c.follow(path);
                }
                checkpointed = true;
                say(&bar, format!("checkpoint after {} → {}", count(done as u64, "step"), path.display()));
            }
        }
    }
    if let Some(b) = bar {
        crate::BAR.lock().unwrap_or_else(|e| e.into_inner()).take();
        b.finish_and_clear();
    }
    if hidden > 0 {
        out!("event    … {hidden} more non-finite events, repeats included (all in --report)");
    }
    // Positions in this run's records; steps are counted from the run's start.
    let aborted_at = log.aborted.map(|a| start + a);
    // The steps done, counted from the start of the run (its first segment,
    // before any resume): an aborted step is not done (a resume takes it
    // again), so the table is after this many.
    let steps_done = aborted_at.unwrap_or(start + log.len);
    // Each step's own GPU time, where its pass was timed (timestamp queries).
    let (gpu_median, gpu_steps) = (log.gpu_seconds.median(), log.gpu_seconds.len);
    // The final table's evaluation, the last record (SPEC §12's report: step
    // k is the table before update k; this one is of the steps done, after
    // an abort the aborted step's own table).
    let final_eval = trainer.evaluate()?;
    let d0_start = d0_start_of(&log);
    let final_at = log.len;
    // A collapse the final table shows first is warned of too (and saved
    // with the run state: a resume would not warn of it again).
    let final_collapse = collapse_at
        .is_none()
        .then(|| collapse_in(std::slice::from_ref(&final_eval), final_at, d0_start.or(Some(final_eval.d0))))
        .flatten();
    let w_red = cfg.w_red(final_eval.batch) as f64;
    log.push_final(steps_done, final_eval, w_red);
    let step_of = |i: usize| if i == final_at { steps_done } else { start + i };
    if let (Some((at, d0)), false, Some(d0_start)) = (final_collapse, collapse_warned, d0_start) {
        out!("{}", collapse_warning(step_of(at), d0, cfg.collapse_fraction, d0_start));
    }
    let collapse = collapse_saved.or(collapse_at.or(final_collapse).map(|(at, _)| step_of(at) as u64));
    let final_scan = trainer.scan_table()?;
    let finite = final_scan.is_clean();

    // With batches, the summary compares whole-table evaluations.
    let last = log.last.clone().ok_or_else(|| anyhow::anyhow!("no record of the final table"))?;
    let first = start_eval.or_else(|| log.first.clone()).unwrap_or_else(|| last.clone());
    let (first, last) = (&first, &last);
    let step_s = if wall_steps > 0 { wall.as_secs_f64() / wall_steps as f64 } else { 0.0 };
    // A step reads and writes each row it touches once (SPEC §15): the
    // full table's, or a batch's distinct rows and the anchors, averaged
    // over the steps run (the first step's where none ran). (A random
    // batch has no repeats; its anchors are counted as two more rows.)
    let run = start..steps_done.max(start + 1);
    let moved = |step: usize| match (&slot_counts, &sampler) {
        (Some(counts), _) => counts[step % counts.len()],
        (None, Some(s)) => {
            // The slot's rows and the anchors that are not among them.
            let slot = s.slot(step as u64);
            let outside = |row: usize| {
                let at = s.unpermute(slot.epoch, row as u32).unwrap_or(u32::MAX);
                !(slot.start..slot.start + slot.count).contains(&at)
            };
            slot.count as usize + outside(cfg.anchor_a) as usize + outside(cfg.anchor_b) as usize
        }
        (None, None) => shape.rows,
    };
    let rows_moved = run.clone().map(|s| moved(s) as f64).sum::<f64>() / run.len() as f64;
    let bytes = (2.0 * rows_moved.min(shape.rows as f64) * shape.dim as f64 * 4.0).round() as u64;
    let gbps = if step_s > 0.0 { bytes as f64 / step_s / 1e9 } else { 0.0 };
    out!(
        "start    loss {:.6e} · mean excess {:.6e} · d0 {:.6} · near-singular rows {}",
        first.loss(cfg.w_red(first.batch) as f64),
        first.mean_excess(),
        first.d0,
        first.near_singular
    );
    out!(
        "end      loss {:.6e} · mean excess {:.6e} · d0 {:.6} · near-singular rows {} · after {}{}, excess {}",
        last.loss(cfg.w_red(last.batch) as f64),
        last.mean_excess(),
        last.d0,
        last.near_singular,
        count(steps_done as u64 - start as u64, "step"),
        if start > 0 { format!(" ({steps_done} in all)") } else { String::new() },
        if !last.mean_excess().is_finite() {
            "non-finite".into()
        } else if last.mean_excess() > 0.0 {
            format!("÷{:.3e}", first.mean_excess() / last.mean_excess())
        } else {
            "0".into()
        }
    );
    // A loss that is not finite for a few rows' terms hides whether the
    // others trained: the finite terms alone, under the start and end.
    if !first.loss_finite() || !last.loss_finite() {
        let e = |x: f64| format!("{x:.6e}");
        let n = |f: &latent_line::record::FiniteTerms| match f.left_out {
            0 => "none".to_string(),
            k => k.to_string(),
        };
        let w_red = |r: &latent_line::Record| cfg.w_red(r.batch) as f64;
        let (start, end) = (first.terms(w_red(first)), last.terms(w_red(last)));
        match (start, end) {
            (Some(a), Some(b)) => out!(
                "         the finite terms alone (non-finite ones left out: {} at the start, {} at the end): loss {} → {} \
                 · mean excess {} → {}{}",
                n(&a),
                n(&b),
                e(a.loss),
                e(b.loss),
                e(a.mean_excess),
                e(b.mean_excess),
                if b.mean_excess > 0.0 { format!(", ÷{:.3e}", a.mean_excess / b.mean_excess) } else { String::new() }
            ),
            // One end has no finite term: the other's, where some were left out.
            (Some(f), None) | (None, Some(f)) if f.left_out > 0 => {
                let (at, none) = if start.is_some() { ("start", "end") } else { ("end", "start") };
                out!(
                    "         the finite terms alone (non-finite ones left out: {}): loss {} · mean excess {} at the \
                     {at}; none finite at the {none}",
                    n(&f),
                    e(f.loss),
                    e(f.mean_excess)
                )
            }
            _ => {}
        }
    }
    let guard_counts = [
        (log.count(Action::SkippedStep), "skipped steps"),
        (log.count(Action::SkippedRows), "steps with skipped rows"),
        (log.count(Action::RolledBack), "rollbacks"),
        (log.count(Action::Ignored), "steps that wrote non-finite values"),
    ];
    let said: Vec<String> = guard_counts.iter().filter(|(n, _)| *n > 0).map(|(n, w)| format!("{n} {w}")).collect();
    if !said.is_empty() {
        out!("guard    {} · lr now {}", said.join(" · "), last.lr as f32);
    }
    if let Some(at) = aborted_at {
        out!("ABORTED  at step {at}: {}{}", action_words(Action::Aborted), abort_reason(&cfg));
    }
    out!("finite   {}", if finite { "every value of the table is finite".into() } else { final_scan.describe() });
    if wall_steps > 0 {
        out!(
            "speed    {:.3} ms/step (wall clock over {}) · {:.1} GB/s effective ({} bytes read+written per step)",
            step_s * 1e3,
            count(wall_steps as u64, "step"),
            gbps,
            bytes
        );
        if let Some(m) = gpu_median {
            out!(
                "         GPU {:.3} ms/step, the median of {} passes (timestamp queries) · {:.1} GB/s",
                m * 1e3,
                if gpu_steps == 1 { "1 step's".to_owned() } else { format!("{gpu_steps} steps'") },
                if m > 0.0 { bytes as f64 / m / 1e9 } else { 0.0 }
            );
        }
    }

    let profile = if profiling { Some(trainer.profile()?) } else { None };
    if args.profile {
        match &profile {
            Some(p) => {
                let total: f64 = p.iter().map(|k| k.seconds).sum();
                out!(
                    "profile  GPU time per kernel over {} (timestamp queries; bytes are nominal)",
                    count(log.len as u64 - 1, "step")
                );
                for k in p {
                    out!(
                        "         {:26} {:>6} passes {:>10.4} ms/pass {:>8.1} GB/s {:>5.1} %",
                        k.kernel,
                        k.calls,
                        k.seconds / k.calls.max(1) as f64 * 1e3,
                        if k.seconds > 0.0 { k.bytes as f64 / k.seconds / 1e9 } else { 0.0 },
                        100.0 * k.seconds / total.max(f64::MIN_POSITIVE)
                    );
                }
            }
            None => out!(
                "profile  not available: {} (the CPU backend has no kernels to time; a GPU needs timestamp queries)",
                dev.backend
            ),
        }
    }

    // SPEC §12: an interrupted or failed run never overwrites its input.
    // Where --save is the --load table, such a run's table goes beside it:
    // over its own checkpoint there if it wrote one (where the next
    // --resume looks), else `unfinished_save`'s name: nothing is lost, and
    // the input is as it was.
    let unfinished = if aborted_at.is_some() {
        Some("aborted")
    } else if stopped {
        Some("interrupted")
    } else {
        None
    };
    // (The table's path, and the input it is beside where it is.)
    // (A run going on from such a file saves over it: its own.)
    let own_ck = |path: &Path| beside_resume(args, path).is_some() || (checkpointed && saves_over_load(args, path));
    let save_to = args.save.as_ref().zip(ck_path.as_ref()).map(|(path, ck)| match unfinished {
        Some(_) if own_ck(path) => (ck.clone(), Some(path)),
        Some(why) if saves_over_load(args, path) => (unfinished_save(path, why), Some(path)),
        _ => (path.clone(), None),
    });
    if let Some(u) = &unsaved {
        out!("saved    nothing: no --save ({u})");
    }
    if let Some((path, beside)) = &save_to {
        let audit = (d0_start, collapse);
        save_checkpoint(trainer.as_mut(), path, &args.tensor, carried.as_ref(), audit, &options)?;
        out!(
            "saved    {}{}{}",
            path.display(),
            if aborted_at.is_some() { " (the table before the failing step)" } else { "" },
            match beside {
                Some(input) => format!(
                    "; not over {}, the run's input, which a run that {} leaves as it was (--resume {} --save {} goes on)",
                    input.display(),
                    if aborted_at.is_some() { "aborts" } else { "is interrupted" },
                    path.display(),
                    input.display()
                ),
                None => String::new(),
            }
        );
        // A run that ended well has replaced its input: its checkpoints
        // beside it (or the file beside it that it went on from) are an
        // older table of the same run, removed (a failure to is said, not
        // an error: the table is saved).
        if let Some(ck) = ck_path.as_ref().filter(|ck| own_ck(path) && beside.is_none() && *ck != path) {
            let mut failed = Vec::new();
            for f in std::iter::once(ck.clone()).chain(sidecars(ck)) {
                match std::fs::remove_file(&f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => failed.push(format!("{}: {e}", f.display())),
                    _ => {}
                }
            }
            if failed.is_empty() {
                out!("removed  {}: this run's checkpoints beside its input, which it has replaced", ck.display());
            } else {
                eprintln!("warning: this run's checkpoints beside its input not removed ({})", failed.join("; "));
            }
        }
    }
    // Killed saves' temporary files are hidden (dot names) and may be as
    // large as the table: said, not removed (a --resume of a checkpoint
    // there may need one; another run's save may be writing one).
    if let Some(note) = save_to.as_ref().and_then(|(path, _)| leftovers_note(path)) {
        out!("{note}");
    }
    if let (Some(path), Some(before)) = (&args.plot, &before) {
        let after = drawn(trainer.as_mut())?;
        let excess = log.excess.iter().flatten().enumerate().map(|(i, &e)| (step_of(i), e)).collect();
        let pic = latent_line::plot::Picture { excess, before, after: &after };
        latent_line::plot::draw(path, &pic)?;
        out!("plot     {}", path.display());
    }
    // The driver's statistics, after the table is saved: the probe opens
    // a second device, and one that fails (or crashes) costs the run
    // nothing but its statistics.
    let driver_stats = if args.profile {
        trainer.driver_stats().unwrap_or_else(|e| {
            Some(latent_line::gpu::driver_stats::DriverStats {
                device: trainer.device_info().adapter,
                unavailable: Some(format!("the probe failed: {e}")),
                pipelines: Vec::new(),
            })
        })
    } else {
        None
    };
    print_driver_stats(driver_stats.as_ref());
    // A lost report is an error: exit 1 after a run that ended well; a run
    // that aborted or was interrupted keeps its exit code (3, 130), as when
    // its printed summary is lost, and says both on stderr.
    let ended = match aborted_at {
        Some(at) => Some(format!("the run aborted on non-finite values at step {at}: exit code 3")),
        None if stopped => Some("the run was interrupted: exit code 130".into()),
        None => None,
    };
    let lists = if args.report.is_some() || args.json { Some(log.for_report()) } else { None };
    if let Some(Err(lost)) = &lists {
        // (Its steps or events could not be kept: the run went on, and
        // saved, without them.)
        let what = match &args.report {
            Some(path) => format!("the report {}", path.display()),
            None => "the --json report".into(),
        };
        match &ended {
            None => bail!("{what}: {lost}"),
            Some(ended) => eprintln!("latent-line: error: {what}: {lost} ({ended})"),
        }
    }
    if let Some(Ok((steps, report_events))) = lists {
        let report = Report {
            options: args,
            shape,
            config: cfg,
            device: dev,
            steps,
            summary: Summary {
                first_loss: first.loss(cfg.w_red(first.batch) as f64),
                last_loss: last.loss(cfg.w_red(last.batch) as f64),
                mean_excess_first: first.mean_excess(),
                mean_excess_last: last.mean_excess(),
                max_excess_first: first.max_excess(),
                max_excess_last: last.max_excess(),
                first_finite_terms: first.finite_terms(cfg.w_red(first.batch) as f64),
                last_finite_terms: last.finite_terms(cfg.w_red(last.batch) as f64),
                d0_first: first.d0,
                d0_last: last.d0,
                collapse_step: collapse.map(|s| s as usize),
                near_singular_last: last.near_singular,
                nonfinite_events: log.event_count,
                skipped_steps: log.count(Action::SkippedStep),
                steps_with_skipped_rows: log.count(Action::SkippedRows),
                rollbacks: log.count(Action::RolledBack),
                aborted_at,
                steps_done,
                interrupted: stopped,
                saved: save_to.as_ref().map(|(p, _)| p.to_string_lossy().into_owned()),
                resumed_from: args.resume.is_some().then_some(start),
                lr_last: last.lr as f32,
                final_scan,
                all_finite: finite,
                step_seconds: (wall_steps > 0).then_some(step_s),
                // The steps' own GPU times where they were timed (every
                // step of the fused path, where the device has timestamp
                // queries), else the spacing of the record groups.
                median_step_seconds: gpu_median.or(per_step.median()).filter(|_| wall_steps > 0),
                median_step_clock: if gpu_median.is_some() { "gpu-timestamps" } else { "wall-clock" },
                bytes_per_step: bytes,
                effective_gb_per_s: (wall_steps > 0).then_some(gbps),
            },
            events: report_events,
            profile,
            driver_stats,
        };
        if let Some(path) = &args.report {
            let written = npy::save_atomic(path, |w| {
                serde_json::to_writer_pretty(&mut *w, &report).map_err(std::io::Error::other)?;
                std::io::Write::write_all(w, b"\n")
            });
            // A reader that closed the pipe (`--report /dev/stdout | head`)
            // took what it wanted, as for the summary: no error.
            let written = match written {
                Err(latent_line::Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                w => w,
            };
            match (written, &ended) {
                (Ok(()), _) => out!("report   {}", path.display()),
                (Err(e), None) => {
                    return Err(anyhow::Error::from(e).context(format!("writing the report {}", path.display())))
                }
                (Err(e), Some(ended)) => {
                    eprintln!("latent-line: error: writing the report {}: {e:#} ({ended})", path.display())
                }
            }
        }
        if args.json {
            print_json(&report);
        }
    }
    Ok(if aborted_at.is_some() {
        Outcome::NonFinite
    } else if stopped {
        Outcome::Interrupted
    } else {
        Outcome::Done
    })
}

/// Options given on the command line that this run has no use for (a
/// policy's options under another policy; a generated table's seed for a
/// loaded one trained whole): said, not refused, as a script may pass them
/// all.
fn unused_options(args: &TrainArgs, cfg: &StepConfig) -> Option<String> {
    let policy = name(cfg.guard.policy);
    let owner = |opt: &str| match opt {
        "--max-skips" if cfg.guard.policy != Policy::SkipStep => {
            Some(format!("--on-nonfinite skip-step's (this run's: {policy})"))
        }
        "--snapshot-every" | "--backoff" | "--max-rollbacks" if cfg.guard.policy != Policy::Rollback => {
            Some(format!("--on-nonfinite rollback's (this run's: {policy})"))
        }
        // The seed draws a generated table and random batches (--batch).
        "--seed" if args.batch.is_none() && (args.load.is_some() || args.resume.is_some()) => {
            Some("a generated table's and --batch's".into())
        }
        _ => None,
    };
    // Grouped by whose they are, in the order given.
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for g in &args.given {
        if let Some(o) = owner(g) {
            match groups.iter_mut().find(|(w, _)| *w == o) {
                Some((_, opts)) => opts.push(g),
                None => groups.push((o, vec![g])),
            }
        }
    }
    let said: Vec<String> = groups
        .iter()
        .map(|(o, opts)| format!("{} {} {o}", opts.join(", "), if opts.len() > 1 { "are" } else { "is" }))
        .collect();
    (!said.is_empty()).then(|| format!("no effect in this run: {}", said.join("; ")))
}

/// What the guard does with a loaded table's non-finite rows, where it
/// keeps the others from training (the policies that act on a whole step):
/// said before the run, with the policy that trains around them.
fn guard_hint(cfg: &StepConfig, batched: bool) -> Option<String> {
    let g = &cfg.guard;
    let reads = if batched { "a step whose batch holds these rows" } else { "every full-table step reads these rows:" };
    let what = match g.policy {
        Policy::SkipStep => format!(
            "{reads} {} skipped, and after {} skipped steps in a row the run aborts (--max-skips)",
            if batched { "is" } else { "each is" },
            g.max_skips
        ),
        Policy::Rollback => format!(
            "{reads} {} rolled back (to a snapshot that holds them too), and after {} rollbacks in all the run \
             aborts (--max-rollbacks)",
            if batched { "is" } else { "each is" },
            g.max_rollbacks
        ),
        Policy::Abort => format!("{reads} the first {} aborts the run", if batched { "such step" } else { "step" }),
        Policy::Ignore | Policy::SkipRow => return None,
    };
    Some(format!("{what}; --on-nonfinite skip-row trains the other rows and keeps these as they are"))
}

/// Why the guard aborted, after `action_words`' "aborted, …".
fn abort_reason(cfg: &StepConfig) -> String {
    let g = &cfg.guard;
    match g.policy {
        Policy::SkipStep => format!(" (a failing step after {} skipped in a row: --max-skips)", g.max_skips),
        Policy::Rollback => format!(" (a failing step after {} rollbacks: --max-rollbacks)", g.max_rollbacks),
        Policy::Abort => " (--on-nonfinite abort)".into(),
        Policy::Ignore | Policy::SkipRow => String::new(),
    }
}

/// The two anchor rows of a loaded table, taken from its values as they
/// stream into the trainer.
struct AnchorRows {
    /// (row, its values as far as they came).
    rows: [(usize, Vec<f32>); 2],
    dim: usize,
    /// Values seen so far.
    at: usize,
}

impl AnchorRows {
    fn new(cfg: &StepConfig, dim: usize) -> Self {
        AnchorRows { rows: [(cfg.anchor_a, Vec::new()), (cfg.anchor_b, Vec::new())], dim, at: 0 }
    }

    /// The next values of the table, in row order.
    fn take(&mut self, block: &[f32]) {
        let end = self.at + block.len();
        for (row, values) in &mut self.rows {
            let (from, to) = (*row * self.dim, (*row + 1) * self.dim);
            let (lo, hi) = (from.max(self.at), to.min(end));
            if lo < hi {
                values.extend_from_slice(&block[lo - self.at..hi - self.at]);
            }
        }
        self.at = end;
    }

    /// A loaded table whose anchor row holds a non-finite value trains
    /// nothing: d0 and every distance to that anchor are not finite, so
    /// every loss term is NaN, and every guard but `ignore` keeps every row
    /// as it was.
    /// Refused before any step for a run that starts from `--load`, naming
    /// the row; said (`Some`, a warning) where the run goes on regardless:
    /// under `ignore`, or resumed (a resume continues its run, as an
    /// unbroken one would go on: SPEC §13).
    fn check(
        &self,
        file: &Path,
        args: &TrainArgs,
        cfg: &StepConfig,
        note: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let bad: Vec<String> = self
            .rows
            .iter()
            .filter_map(|(row, values)| {
                // (SPEC §7's scan of the row: its first bad element.)
                let f = latent_line::scan::scan_rows(values, self.dim, *row as u64).first?;
                Some(format!("row {row} holds {} at column {}", f.kind(), f.col))
            })
            .collect();
        if bad.is_empty() {
            return Ok(None);
        }
        let given = if args.anchors.is_some() { "" } else { " (the default --anchors 0,R-1)" };
        // (A float64 or float16 table's values as float32: where some were
        // beyond its range, the conversion's note says so.)
        let converted = note.map_or(String::new(), |n| format!(" ({n})"));
        let what = format!(
            "the anchor {} of {}{given}{converted}: d0 and every distance to it are not finite, so every loss term \
             is NaN and no row can train",
            bad.join(", and "),
            file.display()
        );
        if args.resume.is_some() || cfg.guard.policy == Policy::Ignore {
            return Ok(Some(what));
        }
        bail!(
            "invalid --anchors: {what}; pick anchor rows whose values are finite (--anchors A,B; `latent-line scan` \
             lists the rows that are not), or repair the row first (--on-nonfinite ignore runs it as it is)"
        )
    }
}

/// The run's files, checked before any work (SPEC §12): outputs in
/// writable places of their own, nothing written over anything the run
/// reads or writes but `--save` onto the table it loaded or resumed, and
/// a checkpoint's sidecars on no input and no folder.
fn check_files(args: &TrainArgs) -> anyhow::Result<()> {
    // --tensor names a tensor of a .safetensors file: given where no file
    // is one, it is a mistake (a typo'd option went unnoticed).
    let safetensors = [&args.load, &args.resume, &args.save].into_iter().flatten().any(|p| tables::is_safetensors(p));
    if args.given.iter().any(|g| g == "--tensor") && !safetensors {
        bail!(
            "invalid --tensor: it names a tensor of a .safetensors file, and none of --load, --resume, --save is one"
        );
    }
    // (--json prints the report there already: two documents would follow
    // each other.)
    if let (true, Some(r)) = (args.json, &args.report) {
        if super::checks::is_stdout(r) {
            bail!(
                "invalid --report: {} is standard output, where --json prints the report; give one of the two",
                r.display()
            );
        }
    }
    check_adapter(args.backend, &args.adapter)?;
    if let Some(p) = &args.plot {
        if p.extension().and_then(|e| e.to_str()) != Some("svg") {
            bail!("invalid --plot: {} must end in .svg", p.display());
        }
    }
    for (opt, p) in [("--save", &args.save), ("--report", &args.report), ("--plot", &args.plot)] {
        if let Some(p) = p {
            check_output(opt, p)?;
        }
    }
    if let Some(s) = &args.save {
        tables::format_of(s)?;
    }
    // Nothing is written over anything else the run reads or writes; the
    // only overlap allowed is --save onto the table it loaded or resumed
    // (an atomic replacement, SPEC §12).
    let outputs = [("--save", &args.save), ("--report", &args.report), ("--plot", &args.plot)];
    // A checkpoint's run state and optimiser state lie beside it: --save's
    // are written, --resume's read.
    let sides = |p: Option<&Path>| p.map_or([None, None, None], |p| sidecars(p).map(Some));
    let [state, velocity, snapshot] = sides(args.save.as_deref());
    let [r_state, r_velocity, r_snapshot] = sides(args.resume.as_deref());
    let inputs = [
        ("--load", &args.load),
        ("--resume", &args.resume),
        ("--indices", &args.indices),
        ("--resume's run state", &r_state),
        ("--resume's velocity", &r_velocity),
        ("--resume's snapshot", &r_snapshot),
        ("--save's run state", &state),
        ("--save's velocity", &velocity),
        ("--save's snapshot", &snapshot),
    ];
    // --save onto the checkpoint it resumes writes that checkpoint's
    // sidecars, all together (`save_checkpoint`): the one overlap of
    // sidecars allowed.
    let save_is_resume = matches!((&args.save, &args.resume), (Some(s), Some(r)) if same_file(s, r));
    for (i, (out_opt, out)) in outputs.iter().enumerate() {
        let Some(out) = out else { continue };
        let others = outputs[i + 1..].iter().chain(&inputs);
        for (opt, other) in
            others.filter(|(opt, _)| !(*out_opt == "--save" && (*opt == "--load" || *opt == "--resume")))
        {
            if let Some(other) = other {
                if same_file(out, other) {
                    bail!("invalid {out_opt}: {} is also the {opt} file; give it a path of its own", out.display());
                }
            }
        }
    }
    // --save's sidecars are written too: never over a file the run reads
    // (nor removed, as a stale sidecar is when this run writes none), nor
    // where a folder is (found now, not after the training) if this run
    // writes them: the run state beside an .npy, the velocity with
    // momentum, a snapshot under rollback.
    let npy_save = args.save.as_deref().is_some_and(|s| matches!(tables::format_of(s), Ok(tables::Format::Npy)));
    let writes = [npy_save, args.momentum != 0.0, args.on_nonfinite == Policy::Rollback];
    for ((side_opt, side), written) in inputs[6..].iter().zip(writes) {
        let Some(side) = side else { continue };
        if written && side.is_dir() {
            bail!("invalid --save: {side_opt} would be written at {}, which is a folder", side.display());
        }
        let read = inputs[..6].iter().filter(|(opt, _)| !(save_is_resume && opt.starts_with("--resume's")));
        for (opt, input) in read {
            if input.as_ref().is_some_and(|i| same_file(side, i)) {
                bail!(
                    "invalid --save: {side_opt} would be written at {}, the {opt} file; save elsewhere",
                    side.display()
                );
            }
        }
    }
    // --save's sidecars are written where the table is, under longer
    // names: checked as outputs too (a name past the file system's limit
    // failed only at the save, after the training).
    for ((_, side), written) in inputs[6..].iter().zip(writes) {
        if let Some(side) = side.as_ref().filter(|_| written) {
            check_output("--save", side)?;
        }
    }
    // Where --save is the --load table, an aborted or interrupted run saves
    // beside it (`unfinished_save`), with its sidecars (a stale one there
    // is removed): none of them over a file the run reads or writes, nor
    // where a folder is.
    if let Some(save) = args.save.as_deref().filter(|s| saves_over_load(args, s)) {
        // A link there would be written through (and a checkpoint's files
        // removed through it at the end); a checkpoint there already is an
        // earlier run's, resumable, which this run's first checkpoint would
        // replace: both refused, nothing lost.
        for why in BESIDE {
            let at = unfinished_save(save, why);
            if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                bail!(
                    "invalid --save: {} is a link; a run whose --save is its --load file writes there (its {why} table); remove it",
                    at.display()
                );
            }
        }
        // So is an earlier run's resumable table there, which this run would
        // replace: its checkpoint (where this run's checkpoints go), or the
        // table it saved when it was interrupted or aborted (where this run
        // saves if it ends alike; a folder there is refused below).
        let [ck, stopped, aborted] = BESIDE.map(|why| unfinished_save(save, why));
        let table_there = |at: &Path| std::fs::symlink_metadata(at).is_ok_and(|m| m.is_file());
        let of = save.display();
        for (at, there, what) in [
            (
                &ck,
                args.checkpoint_every.is_some() && std::fs::symlink_metadata(&ck).is_ok(),
                format!("a checkpoint of an earlier run of {of} (its checkpoints go there)"),
            ),
            (
                &aborted,
                table_there(&aborted),
                format!("the table of an earlier run of {of} that aborted (a run that is aborted saves there)"),
            ),
            (
                &stopped,
                table_there(&stopped),
                format!(
                    "the table of an earlier run of {of} that was interrupted (a run that is interrupted saves there)"
                ),
            ),
        ] {
            if there {
                bail!(
                    "invalid --save: {} exists, {what}; go on from it (--resume {} --save {of}) or remove it",
                    at.display(),
                    at.display()
                );
            }
        }
        let checkpoints = args.checkpoint_every.map(|_| "checkpoint");
        for why in ["aborted", "interrupted"].into_iter().chain(checkpoints) {
            let beside = unfinished_save(save, why);
            let [b_state, b_velocity, b_snapshot] = sides(Some(&beside));
            let here = |what: &Path| {
                let who =
                    if why == "checkpoint" { "its checkpoints go" } else { &*format!("a run that is {why} saves") };
                format!("{who} beside its input {} (at {})", save.display(), what.display())
            };
            let b_sides = [&b_state, &b_velocity, &b_snapshot]
                .into_iter()
                .zip(writes)
                .filter_map(|(s, w)| s.as_ref().filter(|_| w));
            for written in std::iter::once(&beside).chain(b_sides) {
                if let Err(e) = check_output("--save", written) {
                    bail!("{e:#}: {}", here(written));
                }
            }
            let others = inputs[..6].iter().chain(&outputs[1..]);
            for written in [Some(beside.clone()), b_state, b_velocity, b_snapshot].iter().flatten() {
                if written.is_dir() {
                    bail!("invalid --save: {}, which is a folder", here(written));
                }
                if let Some((opt, _)) = others.clone().find(|(_, o)| o.as_ref().is_some_and(|o| same_file(written, o)))
                {
                    bail!("invalid --save: {}, which is the {opt} file; give one of them another name", here(written));
                }
            }
        }
    }
    Ok(())
}

/// Claims the files this run writes (`latent_line::claim`) for as long as
/// it runs: `--save`, where its checkpoints go if not there, where it saves
/// if interrupted or aborted (beside its input, when `--save` is its
/// `--load` file), `--report` and `--plot`. A file another run holds is
/// refused, naming that run's process.
fn claim_saves(args: &TrainArgs) -> anyhow::Result<Vec<latent_line::claim::Claim>> {
    let mut outputs: Vec<(&str, PathBuf, &str)> = Vec::new();
    if let Some(save) = args.save.as_deref() {
        outputs.push(("--save", save.to_path_buf(), ""));
        let ck = checkpoint_path(args, save);
        if ck != save {
            outputs.push(("--save", ck, ", where this run's checkpoints go"));
        }
        if saves_over_load(args, save) {
            outputs.push(("--save", unfinished_save(save, "interrupted"), ", where this run saves if interrupted"));
            outputs.push(("--save", unfinished_save(save, "aborted"), ", where this run saves if it aborts"));
        }
    }
    outputs.extend(args.report.iter().map(|r| ("--report", r.clone(), "")));
    outputs.extend(args.plot.iter().map(|p| ("--plot", p.clone(), "")));
    claim_outputs(&outputs)
}

/// The step's settings from the options, checked against the table's
/// shape (SPEC §2–§9's defaults where an option is left out).
fn step_config(args: &TrainArgs, shape: Shape) -> anyhow::Result<StepConfig> {
    let mut cfg = StepConfig::for_rows(shape.rows);
    if let Some(s) = &args.anchors {
        (cfg.anchor_a, cfg.anchor_b) = parse_anchors(s).map_err(|e| anyhow::anyhow!("invalid --anchors: {e}"))?;
    }
    cfg.naive = args.naive;
    cfg.eps = single("--eps", args.eps.unwrap_or(if args.naive { 0.0 } else { 1e-8 }))?;
    cfg.lr = single("--lr", args.lr)?;
    cfg.reduction = args.reduction;
    cfg.endpoints = args.endpoints;
    cfg.momentum = single("--momentum", args.momentum)?;
    if args.momentum < 1.0 && cfg.momentum >= 1.0 {
        bail!(
            "invalid --momentum: {} rounds to 1 in float32; it must be below 1 (at most 0.99999994)",
            shown(args.momentum)
        );
    }
    cfg.weight_decay = single("--weight-decay", args.weight_decay)?;
    cfg.clip_norm = single("--clip-norm", args.clip_norm)?;
    cfg.margin = single("--margin", args.margin)?;
    cfg.margin_weight = single("--margin-weight", args.margin_weight)?;
    cfg.tau = single("--tau", args.tau)?;
    cfg.collapse_fraction = args.collapse_fraction;
    cfg.guard = Guard {
        policy: args.on_nonfinite,
        max_skips: count32("--max-skips", args.max_skips, latent_line::config::MAX_GUARD_COUNT)?,
        snapshot_every: count32("--snapshot-every", args.snapshot_every, u32::MAX)?,
        backoff: single("--backoff", args.backoff)?,
        max_rollbacks: count32("--max-rollbacks", args.max_rollbacks, latent_line::config::MAX_GUARD_COUNT)?,
    };
    cfg.validate(shape)?;
    Ok(cfg)
}

/// Whether `--save` is the `--load` table. (A `--resume` checkpoint is
/// not lost when saved over: the resumed run is its run going on, whose
/// checkpoints replace it anyway, and a save at an interruption is one
/// more, SPEC §13's "finished and saved", resumable where the next job
/// looks for it.)
fn saves_over_load(args: &TrainArgs, save: &Path) -> bool {
    args.load.as_deref().is_some_and(|input| same_file(save, input))
}

/// A checkpoint's files beside its table: its run state (beside an
/// `.npy`, or a `.safetensors` one too large for its header), its
/// velocity, its snapshot.
fn sidecars(path: &Path) -> [PathBuf; 3] {
    [tables::state_sidecar(path), Sidecar::Velocity.path(path), Sidecar::Snapshot.path(path)]
}

/// Where the run's checkpoints go: `--save`, or beside it where that is the
/// `--load` table (`t.npy` → `t.checkpoint.npy`), so that the input is
/// replaced only by a run that ends well (SPEC §12), which then removes
/// them; an interrupted or aborted run saves over them.
/// A run going on from one of those files (`--resume t.checkpoint.npy
/// --save t.npy`, as an interrupted run says) checkpoints and stops there,
/// its own, and not over `--save`, the table it started from.
fn checkpoint_path(args: &TrainArgs, save: &Path) -> PathBuf {
    if let Some(r) = beside_resume(args, save) {
        r.to_path_buf()
    } else if args.checkpoint_every.is_some() && saves_over_load(args, save) {
        unfinished_save(save, "checkpoint")
    } else {
        save.to_path_buf()
    }
}

/// The `--resume` file where it is one an in-place run of `save` left
/// beside it (`t.checkpoint.npy`, `t.interrupted.npy`, `t.aborted.npy`).
fn beside_resume<'a>(args: &'a TrainArgs, save: &Path) -> Option<&'a Path> {
    let r = args.resume.as_deref()?;
    BESIDE.iter().any(|why| same_file(r, &unfinished_save(save, why))).then_some(r)
}

/// The names an in-place run's files take beside its input.
const BESIDE: [&str; 3] = ["checkpoint", "interrupted", "aborted"];

/// The note on the leftovers of unfinished saves (`tables::leftovers`)
/// lying beside a table just saved at `path`, if there are any: how many,
/// their size, the first names.
fn leftovers_note(path: &Path) -> Option<String> {
    let found = tables::leftovers(path).filter(|f| !f.is_empty())?;
    let bytes: u64 = found.iter().filter_map(|p| p.symlink_metadata().ok()).map(|m| m.len()).sum();
    let names: Vec<String> =
        found.iter().take(3).map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let more = if found.len() > 3 { format!(", … {} more", found.len() - 3) } else { String::new() };
    let folder = match found[0].parent().filter(|f| *f != Path::new(".")) {
        Some(f) => f.display().to_string(),
        None => "the current folder".into(),
    };
    Some(format!(
        "note     {} of unfinished saves in {folder} ({}: {}{more}), left by a killed run (or another run's save in \
         flight): a --resume of a checkpoint there takes what it needs from them; delete them once none does",
        count(found.len() as u64, "temporary file"),
        megabytes(bytes),
        names.join(", ")
    ))
}

/// Where an interrupted or aborted run saves when `--save` is its
/// `--load` table: beside it, `why` before the extension (`t.npy` →
/// `t.interrupted.npy`; the name's bytes kept as they are).
fn unfinished_save(save: &Path, why: &str) -> PathBuf {
    let mut name = save.file_stem().map(|s| s.to_os_string()).unwrap_or_default();
    name.push(".");
    name.push(why);
    if let Some(ext) = save.extension() {
        name.push(".");
        name.push(ext);
    }
    save.with_file_name(name)
}

/// `--tau`'s default as the option is written (its float32, the step's, is
/// `guard::TAU`; parsed as a float64 as every float option is).
const TAU: f64 = 1e-3;
const _: () = assert!(TAU as f32 == latent_line::guard::TAU);

/// An option's value as the float32 the step computes with. A finite
/// value that float32 cannot hold (past its range, or not 0 but rounding
/// to it) is bad input named as given (exit 1), where the rounding made it
/// ±Inf or 0 unseen; NaN, ±Inf and negatives go on to `StepConfig::validate`.
fn single(opt: &str, v: f64) -> anyhow::Result<f32> {
    let f = v as f32;
    if v.is_finite() && f.is_infinite() {
        bail!("invalid {opt}: {} is beyond float32's range (±3.4e38)", shown(v));
    }
    if v != 0.0 && f == 0.0 {
        bail!("invalid {opt}: {} rounds to 0 in float32 (its smallest positive value is 1.4e-45)", shown(v));
    }
    Ok(f)
}

/// A count the device keeps in 32 bits: a larger one is bad input (exit 1),
/// as any value that parses but is out of range.
fn count32(opt: &str, v: u64, max: u32) -> anyhow::Result<u32> {
    match u32::try_from(v) {
        Ok(n) if n <= max => Ok(n),
        _ if max < u32::MAX => bail!("invalid {opt}: {v} is more than {max} (a 32-bit count of one failure past it)"),
        _ => bail!("invalid {opt}: {v} is more than {max} (a 32-bit count)"),
    }
}

/// A number as a user would write it: 1e40, 1e-50, 0.99999999.
fn shown(v: f64) -> String {
    if v != 0.0 && !(1e-5..1e16).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `--resume`: the run state saved beside the checkpoint `path` (`state`,
/// as read with the table's header), checked before any work (the options that shape the run against this run's,
/// its values, the step count against --steps), and the velocity and
/// snapshot that go on with it; a table or sidecar that a killed save
/// left mismatched is taken from the save's leftovers (said so).
#[allow(clippy::too_many_arguments)]
fn resume(
    path: &Path,
    state: latent_line::Result<Option<latent_line::RunState>>,
    args: &TrainArgs,
    cfg: &StepConfig,
    shape: Shape,
    input: Option<&mut tables::TableReader>,
    options: &[(String, String)],
    checked: bool,
) -> anyhow::Result<Resumed> {
    // A sidecar taken from a killed save's leftovers, said so.
    let recovered = |side: Sidecar, (reader, from): (tables::TableReader, Option<PathBuf>)| {
        if let Some(from) = from {
            out!(
                "resume   {}: its {} from {}, left by a save killed between its files",
                path.display(),
                side.name(),
                from.display()
            );
        }
        reader
    };
    let mut state = state?.ok_or_else(|| {
        anyhow::anyhow!("invalid --resume: {} has no run state (was it saved by latent-line?)", path.display())
    })?;
    // The table's fingerprint: as its values stream into the trainer
    // (`unchanged` checks it after), or `checked`, by a pass over its file
    // first.
    if let (Some(want), Some(input)) = (state.table_fingerprint, input) {
        if let Some(have) = input.fingerprint_first(checked)?.filter(|&have| have != want) {
            // A save killed between its renames (the table is the
            // last): the table the state was saved with is among
            // the leftovers beside it, or, for a .safetensors table whose
            // state went beside it (too large for its header), the state
            // the table in place was saved with.
            match (tables::recover(path, shape, want), tables::recover_state(path, have)) {
                (Some((from, reader)), _) => {
                    out!(
                        "resume   {}: its table from {}, left by a save killed between its files",
                        path.display(),
                        from.display()
                    );
                    *input = reader;
                }
                (None, Some((from, older))) => {
                    out!(
                        "resume   {}: its run state from {}, left by a save killed between its files",
                        path.display(),
                        from.display()
                    );
                    state = older;
                }
                (None, None) => bail!(
                    "invalid --resume: {} is not the table its run state was saved with (a save \
                     interrupted between the two?), nor is any file a killed save left beside it; resume \
                     from another checkpoint, or start again with --load",
                    path.display()
                ),
            }
        }
    }
    // SPEC §13: a resume continues the same run, so the options that
    // shape its course must be the checkpoint's.
    if let Some(saved) = &state.options {
        let differ: Vec<String> = saved
            .iter()
            .filter_map(|(k, v)| {
                let now = options.iter().find(|(o, _)| o == k).map(|(_, w)| w.as_str());
                (now != Some(v.as_str())).then(|| format!("{k} {v} (this run: {})", now.unwrap_or("(none)")))
            })
            .collect();
        if !differ.is_empty() {
            bail!(
                "invalid --resume: {} was saved by a run with {}; a resume continues the same run, so give \
                 the same options (or start a new run from it with --load)",
                path.display(),
                differ.join(", ")
            );
        }
    }
    // The state's own values, as a run writes them.
    if let Err(e) = state.check(cfg).and_then(|_| state.check_strikes(shape.rows)) {
        bail!("invalid --resume: {}: {e}", path.display());
    }
    if state.steps > args.steps as u64 {
        bail!(
            "invalid --steps: {} is fewer than the {} steps {} has done (with --resume, --steps is the run's \
             total)",
            args.steps,
            state.steps,
            path.display()
        );
    }
    // With momentum the velocity goes on too (saved beside the table).
    let velocity = if cfg.momentum > 0.0 {
        if !state.velocity {
            bail!(
                "invalid --resume: {} was saved without momentum, so it holds no velocity; resume without --momentum",
                path.display()
            );
        }
        Some(recovered(Sidecar::Velocity, Sidecar::Velocity.load(path, shape, state.velocity_fingerprint, checked)?))
    } else {
        None
    };
    // rollback between two snapshot steps: the snapshot goes on too.
    let snapshot = if state.snapshot && cfg.guard.policy == Policy::Rollback {
        Some(recovered(Sidecar::Snapshot, Sidecar::Snapshot.load(path, shape, state.snapshot_fingerprint, checked)?))
    } else {
        None
    };
    Ok(Resumed { state, velocity, snapshot })
}

/// What `--resume` goes on from: the run state, and the momentum's
/// velocity and rollback's snapshot where the run takes them.
struct Resumed {
    state: latent_line::RunState,
    velocity: Option<tables::TableReader>,
    snapshot: Option<tables::TableReader>,
}

/// A resumed file read into the trainer must give the values its run
/// state recorded (`want`: their fingerprint, where one was): where it was
/// `checked` by a pass of its own before, it changed since; else `Recheck`.
fn unchanged(path: &Path, have: Option<u64>, want: Option<u64>, checked: bool) -> anyhow::Result<()> {
    if want.is_some() && have != want {
        if !checked {
            return Err(Recheck.into());
        }
        bail!(
            "{}: changed while it was read (its values are not those checked before the run); nothing was saved",
            path.display()
        );
    }
    Ok(())
}

/// A line of the summary, printed above a progress bar where one runs.
fn say(bar: &Option<indicatif::ProgressBar>, line: String) {
    match bar {
        Some(b) => b.suspend(|| out!("{line}")),
        None => out!("{line}"),
    }
}

/// SPEC §8's collapse warning, of the table at `step`.
fn collapse_warning(step: usize, d0: f64, fraction: f64, d0_start: f64) -> String {
    format!(
        "warning  step {step}: the anchors are collapsing: d0 = {d0:.4e}, below {fraction} of its start {d0_start:.4e} \
         (SPEC §8)"
    )
}

/// Saves the table at `path` with its run state (SPEC §13), and beside it
/// what a resume needs besides: the momentum velocity, and a rollback
/// snapshot older than the table. All of them are written in full before
/// any replaces the previous checkpoint's (`npy::commit`), so a save that
/// fails leaves that checkpoint whole; the state records the others'
/// fingerprints, so a resume refuses a mixture left by a kill between the
/// renames.
fn save_checkpoint(
    trainer: &mut dyn Trainer,
    path: &std::path::Path,
    tensor: &str,
    carried: Option<&tables::Carried>,
    (d0_start, collapse_step): (Option<f64>, Option<u64>),
    options: &[(String, String)],
) -> anyhow::Result<()> {
    let shape = trainer.shape();
    let mut state = trainer.run_state()?;
    (state.d0_start, state.collapse_step) = (d0_start, collapse_step);
    state.options = Some(options.to_vec());
    if tables::is_safetensors(path) {
        state.tensor = Some(tensor.to_owned());
    }
    // Each array streams from the trainer into its file (a GPU's through
    // bounded readback blocks): no host copy of a table is made.
    let mut files = Vec::new();
    if trainer.has_velocity() {
        let (f, fp) = Sidecar::Velocity.stage(path, shape, &mut |sink| trainer.read_velocity_into(sink).map(drop))?;
        files.push(f);
        state.velocity = true;
        state.velocity_fingerprint = Some(fp);
    }
    // Between two snapshot steps the unbroken run would restore an older
    // table than the checkpoint: it goes beside it.
    if !state.steps.is_multiple_of(trainer.config().guard.snapshot_every as u64) && trainer.has_snapshot() {
        let (f, fp) = Sidecar::Snapshot.stage(path, shape, &mut |sink| trainer.read_snapshot_into(sink).map(drop))?;
        files.push(f);
        state.snapshot = true;
        state.snapshot_fingerprint = Some(fp);
    }
    let mut fill = |sink: &mut latent_line::trainer::Sink| trainer.read_table_into(sink);
    files.extend(tables::stage(path, tensor, shape, &mut fill, carried, Some(state.clone()))?);
    // A sidecar an earlier checkpoint at this path left, which this one's
    // state says it has none of: stale, never read; removed (after the
    // renames, so a kill before this leaves it, as harmless as before; and
    // before the commit lets go of the folder, so that another run saving
    // here at once never links a file as it goes).
    npy::commit_then(files, || {
        for (side, has) in [(Sidecar::Velocity, state.velocity), (Sidecar::Snapshot, state.snapshot)] {
            if !has {
                let _ = std::fs::remove_file(side.path(path));
            }
        }
        // Likewise a .safetensors checkpoint's run state beside it (too
        // large for a header once) when this one's is in the header. (A
        // file written through, such as a pipe or a link to stdout, is not
        // read back; a header that cannot be read back leaves the file
        // beside it: the save itself succeeded.)
        let replaced = npy::destination(path).is_ok_and(|d| std::fs::metadata(d).is_ok_and(|m| m.is_file()));
        if replaced && tables::is_safetensors(path) {
            if let Ok(false) = tables::state_is_beside(path) {
                let _ = std::fs::remove_file(tables::state_sidecar(path));
            }
        }
    })?;
    Ok(())
}

/// The options that shape a run's course (the table aside), spelled as on
/// the command line: saved in a checkpoint's run state and compared on
/// `--resume`. Where the run goes (backend, adapter), how long (--steps),
/// what it writes, and the guard (which acts only on a failing step: after
/// an `abort`, going on under `skip-row` is a resume) are free to change.
fn run_options(cfg: &StepConfig, batches: &Batches) -> Vec<(String, String)> {
    let batches = match batches {
        Batches::Full => "the full table".into(),
        Batches::Random { size, seed } => format!("--batch {size} --seed {seed}"),
        Batches::Indices(ib) => format!("--indices (a file of fingerprint {:016x})", ib.fingerprint()),
    };
    let o: [(&str, String); 13] = [
        ("--lr", format!("{:?}", cfg.lr)),
        ("--eps", format!("{:?}", cfg.eps)),
        ("--naive", cfg.naive.to_string()),
        ("--reduction", name(cfg.reduction)),
        ("--anchors", format!("{},{}", cfg.anchor_a, cfg.anchor_b)),
        ("--endpoints", name(cfg.endpoints)),
        ("--momentum", format!("{:?}", cfg.momentum)),
        ("--weight-decay", format!("{:?}", cfg.weight_decay)),
        ("--clip-norm", format!("{:?}", cfg.clip_norm)),
        ("--margin", format!("{:?}", cfg.margin)),
        ("--margin-weight", format!("{:?}", cfg.margin_weight)),
        // (Not the course, but the collapse step the run state carries is
        // measured by it.)
        ("--collapse-fraction", format!("{:?}", cfg.collapse_fraction)),
        ("batches:", batches),
    ];
    o.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Picks the backend (see `latent_line::backend::open`).
fn open_trainer(
    args: &TrainArgs,
    shape: Shape,
    cfg: StepConfig,
    source: TableSource,
    batches: Batches,
) -> anyhow::Result<(Box<dyn Trainer>, Option<String>)> {
    let o = latent_line::backend::open(args.backend, args.adapter.as_deref(), shape, cfg, source, batches)?;
    Ok((o.trainer, o.note))
}

/// `--profile`'s driver lines: one per pipeline executable, its statistics.
fn print_driver_stats(stats: Option<&latent_line::gpu::driver_stats::DriverStats>) {
    let Some(stats) = stats else { return };
    if let Some(why) = &stats.unavailable {
        out!(
            "driver   statistics not available: {why} ({} pipelines compiled again, none inspected)",
            stats.pipelines.len()
        );
        return;
    }
    out!(
        "driver   statistics of each pipeline (VK_KHR_pipeline_executable_properties, the same SPIR-V compiled again on {})",
        stats.device
    );
    for p in &stats.pipelines {
        let setting = if p.setting.is_empty() { String::new() } else { format!(" [{}]", p.setting) };
        for e in &p.executables {
            let stats: Vec<String> = e.stats.iter().map(|s| format!("{} {}", s.name, s.value)).collect();
            out!("         {}{setting} · {}: {}", p.kernel, e.name, stats.join(" · "));
        }
    }
}
