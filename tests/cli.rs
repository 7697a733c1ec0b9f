//! The command line: bad input gets one clear line, exit code 1 and no
//! output file; good runs save a loadable table and a report.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_latent-line");

/// latent-line with `args`, its runtime folder set (for callers to add
/// their environment or streams).
fn latent_line<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn run(args: &[&str]) -> Output {
    latent_line(args).output().expect("run latent-line")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A raw .npy file with the given header dict and data bytes.
fn npy(path: &Path, dict: &str, data: &[u8]) {
    let mut header = dict.to_string();
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

struct Dir(tempfile::TempDir);
impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).to_string_lossy().into_owned()
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// Runs a bad command with --save and --report into a fresh folder; checks
/// exit code 1, a one-line error containing `expect`, and no new file.
fn refused(dir: &Dir, args: &[&str], expect: &str) {
    let before = dir.files();
    let (save, report) = (dir.s("out.npy"), dir.s("report.json"));
    let mut all: Vec<&str> = vec!["--backend", "cpu", "--steps", "2", "--report", &report];
    if !args.contains(&"--save") {
        all.extend(["--save", &save]);
    }
    all.extend_from_slice(args);
    let o = run(&all);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains("XDG_RUNTIME_DIR")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    assert!(lines[0].contains(expect), "{args:?}: {:?} does not mention {expect:?}", lines[0]);
    assert_eq!(dir.files(), before, "{args:?}: files appeared");
}

#[test]
fn bad_options_are_refused() {
    let dir = Dir::new();
    refused(&dir, &["--rows", "1"], "--rows");
    refused(&dir, &["--rows", "0"], "--rows");
    refused(&dir, &["--rows", "10", "--dim", "0"], "--dim");
    refused(&dir, &["--rows", "10", "--anchors", "3,3"], "--anchors");
    refused(&dir, &["--rows", "10", "--anchors", "0,10"], "--anchors");
    refused(&dir, &["--rows", "10", "--lr", "nan"], "--lr");
    refused(&dir, &["--rows", "10", "--lr", "-0.1"], "--lr");
    refused(&dir, &["--rows", "10", "--lr", "inf"], "--lr");
    refused(&dir, &["--rows", "10", "--eps", "-1e-8"], "--eps");
    refused(&dir, &["--rows", "10", "--eps", "NaN"], "--eps");
    refused(&dir, &["--rows", "10", "--tau", "-1e-3"], "--tau");
    refused(&dir, &["--rows", "10", "--collapse-fraction", "1.5"], "--collapse-fraction");
    // A value float32 or a 32-bit count cannot hold is bad input too,
    // named as given, not as the rounding made it (±Inf, 0, 1).
    refused(&dir, &["--rows", "10", "--lr", "1e40"], "invalid --lr: 1e40 is beyond float32's range");
    refused(&dir, &["--rows", "10", "--eps", "1e-50"], "invalid --eps: 1e-50 rounds to 0 in float32");
    refused(&dir, &["--rows", "10", "--momentum", "0.99999999"], "invalid --momentum: 0.99999999 rounds to 1");
    refused(&dir, &["--rows", "10", "--max-skips", "5000000000"], "invalid --max-skips: 5000000000 is more than");
    refused(&dir, &["--rows", "10", "--snapshot-every", "4294967296"], "invalid --snapshot-every: 4294967296");
    refused(&dir, &["--rows", "10", "--max-rollbacks", "4294967296"], "invalid --max-rollbacks: 4294967296");
    // A guard's limit whose counter would wrap past it (it counts one
    // failure more, then aborts): never reached, so refused.
    for opt in ["--max-skips", "--max-rollbacks"] {
        refused(
            &dir,
            &["--rows", "10", opt, "4294967295"],
            &format!("invalid {opt}: 4294967295 is more than 4294967294"),
        );
    }
    // 4e9 × 64 f32 is 1 TB: refused with the sizes, before any work.
    refused(&dir, &["--rows", "4000000000"], "1024000000000 bytes");
    let missing_dir = dir.s("nope/out.npy");
    refused(&dir, &["--rows", "10", "--save", &missing_dir], "does not exist");
    // A name that ends as a folder's does, whatever is there: refused
    // before the training, not when the trained table is saved.
    for name in ["new.npy/", "new.safetensors/", "new.npy/.", "."] {
        let save = if name == "." { name.to_owned() } else { dir.s(name) };
        refused(&dir, &["--rows", "10", "--save", &save], "names a folder");
    }
    refused(&dir, &["--rows", "10", "--plot", &dir.s("p.svg/")], "names a folder");
    // --tensor where no file is a .safetensors one (a typo went unseen).
    refused(&dir, &["--rows", "10", "--tensor", "emb"], "invalid --tensor");
    // … and a link to such a name.
    std::os::unix::fs::symlink("o.npy/", dir.p("l.npy")).unwrap();
    refused(&dir, &["--rows", "10", "--save", &dir.s("l.npy")], "o.npy/ names a folder");
}

/// SPEC §13: a usage error (an unknown option, a value that does not
/// parse, a missing argument) exits 2, with clap's message, and writes
/// nothing.
#[test]
fn usage_errors_exit_2_and_write_nothing() {
    let dir = Dir::new();
    let save = dir.s("out.npy");
    for (args, expect) in [
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--lr", "abc"], "--lr"),
        (&["--rows", "-1"], "-1"),
        (&["--anchors", "2"], "is not two row numbers"),
        (&["--anchors", "a,b"], "\"a\" is not a row number"),
        (&["--anchors", "1,2,3"], "is not two row numbers"),
        (&["--anchors", "3,-1"], "\"-1\" is not a row number"),
        (&["--on-nonfinite", "sometimes"], "--on-nonfinite"),
        (&["--tensor", "__metadata__"], "not a tensor"),
        (&["--tensor", ""], "an empty tensor name"),
        (&["scan", "t.safetensors", "--tensor", "__metadata__"], "not a tensor"),
        (&["scan"], "FILE"),
    ] {
        let mut all: Vec<&str> = args.to_vec();
        if args[0] != "scan" {
            all.extend(["--backend", "cpu", "--rows", "10", "--steps", "1", "--save", &save]);
        }
        let o = run(&all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: exit code; stderr: {err}");
        assert!(err.starts_with("error: ") && err.contains(expect), "{args:?}: {err}");
        assert!(dir.files().is_empty(), "{args:?}: files appeared");
    }
}

#[test]
fn bad_npy_files_are_refused_and_left_alone() {
    let dir = Dir::new();
    let f32s = |n: usize| vec![0x3fu8; n * 4];
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make, &str)> = vec![
        ("missing.npy", Box::new(|_: &Path| {}), "No such file"),
        ("empty.npy", Box::new(|p: &Path| std::fs::write(p, b"").unwrap()), "not a .npy file"),
        ("text.npy", Box::new(|p: &Path| std::fs::write(p, b"hello, world, not numpy").unwrap()), "magic"),
        (
            "truncated.npy",
            Box::new(move |p: &Path| npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 4), }", &f32s(39))),
            "truncated",
        ),
        (
            "short_header.npy",
            Box::new(|p: &Path| std::fs::write(p, b"\x93NUMPY\x01\x00\xff\x00{'descr'").unwrap()),
            "truncated",
        ),
        (
            "int64.npy",
            Box::new(move |p: &Path| npy(p, "{'descr': '<i8', 'fortran_order': False, 'shape': (10, 4), }", &f32s(80))),
            "dtype",
        ),
        (
            "bigendian.npy",
            Box::new(move |p: &Path| npy(p, "{'descr': '>f4', 'fortran_order': False, 'shape': (10, 4), }", &f32s(40))),
            "dtype",
        ),
        (
            "rank1.npy",
            Box::new(move |p: &Path| npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (40,), }", &f32s(40))),
            "2-D",
        ),
        (
            "rank3.npy",
            Box::new(move |p: &Path| {
                npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5, 4), }", &f32s(40))
            }),
            "2-D",
        ),
        (
            "huge.npy",
            Box::new(move |p: &Path| {
                npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 64), }", &f32s(40))
            }),
            "truncated",
        ),
        (
            "one_row.npy",
            Box::new(move |p: &Path| npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }", &f32s(4))),
            "at least 2",
        ),
    ];
    for (name, make, expect) in cases {
        let path = dir.p(name);
        make(&path);
        let before = std::fs::read(&path).ok();
        // Even with the input as the output, a refused run leaves it as it was.
        let p = path.to_string_lossy().into_owned();
        let o = run(&["--backend", "cpu", "--load", &p, "--save", &p]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {err}");
        assert!(lines[0].contains(name) && lines[0].contains(expect), "{name}: {:?} lacks {expect:?}", lines[0]);
        assert_eq!(std::fs::read(&path).ok(), before, "{name}: input changed");
    }
    let names = dir.files();
    assert!(names.iter().all(|n| !n.starts_with(".latent-line-")), "temporary files left: {names:?}");
}

#[test]
fn rows_disagreeing_with_the_file_are_refused() {
    let dir = Dir::new();
    let path = dir.p("t.npy");
    latent_line::npy::save(&path, latent_line::Shape::new(6, 3).unwrap(), &[0.5; 18]).unwrap();
    refused(&dir, &["--load", &path.to_string_lossy(), "--rows", "7"], "--rows");
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_run_saves_a_loadable_table_and_a_report_and_repeats_exactly() {
    let dir = Dir::new();
    for backend in ["cpu", "gpu"] {
        let mut saved = Vec::new();
        for i in 0..2 {
            let (out, rep) = (dir.s(&format!("{backend}{i}.npy")), dir.s(&format!("{backend}{i}.json")));
            let o = run(&[
                "--backend",
                backend,
                "--rows",
                "3000",
                "--dim",
                "8",
                "--steps",
                "30",
                "--seed",
                "11",
                "--save",
                &out,
                "--report",
                &rep,
            ]);
            assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
            let t = latent_line::npy::load(&dir.p(&format!("{backend}{i}.npy"))).unwrap();
            assert_eq!((t.shape.rows, t.shape.dim), (3000, 8));
            let r = report(&dir.p(&format!("{backend}{i}.json")));
            assert_eq!(r["steps"].as_array().unwrap().len(), 31, "{backend}");
            let s = &r["summary"];
            assert!(s["all_finite"].as_bool().unwrap());
            assert!(s["mean_excess_last"].as_f64().unwrap() * 100.0 < s["mean_excess_first"].as_f64().unwrap());
            assert_eq!((s["steps_done"].as_u64(), &s["interrupted"]), (Some(30), &serde_json::json!(false)));
            assert_eq!(r["device"]["backend"], backend);
            // The median step time (SPEC §12): on the GPU (lavapipe has
            // timestamp queries) each step's own, from its pass; on the CPU
            // the spacing of the record groups.
            let timed: Vec<f64> =
                r["steps"].as_array().unwrap().iter().filter_map(|e| e["gpu_seconds"].as_f64()).collect();
            let stdout = String::from_utf8_lossy(&o.stdout);
            if backend == "gpu" {
                assert_eq!(s["median_step_clock"], "gpu-timestamps");
                assert_eq!(timed.len(), 30, "every step timed, the final evaluation not: {}", r["steps"]);
                assert!(timed.iter().all(|&t| t > 0.0));
                let mut sorted = timed.clone();
                sorted.sort_by(f64::total_cmp);
                // (serde_json reads a float to within an ulp.)
                let median = s["median_step_seconds"].as_f64().unwrap();
                assert!((median - 0.5 * (sorted[14] + sorted[15])).abs() <= 1e-12 * median, "{median} of {sorted:?}");
                assert!(stdout.contains("the median of 30 steps' passes (timestamp queries)"), "{stdout}");
            } else {
                assert_eq!(s["median_step_clock"], "wall-clock");
                assert!(timed.is_empty() && !stdout.contains("steps' passes"), "{stdout}");
            }
            saved.push(std::fs::read(&out).unwrap());
        }
        assert_eq!(saved[0], saved[1], "{backend}: two runs differ");
    }
}

#[test]
fn loading_trains_the_file_and_may_overwrite_it() {
    let dir = Dir::new();
    let path = dir.p("t.npy");
    let shape = latent_line::Shape::new(50, 4).unwrap();
    let data: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0).collect();
    latent_line::npy::save(&path, shape, &data).unwrap();
    let p = path.to_string_lossy().into_owned();
    let o = run(&["--backend", "cpu", "--load", &p, "--save", &p, "--steps", "3", "--anchors", "4,9"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let back = latent_line::npy::load(&path).unwrap();
    assert_eq!(back.shape, shape);
    assert_ne!(back.data, data, "the table was not trained");
    assert_eq!(&back.data[16..20], &data[16..20], "frozen anchor row 4 changed");
    // The table, and its run state beside it (for --resume); no temporary file left.
    assert_eq!(dir.files(), vec!["t.npy", "t.npy.state.json"]);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.p("t.npy.state.json")).unwrap()).unwrap();
    assert_eq!(state["steps"], 3);
}

#[test]
fn the_main_job_meets_its_bar() {
    // `latent-line --rows 1000000`: mean excess down ≥ 100×, all finite.
    let dir = Dir::new();
    let rep = dir.s("r.json");
    let started = std::time::Instant::now();
    let o = run(&["--rows", "1000000", "--report", &rep]);
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = report(&dir.p("r.json"));
    // The options given, told from the defaults filled in beside them.
    assert_eq!(r["options"]["given"], serde_json::json!(["--rows", "--report"]));
    assert_eq!((&r["options"]["lr"], &r["options"]["steps"]), (&serde_json::json!(0.2), &100.into()));
    let s = &r["summary"];
    // The lr as the f32 the steps used, written as such.
    assert_eq!(s["lr_last"].to_string(), "0.2");
    let (first, last) = (s["mean_excess_first"].as_f64().unwrap(), s["mean_excess_last"].as_f64().unwrap());
    assert!(last * 100.0 <= first, "mean excess {first} → {last}");
    assert!(s["all_finite"].as_bool().unwrap());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("1000000 × 64"), "{out}");
    // The step time is the steps' wall clock over their number: positive,
    // within the process's wall time, and what the GB/s figure rests on.
    let step = s["step_seconds"].as_f64().unwrap();
    assert!(step > 0.0 && step * 100.0 <= wall, "100 steps of {step} s in a {wall} s run");
    // SPEC's defaults, in brackets there: ε, anchors 0 and R − 1, frozen
    // endpoints, no margin (λ 1), plain SGD, no clipping, skip-step with
    // K = 10, snapshots every 100 steps, back-off 0.5, 3 rollbacks; τ 1e-3,
    // the collapse below 0.1 of d0 at step 0.
    let c = &r["config"];
    let want = serde_json::json!({
        "anchor_a": 0, "anchor_b": 999_999, "endpoints": "frozen", "margin": 0.0,
        "margin_weight": 1.0, "momentum": 0.0, "weight_decay": 0.0, "clip_norm": 0.0, "reduction": "sum",
        "naive": false, "tau": 0.001, "collapse_fraction": 0.1,
        "guard": { "policy": "skip-step", "max_skips": 10, "snapshot_every": 100, "backoff": 0.5, "max_rollbacks": 3 },
    });
    for (key, value) in want.as_object().unwrap() {
        assert_eq!(&c[key], value, "config {key}: {c}");
    }
    assert_eq!(c["eps"].as_f64().map(|e| e as f32), Some(1e-8), "{c}");
    // SPEC §15: a full-table step reads and writes every row: 2·R·D·4 bytes.
    assert_eq!(s["bytes_per_step"].as_u64(), Some(2 * 1_000_000 * 64 * 4));
    let gbps = s["effective_gb_per_s"].as_f64().unwrap();
    assert!((gbps - s["bytes_per_step"].as_f64().unwrap() / step / 1e9).abs() <= 1e-6 * gbps);
    assert!(out.contains("ms/step (wall clock over 100 steps)"), "{out}");
    // SPEC §14: `auto` takes a hardware GPU, else the CPU, saying so (CI's
    // only adapter is lavapipe, a software one).
    if r["device"]["backend"] == "cpu" {
        assert!(out.contains("auto: ") && out.contains("the CPU backend runs instead"), "{out}");
    }
}

/// A table with NaN planted at (row, col) pairs, saved as .npy.
fn table_with(path: &Path, rows: usize, dim: usize, bad: &[(usize, usize, f32)]) -> Vec<f32> {
    let mut t: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
    for &(r, c, v) in bad {
        t[r * dim + c] = v;
    }
    let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy(path, &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"), &bytes);
    t
}

#[test]
#[cfg(target_os = "linux")]
fn a_report_to_standard_output_is_written_there_and_links_are_followed() {
    // `--report /dev/stdout` (or a link to it): written through, appended
    // to what the run printed, the links left as they are; staged in
    // TMPDIR, which is left empty.
    let dir = Dir::new();
    let out = dir.p("out.json");
    std::os::unix::fs::symlink("/proc/self/fd/1", &out).unwrap();
    let tmp = Dir::new();
    let run_in_tmp = |args: &[&str], stdout: std::process::Stdio| {
        latent_line(args).env("TMPDIR", tmp.0.path()).stdout(stdout).output().unwrap()
    };
    let small = ["--backend", "cpu", "--rows", "40", "--dim", "3", "--steps", "1"];
    let o =
        run_in_tmp(&[&small[..], &["--quiet", "--report", &dir.s("out.json")]].concat(), std::process::Stdio::piped());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the report on standard output");
    assert_eq!(r["summary"]["steps_done"], 1);
    assert!(std::fs::symlink_metadata(&out).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(dir.files(), ["out.json"]);
    // Standard output redirected to a file (`>> run.log`, `> run.log`):
    // the report goes after what was there and what the run printed, and
    // the run's last line after the report, nothing over anything.
    let log = dir.p("run.log");
    for append in [true, false] {
        std::fs::write(&log, "PREVIOUS\n").unwrap();
        let f = std::fs::OpenOptions::new().append(append).write(true).truncate(!append).open(&log).unwrap();
        let o = run_in_tmp(&[&small[..], &["--report", "/dev/stdout"]].concat(), f.into());
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = std::fs::read_to_string(&log).unwrap();
        let before = if append { "PREVIOUS\n" } else { "" };
        assert!(text.starts_with(&format!("{before}device   cpu")), "{text}");
        let at = text.find("\n{").expect("the report after the summary") + 1;
        let mut json = serde_json::Deserializer::from_str(&text[at..]).into_iter::<serde_json::Value>();
        let r = json.next().unwrap().unwrap();
        assert_eq!(r["summary"]["steps_done"], 1, "{text}");
        assert_eq!(&text[at + json.byte_offset()..], "\nreport   /dev/stdout\n", "{text}");
    }
    std::fs::remove_file(&log).unwrap();
    assert!(std::fs::read_dir(tmp.0.path()).unwrap().next().is_none(), "a temporary file was left in TMPDIR");
    // A folder, or a link to one, is refused before any step.
    std::fs::create_dir(dir.p("rep.json")).unwrap();
    std::fs::create_dir(dir.p("tab.npy")).unwrap();
    std::os::unix::fs::symlink("rep.json", dir.p("lnk.json")).unwrap();
    for (opt, path) in [("--report", "rep.json"), ("--save", "tab.npy"), ("--report", "lnk.json")] {
        let o = run(&[&small[..], &[opt, &dir.s(path)]].concat());
        assert_eq!(o.status.code(), Some(1), "{path}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("invalid {opt}: ")) && stderr(&o).contains("is a folder"),
            "{}",
            stderr(&o)
        );
        assert!(!String::from_utf8_lossy(&o.stdout).contains("start    loss"), "{path}: trained before refusing");
    }
    // A dangling link is where a save would create its file: one output
    // through it never lands on another.
    std::os::unix::fs::symlink("t.npy", dir.p("d.json")).unwrap();
    let o = run(&[&small[..], &["--save", &dir.s("t.npy"), "--report", &dir.s("d.json")]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid --save: ") && stderr(&o).contains("also the --report file"), "{}", stderr(&o));
    assert!(!dir.p("t.npy").exists());
}

#[test]
fn a_checkpoint_killed_between_its_files_resumes_from_what_the_kill_left() {
    // A checkpoint's files are replaced one after another (velocity, run
    // state, table): a kill between two renames leaves some new, some old,
    // and beside them the new ones not yet renamed (.latent-line-*.tmp)
    // and the old ones replaced (.latent-line-old-*). Made here by hand
    // from the checkpoints of steps 2 and 3: the resume finds the file its
    // run state was saved with, and ends where an unbroken run does.
    let dir = Dir::new();
    let base = ["--backend", "cpu", "--rows", "80", "--dim", "4", "--momentum", "0.9", "--lr", "0.05"];
    let save = |steps: &str, to: &str| {
        let o = run(&[&base[..], &["--steps", steps, "--save", &dir.s(to), "--quiet"]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    };
    save("2", "two.npy");
    save("3", "three.npy");
    save("6", "unbroken.npy");
    let files = |stem: &str| {
        [".npy", ".npy.state.json", ".npy.velocity.npy"]
            .map(|ext| std::fs::read(dir.p(&format!("{stem}{ext}"))).unwrap())
    };
    let ([t2, _, v2], [t3, s3, v3]) = (files("two"), files("three"));
    // (case, the checkpoint's table, state and velocity, the leftover's name and bytes)
    type Mix<'a> = (&'a str, [&'a Vec<u8>; 3], (&'a str, &'a Vec<u8>));
    let s2 = files("two")[1].clone();
    // The old table, a NaN in its last value: it is not the one resumed,
    // so its NaN is no finding of the run (the recovered table is scanned).
    let mut t2_nan = t2.clone();
    let n = t2_nan.len();
    t2_nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let cases: [Mix; 2] = [
        // Killed before the table's rename: new state, velocity; old table.
        ("table", [&t2_nan, &s3, &v3], (".latent-line-Ab12Cd.tmp", &t3)),
        // Killed before the state's rename: new velocity; old state, table.
        ("velocity", [&t2, &s2, &v3], (".latent-line-old-Ef34Gh", &v2)),
    ];
    for (case, [t, st, v], (left, left_bytes)) in cases {
        let sub = Dir::new();
        let ck = sub.s("ck.npy");
        std::fs::write(sub.p("ck.npy"), t).unwrap();
        std::fs::write(sub.p("ck.npy.state.json"), st).unwrap();
        std::fs::write(sub.p("ck.npy.velocity.npy"), v).unwrap();
        // Without the leftover: refused, naming the file that does not belong.
        let o = run(&[&base[..], &["--steps", "6", "--resume", &ck, "--save", &ck]].concat());
        assert_eq!(o.status.code(), Some(1), "{case}: {}", stderr(&o));
        assert!(stderr(&o).contains("nor is any file a killed save left beside it"), "{case}: {}", stderr(&o));
        std::fs::write(sub.p(left), left_bytes).unwrap();
        let o = run(&[&base[..], &["--steps", "6", "--resume", &ck, "--save", &ck]].concat());
        assert_eq!(o.status.code(), Some(0), "{case}: {}", stderr(&o));
        // It says which file it took, and for which part.
        let said = String::from_utf8_lossy(&o.stdout).into_owned();
        let part = if case == "table" { "its table from" } else { "its velocity from" };
        assert!(said.contains(part) && said.contains(left), "{case}: {said}");
        assert!(!said.contains("input "), "{case}: the table left aside was scanned: {said}");
        // The leftover is kept (another checkpoint there may need it) and said.
        assert!(sub.p(left).exists(), "{case}: the leftover was removed");
        assert!(
            said.contains(&format!("note     1 temporary file of unfinished saves in {}", sub.0.path().display()))
                && said.contains(left),
            "{case}: {said}"
        );
        let unbroken = std::fs::read(dir.p("unbroken.npy")).unwrap();
        assert!(std::fs::read(sub.p("ck.npy")).unwrap() == unbroken, "{case}: not the unbroken run's table");
    }
}

#[test]
fn a_checkpoint_leaves_no_sidecar_its_run_state_does_not_have() {
    // Step 4 of snapshots every 3 keeps its snapshot beside the table; the
    // checkpoint of step 6, a snapshot step, has none, and the old one goes.
    let dir = Dir::new();
    let ck = dir.s("ck.npy");
    let base =
        ["--backend", "cpu", "--rows", "60", "--dim", "3", "--on-nonfinite", "rollback", "--snapshot-every", "3"];
    let o = run(&[&base[..], &["--steps", "4", "--save", &ck]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.p("ck.npy.snapshot.npy").exists());
    let o = run(&[&base[..], &["--steps", "6", "--resume", &ck, "--save", &ck]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // (A clean folder: no note of leftovers.)
    assert!(!String::from_utf8_lossy(&o.stdout).contains("unfinished saves"), "{}", String::from_utf8_lossy(&o.stdout));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.p("ck.npy.state.json")).unwrap()).unwrap();
    assert_eq!((&state["steps"], &state["snapshot"]), (&6.into(), &false.into()));
    assert_eq!(dir.files(), ["ck.npy", "ck.npy.state.json"]);
}

/// rollback's backoff can take lr to 0 (f32 underflow), from where the
/// steps change nothing: warned once, at the first step whose lr is 0,
/// on both backends; a backoff that never gets there, no warning.
#[test]
fn rollback_warns_once_when_lr_backs_off_to_zero() {
    let seed = common::seed("lr_zero");
    let dir = Dir::new();
    let mut table = common::random_table(&mut common::rng(seed), 40, 4);
    table[20 * 4 + 1] = f32::NAN; // every step fails; the snapshot holds it too
    latent_line::npy::save(&dir.p("t.npy"), latent_line::Shape::new(40, 4).unwrap(), &table).unwrap();
    for backend in ["cpu", "gpu"] {
        let args = |backoff: &str| {
            let t = dir.s("t.npy");
            let args = ["--backend", backend, "--load", &t, "--steps", "20", "--on-nonfinite", "rollback"];
            run(&[&args[..], &["--backoff", backoff, "--max-rollbacks", "10"]].concat())
        };
        // 0.2 × 1e-30 × 1e-30 is 0 in float32: step 2's lr.
        let o = args("1e-30");
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(3), "{backend}: {text}{}", stderr(&o));
        let warned: Vec<&str> = text.lines().filter(|l| l.contains("lr has backed off to 0")).collect();
        assert_eq!(warned, ["warning  step 2: lr has backed off to 0 (rollbacks × --backoff 1e-30, in float32): the steps change nothing from here"], "{backend}: {text}");
        let o = args("0.5");
        assert!(!String::from_utf8_lossy(&o.stdout).contains("backed off to 0"), "{backend}");
    }
}

#[test]
fn a_resume_refuses_a_run_state_no_run_could_have_written() {
    // A run state edited by hand (or damaged): its lr must be positive and
    // no larger than --lr (rollbacks only back it off), its d0 a distance.
    let dir = Dir::new();
    let ck = dir.s("ck.npy");
    let base = ["--backend", "cpu", "--rows", "60", "--dim", "3"];
    let o = run(&[&base[..], &["--steps", "2", "--save", &ck]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let state_path = dir.p("ck.npy.state.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    for (key, value, says) in [
        ("lr", serde_json::json!(-5.0), "lr -5"),
        ("lr", serde_json::json!(0.4), "lr 0.4"),
        ("lr", serde_json::json!(1e39), "lr inf"),
        ("d0_start", serde_json::json!(-1.0), "d0_start Some(-1.0)"),
        ("collapse_step", serde_json::json!(3), "collapse at step Some(3), after the 2 steps done"),
        // skip-row's strike counts: rows of the table, once each, in order.
        ("strikes", serde_json::json!([[60, 1]]), "strikes (60, 1)"),
        ("strikes", serde_json::json!([[5, 1], [5, 2]]), "strikes (5, 2)"),
        ("strikes", serde_json::json!([[7, 0]]), "strikes (7, 0)"),
        ("strikes", serde_json::json!([[7, 4294967295u32]]), "strikes (7, 4294967295)"),
    ] {
        let mut bad = good.clone();
        bad[key] = value;
        std::fs::write(&state_path, serde_json::to_vec(&bad).unwrap()).unwrap();
        let policy = if key == "strikes" { "skip-row" } else { "skip-step" };
        let o = run(&[&base[..], &["--steps", "4", "--resume", &ck, "--on-nonfinite", policy]].concat());
        assert_eq!(o.status.code(), Some(1), "{key}: {}", stderr(&o));
        assert!(stderr(&o).contains(says) && stderr(&o).contains("run state"), "{key}: {}", stderr(&o));
        // Named by its file, before any work (nothing printed).
        assert!(stderr(&o).contains(&format!("invalid --resume: {ck}: ")), "{key}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{key}: {}", String::from_utf8_lossy(&o.stdout));
    }
    // A backed-off lr is one a run writes (down to 0, where many rollbacks
    // take it in f32): taken, and said.
    for (lr, says) in [(0.05, "now 0.05"), (0.0, "now 0")] {
        let mut backed = good.clone();
        backed["lr"] = serde_json::json!(lr);
        std::fs::write(&state_path, serde_json::to_vec(&backed).unwrap()).unwrap();
        let o = run(&[&base[..], &["--steps", "4", "--resume", &ck]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(&format!("lr 0.2 ({says}, backed off by the rollbacks before the resume)")), "{text}");
    }
}

#[test]
fn a_loss_that_overflows_is_inf_and_every_step_lists_its_scans() {
    // Row 7 holds 1e30: (x − p)² overflows f32, so its distance and its
    // loss term are +Inf (not NaN): the loss is +Inf, as PyTorch's sum
    // would be; its gradient, (x − p)/d1 = 1e30/Inf = 0, is finite, so the
    // step is applied and the loss alone reported (README).
    let dir = Dir::new();
    let input = dir.s("in.npy");
    table_with(&dir.p("in.npy"), 100, 3, &[(7, 1, 1e30)]);
    for backend in ["cpu", "gpu"] {
        let rep = dir.s(&format!("r-{backend}.json"));
        let o = run(&["--backend", backend, "--load", &input, "--steps", "2", "--report", &rep]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{backend}: {text}{}", stderr(&o));
        assert!(text.contains("start    loss inf · mean excess inf"), "{backend}: {text}");
        assert!(text.contains("after 2 steps"), "{backend}: {text}");
        let r = report(&dir.p(&format!("r-{backend}.json")));
        for (i, step) in r["steps"].as_array().unwrap().iter().enumerate() {
            let scans = &step["nonfinite"];
            // Every entry has every buffer's scan, clean ones included.
            assert_eq!((&scans["loss"]["pos_inf"], &scans["loss"]["nan"]), (&1.into(), &0.into()), "{backend} {i}");
            assert_eq!(scans["loss"]["rows"][0], 7, "{backend} {i}");
            assert_eq!(
                (&scans["gradient"]["nan"], &scans["table"]["pos_inf"]),
                (&0.into(), &0.into()),
                "{backend} {i}"
            );
            assert!(scans["gradient"]["first"].is_null() && scans["table"]["rows"] == serde_json::json!([]));
        }
    }
}

#[test]
fn scan_reports_findings_with_exit_code_3_and_clean_files_with_0() {
    let dir = Dir::new();
    let (bad, clean) = (dir.s("bad.npy"), dir.s("clean.npy"));
    table_with(&dir.p("bad.npy"), 300, 6, &[(17, 4, f32::NAN), (250, 0, f32::NEG_INFINITY), (251, 5, f32::INFINITY)]);
    table_with(&dir.p("clean.npy"), 300, 6, &[(3, 3, f32::from_bits(1))]); // a subnormal is finite
    for backend in ["cpu", "gpu"] {
        let o = run(&["scan", &bad, "--backend", backend]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(3), "{backend}: {text}{}", stderr(&o));
        assert!(text.contains("1 NaN · 1 +Inf · 1 -Inf · in 3 rows"), "{backend}: {text}");
        assert!(text.contains("first    row 17 column 4 · NaN · bits 0x7fc00000"), "{backend}: {text}");
        assert!(text.contains("rows     17 250 251"), "{backend}: {text}");
        let o = run(&["scan", &clean, "--backend", backend]);
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", String::from_utf8_lossy(&o.stdout));
    }
    // A one-row table is scanned (training needs two rows: it is refused
    // there, naming the file); an empty one is refused, saying why.
    table_with(&dir.p("one.npy"), 1, 5, &[(0, 3, f32::INFINITY)]);
    for backend in ["cpu", "gpu"] {
        let o = run(&["scan", &dir.s("one.npy"), "--backend", backend]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(3), "{backend}: {text}{}", stderr(&o));
        assert!(text.contains("0 NaN · 1 +Inf · 0 -Inf · in 1 row\n"), "{backend}: {text}");
        assert!(text.contains("first    row 0 column 3 · +Inf"), "{backend}: {text}");
    }
    let o = run(&["--load", &dir.s("one.npy"), "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("one.npy: a table of 1 row(s); latent-line needs at least 2"), "{}", stderr(&o));
    npy(&dir.p("empty.npy"), "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }", &[]);
    let o = run(&["scan", &dir.s("empty.npy")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("empty.npy: a table of 0 rows: nothing to scan"), "{}", stderr(&o));
    // Rows too wide are refused in the file's terms (scan has no --dim).
    npy(
        &dir.p("wide.npy"),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4194305), }",
        &vec![0u8; 4 * 4194305],
    );
    let o = run(&["scan", &dir.s("wide.npy")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("wide.npy: rows of 4194305 columns; at most 4194304 (2^22"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("--dim"), "{}", stderr(&o));
    // --plot: where the bad rows sit, one bar per span of rows that has any.
    let svg = dir.s("where.svg");
    let o = run(&["scan", &bad, "--plot", &svg]);
    assert_eq!(o.status.code(), Some(3));
    let text = std::fs::read_to_string(dir.p("where.svg")).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses");
    assert!(doc.descendants().filter_map(|n| n.text()).any(|t| t.contains("3 rows with NaN or ±Inf of 300")), "{text}");
    // Rows 17, 250 and 251 fall in spans 11, 166 and 167 of the 200 spans
    // of 1.5 rows: three red bars.
    let red = doc.descendants().filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#FF0000")).count();
    assert_eq!(red, 3, "{text}");
    // The file streamed to the GPU in blocks of 13 values (rows of 6 split
    // mid-way): the same findings and the same picture.
    let svg_gpu = dir.s("where-gpu.svg");
    let o = latent_line(["scan", &bad, "--backend", "gpu", "--plot", &svg_gpu])
        .env("LATENT_LINE_TRANSFER_BLOCK", "52")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{said}{}", stderr(&o));
    assert!(said.contains("1 NaN · 1 +Inf · 1 -Inf · in 3 rows") && said.contains("rows     17 250 251"), "{said}");
    assert_eq!(std::fs::read_to_string(dir.p("where-gpu.svg")).unwrap(), text);
    // A plot named by a link to (or a second name of) the file scanned
    // would replace it: refused, the file kept.
    let kept = std::fs::read(&bad).unwrap();
    std::fs::hard_link(&bad, dir.p("second.svg")).unwrap();
    let mut names = vec!["second.svg"];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&bad, dir.p("link.svg")).unwrap();
        names.push("link.svg");
    }
    for name in names {
        let o = run(&["scan", &bad, "--plot", &dir.s(name)]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("is also the scanned file"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&bad).unwrap(), kept, "{name}");
    }
    let o = run(&["scan", &dir.s("missing.npy")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.npy"), "{}", stderr(&o));
    // --tensor names a tensor of a .safetensors file: given with an .npy
    // one, refused (as training refuses it), before any output.
    let o = run(&["scan", &bad, "--tensor", "emb"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(stderr(&o).contains("invalid --tensor: it names a tensor of a .safetensors file"), "{}", stderr(&o));
    // A float64 file's values beyond float32's range are finite in the
    // file: scanned clean (exit 0), the note says how many there are; its
    // own NaN is found (exit 3), and only it.
    let values = [1.5f64, 1e300, -1e39, 2.0, 3.0, 4.0];
    for (name, last, code) in [("f64.npy", 5.0, 0), ("f64nan.npy", f64::NAN, 3)] {
        let mut data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.extend(last.to_le_bytes());
        data.extend(6.0f64.to_le_bytes());
        npy(&dir.p(name), "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2), }", &data);
        for backend in ["cpu", "gpu"] {
            let o = run(&["scan", &dir.s(name), "--backend", backend]);
            let text = String::from_utf8_lossy(&o.stdout);
            assert_eq!(o.status.code(), Some(code), "{name} {backend}: {text}{}", stderr(&o));
            assert!(text.contains("2 finite values beyond float32's range"), "{name} {backend}: {text}");
            if code == 3 {
                assert!(text.contains("1 NaN · 0 +Inf · 0 -Inf · in 1 row\n"), "{name} {backend}: {text}");
            }
            // --json: the same findings as fields, and nothing else on
            // standard output; the file's own bits of its first NaN.
            let o = run(&["scan", &dir.s(name), "--backend", backend, "--json"]);
            assert_eq!(o.status.code(), Some(code), "{name} {backend}: {}", stderr(&o));
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("scan --json prints JSON alone");
            assert_eq!(
                (&j["dtype"], &j["rows"], &j["dim"], &j["backend"]),
                (&"f64".into(), &4.into(), &2.into(), &backend.into())
            );
            assert!(j["note"].as_str().unwrap().contains("2 finite values"), "{j}");
            assert_eq!(j["all_finite"], code == 0, "{j}");
            if code == 3 {
                assert_eq!(j["scan"]["nan"], 1);
                assert_eq!((&j["scan"]["rows"], &j["scan"]["bad_rows"]), (&serde_json::json!([3]), &1.into()));
                assert_eq!((&j["scan"]["first"]["row"], &j["scan"]["first"]["col"]), (&3.into(), &0.into()));
                assert_eq!(j["first_file_bits"], format!("0x{:016x}", f64::NAN.to_bits()), "{j}");
            } else {
                assert!(j["scan"]["first"].is_null() && j["first_file_bits"].is_null(), "{j}");
            }
        }
    }
    // A name that is not UTF-8: written lossily, not a broken object.
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = dir.0.path().join(std::ffi::OsStr::from_bytes(b"odd\xff.npy"));
        std::fs::copy(dir.p("f64nan.npy"), &odd).unwrap();
        let o = latent_line([std::ffi::OsStr::new("scan"), odd.as_os_str(), std::ffi::OsStr::new("--json")])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a whole object");
        assert!(j["file"].as_str().unwrap().ends_with("odd\u{fffd}.npy"), "{j}");
    }
    // A finding is named by the bits the file holds (a signalling f64 NaN's
    // payload, not the quiet f32 NaN it is scanned as), and the file line
    // says what it holds.
    let mut data: Vec<u8> = (0..6).flat_map(|i| (i as f64).to_le_bytes()).collect();
    data[3 * 8..4 * 8].copy_from_slice(&0x7ff0_0000_0000_0001u64.to_le_bytes());
    npy(&dir.p("snan.npy"), "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }", &data);
    let o = run(&["scan", &dir.s("snan.npy")]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{text}{}", stderr(&o));
    assert!(text.contains("· 3 × 2 f64 ("), "{text}");
    assert!(text.contains("first    row 1 column 1 · NaN · bits 0x7ff0000000000001 (f64)"), "{text}");
    // So in a .safetensors file beside other tensors (the header and the
    // one tensor read): an F16 NaN's own bits.
    use safetensors::tensor::{Dtype, TensorView};
    let mut half: Vec<u8> = (0..6u16).flat_map(|i| half::f16::from_f32(i as f32).to_bits().to_le_bytes()).collect();
    half[4 * 2..5 * 2].copy_from_slice(&0x7c01u16.to_le_bytes());
    let other = vec![7u8; 1000];
    let t = vec![
        ("big".to_string(), TensorView::new(Dtype::U8, vec![1000], &other).unwrap()),
        ("emb".to_string(), TensorView::new(Dtype::F16, vec![3, 2], &half).unwrap()),
    ];
    std::fs::write(dir.p("h.safetensors"), safetensors::tensor::serialize(t, None).unwrap()).unwrap();
    let o = run(&["scan", &dir.s("h.safetensors"), "--tensor", "emb"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{text}{}", stderr(&o));
    assert!(text.contains("· 3 × 2 F16 ("), "{text}");
    assert!(text.contains("first    row 2 column 0 · NaN · bits 0x7c01 (F16)"), "{text}");
}

/// What is printed to stdout and lost (a full disk under `--json > FILE`)
/// is a runtime error, exit 1; a reader that closed the pipe is not.
#[cfg(target_os = "linux")]
#[test]
fn output_lost_on_stdout_is_an_error_but_a_closed_pipe_is_not() {
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    for args in [
        vec!["--backend", "cpu", "--rows", "300", "--dim", "5", "--steps", "2", "--json"],
        vec!["--backend", "cpu", "--rows", "300", "--dim", "5", "--steps", "2"],
        vec!["diagnose"],
    ] {
        let o = latent_line(&args).stdout(full()).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("writing to stdout"), "{args:?}: {}", stderr(&o));
    }
    // A pipe whose reader is gone before the run prints a line (every
    // write is a broken pipe): the run still ends as it would, exit 0, as
    // a scan that finds non-finite values still exits 3.
    let dir = Dir::new();
    table_with(&dir.p("bad.npy"), 50, 3, &[(7, 1, f32::NAN)]);
    for (args, code) in [
        (vec!["--backend".to_string(), "cpu".into(), "--rows".into(), "300".into(), "--dim".into(), "5".into()], 0),
        (vec!["scan".to_string(), dir.s("bad.npy")], 3),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = latent_line(&args).stdout(writer).output().unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("writing to stdout"), "{args:?}: {}", stderr(&o));
    }
    // Lost output of a scan that found non-finite values: still exit 3,
    // the loss said on stderr.
    let o = latent_line(["scan", &dir.s("bad.npy")]).stdout(full()).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("writing to stdout") && stderr(&o).contains("exit code 3"), "{}", stderr(&o));
    // A report that cannot be written: exit 1 after a good run; an aborted
    // run keeps its 3 and says both.
    let small = ["--backend", "cpu", "--rows", "50", "--dim", "4", "--steps", "2", "--report", "/dev/full"];
    let o = run(&small);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("writing the report /dev/full"), "{}", stderr(&o));
    let abort = ["--backend", "cpu", "--rows", "50", "--dim", "4", "--naive", "--endpoints", "detached"];
    let o = latent_line([&abort[..], &["--on-nonfinite", "abort", "--report", "/dev/full"]].concat()).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("writing the report /dev/full") && err.contains("aborted on non-finite values at step 0"),
        "{err}"
    );
    // … and of a run its guard aborted, printed or as --json: exit 3, said.
    for more in [&["--on-nonfinite", "abort"][..], &["--on-nonfinite", "abort", "--json"]] {
        let o = latent_line([&abort[..], more].concat()).stdout(full()).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{more:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("exit code 3: non-finite values"), "{more:?}: {}", stderr(&o));
    }
}

/// A table the host cannot allocate is refused with exit 1 and one line,
/// not an abort (a 2 GB `.npy` under a 1 GB address-space limit); `scan`,
/// which streams the file a block at a time, scans it in that limit.
#[cfg(target_os = "linux")]
#[test]
fn a_table_the_host_cannot_hold_is_refused_not_aborted() {
    let dir = Dir::new();
    let path = dir.p("big.npy");
    npy(&path, "{'descr': '<f4', 'fortran_order': False, 'shape': (50000000, 10), }", &[]);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(f.metadata().unwrap().len() + 2_000_000_000).unwrap(); // sparse
                                                                     // (Under the limit: the adapter's libraries are not loaded, so --backend cpu.)
    let limited = |cmd: String| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v 1000000 && exec '{BIN}' {cmd}"))
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap()
    };
    let o = limited(format!("--backend cpu --load '{}' --steps 1", dir.s("big.npy")));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("big.npy") && e.contains("host memory") && e.lines().count() == 1, "{e}");
    let o = limited(format!("scan --backend cpu '{}'", dir.s("big.npy")));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}{}", stderr(&o));
    assert!(text.contains("50000000 × 10"), "{text}");
    assert!(text.contains("finite   every value is finite"), "{text}");
}

#[test]
fn a_guarded_run_reports_every_event_and_abort_exits_3_with_the_table_before_the_step() {
    let dir = Dir::new();
    let input = dir.s("in.npy");
    let table = table_with(&dir.p("in.npy"), 200, 4, &[(42, 1, f32::INFINITY)]);
    for backend in ["cpu", "gpu"] {
        // abort: exit 3, the input table saved as it was, the event in the report.
        let (save, rep) = (dir.s(&format!("abort-{backend}.npy")), dir.s(&format!("abort-{backend}.json")));
        let o = run(&[
            "--backend",
            backend,
            "--load",
            &input,
            "--steps",
            "5",
            "--on-nonfinite",
            "abort",
            "--save",
            &save,
            "--report",
            &rep,
        ]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(3), "{backend}: {text}{}", stderr(&o));
        assert!(
            text.contains("input    before training: loaded table: 1 non-finite (0 NaN, 1 +Inf, 0 -Inf) in 1 row"),
            "{text}"
        );
        assert!(text.contains("ABORTED  at step 0"), "{text}");
        // The end line counts steps done: the aborted one is not.
        assert!(text.contains("· after 0 steps,"), "{text}");
        // The steps after the abort (the rest of its submission) did
        // nothing and are not timed.
        assert!(text.contains("(wall clock over 1 step)"), "{text}");
        let saved = std::fs::read(&save).unwrap();
        let data: Vec<f32> = saved[saved.len() - table.len() * 4..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(data.iter().zip(&table).all(|(a, b)| a.to_bits() == b.to_bits()), "{backend}: saved table changed");
        let r = report(&dir.p(&format!("abort-{backend}.json")));
        assert_eq!(r["summary"]["aborted_at"], 0);
        // The aborted step is not done (the table is as before it): the
        // summary and the checkpoint agree, on either backend, and a
        // resume would take step 0 again.
        assert_eq!(r["summary"]["steps_done"], 0, "{backend}");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{save}.state.json")).unwrap()).unwrap();
        assert_eq!(state["steps"], 0, "{backend}: {state}");
        // A loss term is not finite: the max, like the loss and the mean, is null.
        assert!(r["steps"][0]["max_excess"].is_null(), "{}", r["steps"][0]);
        let ev = &r["events"];
        assert_eq!(ev[0]["buffer"], "input");
        assert_eq!(ev[1]["step"], 0);
        assert_eq!(ev[1]["buffer"], "loss");
        assert_eq!(ev[1]["rows"][0], 42);
        assert_eq!(ev[1]["action"], "aborted");
        assert_eq!(r["steps"][0]["action"], "aborted");

        // skip-row: the run goes on, row 42 keeps its value, strikes counted.
        let rep = dir.s(&format!("skiprow-{backend}.json"));
        let o = run(&[
            "--backend",
            backend,
            "--load",
            &input,
            "--steps",
            "3",
            "--on-nonfinite",
            "skip-row",
            "--report",
            &rep,
        ]);
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        let r = report(&dir.p(&format!("skiprow-{backend}.json")));
        assert_eq!(r["summary"]["steps_with_skipped_rows"], 3);
        let table_events: Vec<&serde_json::Value> =
            r["events"].as_array().unwrap().iter().filter(|e| e["buffer"] == "table").collect();
        assert_eq!(table_events.len(), 3, "{backend}");
        assert_eq!(table_events[2]["strikes"][0], 3, "{backend}");
        assert_eq!(r["summary"]["final_scan"]["rows"][0], 42);
    }
}

#[test]
fn diagnose_explains_the_six_code_case() {
    let o = run(&["diagnose"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for needle in ["0 · inf = NaN", "Why rows 0 and 5 turn NaN", "collapse", "action skipped-step"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn devices_lists_the_adapters_and_what_auto_picks() {
    let o = run(&["devices"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // CI has lavapipe: at least one adapter, and auto's choice explained.
    assert!(text.contains("adapter 0: ") && text.contains("storage binding ≤ "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("auto     the ")), "{text}");
}

/// WGPU_ADAPTER_NAME is `--adapter`: under `auto` it picks that adapter,
/// software or not (no CPU fallback), and a name matching none is an error;
/// `devices` says so.
#[test]
fn wgpu_adapter_name_is_honoured_by_auto_and_devices() {
    let with_env =
        |name: &str, args: &[&str]| latent_line(args).env("WGPU_ADAPTER_NAME", name).output().expect("run latent-line");
    let listing = String::from_utf8_lossy(&run(&["devices"]).stdout).into_owned();
    let first = listing.lines().find_map(|l| l.strip_prefix("adapter 0: ")).expect("CI has an adapter").to_owned();
    let o = with_env(&first, &["--rows", "500", "--dim", "4", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("device   gpu · "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = with_env(&first, &["devices"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("named by WGPU_ADAPTER_NAME"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = with_env("no such adapter", &["--rows", "500", "--dim", "4", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(stderr(&o).contains("none matches \"no such adapter\""), "{}", stderr(&o));
    let o = with_env("no such adapter", &["devices"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("names no adapter"));
    // A blank name is no name (it would name every adapter): auto as
    // without one, here the CPU (CI's one adapter is a software one).
    let o = with_env("  ", &["--rows", "500", "--dim", "4", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("device   cpu"), "{}", String::from_utf8_lossy(&o.stdout));
    // A value that is not UTF-8 is refused, naming the variable (read as
    // unset, it would silently do nothing).
    use std::os::unix::ffi::OsStrExt as _;
    let raw = std::ffi::OsStr::from_bytes(b"llvm\xffpipe");
    for var in ["WGPU_ADAPTER_NAME", "LATENT_LINE_CPU_SIMD"] {
        let o = latent_line(["--rows", "500", "--dim", "4", "--steps", "1"]).env(var, raw).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{var}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("invalid {var}: ")) && stderr(&o).contains("is not UTF-8"),
            "{}",
            stderr(&o)
        );
    }
    // The subgroup fold's switch takes 0 or 1, nothing else.
    let o = latent_line(["--backend", "gpu", "--rows", "500", "--dim", "4", "--steps", "1"])
        .env("LATENT_LINE_SUBGROUPS", "yes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid LATENT_LINE_SUBGROUPS: \"yes\": use 0 (off) or 1 (on)"), "{}", stderr(&o));
    // WGPU_BACKEND with a name wgpu does not know is refused, naming it
    // (under `auto` too: wgpu skips it silently, and the run would fall
    // back to the CPU as if no driver were installed); a known one, in
    // any case and spacing, is taken.
    let with_backend = |v: &str, args: &[&str]| latent_line(args).env("WGPU_BACKEND", v).output().unwrap();
    for args in [&["--rows", "50", "--dim", "4", "--steps", "1"][..], &["devices"]] {
        let o = with_backend("vulkn", args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains("invalid WGPU_BACKEND: \"vulkn\": unknown backend \"vulkn\""), "{}", stderr(&o));
    }
    let o = with_backend(" Vulkan ", &["--backend", "gpu", "--rows", "50", "--dim", "4", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn the_fused_steps_shape_switches_are_taken_and_checked() {
    let gpu_run = |env: &[(&str, &str)]| {
        let mut c = latent_line(["--backend", "gpu", "--rows", "500", "--dim", "16", "--steps", "2"]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Taken: the kernel line says what was built, and the run trains.
    let o = gpu_run(&[("LATENT_LINE_WORKGROUP", "32"), ("LATENT_LINE_LANES", "4"), ("LATENT_LINE_ROW_BLOCKS", "2")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("kernel   workgroups of 32, 4 lanes a row"), "{out}");
    assert!(out.contains("2 row blocks a workgroup (16 rows)"), "{out}");
    assert!(out.contains("every value of the table is finite"), "{out}");
    // Checked: a power of two, named in the error, nothing run.
    // So is one past what the kernels are written for (never cut silently).
    for (var, v, max) in [
        ("LATENT_LINE_WORKGROUP", "3", 256),
        ("LATENT_LINE_LANES", "3", 32),
        ("LATENT_LINE_ROW_BLOCKS", "3", 256),
        ("LATENT_LINE_WORKGROUP", "512", 256),
        ("LATENT_LINE_LANES", "64", 32),
    ] {
        let o = gpu_run(&[(var, v)]);
        assert_eq!(o.status.code(), Some(1), "{var}");
        let want = format!("invalid {var}: \"{v}\": use a power of two, at most {max}");
        assert!(stderr(&o).contains(&want), "{}", stderr(&o));
        assert!(o.stdout.is_empty() || !String::from_utf8_lossy(&o.stdout).contains("start"), "{var}");
    }
    // The switches that change no bits say so on the kernel line, where
    // they apply: read-ahead needs row blocks; kept columns D ≤ 8 × lanes.
    // (KEEP and KEPT_VECTORS are the 4-byte path's: VEC4 off.)
    let o = gpu_run(&[
        ("LATENT_LINE_LANES", "4"),
        ("LATENT_LINE_ROW_BLOCKS", "2"),
        ("LATENT_LINE_PREFETCH", "0"),
        ("LATENT_LINE_KEEP", "0"),
        ("LATENT_LINE_VEC4", "0"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains(", no read-ahead, columns read twice"), "{out}{}", stderr(&o));
    let o = gpu_run(&[("LATENT_LINE_LANES", "4"), ("LATENT_LINE_KEPT_VECTORS", "0"), ("LATENT_LINE_VEC4", "0")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains(", kept in an array"), "{out}{}", stderr(&o));
    // 16-byte columns by default where D allows (D = 16 at 4 lanes), not
    // with VEC4 off; p and q in workgroup memory on request; a poisoned
    // row's own branch by default with them, not on request.
    for (env, said) in [
        (vec![], Some(", 16-byte loads, poisoned rows apart")),
        (vec![("LATENT_LINE_VEC4", "0")], None),
        (
            vec![("LATENT_LINE_PQ_SHARED", "1")],
            Some(", 16-byte loads, p and q in workgroup memory, poisoned rows apart"),
        ),
        (vec![("LATENT_LINE_POISON_BRANCH", "0")], Some(", 16-byte loads")),
    ] {
        let o = gpu_run(&[[("LATENT_LINE_LANES", "4")].as_slice(), &env].concat());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{env:?}: {}", stderr(&o));
        match said {
            Some(s) => assert!(out.contains(s) && out.contains(&format!("{s}\n")), "{env:?}: {out}"),
            None => assert!(!out.contains("16-byte"), "{env:?}: {out}"),
        }
    }
    // By default 16-byte columns only up to four vec4s a lane (D = 64 at 2
    // lanes has eight: 4-byte), on request up to eight.
    for (vec4, said) in [(None, false), (Some("1"), true)] {
        let mut c = latent_line(["--backend", "gpu", "--rows", "300", "--dim", "64", "--steps", "1"]);
        c.env("LATENT_LINE_LANES", "2");
        if let Some(v) = vec4 {
            c.env("LATENT_LINE_VEC4", v);
        }
        let o = c.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{vec4:?}: {}", stderr(&o));
        assert_eq!(out.contains(", 16-byte loads"), said, "{vec4:?}: {out}");
    }
    // Switches that keep every bit, on request: said on the kernel line,
    // the same table bit for bit (lavapipe); any other value refused,
    // naming the variable. wgpu's loop counters; random batches' slots
    // worked out in the step.
    let dir = Dir::new();
    for (var, said_as, batch, bad) in [
        ("LATENT_LINE_LOOP_BOUNDING", "loops bounded by wgpu", None, "yes"),
        ("LATENT_LINE_FUSED_SAMPLE", ", batches sampled in the step", Some("300"), "on"),
    ] {
        let mut tables = Vec::new();
        for v in ["0", "1"] {
            let path = dir.p(&format!("{var}{v}.npy"));
            let mut c = latent_line(["--backend", "gpu", "--rows", "700", "--dim", "24", "--steps", "5"]);
            if let Some(b) = batch {
                c.args(["--batch", b]);
            }
            let o = c.arg("--save").arg(&path).env(var, v).output().unwrap();
            assert_eq!(o.status.code(), Some(0), "{var}={v}: {}", stderr(&o));
            let said = String::from_utf8_lossy(&o.stdout).contains(said_as);
            assert_eq!(said, v == "1", "{var}={v}: {}", String::from_utf8_lossy(&o.stdout));
            tables.push(std::fs::read(&path).unwrap());
        }
        assert!(tables[0] == tables[1], "{var} changed the table");
        let o = gpu_run(&[(var, bad)]);
        assert_eq!(o.status.code(), Some(1));
        let want = format!("invalid {var}: \"{bad}\": use 0 (off) or 1 (on)");
        assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    }
}

#[test]
fn json_prints_the_report_alone_and_quiet_prints_nothing() {
    let o = run(&["--backend", "cpu", "--rows", "300", "--dim", "5", "--steps", "4", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
    assert_eq!(r["steps"].as_array().map(|s| s.len()), Some(5));
    assert_eq!(r["summary"]["all_finite"], true);
    // The values used, defaults resolved, beside the command line as given.
    assert_eq!((r["shape"]["rows"].as_u64(), r["shape"]["dim"].as_u64()), (Some(300), Some(5)));
    assert_eq!((r["config"]["anchor_a"].as_u64(), r["config"]["anchor_b"].as_u64()), (Some(0), Some(299)));
    assert!((r["config"]["eps"].as_f64().unwrap() - 1e-8).abs() < 1e-12, "{}", r["config"]);
    assert!(r["options"]["eps"].is_null());
    let o = run(&["--backend", "cpu", "--rows", "300", "--dim", "5", "--steps", "4", "--quiet"]);
    assert_eq!((o.status.code(), o.stdout.len()), (Some(0), 0), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn a_run_split_by_a_resume_gives_the_table_of_an_unbroken_run() {
    let dir = Dir::new();
    for backend in ["cpu", "gpu"] {
        // Momentum: the velocity goes on from its checkpoint (saved beside
        // it); batches: the sampler from the step count.
        let momentum: &[&str] = &["--momentum", "0.9", "--weight-decay", "0.01"];
        let batched: &[&str] = &["--momentum", "0.5", "--batch", "90"];
        for (ext, policy, extra) in [
            ("npy", "skip-step", &[][..]),
            ("safetensors", "rollback", &[][..]),
            ("npy", "ignore", &[][..]),
            ("npy", "skip-step", momentum),
            ("safetensors", "rollback", batched),
        ] {
            let (whole, half, done) =
                (dir.s(&format!("whole.{ext}")), dir.s(&format!("half.{ext}")), dir.s(&format!("done.{ext}")));
            let common = [
                "--backend",
                backend,
                "--rows",
                "700",
                "--dim",
                "6",
                "--endpoints",
                "detached",
                "--margin",
                "3",
                "--on-nonfinite",
                policy,
                "--snapshot-every",
                "7",
                "--seed",
                "5",
            ];
            let with = |more: &[&str]| {
                let mut a: Vec<&str> = common.to_vec();
                a.extend_from_slice(extra);
                a.extend_from_slice(more);
                // The GPU's tables (table, velocity, snapshot) uploaded and
                // saved in blocks of 1000 bytes: rows split mid-way.
                let o = latent_line(&a).env("LATENT_LINE_TRANSFER_BLOCK", "1000").output().unwrap();
                assert_eq!(o.status.code(), Some(0), "{backend} {policy} {extra:?} {more:?}: {}", stderr(&o));
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            with(&["--steps", "30", "--save", &whole]);
            // 10 steps with checkpoints every 4 (the last at 8, then the end at 10) …
            let first = with(&["--steps", "10", "--save", &half, "--checkpoint-every", "4"]);
            assert!(first.contains("checkpoint after 8 steps"), "{first}");
            // … then on to 30.
            let second = with(&["--resume", &half, "--steps", "30", "--save", &done]);
            assert!(second.contains("resume   from step 10 of 30"), "{second}");
            let (a, b) = (std::fs::read(&whole).unwrap(), std::fs::read(&done).unwrap());
            let tail = |v: &[u8]| v[v.len() - 700 * 6 * 4..].to_vec();
            assert!(tail(&a) == tail(&b), "{backend} {ext} {policy} {extra:?}: the resumed table differs");
        }
    }
}

/// A step the guard aborts at the end of a `--checkpoint-every` segment is
/// not done: no checkpoint is announced for it (the run was saved at the
/// steps before it, once, at the end).
#[test]
fn an_abort_at_a_checkpoint_is_no_checkpoint() {
    let dir = Dir::new();
    for backend in ["cpu", "gpu"] {
        let out = dir.s(&format!("{backend}.npy"));
        let o = run(&[
            "--backend",
            backend,
            "--rows",
            "40",
            "--dim",
            "3",
            "--naive",
            "--endpoints",
            "detached",
            "--on-nonfinite",
            "abort",
            "--checkpoint-every",
            "1",
            "--steps",
            "5",
            "--save",
            &out,
        ]);
        assert_eq!(o.status.code(), Some(3), "{backend}: {}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(!text.contains("checkpoint after"), "{backend}: {text}");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.p(&format!("{backend}.npy.state.json"))).unwrap()).unwrap();
        assert_eq!(state["steps"], 0, "{backend}: {state}");
    }
}

/// An aborted step is not done: the checkpoint saved at an abort keeps the
/// guard's counters as before it, so a resume that raises `--max-skips` or
/// `--max-rollbacks` aborts where an unbroken run with that limit does,
/// with its table. (Naive detached steps fail every time: the anchors'
/// rows are NaN; skip-step and rollback leave the table as it was.)
#[test]
fn a_resume_after_an_abort_with_a_higher_limit_aborts_where_an_unbroken_run_does() {
    let dir = Dir::new();
    for backend in ["cpu", "gpu"] {
        for (policy, limit, first, raised) in
            [("skip-step", "--max-skips", "10", "12"), ("rollback", "--max-rollbacks", "3", "5")]
        {
            let ctx = format!("{backend} {policy}");
            let (whole, half, done) = (dir.s("whole.npy"), dir.s("half.npy"), dir.s("done.npy"));
            let common = [
                "--backend",
                backend,
                "--rows",
                "300",
                "--dim",
                "5",
                "--naive",
                "--endpoints",
                "detached",
                "--on-nonfinite",
                policy,
                "--snapshot-every",
                "4",
                "--seed",
                "9",
                "--steps",
                "30",
                "--quiet",
            ];
            let with = |more: &[&str]| {
                let mut a: Vec<&str> = common.to_vec();
                a.extend_from_slice(more);
                let rep = dir.s("r.json");
                a.extend_from_slice(&["--report", &rep]);
                let o = run(&a);
                assert_eq!(o.status.code(), Some(3), "{ctx} {more:?}: {}", stderr(&o));
                let r = report(&dir.p("r.json"));
                let at = r["summary"]["aborted_at"].as_u64().unwrap();
                // The aborted step's record, then the evaluation of the table
                // it left: the same table, the same step.
                let steps = r["steps"].as_array().unwrap();
                let n = steps.len();
                if policy == "rollback" {
                    // Every step fails, so each runs at half the lr of the
                    // one before (SPEC §9's back-off [0.5], compounding).
                    for e in &steps[..n - 1] {
                        let k = e["step"].as_u64().unwrap() as i32;
                        let lr = e["lr"].as_f64().map(|v| v as f32);
                        assert_eq!(lr, Some(0.2f32 * 0.5f32.powi(k)), "{ctx} {more:?}: {e}");
                    }
                }
                assert_eq!(
                    (&steps[n - 2]["action"], steps[n - 2]["step"].as_u64()),
                    (&"aborted".into(), Some(at)),
                    "{ctx}"
                );
                assert_eq!(
                    (&steps[n - 1]["action"], steps[n - 1]["step"].as_u64()),
                    (&"evaluated".into(), Some(at)),
                    "{ctx}"
                );
                at
            };
            let unbroken = with(&[limit, raised, "--save", &whole]);
            let aborted = with(&[limit, first, "--save", &half]);
            assert!(aborted < unbroken, "{ctx}: {aborted} vs {unbroken}");
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.p("half.npy.state.json")).unwrap()).unwrap();
            let counter = if policy == "skip-step" { "skips" } else { "rollbacks" };
            assert_eq!(state[counter].as_u64(), Some(first.parse().unwrap()), "{ctx}: {state}");
            let resumed = with(&["--resume", &half, limit, raised, "--save", &done]);
            assert_eq!(resumed, unbroken, "{ctx}: the resumed run aborted at another step");
            assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&done).unwrap(), "{ctx}: tables differ");
        }
    }
}

/// A resume continues the same run (SPEC §13): options that shape its
/// course must be the checkpoint's, each difference named with both
/// values, and --steps (the run's total) cannot be fewer than the steps
/// done. Nothing is written by a refused resume.
#[test]
fn a_resume_refuses_other_options_and_fewer_steps() {
    let dir = Dir::new();
    let (ck, idx, other) = (dir.s("ck.npy"), dir.s("idx.npy"), dir.s("other.npy"));
    let rows: Vec<u8> = [3i64, 5, 5, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    npy(&dir.p("idx.npy"), "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", &rows);
    let rows: Vec<u8> = [3i64, 5, 6, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    npy(&dir.p("other.npy"), "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", &rows);
    // The run's options, each replaced where `more` gives it again.
    let with = |more: &[&str]| {
        let mut a = vec!["--backend", "cpu", "--rows", "50", "--dim", "3"];
        for (k, v) in [("--lr", "0.1"), ("--endpoints", "detached")] {
            if !more.contains(&k) {
                a.extend([k, v]);
            }
        }
        a.extend_from_slice(more);
        run(&a)
    };
    let o = with(&["--steps", "4", "--indices", &idx, "--save", &ck]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = dir.files();
    for (more, expect) in [
        (vec!["--lr", "0.2"], "--lr 0.1 (this run: 0.2)"),
        (vec!["--endpoints", "attached"], "--endpoints detached (this run: attached)"),
        (vec!["--momentum", "0.5"], "--momentum 0.0 (this run: 0.5)"),
        (vec!["--anchors", "1,2"], "--anchors 0,49 (this run: 1,2)"),
    ] {
        let mut args = vec!["--steps", "6", "--indices", &idx, "--resume", &ck, "--save", &ck];
        args.extend(more.iter());
        let o = with(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{more:?}: {err}");
        assert!(err.contains("invalid --resume") && err.contains(expect), "{more:?}: {err}");
    }
    // Another index file, or none (the full table), is another run too.
    let o = with(&["--steps", "6", "--indices", &other, "--resume", &ck, "--save", &ck]);
    let err = stderr(&o);
    assert!(o.status.code() == Some(1) && err.contains("batches: --indices (a file of fingerprint "), "{err}");
    let o = with(&["--steps", "6", "--resume", &ck, "--save", &ck]);
    let err = stderr(&o);
    assert!(o.status.code() == Some(1) && err.contains(") (this run: the full table)"), "{err}");
    let o = with(&["--steps", "6", "--batch", "7", "--resume", &ck, "--save", &ck]);
    let err = stderr(&o);
    assert!(o.status.code() == Some(1) && err.contains("(this run: --batch 7 --seed 0)"), "{err}");
    let o = with(&["--steps", "3", "--indices", &idx, "--resume", &ck, "--save", &ck]);
    let err = stderr(&o);
    assert!(o.status.code() == Some(1) && err.contains("invalid --steps: 3 is fewer than the 4 steps"), "{err}");
    assert_eq!(dir.files(), before);
    // The same options go on (and the run's own total, 4, is allowed:
    // nothing to do), under another guard too.
    for (steps, guard) in [("4", "skip-step"), ("6", "skip-row")] {
        let o = with(&["--steps", steps, "--indices", &idx, "--resume", &ck, "--save", &ck, "--on-nonfinite", guard]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
}

/// A rollback checkpoint between two snapshot steps carries the snapshot
/// beside it (FILE.snapshot.npy: the table at the last snapshot step), and
/// `--resume` reads it; a resumed run counts its steps from the run's start
/// (the abort's step in the summary and the report).
#[test]
fn a_rollback_checkpoint_keeps_its_snapshot_and_resumed_steps_count_from_the_start() {
    let dir = Dir::new();
    let (half, s7, report) = (dir.s("half.npy"), dir.s("s7.npy"), dir.s("r.json"));
    let common =
        ["--backend", "cpu", "--rows", "300", "--dim", "5", "--on-nonfinite", "rollback", "--snapshot-every", "7"];
    let with = |more: &[&str]| {
        let a: Vec<&str> = common.iter().chain(more).copied().collect();
        run(&a)
    };
    assert_eq!(with(&["--steps", "10", "--save", &half]).status.code(), Some(0));
    assert_eq!(with(&["--steps", "7", "--save", &s7]).status.code(), Some(0));
    let side = format!("{half}.snapshot.npy");
    let (got, want) =
        (latent_line::npy::load(Path::new(&side)).unwrap(), latent_line::npy::load(Path::new(&s7)).unwrap());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&got.data) == bits(&want.data), "the sidecar is not the table at step 7");
    // At a snapshot step (7) there is nothing to carry.
    assert!(!Path::new(&format!("{s7}.snapshot.npy")).exists());

    // The naive formula on the anchors' rows fails every step: ten steps
    // skipped, then resumed under `abort`, the run stops at step 10 of the
    // run (a resume may change the guard).
    let naive = ["--backend", "cpu", "--rows", "300", "--dim", "5", "--naive", "--endpoints", "detached"];
    let skipped = dir.s("skipped.npy");
    let o = run(&[&naive[..], &["--steps", "10", "--max-skips", "100", "--save", &skipped]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o =
        run(&[&naive[..], &["--resume", &skipped, "--steps", "20", "--on-nonfinite", "abort", "--report", &report]]
            .concat());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ABORTED  at step 10"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["summary"]["aborted_at"], 10);
    // The skips counted are consecutive ones: steps applied under another
    // policy end them, so a later skip-step resume counts afresh (it
    // aborted at its first failing step, with skip-row's steps between).
    for backend in ["cpu", "gpu"] {
        let naive: Vec<&str> = naive.iter().map(|&a| if a == "cpu" { backend } else { a }).collect();
        let (a, b) = (dir.s("skips_a.npy"), dir.s("skips_b.npy"));
        let o = run(&[&naive[..], &["--steps", "3", "--max-skips", "100", "--save", &a]].concat());
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        let skips = |f: &str| {
            let state = std::fs::read(format!("{f}.state.json")).unwrap();
            serde_json::from_slice::<serde_json::Value>(&state).unwrap()["skips"].as_u64()
        };
        assert_eq!(skips(&a), Some(3), "{backend}");
        let o =
            run(&[&naive[..], &["--resume", &a, "--steps", "5", "--on-nonfinite", "skip-row", "--save", &b]].concat());
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        assert_eq!(skips(&b), Some(0), "{backend}: skip-row's steps were applied");
        let o = run(&[&naive[..], &["--resume", &b, "--steps", "7", "--max-skips", "2", "--report", &report]].concat());
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["summary"]["skipped_steps"], 2, "{backend}");
    }

    // A damaged sidecar is refused by name, and nothing is written.
    std::fs::write(&side, b"\x93NUMPY").unwrap();
    let done = dir.s("done.npy");
    let o = with(&["--resume", &half, "--steps", "20", "--save", &done]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("half.npy.snapshot.npy"), "{}", stderr(&o));
    assert!(!Path::new(&done).exists());
}

/// The summary's first and last values are those of the first and last
/// records (the max excess too); a run of no steps reports no speed:
/// `null` times and GB/s, where 0 read as a measurement.
#[test]
fn the_summary_is_of_the_records_and_a_run_of_no_steps_has_no_speed() {
    let seed = common::seed("summary_records");
    let steps = rand::Rng::random_range(&mut common::rng(seed), 1..6).to_string();
    for n in ["0", &steps] {
        let o = run(&[
            "--backend",
            "cpu",
            "--rows",
            "300",
            "--dim",
            "4",
            "--seed",
            &seed.to_string(),
            "--steps",
            n,
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let (s, records) = (&r["summary"], r["steps"].as_array().unwrap());
        for (key, at) in [("first", 0), ("last", records.len() - 1)] {
            assert_eq!(s[format!("max_excess_{key}")], records[at]["max_excess"], "seed {seed}, {n} steps: {key}");
            assert_eq!(s[format!("mean_excess_{key}")], records[at]["mean_excess"], "seed {seed}, {n} steps: {key}");
        }
        for key in ["step_seconds", "median_step_seconds", "effective_gb_per_s"] {
            assert_eq!(s[key].is_null(), n == "0", "seed {seed}, {n} steps: {key} {}", s[key]);
        }
    }
}

/// No output lands on another file of the run: --report, --plot onto the
/// loaded table, the index file or each other are refused before any work,
/// the files untouched; --save onto the loaded table is the one overlap
/// allowed (an atomic replacement).
#[test]
fn outputs_never_overwrite_the_runs_other_files() {
    let dir = Dir::new();
    let (t, idx) = (dir.s("t.npy"), dir.s("i.npy"));
    assert_eq!(
        run(&["--backend", "cpu", "--rows", "50", "--dim", "3", "--steps", "0", "--save", &t]).status.code(),
        Some(0)
    );
    npy(&dir.p("i.npy"), "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[1, 0, 0, 0, 2, 0, 0, 0]);
    let before = (std::fs::read(&t).unwrap(), std::fs::read(&idx).unwrap());
    let via = format!("{}/./t.npy", dir.0.path().display());
    std::fs::create_dir(dir.p("sub")).unwrap();
    let (up, svg, t2, t2_state) = (dir.s("sub/../r.svg"), dir.s("r.svg"), dir.s("t2.npy"), dir.s("t2.npy.state.json"));
    for (args, opt, other) in [
        (vec!["--load", &t, "--report", &t], "--report", "--load"),
        (vec!["--load", &t, "--report", &via], "--report", "--load"),
        (vec!["--resume", &t, "--report", &t], "--report", "--resume"),
        (vec!["--load", &t, "--indices", &idx, "--save", &idx], "--save", "--indices"),
        (vec!["--load", &t, "--save", &via, "--report", &t], "--save", "--report"),
        // Neither exists yet: a `..` in the folder still names the same file.
        (vec!["--load", &t, "--report", &up, "--plot", &svg], "--report", "--plot"),
        (vec!["--load", &t, "--save", &t2, "--report", &t2_state], "--report", "--save's run state"),
    ] {
        let o = run(&[&["--backend", "cpu", "--steps", "2"], &args[..]].concat());
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let want = format!("invalid {opt}: ");
        assert!(
            stderr(&o).contains(&want) && stderr(&o).contains(&format!("also the {other} file")),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!((std::fs::read(&t).unwrap(), std::fs::read(&idx).unwrap()) == before, "{args:?}: a file changed");
    }
    // --save's sidecars are never written over a file the run reads.
    std::fs::copy(&t, dir.p("w.npy.velocity.npy")).unwrap();
    std::fs::copy(&idx, dir.p("j.npy.state.json")).unwrap();
    let (w, wv, j, js) = (dir.s("w.npy"), dir.s("w.npy.velocity.npy"), dir.s("j.npy"), dir.s("j.npy.state.json"));
    let contents = || dir.files().iter().map(|f| std::fs::read(dir.p(f)).unwrap_or_default()).collect::<Vec<_>>();
    std::fs::create_dir(dir.p("k.npy.state.json")).unwrap();
    let k = dir.s("k.npy");
    for (args, side, other) in [
        (vec!["--load", &wv, "--momentum", "0.9", "--save", &w], "--save's velocity", "--load"),
        (vec!["--load", &t, "--indices", &js, "--save", &j], "--save's run state", "--indices"),
        (vec!["--load", &t, "--save", &k], "--save's run state", "which is a folder"),
    ] {
        let keep = (dir.files(), contents());
        let o = run(&[&["--backend", "cpu", "--steps", "2"], &args[..]].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("invalid --save: {side} would be written at")) && err.contains(other), "{err}");
        assert!((dir.files(), contents()) == keep, "{args:?}: a file changed");
    }
    // Nor is anything written over the files of the checkpoint a run
    // resumes (its run state, its velocity), except by a --save onto that
    // checkpoint, which replaces them together.
    let ck = dir.s("ck.npy");
    let made =
        run(&["--backend", "cpu", "--rows", "50", "--dim", "3", "--steps", "2", "--momentum", "0.5", "--save", &ck]);
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    let (ckv, cks) = (dir.s("ck.npy.velocity.npy"), dir.s("ck.npy.state.json"));
    for (args, opt, other) in [
        (vec!["--save", &ckv], "--save", "--resume's velocity"),
        (vec!["--report", &ckv], "--report", "--resume's velocity"),
        (vec!["--report", &cks], "--report", "--resume's run state"),
    ] {
        let keep = (dir.files(), contents());
        let o = run(&[&["--backend", "cpu", "--steps", "4", "--momentum", "0.5", "--resume", &ck], &args[..]].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("invalid {opt}: ")) && err.contains(&format!("also the {other} file")), "{err}");
        assert!((dir.files(), contents()) == keep, "{args:?}: a file changed");
    }
    let o = run(&["--backend", "cpu", "--steps", "4", "--momentum", "0.5", "--resume", &ck, "--save", &ck]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["--backend", "cpu", "--steps", "2", "--load", &t, "--save", &t]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read(&t).unwrap() != before.0, "--save onto --load trains the file");
}

/// A checkpoint is a table, its run state and the optimiser's sidecars,
/// written one after another; a save interrupted between them leaves parts
/// of two saves. The state's fingerprints catch it: the resume is refused,
/// naming the part that does not belong, and nothing is written.
#[test]
fn a_resume_refuses_a_checkpoint_mixed_from_two_saves() {
    let dir = Dir::new();
    let (half, other, done) = (dir.s("half.npy"), dir.s("other.npy"), dir.s("done.npy"));
    let common = ["--backend", "cpu", "--rows", "200", "--dim", "4", "--momentum", "0.9"];
    let with = |more: &[&str]| run(&common.iter().chain(more).copied().collect::<Vec<_>>());
    assert_eq!(with(&["--steps", "10", "--save", &half]).status.code(), Some(0));
    assert_eq!(with(&["--steps", "12", "--save", &other]).status.code(), Some(0));
    let keep = |name: &str| std::fs::read(dir.p(name)).unwrap();
    let (table, velocity) = (keep("half.npy"), keep("half.npy.velocity.npy"));
    for (part, from, named) in [
        ("half.npy", "other.npy", "half.npy is not the table its run state was saved with"),
        ("half.npy.velocity.npy", "other.npy.velocity.npy", "half.npy.velocity.npy"),
    ] {
        std::fs::write(dir.p(part), keep(from)).unwrap();
        let o = with(&["--resume", &half, "--steps", "20", "--save", &done]);
        assert_eq!(o.status.code(), Some(1), "{part}: {}", stderr(&o));
        assert!(stderr(&o).contains(named) && stderr(&o).contains("interrupted"), "{part}: {}", stderr(&o));
        assert!(!Path::new(&done).exists(), "{part}: an output was written");
        std::fs::write(dir.p("half.npy"), &table).unwrap();
        std::fs::write(dir.p("half.npy.velocity.npy"), &velocity).unwrap();
    }
    let o = with(&["--resume", &half, "--steps", "20", "--save", &done]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn plot_writes_a_valid_svg_of_the_run() {
    let dir = Dir::new();
    let svg = dir.s("run.svg");
    let o = run(&["--backend", "cpu", "--rows", "3000", "--dim", "6", "--steps", "15", "--plot", &svg]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.p("run.svg")).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(texts.iter().any(|t| t.contains("mean excess per step")), "{texts:?}");
    // Before and after: one marker per sampled code each, plus the anchors.
    let circles = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
    assert!(circles >= 2 * 2000 + 2, "{circles} circles");
    // A bad name is refused before any work.
    let o = run(&["--backend", "cpu", "--rows", "30", "--steps", "1", "--plot", &dir.s("run.png")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("must end in .svg"));
}

/// SPEC §10 on the command line: a bad index is refused before any step,
/// naming its position, with exit 1 and no output; good batches train.
#[test]
fn index_files_are_checked_before_any_step_and_batches_train() {
    let d = Dir::new();
    let idx: Vec<u8> = [3i64, 7, 7, 250, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    npy(&d.p("bad.npy"), "{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }", &idx);
    let o = run(&[
        "--rows",
        "100",
        "--dim",
        "4",
        "--steps",
        "3",
        "--backend",
        "cpu",
        "--indices",
        &d.s("bad.npy"),
        "--save",
        &d.s("out.npy"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("bad.npy") && e.contains("[3]") && e.contains("250"), "{e}");
    assert!(!d.p("out.npy").exists(), "a refused run left an output");
    // In a 2-D file, a position has two numbers, one batch or many.
    for (shape, at) in [("(1, 5)", "index [0, 3] is 250"), ("(5, 1)", "index [3, 0] is 250")] {
        npy(&d.p("bad2.npy"), &format!("{{'descr': '<i8', 'fortran_order': False, 'shape': {shape}, }}"), &idx);
        let o = run(&["--rows", "100", "--dim", "4", "--backend", "cpu", "--indices", &d.s("bad2.npy")]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(at), "{shape}: {}", stderr(&o));
    }

    let idx: Vec<u8> = [3i32, 7, 7, 7, 0, 99, 42, 42].iter().flat_map(|v| v.to_le_bytes()).collect();
    npy(&d.p("good.npy"), "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 4), }", &idx);
    for extra in [vec!["--indices", &d.s("good.npy")[..]], vec!["--batch", "30"]] {
        let mut args = vec![
            "--rows",
            "100",
            "--dim",
            "4",
            "--steps",
            "5",
            "--backend",
            "cpu",
            "--endpoints",
            "attached",
            "--reduction",
            "mean",
            "--clip-norm",
            "0.5",
            "--json",
        ];
        args.extend(extra.iter().copied());
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let steps = report["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 6, "5 steps and the final evaluation: {report}");
        let want = if extra[0] == "--batch" { 30 } else { 4 };
        assert_eq!(steps[0]["batch"], want, "{report}");
        // Bytes a step moves: its distinct rows and the anchors, read and
        // written once, averaged over the steps (SPEC §15). User batches:
        // rows {0, 99, 3, 7} then {0, 99, 42}, so 4, 3, 4, 3, 4 rows; random
        // batches of 30 from 100 rows: 30, 30, 30, then the epoch's last 10,
        // then 30, each with the two anchors.
        // (Random batches: the sampler's own rows, the default seed 0; an
        // anchor among them counted once.)
        let rows = if extra[0] == "--batch" {
            let s = latent_line::sampler::Sampler::new(100, 30, 0).unwrap();
            let slots = |step| latent_line::StepSlots::new(&s.batch_rows(step), 0, 99, false).slots.len();
            assert_eq!((0..5).map(|st| s.batch_rows(st).len()).collect::<Vec<_>>(), [30, 30, 30, 10, 30]);
            (0..5).map(slots).sum::<usize>() as f64 / 5.0
        } else {
            18.0 / 5.0
        };
        let want = (2.0 * rows * 4.0 * 4.0_f64).round() as u64;
        assert_eq!(report["summary"]["bytes_per_step"].as_u64(), Some(want), "{extra:?}");
    }
}

/// --profile: every kernel of the run with its GPU time and bytes, in the
/// report; the CPU backend says it has none.
#[test]
fn profile_times_every_kernel_of_the_run() {
    let d = Dir::new();
    let rep = d.s("r.json");
    let o = run(&[
        "--backend",
        "gpu",
        "--rows",
        "3000",
        "--dim",
        "8",
        "--steps",
        "12",
        "--batch",
        "500",
        "--endpoints",
        "attached",
        "--clip-norm",
        "1",
        "--on-nonfinite",
        "rollback",
        "--snapshot-every",
        "5",
        "--profile",
        "--report",
        &rep,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("profile  GPU time per kernel over 12 steps"), "{out}");
    let r = report(&d.p("r.json"));
    let p = r["profile"].as_array().expect("a profile in the report");
    let kernels: Vec<&str> = p.iter().map(|k| k["kernel"].as_str().unwrap()).collect();
    // The table is one binding: its rows are read in place (no gather).
    assert!(!kernels.contains(&"batch_io.wgsl gather"), "{kernels:?}");
    for k in [
        "sample.wgsl batch",
        "copy_table.wgsl snapshot",
        "anchors.wgsl",
        "fused_step.wgsl PREP",
        "anchor_sum.wgsl",
        "prepare.wgsl",
        "fused_step.wgsl",
        "reduce.wgsl",
        "batch_io.wgsl scatter",
        "copy_table.wgsl restore",
    ] {
        assert!(kernels.contains(&k), "{k} missing from {kernels:?}");
    }
    for k in p {
        let calls = k["calls"].as_u64().unwrap();
        let want = if k["kernel"] == "copy_table.wgsl snapshot" { 3 } else { 12 };
        assert_eq!(calls, want, "{k}");
        assert!(k["seconds"].as_f64().unwrap() > 0.0, "{k}");
    }
    let fused = p.iter().find(|k| k["kernel"] == "fused_step.wgsl").unwrap();
    // 502 slots (500 rows and the two anchors) read and written in place,
    // 8 columns, and (rollback: a double-buffered guard) their old values
    // logged; the scatter copies only after a dropped step.
    assert_eq!(fused["bytes"].as_u64().unwrap(), 12 * 3 * 502 * 8 * 4, "{fused}");
    let scatter = p.iter().find(|k| k["kernel"] == "batch_io.wgsl scatter").unwrap();
    assert_eq!(scatter["bytes"].as_u64().unwrap(), 0, "{scatter}");

    // The driver's statistics: every pipeline of the run compiled again on
    // the probe's own device (lavapipe has no statistics to give, but it
    // compiles each one; a driver with the extension gives each some).
    assert!(out.contains("driver   statistics"), "{out}");
    let ds = &r["driver_stats"];
    let pipes: Vec<&str> = ds["pipelines"].as_array().unwrap().iter().map(|p| p["kernel"].as_str().unwrap()).collect();
    for k in [
        "sample.wgsl batch",
        "copy_table.wgsl snapshot",
        "copy_table.wgsl restore",
        "anchors.wgsl main",
        "fused_step.wgsl main",
        "anchor_sum.wgsl main",
        "prepare.wgsl main",
        "reduce.wgsl main",
        "batch_io.wgsl scatter",
    ] {
        assert!(pipes.contains(&k), "{k} missing from {ds}");
    }
    match ds["unavailable"].as_str() {
        Some(why) => assert!(why.contains("lacks VK_KHR_pipeline_executable_properties"), "{ds}"),
        None => {
            // Every pipeline has an executable; the fused step's have
            // statistics (a driver may have none for a trivial kernel).
            for p in ds["pipelines"].as_array().unwrap() {
                let e = p["executables"].as_array().unwrap();
                assert!(!e.is_empty(), "{p}");
                if p["kernel"] == "fused_step.wgsl main" {
                    assert!(e.iter().any(|e| !e["stats"].as_array().unwrap().is_empty()), "{p}");
                }
            }
        }
    }
    let fused: Vec<&serde_json::Value> =
        ds["pipelines"].as_array().unwrap().iter().filter(|p| p["kernel"] == "fused_step.wgsl main").collect();
    // PREP's pipeline and the step's: the setting tells them apart.
    assert!(fused.len() >= 2 && fused.iter().all(|p| p["setting"].as_str().unwrap().contains("PREP=")), "{ds}");

    // A run that aborts (the naive formula fails step 0) counts the
    // passes of the steps that ran, not of those submitted with them,
    // which did nothing.
    let naive = ["--naive", "--endpoints", "detached", "--on-nonfinite", "abort", "--profile", "--report", &rep];
    let o = run(&[&["--backend", "gpu", "--rows", "300", "--dim", "4", "--steps", "50"][..], &naive].concat());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("profile  GPU time per kernel over 1 step "));
    let r = report(&d.p("r.json"));
    for k in r["profile"].as_array().expect("a profile in the report") {
        assert_eq!(k["calls"].as_u64(), Some(1), "{k}");
    }

    let o = run(&["--backend", "cpu", "--rows", "300", "--dim", "4", "--steps", "2", "--profile", "--report", &rep]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("profile  not available: cpu"), "{out}");
    assert!(!out.contains("driver "), "{out}");
    assert!(report(&d.p("r.json")).get("driver_stats").is_none());
}

/// Mesa's ICD file of `driver` (`lvp`, `radeon`), named by architecture
/// (lvp_icd.x86_64.json, …).
fn icd(driver: &str) -> PathBuf {
    let dir = "/usr/share/vulkan/icd.d";
    let found = std::fs::read_dir(dir).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{driver}_icd."))))
    });
    found.unwrap_or_else(|| {
        panic!("no {driver}_icd.*.json in {dir}: the tests need Mesa's Vulkan drivers (mesa-vulkan-drivers)")
    })
}

/// `--profile`'s driver statistics where a driver gives them. Lavapipe
/// keeps none, so the run (on lavapipe) asks Mesa's RADV instead: with
/// `RADV_FORCE_FAMILY` it makes an AMD device with no card ("Null
/// hardware": it compiles, never runs), and `LATENT_LINE_STATS_DEVICE`
/// points the probe at it. Every pipeline must come back with the
/// compiler's registers; the fused step's UPDATE and evaluation pipelines
/// are told apart, and turning off kept columns (`LATENT_LINE_KEEP=0`)
/// must reach the compiled code (fewer instructions: no unrolled copies).
#[test]
fn driver_statistics_come_from_a_real_gpu_compiler() {
    let (lvp, radv) = (icd("lvp").display().to_string(), icd("radeon").display().to_string());
    let d = Dir::new();
    let rep = d.s("r.json");
    let stats_of = |keep: &str| {
        let o =
            latent_line(["--backend", "gpu", "--adapter", "llvmpipe", "--rows", "600", "--dim", "16", "--steps", "1"])
                .args(["--profile", "--report", &rep])
                .env("VK_ICD_FILENAMES", format!("{lvp}:{radv}"))
                .env("RADV_FORCE_FAMILY", "navi21")
                .env("LATENT_LINE_STATS_DEVICE", "radv")
                .env("LATENT_LINE_LANES", "4")
                .env("LATENT_LINE_VEC4", "0") // KEEP is the 4-byte path's (16-byte columns are always kept)
                .env("LATENT_LINE_KEEP", keep)
                .output()
                .expect("run latent-line");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(out.contains("compiled again on ") && out.contains("(RADV "), "{out}");
        let ds = report(&d.p("r.json"))["driver_stats"].clone();
        assert!(ds["unavailable"].is_null(), "{ds}");
        assert!(ds["device"].as_str().unwrap().contains("RADV"), "{ds}");
        let stat = |p: &serde_json::Value, name: &str| -> u64 {
            let e = &p["executables"].as_array().unwrap()[0];
            let s = e["stats"].as_array().unwrap().iter().find(|s| s["name"] == name);
            s.unwrap_or_else(|| panic!("no {name} in {p}"))["value"].as_str().unwrap().parse().unwrap()
        };
        let pipes = ds["pipelines"].as_array().unwrap().clone();
        for k in ["anchors.wgsl main", "fused_step.wgsl main", "reduce.wgsl main", "init.wgsl main"] {
            assert!(pipes.iter().any(|p| p["kernel"] == k), "{k} missing from {ds}");
        }
        for p in &pipes {
            assert!(stat(p, "VGPRs") > 0, "{p}");
            assert!(stat(p, "Instructions") > 0, "{p}");
        }
        let fused = |update: &str| {
            let p = pipes
                .iter()
                .find(|p| p["kernel"] == "fused_step.wgsl main" && p["setting"] == format!("UPDATE={update}"))
                .unwrap_or_else(|| panic!("no fused step with UPDATE={update} in {ds}"));
            (stat(p, "Instructions"), stat(p, "Spilled VGPRs"))
        };
        let (step, eval) = (fused("1"), fused("0"));
        // The update and the writes make the step's code the longer.
        assert!(step.0 > eval.0, "step {step:?}, evaluation {eval:?}");
        (out, step)
    };
    let (kept, step_kept) = stats_of("1");
    let (_, step_read_twice) = stats_of("0");
    assert!(
        kept.contains("driver   ") && kept.contains("fused_step.wgsl main [UPDATE=1] · Compute Shader: "),
        "{kept}"
    );
    // D = 16 over 4 lanes: each keeps 4 columns, in unrolled copies of
    // the loops; read twice, each loop is one loop.
    assert!(step_kept.0 > step_read_twice.0, "kept {step_kept:?}, read twice {step_read_twice:?}");
}

/// SPEC §3's loss and §8's collapse warning, as the report and the run's
/// lines give them, against the float64 reference stepped alongside: in
/// `detached` mode the anchors walk towards each other by lr a step each
/// (their own row term), so d0 falls below a tenth of its start at a step
/// the reference names; with a margin the separation term is in the loss.
#[test]
fn the_report_holds_spec_3s_loss_and_warns_when_the_anchors_collapse() {
    use latent_line::{reference, Endpoints, Reduction, Shape, StepConfig};
    use rand::{Rng, SeedableRng};
    let seed = 0x10c5_u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = Dir::new();
    let shape = Shape::new(6, 3).unwrap();
    let table: Vec<f32> = (0..18).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let path = dir.p("t.npy");
    latent_line::npy::save(&path, shape, &table).unwrap();
    let d0_start = (0..3).map(|k| ((table[k] - table[15 + k]) as f64).powi(2)).sum::<f64>().sqrt();
    // Anchors 0 and 5 walk 0.99 % of d0 closer a step, so d0 crosses a
    // tenth of its start between steps 90 (10.9 %) and 91 (9.9 %): a
    // threshold of 0.09 or 0.11 would warn a step late or early.
    let lr = (0.00495 * d0_start) as f32;
    for backend in ["cpu", "gpu"] {
        for (margin, weight, reduction) in
            [(0.0f32, 1.0f32, Reduction::Sum), (4.0 * d0_start as f32, 0.3, Reduction::Mean)]
        {
            let ctx = format!("{backend}, margin {margin}, {reduction:?}, seed {seed}");
            let lr = if reduction == Reduction::Mean { lr * 6.0 } else { lr };
            let rep = dir.s("r.json");
            let steps = 100;
            let (lr_s, m_s, w_s) = (lr.to_string(), margin.to_string(), weight.to_string());
            let red = if reduction == Reduction::Mean { "mean" } else { "sum" };
            let o = run(&[
                "--backend",
                backend,
                "--load",
                &path.to_string_lossy(),
                "--endpoints",
                "detached",
                "--lr",
                &lr_s,
                "--margin",
                &m_s,
                "--margin-weight",
                &w_s,
                "--reduction",
                red,
                "--steps",
                &steps.to_string(),
                "--report",
                &rep,
            ]);
            assert_eq!(o.status.code(), Some(0), "{ctx}: {}", stderr(&o));
            let r = report(&dir.p("r.json"));
            let entries = r["steps"].as_array().unwrap();
            assert_eq!(entries.len(), steps + 1, "{ctx}");
            let cfg = StepConfig {
                endpoints: Endpoints::Detached,
                lr,
                reduction,
                margin,
                margin_weight: weight,
                ..StepConfig::for_rows(6)
            };
            let mut want = table.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let (mut d0s, mut losses) = (Vec::new(), Vec::new());
            let w_red = if reduction == Reduction::Mean { 1.0 / 6.0 } else { 1.0 };
            for (i, e) in entries.iter().enumerate() {
                let rec = if i < steps {
                    reference::step(&mut want, shape, &cfg)
                } else {
                    reference::evaluate(&want, shape, &cfg)
                };
                // L = w_red·Σ|r| + λ·max(0, m − d0) (the reference's own
                // separation term, written out there).
                let loss = w_red * rec.excess_sum + rec.separation;
                let got = e["loss"].as_f64().unwrap();
                let tol = 1e-4 * loss.abs() + 1e-5 * 6.0 * (1.0 + rec.d0);
                assert!((got - loss).abs() <= tol, "{ctx}: loss at step {i}: {got} vs {loss}");
                let d0 = e["d0"].as_f64().unwrap();
                assert!((d0 - rec.d0).abs() <= 1e-5 * d0_start, "{ctx}: d0 at step {i}: {d0} vs {}", rec.d0);
                d0s.push(rec.d0);
                losses.push(loss);
            }
            // The summary's first and last: step 0 and the final evaluation.
            for (key, want) in [("first_loss", losses[0]), ("last_loss", losses[steps])] {
                let got = r["summary"][key].as_f64().unwrap();
                assert!((got - want).abs() <= 1e-4 * want.abs() + 1e-4, "{ctx}: {key} {got} vs {want}");
            }
            if margin > 0.0 {
                assert!(d0s.iter().all(|&d| d < margin as f64), "{ctx}: the separation term was to be active");
            }
            // SPEC §8: warn when d0 falls below 0.1 of its value at step 0.
            let collapse = d0s.iter().position(|&d| d < 0.1 * d0s[0]);
            let stdout = String::from_utf8_lossy(&o.stdout);
            let summary = &r["summary"]["collapse_step"];
            match collapse {
                Some(at) => {
                    assert_eq!(summary.as_u64(), Some(at as u64), "{ctx}: {d0s:?}");
                    let line = format!("warning  step {at}: the anchors are collapsing");
                    assert_eq!(stdout.matches("the anchors are collapsing").count(), 1, "{ctx}: {stdout}");
                    assert!(stdout.contains(&line), "{ctx}: {stdout}");
                }
                None => {
                    assert!(summary.is_null(), "{ctx}: {summary} {d0s:?}");
                    assert!(!stdout.contains("collapsing"), "{ctx}: {stdout}");
                }
            }
            if margin == 0.0 {
                assert_eq!(collapse, Some(91), "{ctx}: the walk was set up to cross a tenth at step 91: {d0s:?}");
            }
        }
    }
}

/// `scan --adapter NAME` (or `WGPU_ADAPTER_NAME`) under `auto` scans on
/// that adapter, as `train` takes a named adapter under `auto`; a name
/// that matches none is an error (exit 1), not ignored.
#[test]
fn scan_takes_a_named_adapter_under_auto() {
    let dir = Dir::new();
    table_with(&dir.p("t.npy"), 100, 4, &[(7, 1, f32::NAN)]);
    let t = dir.s("t.npy");
    let listing = String::from_utf8_lossy(&run(&["devices"]).stdout).into_owned();
    let first = listing.lines().find_map(|l| l.strip_prefix("adapter 0: ")).expect("CI has an adapter").to_owned();
    let o = run(&["scan", &t, "--adapter", &first]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("scanned  on gpu · {first}")), "{out}");
    assert!(out.contains("1 NaN") && out.contains("in 1 row\n"), "{out}");
    let o = run(&["scan", &t, "--adapter", "no-such-adapter"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("none matches \"no-such-adapter\""), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "printed before the error: {}", String::from_utf8_lossy(&o.stdout));
    // An adapter named with --backend cpu (which uses none) is an error, an
    // empty name a usage error, for a scan and a run alike.
    for cmd in [&["scan", &t][..], &["--rows", "10", "--steps", "1"]] {
        let o = run(&[cmd, &["--backend", "cpu", "--adapter", &first]].concat());
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("--backend cpu uses none"), "{}", stderr(&o));
        let o = run(&[cmd, &["--adapter", ""]].concat());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("an empty adapter name"), "{}", stderr(&o));
    }
    // Named by WGPU_ADAPTER_NAME, the same; without a name, auto scans in
    // host memory.
    let o = latent_line(["scan", &t]).env("WGPU_ADAPTER_NAME", &first).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("scanned  on gpu"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = latent_line(["scan", &t]).env_remove("WGPU_ADAPTER_NAME").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("scanned  on cpu"), "{}", String::from_utf8_lossy(&o.stdout));
}

/// A named pipe given as an .npy file is refused at once (a table, an
/// index file, a scan): opening one that no process writes would wait
/// forever.
#[test]
fn a_pipe_named_as_an_npy_file_is_refused_at_once() {
    let dir = Dir::new();
    let fifo = dir.s("fifo.npy");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let good = dir.s("good.npy");
    latent_line::npy::save(Path::new(&good), latent_line::Shape::new(10, 2).unwrap(), &[0.5; 20]).unwrap();
    for args in [
        vec!["--backend", "cpu", "--load", &fifo, "--steps", "1"],
        vec!["--backend", "cpu", "--load", &good, "--indices", &fifo, "--steps", "1"],
        vec!["scan", &fifo, "--backend", "cpu"],
    ] {
        let mut child = latent_line(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let t = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > std::time::Duration::from_secs(60) {
                let _ = child.kill();
                panic!("{args:?}: still waiting on the pipe after 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("fifo.npy") && err.contains("not a regular file"), "{args:?}: {err}");
    }
}

/// A checkpoint saved through a symbolic link: the table replaces the
/// file the link names (the link stays), and its run state and velocity
/// go beside that file, so that resuming it, by either name, finds them
/// all. A sidecar that is missing is named as such.
#[test]
fn a_checkpoint_saved_through_a_link_keeps_its_files_beside_its_table() {
    let dir = Dir::new();
    let base = ["--backend", "cpu", "--rows", "300", "--dim", "6", "--momentum", "0.5", "--seed", "11", "--quiet"];
    let ok = |more: &[&str]| {
        let o = run(&[&base[..], more].concat());
        assert_eq!(o.status.code(), Some(0), "{more:?}: {}", stderr(&o));
    };
    let (a, latest) = (dir.s("a.npy"), dir.s("latest.npy"));
    ok(&["--steps", "5", "--save", &a]);
    std::os::unix::fs::symlink("a.npy", &latest).unwrap();
    ok(&["--steps", "8", "--resume", &latest, "--save", &latest]);
    assert!(std::fs::symlink_metadata(&latest).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(dir.files(), ["a.npy", "a.npy.state.json", "a.npy.velocity.npy", "latest.npy"]);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.p("a.npy.state.json")).unwrap()).unwrap();
    assert_eq!(state["steps"], 8);
    // On from a.npy itself: the table of an unbroken run.
    let (done, whole) = (dir.s("done.npy"), dir.s("whole.npy"));
    ok(&["--steps", "10", "--resume", &a, "--save", &done]);
    ok(&["--steps", "10", "--save", &whole]);
    let load = |p: &str| latent_line::npy::load(Path::new(p)).unwrap().data;
    assert!(load(&done) == load(&whole), "the resumed table differs from the unbroken run's");
    std::fs::remove_file(dir.p("a.npy.velocity.npy")).unwrap();
    let o = run(&[&base[..], &["--steps", "12", "--resume", &latest, "--save", &dir.s("x.npy")]].concat());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("a.npy.velocity.npy: not found") && err.contains("velocity was saved here"), "{err}");
    assert!(!dir.p("x.npy").exists());
}

/// New files are made as any program makes them, 0666 less the umask (a
/// `umask 077` keeps checkpoints private); a file replaced keeps its mode.
#[test]
fn saved_files_take_the_umask_and_replaced_ones_keep_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new();
    let mode = |name: &str| std::fs::metadata(dir.p(name)).unwrap().permissions().mode() & 0o777;
    for (umask, want) in [("077", 0o600), ("022", 0o644), ("002", 0o664)] {
        let (t, r) = (dir.s(&format!("t{umask}.npy")), dir.s(&format!("r{umask}.json")));
        let args =
            ["--backend", "cpu", "--rows", "20", "--dim", "2", "--steps", "1", "--quiet", "--save", &t, "--report", &r];
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        for f in [format!("t{umask}.npy"), format!("t{umask}.npy.state.json"), format!("r{umask}.json")] {
            assert_eq!(mode(&f), want, "{f} under umask {umask}: {:o}", mode(&f));
        }
    }
    // Replaced, under umask 077: the old file's 0640 stays.
    std::fs::set_permissions(dir.p("t022.npy"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let t = dir.s("t022.npy");
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["--backend", "cpu", "--load", &t, "--steps", "1", "--quiet", "--save", &t])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(mode("t022.npy"), 0o640);
}

/// A folder where a sidecar would go blocks only a run that writes that
/// sidecar (the velocity: a run with momentum), before it trains.
#[test]
fn a_folder_at_a_sidecars_path_blocks_only_the_runs_that_write_it() {
    let dir = Dir::new();
    std::fs::create_dir(dir.p("t.npy.velocity.npy")).unwrap();
    let t = dir.s("t.npy");
    let o = run(&["--backend", "cpu", "--rows", "20", "--dim", "2", "--steps", "1", "--quiet", "--save", &t]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.p("t.npy").is_file() && dir.p("t.npy.velocity.npy").is_dir());
    let u = dir.s("u.npy");
    std::fs::create_dir(dir.p("u.npy.velocity.npy")).unwrap();
    let o = run(&["--backend", "cpu", "--rows", "20", "--dim", "2", "--steps", "1", "--momentum", "0.9", "--save", &u]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("u.npy.velocity.npy, which is a folder"), "{err}");
    assert!(!dir.p("u.npy").exists());
}

/// A run split by a resume reports what an unbroken one does, beside its
/// table: skip-row's strike counts go on from the checkpoint (SPEC §9),
/// and the collapse step (SPEC §8) stays the step it was, with no second
/// warning.
#[test]
fn a_resumed_run_counts_strikes_and_keeps_its_collapse_step() {
    let dir = Dir::new();
    let report = |p: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let events = |r: &serde_json::Value| -> Vec<(u64, Vec<u64>)> {
        r["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["buffer"] == "table")
            .map(|e| {
                let strikes = e["strikes"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
                (e["step"].as_u64().unwrap(), strikes)
            })
            .collect()
    };
    // Rows 2 and 4 are anchor a's twins: the naive gradient is NaN there
    // every step, and skip-row keeps them, a strike each a step.
    let mut t = table_with(&dir.p("s.npy"), 9, 4, &[]);
    for twin in [2, 4] {
        let a: Vec<f32> = t[..4].to_vec();
        t[twin * 4..][..4].copy_from_slice(&a);
    }
    latent_line::npy::save(&dir.p("s.npy"), latent_line::Shape::new(9, 4).unwrap(), &t).unwrap();
    for backend in ["cpu", "gpu"] {
        let base = ["--backend", backend, "--naive", "--on-nonfinite", "skip-row", "--quiet"];
        let ok = |more: &[&str]| {
            let o = run(&[&base[..], more].concat());
            assert_eq!(o.status.code(), Some(0), "{backend} {more:?}: {}", stderr(&o));
        };
        let (whole, half, rest) = (dir.s("whole.json"), dir.s("half.npy"), dir.s("rest.json"));
        ok(&["--load", &dir.s("s.npy"), "--steps", "5", "--report", &whole]);
        ok(&["--load", &dir.s("s.npy"), "--steps", "2", "--save", &half]);
        ok(&["--resume", &half, "--steps", "5", "--report", &rest]);
        let want: Vec<(u64, Vec<u64>)> = (0..5).map(|s| (s, vec![s + 1, s + 1])).collect();
        assert_eq!(events(&report(&whole)), want, "{backend}: the unbroken run");
        assert_eq!(events(&report(&rest)), want[2..], "{backend}: the resumed run's strikes");
    }
    // Anchors collapsing (detached): d0 falls below 0.1 of its start at
    // a step the unbroken run names; a resume before it or after it names
    // the same step, and one after it does not warn again.
    let base = ["--backend", "cpu", "--rows", "100", "--dim", "8", "--seed", "3", "--endpoints", "detached"];
    let o = run(&[&base[..], &["--steps", "30", "--report", &dir.s("c.json"), "--quiet"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let at = report(&dir.s("c.json"))["summary"]["collapse_step"].as_u64().expect("the anchors collapse");
    assert!((3..25).contains(&at), "collapse at step {at}");
    // (A higher --collapse-fraction names an earlier step, one whose d0 is
    // below half the start and whose step before is not.)
    let o = run(&[&base[..], &["--steps", "30", "--report", &dir.s("h.json"), "--collapse-fraction", "0.5"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let h = report(&dir.s("h.json"));
    let half = h["summary"]["collapse_step"].as_u64().expect("collapse at 0.5") as usize;
    let d0 = |s: usize| h["steps"][s]["d0"].as_f64().unwrap();
    assert!(half < at as usize && d0(half) < 0.5 * d0(0) && d0(half - 1) >= 0.5 * d0(0), "{half} vs {at}");
    for split in [at - 2, at, at + 3] {
        let (ck, rep) = (dir.s(&format!("c{split}.npy")), dir.s(&format!("c{split}.json")));
        let o = run(&[&base[..], &["--steps", &split.to_string(), "--save", &ck]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        // Warned of by the run that saw it, even in its final table only
        // (a run of `at` steps).
        let warned =
            String::from_utf8_lossy(&o.stdout).contains(&format!("warning  step {at}: the anchors are collapsing"));
        assert_eq!(warned, split >= at, "the first {split} steps: warned {warned}");
        let o = run(&[&base[..], &["--steps", "30", "--resume", &ck, "--report", &rep]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(report(&rep)["summary"]["collapse_step"].as_u64(), Some(at), "resumed at {split}");
        assert_eq!(report(&rep)["summary"]["resumed_from"].as_u64(), Some(split));
        let warned = String::from_utf8_lossy(&o.stdout).contains("the anchors are collapsing");
        assert_eq!(warned, split < at, "resumed at {split}: warned again {warned}");
        // The collapse step saved was measured by the fraction: a resume
        // takes the same one.
        let o = run(&[&base[..], &["--steps", "30", "--resume", &ck, "--collapse-fraction", "0.5"]].concat());
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("--collapse-fraction 0.1 (this run: 0.5)"), "{}", stderr(&o));
    }
}

/// A run state too large for a `.safetensors` header (skip-row's strike
/// counts of millions of rows; the crate refuses a header past 100 MB)
/// goes beside the file as `FILE.state.json`, the header saying so, and a
/// resume reads it there: the strikes count on.
#[test]
fn a_run_state_too_large_for_a_safetensors_header_goes_beside_it() {
    let dir = Dir::new();
    // 2M one-column rows equal to anchor a (row 0), but for anchor b (the
    // last) and 999 rows beyond it, which move: the naive gradient is NaN
    // in every other one, and skip-row strikes them all (about 24 MB of
    // counts).
    let rows = 2_000_000;
    let mut t = vec![0.25f32; rows];
    t[rows - 1] = 3.0;
    for (i, v) in t[1..1000].iter_mut().enumerate() {
        *v = 4.0 + i as f32 * 1e-3;
    }
    latent_line::npy::save(&dir.p("t.npy"), latent_line::Shape::new(rows, 1).unwrap(), &t).unwrap();
    let ck = dir.s("ck.safetensors");
    let base = ["--backend", "cpu", "--naive", "--on-nonfinite", "skip-row", "--quiet"];
    let o = run(&[&base[..], &["--load", &dir.s("t.npy"), "--steps", "1", "--save", &ck]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bytes = std::fs::read(dir.p("ck.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(n < 1 << 20 && header.contains("latent_line.run_state_beside"), "{n} bytes: {}", &header[..200.min(n)]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.p("ck.safetensors.state.json")).unwrap()).unwrap();
    assert_eq!(
        state["strikes"].as_array().unwrap().len(),
        rows - 2 - 999,
        "every row but the anchors and the 999 struck"
    );
    let rep = dir.s("r.json");
    let o = run(&[&base[..], &["--resume", &ck, "--steps", "2", "--report", &rep]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
    let table = r["events"].as_array().unwrap().iter().find(|e| e["buffer"] == "table").expect("a table event");
    assert_eq!(table["step"], 1);
    assert!(table["strikes"].as_array().unwrap().iter().all(|s| s == 2), "{table}");
    // A save of step 2 over it killed between its renames (the state's,
    // then the table's): the new state beside the old table, the old state
    // and the new table left as a killed save leaves them. The resume takes
    // the state the table in place was saved with, and ends where an
    // unbroken run does.
    let (two, mixed) = (Dir::new(), Dir::new());
    for name in ["ck.safetensors", "ck.safetensors.state.json"] {
        std::fs::copy(dir.p(name), two.p(name)).unwrap();
    }
    let o =
        run(&[&base[..], &["--resume", &two.s("ck.safetensors"), "--steps", "2", "--save", &two.s("ck.safetensors")]]
            .concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::copy(dir.p("ck.safetensors"), mixed.p("ck.safetensors")).unwrap();
    std::fs::copy(two.p("ck.safetensors.state.json"), mixed.p("ck.safetensors.state.json")).unwrap();
    std::fs::copy(dir.p("ck.safetensors.state.json"), mixed.p(".latent-line-old-Ab12Cd")).unwrap();
    std::fs::copy(two.p("ck.safetensors"), mixed.p(".latent-line-Ef34Gh.tmp")).unwrap();
    let m = mixed.s("ck.safetensors");
    let o = run(&[
        "--backend",
        "cpu",
        "--naive",
        "--on-nonfinite",
        "skip-row",
        "--resume",
        &m,
        "--steps",
        "3",
        "--save",
        &m,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(said.contains("its run state from") && said.contains(".latent-line-old-Ab12Cd"), "{said}");
    let o = run(&[&base[..], &["--load", &dir.s("t.npy"), "--steps", "3", "--save", &dir.s("u.safetensors")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = |p: &Path| latent_line::tables::load(p, "weight").unwrap().data;
    assert!(table(&mixed.p("ck.safetensors")) == table(&dir.p("u.safetensors")), "not the unbroken run's table");
    // Without the file beside it, the resume is refused, naming it.
    let beside = std::fs::read(dir.p("ck.safetensors.state.json")).unwrap();
    std::fs::remove_file(dir.p("ck.safetensors.state.json")).unwrap();
    let o = run(&[&base[..], &["--resume", &ck, "--steps", "2"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("ck.safetensors.state.json: not found"), "{}", stderr(&o));
    // A later checkpoint there whose state fits the header (no strikes
    // under skip-step) takes it in, and the file beside goes.
    std::fs::write(dir.p("ck.safetensors.state.json"), beside).unwrap();
    let o = run(&["--backend", "cpu", "--naive", "--quiet", "--resume", &ck, "--steps", "2", "--save", &ck]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!dir.p("ck.safetensors.state.json").exists(), "a stale run state was left beside the checkpoint");
    let bytes = std::fs::read(dir.p("ck.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(std::str::from_utf8(&bytes[8..8 + n]).unwrap().contains("\"latent_line.run_state\""));
}

/// `--json` prints the report on standard output; `--report` naming that
/// same output is refused (two documents would follow each other).
#[test]
fn json_and_a_report_on_standard_output_are_refused_together() {
    let dir = Dir::new();
    let o = run(&["--backend", "cpu", "--rows", "20", "--steps", "1", "--json", "--report", "/dev/stdout"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is standard output, where --json prints the report"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    // Another file is fine, and holds what --json printed.
    let r = dir.s("r.json");
    let o = run(&["--backend", "cpu", "--rows", "20", "--steps", "1", "--json", "--report", &r]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&r).unwrap(), o.stdout);
}

/// A `.safetensors` checkpoint saved with `--tensor emb` records that name
/// in its run state: a resume that reads another tensor (the default,
/// `weight`, here another tensor of the same file, carried over) is
/// refused naming the one to give, before any work, the files untouched;
/// with it, the resume ends where the unbroken run does.
#[test]
fn a_resume_under_another_tensor_name_is_told_the_checkpoints() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = Dir::new();
    let seed = common::seed("resume_tensor_name");
    let table = common::random_table(&mut common::rng(seed), 30, 4);
    let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ones: Vec<u8> = [1.0f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = vec![
        ("emb".to_string(), TensorView::new(Dtype::F32, vec![30, 4], &bytes).unwrap()),
        ("weight".to_string(), TensorView::new(Dtype::F32, vec![2, 2], &ones).unwrap()),
    ];
    std::fs::write(dir.p("in.safetensors"), safetensors::tensor::serialize(t, None).unwrap()).unwrap();
    let base = ["--backend", "cpu", "--quiet"];
    let emb = ["--tensor", "emb"];
    let go = |extra: &[&str]| run(&[&base[..], extra].concat());
    let o =
        go(&[&["--load", &dir.s("in.safetensors"), "--steps", "3", "--save", &dir.s("ck.safetensors")], &emb[..]]
            .concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = std::fs::read(dir.p("ck.safetensors")).unwrap();
    // (Told before options are checked against the shape of the tensor
    // read: rows 0 and 29 are no rows of the 2 × 2 `weight`.)
    let o = go(&[
        "--resume",
        &dir.s("ck.safetensors"),
        "--steps",
        "6",
        "--anchors",
        "0,29",
        "--save",
        &dir.s("out.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(1), "seed {seed}: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("table is its tensor \"emb\"") && err.contains("resume it with --tensor emb"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dir.p("out.safetensors").exists(), "an output was written");
    assert_eq!(std::fs::read(dir.p("ck.safetensors")).unwrap(), before, "the checkpoint changed");
    let o =
        go(&[&["--resume", &dir.s("ck.safetensors"), "--steps", "6", "--save", &dir.s("out.safetensors")], &emb[..]]
            .concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o =
        go(&[&["--load", &dir.s("in.safetensors"), "--steps", "6", "--save", &dir.s("whole.safetensors")], &emb[..]]
            .concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let read = |name: &str| {
        let bytes = std::fs::read(dir.p(name)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor("emb").unwrap().data().to_vec()
    };
    assert!(read("out.safetensors") == read("whole.safetensors"), "seed {seed}: not the unbroken run's table");
}

/// `--naive`'s note says which rows will turn NaN, as they do: under
/// `frozen` not the anchors (never written), so nothing here; under
/// `detached` the anchors themselves.
#[test]
fn the_naive_note_says_which_rows_turn_nan() {
    let base = ["--backend", "cpu", "--rows", "6", "--dim", "4", "--naive", "--steps", "1", "--on-nonfinite", "ignore"];
    let o = run(&base);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}{}", stderr(&o));
    assert!(text.contains("rows other than the anchors at distance 0 from one turn NaN; frozen anchors"), "{text}");
    assert!(text.contains("every value of the table is finite"), "{text}");
    let o = run(&[&base[..], &["--endpoints", "detached"]].concat());
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}{}", stderr(&o));
    assert!(text.contains("turn NaN, the anchors themselves when their rows are in the step"), "{text}");
    assert!(text.contains("8 non-finite (8 NaN, 0 +Inf, 0 -Inf) in 2 rows"), "{text}");
}

/// Options under which step 1 overflows its rows (weight decay of 1e30
/// at lr 1), so that the guard acts there.
const BLOW_UP: [&str; 7] = ["--backend", "cpu", "--weight-decay", "1e30", "--lr", "1", "--quiet"];

/// `t.npy` in `dir`, a 40 × 3 table of fresh random values (seeded by
/// `name`): the seed, for failures to print, and the file's bytes.
fn random_input(dir: &Dir, name: &str) -> (u64, Vec<u8>) {
    let seed = common::seed(name);
    let shape = latent_line::Shape::new(40, 3).unwrap();
    latent_line::npy::save(&dir.p("t.npy"), shape, &common::random_table(&mut common::rng(seed), 40, 3)).unwrap();
    (seed, std::fs::read(dir.p("t.npy")).unwrap())
}

/// Files are checked for what they are, not how they are named: a hard
/// link to the input is the input (an aborted run saves beside it, as
/// beside the input: identity, not path text, which also makes a folder
/// bind-mounted at a second path one folder); a looping link, a name too
/// long for its folder (a sidecar's), a device as a `.safetensors` input
/// (once copied without end into the temporary folder) are refused before
/// any work.
#[cfg(unix)]
#[test]
fn files_are_checked_for_what_they_are() {
    let dir = Dir::new();
    let (seed, input) = random_input(&dir, "files_what_they_are");
    std::fs::hard_link(dir.p("t.npy"), dir.p("h.npy")).unwrap();
    let abort = ["--on-nonfinite", "abort", "--steps", "5"];
    let o = run(&[&BLOW_UP[..], &abort, &["--load", &dir.s("t.npy"), "--save", &dir.s("h.npy")]].concat());
    assert_eq!(o.status.code(), Some(3), "seed {seed}: {}", stderr(&o));
    assert!(std::fs::read(dir.p("t.npy")).unwrap() == input, "seed {seed}: the input was overwritten");
    assert!(std::fs::read(dir.p("h.npy")).unwrap() == input, "seed {seed}: its hard link was replaced");
    assert!(dir.p("h.aborted.npy").exists(), "seed {seed}: not saved beside: {:?}", dir.files());
    std::os::unix::fs::symlink("loop.npy", dir.p("loop.npy")).unwrap();
    refused(&dir, &["--save", &dir.s("loop.npy")], "loop.npy is a loop of symbolic links");
    // 255 bytes: a name the file system takes; its run state's is longer.
    let long = dir.s(&format!("{}.npy", "x".repeat(251)));
    refused(&dir, &["--save", &long], ".npy.state.json: a name of 266 bytes is too long");
    std::os::unix::fs::symlink("/dev/zero", dir.p("z.safetensors")).unwrap();
    refused(&dir, &["--load", &dir.s("z.safetensors")], "z.safetensors: not a regular file, nor a pipe");
}

/// SPEC §12: an interrupted or failed run never overwrites its input. A
/// run whose --save is its --load file and that aborts (weight decay of
/// 1e30 makes step 1's rows overflow) saves the table before the failing
/// step beside it, `t.aborted.npy`, as the report's `summary.saved` says,
/// and leaves the input byte for byte. Its checkpoints go beside the input
/// too (`t.checkpoint.npy`), never over it: an aborted run saves over its
/// own checkpoint there; a run that ends well replaces the input and
/// removes them.
#[test]
fn an_aborted_run_saves_beside_its_input() {
    let dir = Dir::new();
    let (seed, input) = random_input(&dir, "aborted_beside");
    std::fs::copy(dir.p("t.npy"), dir.p("c.npy")).unwrap();
    let go = |extra: &[&str]| run(&[&BLOW_UP[..], extra].concat());
    let (t, c) = (dir.s("t.npy"), dir.s("c.npy"));
    let one = dir.s("one.npy");
    let o = go(&["--steps", "1", "--load", &c, "--save", &one]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let after_one = latent_line::npy::load(&dir.p("one.npy")).unwrap().data;
    let o = go(&["--steps", "5", "--on-nonfinite", "abort", "--load", &t, "--save", &t, "--report", &dir.s("r.json")]);
    assert_eq!(o.status.code(), Some(3), "seed {seed}: {}", stderr(&o));
    assert_eq!(std::fs::read(dir.p("t.npy")).unwrap(), input, "seed {seed}: the input was overwritten");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.p("r.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["aborted_at"], 1, "seed {seed}");
    assert_eq!(report["summary"]["saved"].as_str(), Some(dir.s("t.aborted.npy").as_str()));
    assert!(latent_line::npy::load(&dir.p("t.aborted.npy")).unwrap().data == after_one, "seed {seed}");
    assert!(dir.p("t.aborted.npy.state.json").exists(), "its run state, for a resume");
    // That table is not replaced by the same run again (which would abort
    // alike and save over it): refused, naming the resume that goes on.
    let o = go(&["--steps", "5", "--on-nonfinite", "abort", "--load", &t, "--save", &t]);
    assert_eq!(o.status.code(), Some(1), "seed {seed}: {}", stderr(&o));
    let hint = format!("exists, the table of an earlier run of {t} that aborted");
    assert!(stderr(&o).contains(&hint) && stderr(&o).contains(&format!("--resume {}", dir.s("t.aborted.npy"))));
    assert!(latent_line::npy::load(&dir.p("t.aborted.npy")).unwrap().data == after_one, "seed {seed}");
    // So is one an interrupted run saved there.
    std::fs::rename(dir.p("t.aborted.npy"), dir.p("t.interrupted.npy")).unwrap();
    let o = go(&["--steps", "1", "--load", &t, "--save", &t]);
    assert_eq!(o.status.code(), Some(1), "seed {seed}: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "{} exists, the table of an earlier run of {t} that was interrupted",
            dir.s("t.interrupted.npy")
        )),
        "{}",
        stderr(&o)
    );
    std::fs::rename(dir.p("t.interrupted.npy"), dir.p("kept.npy")).unwrap();
    // Checkpointed every step: step 1's checkpoint went beside c.npy, and
    // the aborted run saves over it (its own), the input as it was.
    let o = go(&["--steps", "5", "--on-nonfinite", "abort", "--checkpoint-every", "1", "--load", &c, "--save", &c]);
    assert_eq!(o.status.code(), Some(3), "seed {seed}: {}", stderr(&o));
    assert!(!dir.p("c.aborted.npy").exists(), "seed {seed}");
    assert_eq!(std::fs::read(dir.p("c.npy")).unwrap(), input, "seed {seed}: a checkpoint overwrote the input");
    let ck = dir.s("c.checkpoint.npy");
    assert!(latent_line::npy::load(&dir.p("c.checkpoint.npy")).unwrap().data == after_one, "seed {seed}");
    // A --resume checkpoint saved over is the run's own going on: an
    // aborted resume saves over it (its step-1 table again), as its
    // checkpoints would.
    let o = go(&["--steps", "5", "--on-nonfinite", "abort", "--resume", &ck, "--save", &ck]);
    assert_eq!(o.status.code(), Some(3), "seed {seed}: {}", stderr(&o));
    assert!(!dir.p("c.checkpoint.aborted.npy").exists(), "seed {seed}");
    assert!(latent_line::npy::load(&dir.p("c.checkpoint.npy")).unwrap().data == after_one, "seed {seed}");
    // That checkpoint is not replaced by a new in-place run: refused; once
    // removed, a run that ends well replaces its input and removes its
    // checkpoints beside it, their run state too.
    let in_place = ["--backend", "cpu", "--steps", "3", "--checkpoint-every", "1", "--load", &c, "--save", &c];
    let o = run(&in_place);
    assert_eq!(o.status.code(), Some(1), "seed {seed}: {}", stderr(&o));
    assert!(stderr(&o).contains("exists, a checkpoint of an earlier run"), "{}", stderr(&o));
    std::fs::remove_file(dir.p("c.checkpoint.npy")).unwrap();
    std::fs::remove_file(dir.p("c.checkpoint.npy.state.json")).unwrap();
    let o = run(&in_place);
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains(&format!("removed  {ck}: this run's checkpoints")), "{said}");
    assert_ne!(std::fs::read(dir.p("c.npy")).unwrap(), input, "seed {seed}: the input was not replaced");
    assert!(!dir.p("c.checkpoint.npy").exists() && !dir.p("c.checkpoint.npy.state.json").exists());
    // The files it would save beside the input are checked before any
    // work, its run state and velocity too: none over another file of the
    // run, none where a folder is.
    // (Batches, 1-D, at the path of the velocity beside t.aborted.npy.)
    let idx: Vec<u8> = (0..4i64).flat_map(|i| i.to_le_bytes()).collect();
    npy(&dir.p("t.aborted.npy.velocity.npy"), "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", &idx);
    let before = dir.files();
    for (extra, expect) in [
        (vec!["--report", &dir.s("t.aborted.npy.state.json")][..].to_vec(), "which is the --report file"),
        (vec!["--indices", &dir.s("t.aborted.npy.velocity.npy")], "which is the --indices file"),
    ] {
        let o = go(&[&["--steps", "1", "--load", &t, "--save", &t][..], &extra].concat());
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("saves beside its input") && stderr(&o).contains(expect), "{}", stderr(&o));
    }
    std::fs::create_dir(dir.p("t.interrupted.npy")).unwrap();
    let o = go(&["--steps", "1", "--load", &t, "--save", &t]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("a run that is interrupted saves beside its input"), "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.p("t.npy")).unwrap(), input, "seed {seed}: the input was overwritten");
    let mut now = dir.files();
    now.retain(|f| f != "t.interrupted.npy");
    assert_eq!(now, before, "files appeared or went");
}

/// A random table with non-finite values in `bad` rows (NaN, +Inf, −Inf
/// in turn, at random columns), saved at `path`.
fn table_with_bad_rows(path: &Path, rng: &mut impl rand::Rng, rows: usize, dim: usize, bad: &[usize]) -> Vec<f32> {
    let mut t = common::random_table(rng, rows, dim);
    for (i, &r) in bad.iter().enumerate() {
        t[r * dim + rng.random_range(0..dim)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3];
    }
    latent_line::npy::save(path, latent_line::Shape::new(rows, dim).unwrap(), &t).unwrap();
    t
}

/// A test's random table of 200–400 rows × 1–8 columns at `t.npy` in a
/// fresh folder, `bad(rng)` of its rows (never an anchor of the default
/// 0, R − 1) non-finite.
struct BadRowsCase {
    seed: u64,
    rng: rand::rngs::StdRng,
    dir: Dir,
    rows: usize,
    dim: usize,
    t: String,
    bad: Vec<usize>,
    table: Vec<f32>,
}

fn bad_rows_case(test: &str, bad: impl FnOnce(&mut rand::rngs::StdRng) -> usize) -> BadRowsCase {
    use rand::Rng;
    let seed = common::seed(test);
    let mut rng = common::rng(seed);
    let dir = Dir::new();
    let (rows, dim) = (rng.random_range(200..400), rng.random_range(1..9));
    let t = dir.s("t.npy");
    let mut rows_bad: Vec<usize> = (1..rows - 1).collect();
    rand::seq::SliceRandom::shuffle(&mut rows_bad[..], &mut rng);
    let n = bad(&mut rng);
    rows_bad.truncate(n);
    let table = table_with_bad_rows(Path::new(&t), &mut rng, rows, dim, &rows_bad);
    BadRowsCase { seed, rng, dir, rows, dim, t, bad: rows_bad, table }
}

#[test]
fn a_non_finite_anchor_row_is_refused_before_any_step() {
    // d0 and every distance to such an anchor are NaN: no row could train
    // (every guard but ignore keeps them all). A run from --load is
    // refused, naming the row and its first bad column, wherever the row
    // lies among the bad ones; under ignore, or resumed (its run going on,
    // as an unbroken one would), it is warned of.
    let BadRowsCase { seed, mut rng, dir, rows, dim, t, bad, table } = bad_rows_case("non_finite_anchor", |_| 3);
    let (row, other) = (bad[0], rows - 1);
    let col = (0..dim).find(|&c| !table[row * dim + c].is_finite()).unwrap();
    for anchors in [format!("{row},{other}"), format!("{other},{row}")] {
        refused(
            &dir,
            &["--load", &t, "--anchors", &anchors],
            &format!("the anchor row {row} holds NaN at column {col} of {t}:"),
        );
    }
    // The default anchors: row 0.
    let t0 = dir.s("t0.npy");
    table_with_bad_rows(Path::new(&t0), &mut rng, rows, dim, &[0, bad[1]]);
    refused(&dir, &["--load", &t0], "the anchor row 0 holds NaN at column");
    refused(&dir, &["--load", &t0], "(the default --anchors 0,R-1)");
    // More bad rows than the input scan lists (64), the last anchor past
    // them (NaN: the first bad row given); and finite anchors past the
    // list, far enough apart that d0 overflows to +Inf: the run goes on.
    let many: Vec<usize> = (1..71).collect();
    let tm = dir.s("many.npy");
    let mut with_last = vec![rows - 1, 1, 2];
    with_last.extend(3..71);
    table_with_bad_rows(Path::new(&tm), &mut rng, rows, dim, &with_last);
    refused(&dir, &["--load", &tm], &format!("the anchor row {} holds NaN at column", rows - 1));
    let tf = dir.s("far.npy");
    let mut far = table_with_bad_rows(Path::new(&tf), &mut rng, rows, dim, &many);
    far[..dim].fill(1e20);
    far[(rows - 1) * dim..].fill(-1e20);
    latent_line::npy::save(Path::new(&tf), latent_line::Shape::new(rows, dim).unwrap(), &far).unwrap();
    let o = run(&["--backend", "cpu", "--load", &tf, "--steps", "2", "--on-nonfinite", "skip-row"]);
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("anchor row"), "seed {seed}");
    // On the GPU too.
    let o = run(&["--backend", "gpu", "--load", &t, "--anchors", &format!("{row},{other}"), "--steps", "2"]);
    assert_eq!(o.status.code(), Some(1), "seed {seed}: {}", stderr(&o));
    assert!(stderr(&o).contains(&format!("the anchor row {row} holds NaN at column {col} of {t}")), "{}", stderr(&o));
    // Under ignore, and resumed: warned of, and the run goes on as an
    // unbroken one would.
    let anchors = format!("{row},{other}");
    let (ck, whole) = (dir.s("ck.npy"), dir.s("whole.npy"));
    let ignore = ["--backend", "cpu", "--on-nonfinite", "ignore", "--anchors", &anchors];
    let o = run(&[&ignore[..], &["--load", &t, "--steps", "2", "--save", &ck]].concat());
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", stderr(&o));
    let warned = format!("warning  the anchor row {row} holds NaN at column {col} of {t}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&warned),
        "seed {seed}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = run(&[&ignore[..], &["--resume", &ck, "--steps", "4", "--save", &ck]].concat());
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("warning  the anchor row"), "seed {seed}");
    let o = run(&[&ignore[..], &["--load", &t, "--steps", "4", "--save", &whole]].concat());
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", stderr(&o));
    assert_eq!(std::fs::read(&ck).unwrap(), std::fs::read(&whole).unwrap(), "seed {seed}: split run ≠ unbroken");
}

#[test]
fn a_table_loaded_with_non_finite_rows_is_told_what_its_run_will_do() {
    use rand::Rng;
    let BadRowsCase { seed, dir, rows, dim, t, bad, table, .. } =
        bad_rows_case("non_finite_input_run", |rng| rng.random_range(1..5));
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    // skip-step: told before the run that every step will be skipped, and
    // why it aborted.
    let o = run(&["--backend", "cpu", "--load", &t, "--steps", "12"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "seed {seed}: {out}");
    assert!(out.contains("every full-table step reads these rows: each is skipped"), "seed {seed}: {out}");
    assert!(out.contains("--on-nonfinite skip-row trains the other rows"), "seed {seed}: {out}");
    assert!(out.contains("(a failing step after 10 skipped in a row: --max-skips)"), "seed {seed}: {out}");
    // No --save: said before the run and at its end.
    assert!(out.contains("note     no --save: the trained table will not be kept"), "seed {seed}: {out}");
    assert!(out.contains("saved    nothing: no --save"), "seed {seed}: {out}");
    // skip-row trains the others: the loss over the finite terms, printed
    // and in the report, is the f64 sum over the finite rows.
    let report = dir.p("r.json");
    let o = run(&[
        "--backend",
        "cpu",
        "--load",
        &t,
        "--steps",
        "5",
        "--on-nonfinite",
        "skip-row",
        "--report",
        report.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {out}");
    assert!(out.contains("the finite terms alone ("), "seed {seed}: {out}");
    assert!(!out.contains("--on-nonfinite skip-row trains"), "seed {seed}: no hint under skip-row: {out}");
    // A loss term is a row's: named by its row alone.
    let mut sorted = bad.clone();
    sorted.sort();
    assert!(out.contains(&format!("loss: {} non-finite", bad.len())), "seed {seed}: {out}");
    assert!(out.contains(&format!("first at row {} (", sorted[0])), "seed {seed}: {out}");
    let s = &self::report(&report)["summary"];
    let (first, last) = (&s["first_finite_terms"], &s["last_finite_terms"]);
    assert!(s["first_loss"].is_null(), "seed {seed}: {s}");
    assert_eq!(first["left_out"].as_u64(), Some(bad.len() as u64), "seed {seed}: {s}");
    assert_eq!(last["left_out"].as_u64(), Some(bad.len() as u64), "seed {seed}: {s}");
    let row = |r: usize| &table[r * dim..(r + 1) * dim];
    let dist = |x: &[f32], y: &[f32]| {
        (x.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() + 1e-8).sqrt()
    };
    let (p, q) = (row(0), row(rows - 1));
    let d0 = dist(p, q);
    let want: f64 =
        (0..rows).filter(|r| !bad.contains(r)).map(|r| (dist(row(r), p) + dist(row(r), q) - d0).abs()).sum();
    let got = first["loss"].as_f64().unwrap();
    assert!(common::rel(got, want) < 1e-4, "seed {seed}: finite terms' loss {got}, want {want}");
    let mean = first["mean_excess"].as_f64().unwrap();
    assert!(common::rel(mean, want / (rows - bad.len()) as f64) < 1e-4, "seed {seed}: mean {mean}");
    assert!(last["loss"].as_f64().unwrap() < got, "seed {seed}: the other rows did not train: {s}");
}

#[test]
fn options_the_run_has_no_use_for_are_said_and_negative_counts_named() {
    let o = run(&["--backend", "cpu", "--rows", "50", "--steps", "1", "--max-rollbacks", "5", "--backoff", "0.25"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(
            "no effect in this run: --max-rollbacks, --backoff are --on-nonfinite rollback's (this run's: skip-step)"
        ),
        "{out}"
    );
    let o = run(&[
        "--backend",
        "cpu",
        "--rows",
        "50",
        "--steps",
        "1",
        "--max-rollbacks",
        "5",
        "--on-nonfinite",
        "rollback",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!out.contains("no effect"), "{out}");
    // A generated table is not told "no --save".
    assert!(!out.contains("no --save"), "{out}");
    // The seed draws a generated table and --batch's batches: loaded and
    // trained whole, or by --indices, it has no effect.
    let dir = Dir::new();
    let (t, idx) = (dir.s("t.npy"), dir.s("i.npy"));
    latent_line::npy::save(Path::new(&t), latent_line::Shape::new(50, 3).unwrap(), &[0.5; 150]).unwrap();
    npy(Path::new(&idx), "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[1, 0, 0, 0, 7, 0, 0, 0]);
    for (extra, unused) in [(vec![], true), (vec!["--indices", &idx], true), (vec!["--batch", "10"], false)] {
        let o = run(&[&["--backend", "cpu", "--load", &t, "--steps", "1", "--seed", "3"][..], &extra].concat());
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(
            out.contains("no effect in this run: --seed is a generated table's and --batch's"),
            unused,
            "{extra:?}: {out}"
        );
    }
    // A negative count is a value of its option, refused by name (clap's exit 2).
    for opt in ["--steps", "--rows", "--max-skips"] {
        let o = run(&[opt, "-1"]);
        assert_eq!(o.status.code(), Some(2), "{opt}");
        assert!(stderr(&o).contains(&format!("invalid value '-1' for '{opt} <")), "{opt}: {}", stderr(&o));
    }
}

#[test]
fn a_table_the_host_cannot_hold_is_refused_before_any_allocation() {
    // Linux overcommits: without a check, the run would be killed when it
    // touched its pages (exit 137, nothing said). The CPU backend needs the
    // table and its second buffer (the default guard); a software GPU
    // adapter the same in its buffers, which are host memory.
    let dir = Dir::new();
    let (rows, dim) = (20000u64, 16u64);
    let table = rows * dim * 4;
    for (backend, reserve) in
        [("cpu", latent_line::host::RESERVE_CPU), ("gpu", latent_line::host::RESERVE_SOFTWARE_GPU)]
    {
        let need = 2 * table + reserve;
        let args = |out: &str| {
            let (r, d) = (rows.to_string(), dim.to_string());
            let a = ["--backend", backend, "--rows", &r, "--dim", &d, "--steps", "2", "--save", &dir.s(out), "--quiet"];
            let mut a: Vec<String> = a.map(String::from).into();
            if backend == "gpu" {
                // (A software adapter's buffers are host memory: lavapipe,
                // named, where a machine has a GPU too.)
                a.extend(["--adapter".into(), "llvmpipe".into()]);
            }
            a
        };
        let o = latent_line(args("no.npy")).env("LATENT_LINE_HOST_MEMORY", (need - 1).to_string()).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("table of {rows} rows × {dim} columns ({table} bytes) does not fit")),
            "{backend}: {e}"
        );
        let says = format!("needs {:.1} MB of host memory", need as f64 / 1e6);
        assert!(e.contains(&says) && e.contains("LATENT_LINE_HOST_MEMORY"), "{backend}: {e}");
        assert!(!dir.p("no.npy").exists(), "{backend}");
        // Exactly what it needs: it runs.
        let o = latent_line(args("yes.npy")).env("LATENT_LINE_HOST_MEMORY", need.to_string()).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        std::fs::remove_file(dir.p("yes.npy")).unwrap();
    }
    // Without the override, what the system says: no host has a petabyte.
    let o = run(&["--backend", "cpu", "--rows", "4000000000", "--dim", "100000", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("TB of host memory") || stderr(&o).contains("GB of host memory"), "{}", stderr(&o));
}

#[test]
fn no_driver_noise_where_xdg_runtime_dir_is_unset() {
    // Mesa (through libwayland) prints "error: XDG_RUNTIME_DIR is invalid
    // or not set" when Vulkan opens without it: not an error of the run's,
    // so the binary sets one first. `devices` opens every adapter.
    let o = Command::new(BIN).arg("devices").env_remove("XDG_RUNTIME_DIR").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("adapter 0:"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(!stderr(&o).contains("XDG_RUNTIME_DIR"), "{}", stderr(&o));
}

#[test]
fn auto_runs_on_the_cpu_when_the_gpu_it_picks_cannot_be_opened() {
    // RADV's "Null hardware" device (RADV_FORCE_FAMILY without the card) is
    // a hardware adapter, ranked first, that no device can be made on:
    // `auto` says so and runs the CPU backend; `--backend gpu` and a named
    // adapter are requests, refused as they were.
    let icds = format!("{}:{}", icd("lvp").display(), icd("radeon").display());
    let args = ["--rows", "600", "--dim", "8", "--steps", "2"];
    let with = |more: &[&str]| {
        latent_line([&args[..], more].concat())
            .env("VK_ICD_FILENAMES", &icds)
            .env("RADV_FORCE_FAMILY", "navi21")
            .env_remove("WGPU_ADAPTER_NAME")
            .output()
            .unwrap()
    };
    let o = with(&[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.starts_with("device   cpu"), "{out}");
    assert!(out.contains("auto: the GPU adapter could not be opened (Null hardware (RADV NAVI21): "), "{out}");
    let o = with(&["--backend", "gpu"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("could not open the GPU device: Null hardware"), "{}", stderr(&o));
    // `devices` says what `auto` does.
    let o = latent_line(["devices"])
        .env("VK_ICD_FILENAMES", &icds)
        .env("RADV_FORCE_FAMILY", "navi21")
        .env_remove("WGPU_ADAPTER_NAME")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("auto     the CPU backend (") && out.contains("could not be opened (Null hardware"), "{out}");
}
