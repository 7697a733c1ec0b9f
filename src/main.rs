//! The `latent-line` command line (SPEC §13). Library errors arrive as
//! `latent_line::Error`; here they become one line on stderr and exit code 1.
//! This file parses the command line, runs a command and turns its outcome
//! into the exit code; the commands are in `src/cli/`: `train.rs` (the
//! default command: a run, its checkpoints and report), `scan.rs`,
//! `devices.rs`, and `checks.rs` (what the options are checked against
//! before any work).

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

/// Set by `--quiet` and `--json`: the human summary is not printed.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The first error writing to stdout, other than a closed pipe: reported,
/// with exit 1, once the run is over (a full disk under `--json > FILE`
/// must not pass for a written report).
static STDOUT_ERROR: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);

/// Keeps `r`'s error for the end of the run. A closed pipe (`| head`) is
/// not one: the reader took what it wanted.
fn note_stdout(r: std::io::Result<()>) {
    if let Err(e) = r {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let mut first = STDOUT_ERROR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert(e);
        }
    }
}

/// `--json`: `value` on standard output, pretty-printed as it is
/// serialized (a write error, or one in reading a report's lists back,
/// cuts it short: kept for the exit code, as `out!` keeps it).
fn print_json(value: &impl serde::Serialize) {
    use std::io::Write as _;
    // Written as it is serialized (a report of many steps is read back from
    // its temporary files, never held whole).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from);
    note_stdout(written.and_then(|_| writeln!(out)).and_then(|_| out.flush()));
}

/// `println!` that never panics: a closed stdout (`| head`) must not turn a
/// finished run into a crash; the files and the exit code still tell.
/// Other write errors are kept for the exit code (`note_stdout`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if !$crate::QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            $crate::note_stdout(writeln!(std::io::stdout(), $($t)*));
        }
    }};
}

// (After `out!`: the commands use it.)
mod cli;
use cli::scan::{scan, ScanArgs};
use cli::train::{train, TrainArgs};

#[derive(Parser)]
#[command(
    name = "latent-line",
    version,
    about = "NaN-safe training of embedding tables under the collinearity penalty"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Train a table (the default command).
    Train(Box<TrainArgs>),
    /// Scan a saved table for NaN and ±Inf (exit code 3 when it has any).
    Scan(ScanArgs),
    /// The original six-code case, naive and safe side by side, explained.
    Diagnose,
    /// Every GPU adapter, its limits that matter here, and what `auto` picks.
    Devices,
}

/// How a command ended, for the exit code (SPEC §13).
enum Outcome {
    Done,
    /// The guard aborted, or `scan` found non-finite values: exit code 3.
    NonFinite,
    /// Ctrl-C (SIGINT), SIGTERM or SIGHUP: the steps in flight finished,
    /// the table and report saved: 130.
    Interrupted,
}

/// Set by the Ctrl-C handler (SIGINT; SIGTERM and SIGHUP too: `timeout`,
/// `docker stop`, a batch scheduler's end of time, a closed terminal);
/// the trainer stops after the step in flight (before the first step, and
/// at a second signal, the handler ends the run at once: src/cli/train.rs).
/// (`scan`, with nothing to save, ends at once from its own handler:
/// src/cli/scan.rs.)
static INTERRUPTED: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

/// Installs `handler` for SIGINT, SIGTERM and SIGHUP (the `ctrlc` crate),
/// except for a signal that this process was started with ignored: `nohup`
/// ignores SIGHUP, a shell's background job SIGINT, and a run started so
/// must go on through them, as the convention for such signals is.
fn on_signals(handler: impl FnMut() + Send + 'static) {
    #[cfg(unix)]
    let ignored: Vec<libc::c_int> = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .filter(|&sig| {
            // SAFETY: a query (no new action) into a zeroed struct of ours.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN }
        })
        .collect();
    let _ = ctrlc::set_handler(handler);
    #[cfg(unix)]
    for sig in ignored {
        // SAFETY: sets the disposition it had back (SIG_IGN).
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// Which a signal is, of those this process has had (SIGINT, SIGTERM,
/// SIGHUP alike): the first; the same one again, within a second of it
/// (`timeout` signals the process and then its group, a closed terminal
/// hangs up twice), which changes nothing; or a later one, which ends the
/// process at once, wherever it is (a save, a plot, blocked on a pipe no
/// one reads).
#[derive(Clone, Copy, PartialEq)]
enum Signal {
    First,
    Echo,
    Again,
}

/// [`Signal`] of the signal being handled now (called once a signal).
fn which_signal() -> Signal {
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = std::time::Instant::now();
    match FIRST.set(now) {
        Ok(()) => Signal::First,
        Err(_) if FIRST.get().is_some_and(|&f| now.duration_since(f) >= std::time::Duration::from_secs(1)) => {
            Signal::Again
        }
        Err(_) => Signal::Echo,
    }
}

/// Writes `msg` to stderr from a thread of its own: a signal handler that
/// wrote it itself would block, and with it every later signal, on a
/// stderr that blocks (a full pipe no one reads). The thread's handle, to
/// wait on a little.
/// (`None` where no thread can be started: a container's process limit.
/// A panic here would end the handler's thread, and every later signal
/// with it.)
fn tell(msg: String) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .spawn(move || {
            // Above the progress bar where one runs (written over, else).
            let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match bar {
                Some(b) => b.suspend(|| eprintln!("{msg}")),
                None => eprintln!("{msg}"),
            }
        })
        .ok()
}

/// The run's progress bar while it shows (`train`), for `tell`.
static BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Ends the process at once, exit 130, from a signal handler, after saying
/// `msg` (waiting at most 500 ms for stderr): no exit handlers run
/// (another thread may be inside a GPU driver, whose own would then wait
/// on it). What was printed is out already (stdout is flushed by lines).
/// The temporary files of saves in flight and the run's lock files are
/// removed first (`npy::remove_in_flight_and_end`), as no drop will.
fn end_now(msg: &str) -> ! {
    latent_line::npy::remove_in_flight_and_end(|| {
        if let Some(said) = tell(msg.to_owned()) {
            let t = std::time::Instant::now();
            while !said.is_finished() && t.elapsed() < std::time::Duration::from_millis(500) {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        // SAFETY: _exit ends the process; it touches no memory of ours.
        #[cfg(unix)]
        unsafe {
            libc::_exit(130)
        }
        #[cfg(not(unix))]
        std::process::exit(130)
    })
}

fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
}

use latent_line::backend::Backend as BackendChoice;

fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    // Opening Vulkan makes some drivers (Mesa's, through libwayland) print
    // "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
    // twice where it is unset (a headless machine, a container, ssh
    // without a session): no error of ours, and nothing uses the folder
    // here (no window is opened), so any absolute path quiets it. (Set
    // first, while this process has one thread.)
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|v| !v.to_string_lossy().starts_with('/')) {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Which options the command line gave (the report's `options.given`):
    // its long names (the matches' ids include argument groups).
    let given = |m: &clap::ArgMatches| -> Vec<String> {
        let cmd = Cli::command();
        let longs: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
        m.ids()
            .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| id.as_str().replace('_', "-"))
            .filter(|name| longs.contains(&name.as_str()))
            .map(|name| format!("--{name}"))
            .collect()
    };
    match (&mut cli.command, matches.subcommand_matches("train")) {
        (Some(Command::Train(a)), Some(m)) => a.given = given(m),
        _ => cli.train.given = given(&matches),
    }
    let result = match cli.command {
        Some(Command::Train(a)) => train(&a),
        None => train(&cli.train),
        Some(Command::Scan(a)) => scan(&a),
        Some(Command::Devices) => cli::devices::devices(),
        Some(Command::Diagnose) => latent_line::diagnose::report().map_err(Into::into).map(|text| {
            use std::io::Write as _;
            note_stdout(write!(std::io::stdout(), "{text}"));
            Outcome::Done
        }),
    };
    note_stdout(std::io::Write::flush(&mut std::io::stdout()));
    let lost = STDOUT_ERROR.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    // What was printed is lost: a runtime error, unless the run already
    // failed (its own message says more), was interrupted, or ended on
    // non-finite values (exit 3 says more than 1; the loss is said too).
    let result = match (result, lost) {
        (Ok(Outcome::Done), Some(e)) => Err(anyhow::Error::new(e).context("writing to stdout")),
        (r, Some(e)) => {
            eprintln!("latent-line: error: writing to stdout: {e}");
            // The summary that said how the run ended is lost: say it here.
            match &r {
                Ok(Outcome::NonFinite) => {
                    eprintln!("latent-line: exit code 3: non-finite values (the guard aborted the run, or the scan found them)")
                }
                Ok(Outcome::Interrupted) => eprintln!("latent-line: exit code 130: interrupted"),
                _ => {}
            }
            r
        }
        (r, None) => r,
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NonFinite) => ExitCode::from(3),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("latent-line: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The command-line spelling of an option value.
fn name(v: impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_owned()).unwrap_or_default()
}
