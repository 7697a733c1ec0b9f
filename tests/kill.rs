//! Interruptions never cost data (issue 6): SIGINT (or SIGTERM, SIGHUP)
//! during training finishes the steps in flight, saves, writes the report
//! and exits 130; SIGKILL at a
//! random moment of a run that saves every step leaves the output either
//! absent or complete, and the input untouched. Moments are random (seed
//! printed).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_latent-line");

/// `program` with SIGINT, SIGTERM and SIGHUP at their defaults: `cargo
/// test` run in the background (or under nohup) passes them on ignored,
/// and latent-line keeps a signal ignored at its start ignored.
fn command(program: &str) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new(program);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    c
}

fn spawn(args: &[&str]) -> Child {
    spawn_in(args, &std::env::temp_dir())
}

/// `spawn`, its temporary files (a save's copy staged for a pipe) in `tmp`.
fn spawn_in(args: &[&str], tmp: &std::path::Path) -> Child {
    command(BIN)
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("TMPDIR", tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start latent-line")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for `path` to exist (the first checkpoint), up to a limit; past
/// it the child is killed (not left running a long run) and the test fails.
fn wait_for(child: &mut Child, path: &std::path::Path, limit: Duration) {
    wait_until(child, limit, &format!("{} never appeared", path.display()), || path.exists());
}

/// Waits for `done`, up to `limit`; past it the child is killed and the
/// test fails, saying `never`.
fn wait_until(child: &mut Child, limit: Duration, never: &str, done: impl Fn() -> bool) {
    let t = Instant::now();
    while !done() {
        if t.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{never}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs latent-line with `args` to its end; its output.
fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap()
}

/// A named pipe at `path`.
fn mkfifo(path: &std::path::Path) {
    assert!(Command::new("mkfifo").arg(path).status().expect("mkfifo").success());
}

/// `t.npy` in `dir`: a 20000 × 8 table of fresh random values.
fn random_input(dir: &tempfile::TempDir, r: &mut impl Rng) {
    let shape = latent_line::Shape::new(20000, 8).unwrap();
    latent_line::npy::save(dir.path().join("t.npy").as_path(), shape, &random_table(r, 20000, 8)).unwrap();
}

/// Runs latent-line with `args`, sends SIGINT `ms` milliseconds after its
/// first line starting `after`; its lines, once it exited 130.
fn interrupt_after(args: &[&str], after: &str, ms: u64) -> Vec<String> {
    use std::io::BufRead;
    let mut child = command(BIN)
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start latent-line");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.starts_with(after))), "no `{after}` line");
    std::thread::sleep(Duration::from_millis(ms));
    signal(&child, "-INT");
    let said: Vec<String> = lines.map_while(Result::ok).collect();
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(130), "{}", String::from_utf8_lossy(&done.stderr));
    said
}

#[test]
fn sigint_saves_reports_and_exits_130() {
    let seed = seed("sigint");
    let mut r = rng(seed);
    for (backend, sig) in [("cpu", "-INT"), ("gpu", "-INT"), ("cpu", "-TERM"), ("cpu", "-HUP")] {
        let dir = tempfile::tempdir().unwrap();
        let (out, rep) = (dir.path().join("out.npy"), dir.path().join("report.json"));
        let (o, p) = (out.to_str().unwrap(), rep.to_str().unwrap());
        let args = ["--backend", backend, "--rows", "20000", "--dim", "8", "--steps", "10000000"];
        // The first checkpoint (step 20) shows the run is under way: the
        // interrupt then lands among the steps, not in the start-up.
        let mut child = spawn(&[&args[..], &["--save", o, "--report", p, "--checkpoint-every", "20"]].concat());
        wait_for(&mut child, &out, Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(r.random_range(0..500)));
        signal(&child, sig);
        let done = child.wait_with_output().unwrap();
        let ctx = format!("{backend} {sig}, seed {seed}");
        assert_eq!(done.status.code(), Some(130), "{ctx}: {}", String::from_utf8_lossy(&done.stderr));
        let table = latent_line::npy::load(&out).unwrap();
        assert!(table.data.iter().all(|v| v.is_finite()), "{ctx}");
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("out.npy.state.json")).unwrap()).unwrap();
        let steps = state["steps"].as_u64().unwrap();
        assert!((20..10_000_000).contains(&steps), "{ctx}: {steps} steps");
        // One record per step run, plus the final evaluation; the summary
        // says the run was interrupted, and where.
        assert_eq!(report["steps"].as_array().unwrap().len() as u64, steps + 1, "{ctx}");
        assert_eq!(report["summary"]["interrupted"], true, "{ctx}");
        assert_eq!(report["summary"]["steps_done"].as_u64(), Some(steps), "{ctx}");
        // "After the current step is finished and saved" (SPEC §13): the
        // table of an unbroken run of that many steps, bit for bit.
        let whole = dir.path().join("whole.npy");
        let n = steps.to_string();
        let unbroken = [&args[..6], &["--steps", &n, "--save", whole.to_str().unwrap(), "--quiet"]].concat();
        let o = run(&unbroken);
        assert_eq!(o.status.code(), Some(0), "{ctx}: {}", String::from_utf8_lossy(&o.stderr));
        let want = latent_line::npy::load(&whole).unwrap();
        assert!(want.data == table.data, "{ctx}: the interrupted run's table is not that of {steps} steps");
    }
}

/// SPEC §12: an interrupted run never overwrites its input. With --save
/// its --load file (and no checkpoint), SIGINT saves the table beside it,
/// `t.interrupted.npy`: that of an unbroken run of the steps done, which
/// `--resume` goes on from; the input is as it was, byte for byte.
#[test]
fn an_interrupted_run_saves_beside_its_input() {
    let seed = seed("interrupted_beside");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    random_input(&dir, &mut r);
    let input = std::fs::read(p("t.npy")).unwrap();
    // The `guard` line comes just before the steps: the signal then lands
    // among them.
    let args = ["--backend", "cpu", "--steps", "10000000", "--load", &p("t.npy"), "--save", &p("t.npy")];
    let said = interrupt_after(&[&args[..], &["--report", &p("r.json")]].concat(), "guard", r.random_range(100..400));
    assert!(std::fs::read(p("t.npy")).unwrap() == input, "seed {seed}: the input was overwritten");
    assert!(said.iter().any(|l| l.starts_with(&format!("saved    {}; not over", p("t.interrupted.npy")))), "{said:?}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(p("r.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["saved"].as_str(), Some(p("t.interrupted.npy").as_str()));
    let steps = report["summary"]["steps_done"].as_u64().unwrap();
    let n = steps.to_string();
    let o = Command::new(BIN)
        .args(["--backend", "cpu", "--load", &p("t.npy"), "--steps", &n, "--save", &p("whole.npy"), "--quiet"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let (got, want) = (
        latent_line::npy::load(dir.path().join("t.interrupted.npy").as_path()).unwrap(),
        latent_line::npy::load(dir.path().join("whole.npy").as_path()).unwrap(),
    );
    assert!(got.data == want.data, "seed {seed}: not the table of {steps} steps");
    // It resumes: one step more is the unbroken run's next.
    let m = (steps + 1).to_string();
    for (args, out) in
        [(vec!["--resume", &p("t.interrupted.npy")], "resumed.npy"), (vec!["--load", &p("t.npy")], "whole1.npy")]
    {
        let o = Command::new(BIN)
            .args(["--backend", "cpu", "--steps", &m, "--quiet", "--save", &p(out)])
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let load = |name: &str| latent_line::npy::load(dir.path().join(name).as_path()).unwrap().data;
    assert!(load("resumed.npy") == load("whole1.npy"), "seed {seed}: the resume is not the unbroken run");
}

#[test]
fn sigkill_during_saves_never_leaves_a_partial_output() {
    let seed = seed("sigkill");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let (rows, dim) = (150_000usize, 16usize);
    let input = dir.path().join("in.npy");
    let data: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
    latent_line::npy::save(&input, latent_line::Shape::new(rows, dim).unwrap(), &data).unwrap();
    let before = std::fs::read(&input).unwrap();
    for round in 0..5 {
        let out = dir.path().join(format!("out{round}.npy"));
        let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
        // A save every step: the kill lands in a save most of the time.
        let mut child =
            spawn(&["--backend", "cpu", "--load", i, "--save", o, "--steps", "1000000", "--checkpoint-every", "1"]);
        wait_for(&mut child, &out, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(r.random_range(0..400)));
        signal(&child, "-KILL");
        let _ = child.wait();
        let saved = latent_line::npy::load(&out)
            .unwrap_or_else(|e| panic!("round {round}, seed {seed}: a partial or corrupt output: {e}"));
        assert_eq!(saved.data.len(), rows * dim, "round {round}, seed {seed}");
        assert_eq!(std::fs::read(&input).unwrap(), before, "round {round}, seed {seed}: the input changed");
    }
}

/// A signal that comes after the last step, while the finished run saves
/// and reports, interrupts nothing: exit 0 and a report that says so (it
/// was exit 130, `interrupted: true`, with every step done).
#[test]
fn a_signal_after_the_last_step_interrupts_nothing() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (out, rep) = (dir.path().join("out.npy"), dir.path().join("r.json"));
    let mut child = command(BIN)
        // (Many short steps: a report of tens of MB, long to write, so the
        // signal lands while the finished run reports.)
        .args(["--backend", "cpu", "--rows", "4", "--dim", "2", "--steps", "200000"])
        .args(["--save", out.to_str().unwrap(), "--report", rep.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // "saved" comes after every step, before the report is written.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("saved") {
            signal(&child, "-INT");
            break;
        }
    }
    lines.for_each(drop);
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(0), "{}", String::from_utf8_lossy(&done.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
    assert_eq!((&report["summary"]["interrupted"], &report["summary"]["steps_done"]), (&false.into(), &200000.into()));
}

/// `--report /dev/stdout | head`: the reader that closed the pipe took
/// what it wanted, as for the summary: exit 0, not a broken-pipe error.
#[test]
fn a_report_to_a_closed_pipe_is_no_error() {
    use std::io::BufRead;
    let mut child = command(BIN)
        .args(["--backend", "cpu", "--rows", "100", "--dim", "4", "--steps", "300", "--report", "/dev/stdout"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // One line read, then the pipe closed (the report, over 300 steps, is
    // far more than a pipe holds).
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
}

/// Ctrl-C ends a `scan` at once, exit 130, writing nothing (no plot, no
/// temporary file: not beside it, not in TMPDIR): here while it waits on a
/// pipe with no writer, where a flag to be looked at between blocks would
/// never be seen (it was ignored until SIGKILL).
#[cfg(unix)]
#[test]
fn sigint_ends_a_scan_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("t.safetensors");
    mkfifo(&fifo);
    let plot = dir.path().join("p.svg");
    let mut child = spawn_in(&["scan", fifo.to_str().unwrap(), "--plot", plot.to_str().unwrap()], dir.path());
    // (It waits on the pipe by then, its handler set at its start.)
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "-INT");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("a scan waiting on a pipe went on after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{said}");
    assert!(said.contains("interrupted: nothing written"), "{said}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["t.safetensors"], "written or left behind");
}

/// With --save its --load file and checkpoints, the checkpoints go beside
/// the input (`t.checkpoint.npy`), never over it (SPEC §12): SIGINT saves
/// over the last one; the same command again is refused (that checkpoint
/// would be lost); `--resume t.checkpoint.npy --save t.npy`, as the run
/// says, ends with the unbroken run's table at t.npy and removes the
/// checkpoint's files. A link at a name beside the input is refused.
#[cfg(unix)]
#[test]
fn an_interrupted_in_place_run_goes_on_from_its_checkpoint() {
    let seed = seed("in_place_checkpoint");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    random_input(&dir, &mut r);
    std::fs::copy(p("t.npy"), p("orig.npy")).unwrap();
    let input = std::fs::read(p("t.npy")).unwrap();
    let opts = ["--backend", "cpu", "--momentum", "0.5", "--checkpoint-every", "7"];
    let t = p("t.npy");
    let in_place = [&opts[..], &["--load", &t, "--save", &t]].concat();
    let said = interrupt_after(
        &[&in_place[..], &["--steps", "10000000", "--report", &p("r.json")]].concat(),
        "checkpoint",
        r.random_range(0..300),
    );
    assert!(std::fs::read(p("t.npy")).unwrap() == input, "seed {seed}: the input was overwritten");
    let hint = format!("(--resume {} --save {} goes on)", p("t.checkpoint.npy"), p("t.npy"));
    assert!(said.iter().any(|l| l.starts_with(&format!("saved    {}", p("t.checkpoint.npy"))) && l.ends_with(&hint)));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(p("r.json")).unwrap()).unwrap();
    let steps = report["summary"]["steps_done"].as_u64().unwrap() + 9;
    let n = steps.to_string();
    // The same command again would checkpoint over it: refused.
    let o = run(&[&in_place[..], &["--steps", &n]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists, a checkpoint of an earlier run"), "{o:?}");
    let o = run(&[&opts[..], &["--resume", &p("t.checkpoint.npy"), "--save", &p("t.npy"), "--steps", &n]].concat());
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[&opts[..], &["--load", &p("orig.npy"), "--save", &p("whole.npy"), "--steps", &n]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let load = |name: &str| latent_line::npy::load(dir.path().join(name).as_path()).unwrap().data;
    assert!(load("t.npy") == load("whole.npy"), "seed {seed}: not the unbroken run's {steps} steps");
    for gone in ["t.checkpoint.npy", "t.checkpoint.npy.state.json", "t.checkpoint.npy.velocity.npy"] {
        assert!(!dir.path().join(gone).exists(), "{gone} left");
    }
    // Links beside the input would be written through: refused.
    for name in ["t.checkpoint.npy", "t.interrupted.npy"] {
        std::os::unix::fs::symlink(p("orig.npy"), p(name)).unwrap();
        let o = run(&[&in_place[..], &["--steps", "1"]].concat());
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("is a link"), "{o:?}");
        std::fs::remove_file(p(name)).unwrap();
    }
    assert!(std::fs::read(p("orig.npy")).unwrap() == input, "a link's target was written through");
}

/// Waits up to `limit` for `child` to exit; its output (killed and a
/// failure past the limit).
fn exits_within(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Sends SIGINT to `child` `times` at once (the same signal twice, as
/// `timeout` sends it), checks that `what` goes on, sends it again 2.5 s
/// after the first (the rule is a second from the handler's receipt: room
/// for a loaded machine), and gives the output once the child has exited.
fn interrupt_then_again(mut child: Child, times: usize, what: &str) -> std::process::Output {
    let first = Instant::now();
    for _ in 0..times {
        signal(&child, "-INT");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "{what}: stopped by the first signal ({times} at once)");
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(first.elapsed()));
    signal(&child, "-INT");
    exits_within(child, Duration::from_secs(10), &format!("{what}, signalled again"))
}

/// Before its first step a run has nothing to save: a signal ends it at
/// once (exit 130, nothing written), here while it waits on a pipe for its
/// input (a `.safetensors` table read from a pipe), where a flag would be
/// seen only once data came.
#[test]
fn a_signal_before_the_first_step_ends_the_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, out) = (dir.path().join("in.safetensors"), dir.path().join("out.npy"));
    mkfifo(&fifo);
    let child = spawn(&["--backend", "cpu", "--load", fifo.to_str().unwrap(), "--save", out.to_str().unwrap()]);
    // Opening the pipe's other end returns once the run has opened it to
    // read (its signal handler is in place by then); the run then waits
    // for data that never comes.
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(writer));
    });
    let held = rx.recv_timeout(Duration::from_secs(60)).expect("the run never opened its input").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, "-INT");
    let done = exits_within(child, Duration::from_secs(10), "a run waiting on its input");
    drop(held);
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted before the first step: nothing written"), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["in.safetensors"], "files written");
}

/// A signal while a finished run saves stops nothing (the save goes on),
/// nor does the same signal twice (`timeout` signals the process and its
/// group); one that comes a second or more after the first ends the run at
/// once, its temporary file removed: here its save waits for a reader of
/// the pipe it was told to write (`--save` a FIFO no one reads), its copy
/// staged in the run's temporary folder.
#[test]
fn a_second_signal_ends_a_save_that_waits() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.npy");
    mkfifo(&fifo);
    let mut child = command(BIN)
        .args(["--backend", "cpu", "--rows", "1000", "--dim", "8", "--steps", "3", "--save", fifo.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start latent-line");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The `speed` line is the last before the save.
    assert!(lines.any(|l| l.is_ok_and(|l| l.starts_with("speed"))), "no `speed` line");
    let staged = || std::fs::read_dir(tmp.path()).unwrap().count();
    wait_until(&mut child, Duration::from_secs(60), "the save's copy was never staged", || staged() > 0);
    // Meanwhile another run saves into the same folder: it does not wait
    // on this one's pipe.
    let other = command(BIN)
        .args(["--backend", "cpu", "--rows", "1000", "--dim", "8", "--steps", "1", "--quiet", "--save"])
        .arg(dir.path().join("other.npy"))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start latent-line");
    let o = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        exits_within(other, Duration::from_secs(60), "a save into the folder of a save that waits on a pipe")
    }));
    if !matches!(&o, Ok(o) if o.status.success()) {
        // (Not left waiting on its pipe for ever once this test fails.)
        let _ = child.kill();
        let _ = child.wait();
    }
    let o = o.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let done = interrupt_then_again(child, 2, "a finished run's save waiting on its pipe");
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted again: ending now, unsaved"), "{err}");
    assert_eq!(staged(), 0, "the save's temporary copy was left behind");
    // Unsaved: no run state beside the pipe either (it would name a table
    // that never went through).
    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["other.npy", "other.npy.state.json", "out.npy"], "files written");
}

/// A signal the run was started with ignored stays ignored: `nohup`
/// ignores SIGHUP (here by the shell's `trap '' HUP`, as nohup does), and a
/// closed terminal must not stop such a run; SIGINT still does (exit 130,
/// the table saved).
#[test]
fn a_signal_ignored_at_the_start_stays_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.npy");
    let args = ["--backend", "cpu", "--rows", "20000", "--dim", "8", "--steps", "10000000", "--checkpoint-every", "20"];
    let mut child = command("sh")
        .arg("-c")
        .arg("trap '' HUP; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .args(["--save", out.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start latent-line");
    wait_for(&mut child, &out, Duration::from_secs(120));
    signal(&child, "-HUP");
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP, ignored at the start, stopped the run");
    signal(&child, "-INT");
    let done = exits_within(child, Duration::from_secs(60), "a run signalled with SIGINT");
    assert_eq!(done.status.code(), Some(130), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(latent_line::npy::load(&out).is_ok());
}

/// `scan --plot` into a pipe no one reads: a signal while the plot is
/// written lets it finish (the scan has found what it reports), another a
/// second or more later ends the scan at once, exit 130, its temporary
/// copy of the plot removed.
#[test]
fn a_second_signal_ends_a_scans_plot_that_waits() {
    let seed = seed("scan_plot_waits");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    random_input(&dir, &mut r);
    let fifo = dir.path().join("plot.svg");
    mkfifo(&fifo);
    let t = dir.path().join("t.npy");
    let mut child = spawn_in(&["scan", t.to_str().unwrap(), "--plot", fifo.to_str().unwrap()], tmp.path());
    // Its plot staged (a copy in its temporary folder, for the pipe).
    let staged = || std::fs::read_dir(tmp.path()).unwrap().count();
    wait_until(&mut child, Duration::from_secs(60), "the plot was never staged", || staged() > 0);
    let done = interrupt_then_again(child, 1, "a scan's plot waiting on its pipe");
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "seed {seed}: {err}");
    assert!(err.contains("scan     interrupted again: the plot left unwritten"), "{err}");
    assert_eq!(staged(), 0, "the plot's temporary copy was left behind");
}

/// Two runs never save over each other: while a run whose --save is its
/// --load file runs, another such run, a resume of its checkpoint saving
/// to its input, and a run saving at its checkpoint's name are each
/// refused, naming its process (the first would otherwise remove the
/// other's checkpoint as its own, or save over it); interrupted, it leaves
/// its checkpoint and no lock file, and its resume goes on from there to
/// the unbroken run's table.
#[test]
fn a_run_saving_a_file_keeps_other_runs_off_it() {
    let seed = seed("claims");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    random_input(&dir, &mut r);
    std::fs::copy(p("t.npy"), p("orig.npy")).unwrap();
    let (t, ck) = (p("t.npy"), p("t.checkpoint.npy"));
    let every = r.random_range(5..20).to_string();
    let opts = ["--backend", "cpu", "--checkpoint-every", &every];
    let svg = p("draw.svg");
    let mut first = spawn(&[&opts[..], &["--steps", "10000000", "--load", &t, "--save", &t, "--plot", &svg]].concat());
    wait_for(&mut first, Path::new(&ck), Duration::from_secs(60));
    let held = format!("another run, process {}, is writing it", first.id());
    // (`scan` claims its plot as a run does.)
    let o = run(&["scan", &p("orig.npy"), "--plot", &svg]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "scan --plot: {err}");
    assert!(err.contains(&held) && err.contains("invalid --plot"), "scan --plot: {err}");
    for args in [
        vec!["--load", &t, "--save", &t],
        vec!["--resume", &ck, "--save", &t],
        vec!["--rows", "20000", "--dim", "8", "--save", &ck],
    ] {
        let o = run(&[&opts[..], &["--steps", "5"], &args].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&held), "{args:?}: {err}");
    }
    signal(&first, "-INT");
    let done = exits_within(first, Duration::from_secs(60), "an interrupted in-place run");
    assert_eq!(done.status.code(), Some(130), "{}", String::from_utf8_lossy(&done.stderr));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{ck}.state.json")).unwrap()).unwrap();
    let steps = (state["steps"].as_u64().unwrap() + 3).to_string();
    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(
        left,
        ["draw.svg", "orig.npy", "t.checkpoint.npy", "t.checkpoint.npy.state.json", "t.npy"],
        "seed {seed}"
    );
    let o = run(&[&opts[..], &["--steps", &steps, "--resume", &ck, "--save", &t]].concat());
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[&opts[..], &["--steps", &steps, "--load", &p("orig.npy"), "--save", &p("whole.npy")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let load = |name: &str| latent_line::npy::load(dir.path().join(name).as_path()).unwrap().data;
    assert!(load("t.npy") == load("whole.npy"), "seed {seed}: not the unbroken run's {steps} steps");
}
