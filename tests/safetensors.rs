//! `.safetensors` tables (SPEC §12): F32/F64/F16/BF16 tables in, F32 out,
//! the file's other tensors and metadata carried over unchanged; bad files
//! refused with one line, exit code 1, no output.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

const BIN: &str = env!("CARGO_BIN_EXE_latent-line");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().expect("run latent-line")
}

fn table(rows: usize, dim: usize) -> Vec<f32> {
    (0..rows * dim).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect()
}

/// A checkpoint: the table as `dtype` under `name`, plus a F16 bias, an
/// I64 step counter, and metadata.
fn checkpoint(path: &Path, name: &str, dtype: Dtype, rows: usize, dim: usize) -> Vec<f32> {
    let t = table(rows, dim);
    let weight: Vec<u8> = match dtype {
        Dtype::F32 => t.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F64 => t.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
        Dtype::F16 => t.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => t.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        _ => unreachable!(),
    };
    let bias: Vec<u8> = [0.5f32, -1.0, 2.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let step: Vec<u8> = 1234i64.to_le_bytes().to_vec();
    let tensors = vec![
        (name.to_string(), TensorView::new(dtype, vec![rows, dim], &weight).unwrap()),
        ("bias".to_string(), TensorView::new(Dtype::F16, vec![3], &bias).unwrap()),
        ("step".to_string(), TensorView::new(Dtype::I64, vec![1], &step).unwrap()),
    ];
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::tensor::serialize(tensors, Some(meta)).unwrap()).unwrap();
    // What latent-line reads: the values as f32.
    SafeTensors::deserialize(&std::fs::read(path).unwrap())
        .unwrap()
        .tensor(name)
        .map(|v| match dtype {
            Dtype::F32 => v.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::F64 => v.data().chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            Dtype::F16 => v.data().chunks(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => v.data().chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        })
        .unwrap()
}

#[test]
fn a_checkpoint_goes_out_as_it_came_in_with_the_table_trained() {
    let dir = tempfile::tempdir().unwrap();
    for (dtype, name) in
        [(Dtype::F32, "weight"), (Dtype::F64, "weight"), (Dtype::F16, "emb.weight"), (Dtype::BF16, "weight")]
    {
        let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
        let start = checkpoint(&input, name, dtype, 300, 8);
        let before = std::fs::read(&input).unwrap();
        let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
        let r = run(&["--backend", "cpu", "--load", i, "--save", o, "--tensor", name, "--steps", "3"]);
        assert_eq!(r.status.code(), Some(0), "{dtype:?}: {}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(std::fs::read(&input).unwrap(), before, "{dtype:?}: the input changed");
        let bytes = std::fs::read(&output).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor(name).unwrap();
        assert_eq!((w.dtype(), w.shape().to_vec()), (Dtype::F32, vec![300, 8]), "{dtype:?}");
        let trained: Vec<f32> = w.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        // The CPU backend on the same f32 table, via .npy, gives the same values.
        let npy_in = dir.path().join("in.npy");
        let npy_out = dir.path().join("out.npy");
        latent_line::npy::save(&npy_in, latent_line::Shape::new(300, 8).unwrap(), &start).unwrap();
        let r = run(&[
            "--backend",
            "cpu",
            "--load",
            npy_in.to_str().unwrap(),
            "--save",
            npy_out.to_str().unwrap(),
            "--steps",
            "3",
        ]);
        assert_eq!(r.status.code(), Some(0));
        let via_npy = latent_line::npy::load(&npy_out).unwrap().data;
        assert!(
            trained.iter().zip(&via_npy).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{dtype:?}: not the trained table"
        );
        assert!(trained != start, "{dtype:?}: not trained");
        // The other tensors and the metadata, unchanged.
        let orig = SafeTensors::deserialize(&before).unwrap();
        for other in ["bias", "step"] {
            let (a, b) = (orig.tensor(other).unwrap(), st.tensor(other).unwrap());
            assert_eq!((a.dtype(), a.shape(), a.data()), (b.dtype(), b.shape(), b.data()), "{dtype:?}: {other}");
        }
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
        // SPEC §11: the same run, the same bytes; the header's keys in
        // order (the metadata's two keys came out in either order, by the
        // process's hash seed).
        let again = dir.path().join("again.safetensors");
        let r = run(&[
            "--backend",
            "cpu",
            "--load",
            i,
            "--save",
            again.to_str().unwrap(),
            "--tensor",
            name,
            "--steps",
            "3",
        ]);
        assert_eq!(r.status.code(), Some(0), "{dtype:?}: {}", String::from_utf8_lossy(&r.stderr));
        assert!(std::fs::read(&again).unwrap() == bytes, "{dtype:?}: two runs saved different bytes");
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let at = |key: &str| header.find(&format!("\"{key}\"")).unwrap_or_else(|| panic!("{key} in {header}"));
        assert!(at("format") < at("latent_line.run_state"), "{dtype:?}: metadata keys out of order: {header}");
        let mut keys = ["__metadata__", "bias", "step", name];
        keys.sort_unstable();
        assert!(keys.windows(2).all(|k| at(k[0]) < at(k[1])), "{dtype:?}: tensors out of order: {header}");
    }
}

/// Every F16 and BF16 value converts to f32 exactly, NaN payloads and
/// signs as they are (numpy's `astype`, PyTorch's `.float()`); F16's worked
/// out here in f64 from its fields.
#[test]
fn every_f16_and_bf16_value_converts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.safetensors");
    let all: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let tensors = vec![("weight", TensorView::new(dtype, vec![1 << 15, 2], &all).unwrap())];
        std::fs::write(&path, safetensors::tensor::serialize(tensors, None).unwrap()).unwrap();
        let got = latent_line::tables::load(&path, "weight").unwrap();
        assert_eq!(got.data.len(), 1 << 16);
        for (h, v) in (0..=u16::MAX).zip(&got.data) {
            let (sign, exp, man) = ((h >> 15) as u32, ((h >> 10) & 0x1f) as i32, (h & 0x3ff) as u32);
            let want = match dtype {
                Dtype::BF16 => (h as u32) << 16,
                _ if exp == 0x1f && man != 0 => (sign << 31) | 0x7f80_0000 | (man << 13),
                _ if exp == 0x1f => (sign << 31) | 0x7f80_0000,
                _ => {
                    let m =
                        if exp == 0 { man as f64 * 2f64.powi(-24) } else { (1024 + man) as f64 * 2f64.powi(exp - 25) };
                    (if sign == 1 { -m as f32 } else { m as f32 }).to_bits()
                }
            };
            assert_eq!(v.to_bits(), want, "{dtype:?} {h:#06x}: {:#010x}, want {want:#010x}", v.to_bits());
        }
    }
}

#[test]
fn bad_safetensors_inputs_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    checkpoint(&good, "weight", Dtype::F32, 50, 4);
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>, String)> = vec![
        (
            "truncated",
            bytes[..bytes.len() - 7].to_vec(),
            vec![],
            format!(
                "not a valid .safetensors file: truncated: its header places {} bytes in all, the file has {}",
                bytes.len(),
                bytes.len() - 7
            ),
        ),
        (
            "too long",
            [&bytes[..], &[0u8; 3]].concat(),
            vec![],
            format!(
                "not a valid .safetensors file: bytes past its tensors' data: its header places {} bytes in all, \
                     the file has {}",
                bytes.len(),
                bytes.len() + 3
            ),
        ),
        (
            "lying header",
            [&(u64::MAX / 2).to_le_bytes()[..], &bytes[8..]].concat(),
            vec![],
            "not a valid .safetensors file".into(),
        ),
        ("empty", vec![], vec![], "not a valid .safetensors file".into()),
        (
            "missing tensor",
            bytes.clone(),
            vec!["--tensor", "emb"],
            "no tensor \"emb\" (it has: bias, step, weight)".into(),
        ),
        ("1-D tensor", bytes.clone(), vec!["--tensor", "bias"], "a table is 2-D".into()),
        (
            // Valid JSON, a tensor whose bytes do not match its shape.
            "bad offsets",
            {
                let h = br#"{"weight":{"dtype":"F32","shape":[4,2],"data_offsets":[0,40]}}"#;
                [&(h.len() as u64).to_le_bytes()[..], h, &[0u8; 40]].concat()
            },
            vec![],
            "not a valid .safetensors file: tensor \"weight\": shape [4, 2] of F32 is 32 bytes, and its data_offsets \
             [0, 40] place 40"
                .into(),
        ),
        (
            // A header said to run past the file's end: said with the numbers.
            "header past the end",
            [&(bytes.len() as u64).to_le_bytes()[..], &bytes[8..]].concat(),
            vec![],
            format!(
                "not a valid .safetensors file: its header is said to be {} bytes long, past the file's end ({} \
                 bytes after the length's 8)",
                bytes.len(),
                bytes.len() - 8
            ),
        ),
    ];
    for (what, content, extra, expect) in cases {
        let input = dir.path().join(format!("{}.safetensors", what.replace(' ', "_")));
        std::fs::write(&input, &content).unwrap();
        let out = dir.path().join("out.safetensors");
        let mut args = vec![
            "--backend",
            "cpu",
            "--steps",
            "1",
            "--load",
            input.to_str().unwrap(),
            "--save",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let r = run(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(&expect) && err.lines().count() == 1, "{what}: {err}");
        assert!(!out.exists(), "{what}: an output was written");
        assert_eq!(std::fs::read(&input).unwrap(), content, "{what}: the input changed");
        // Read header first (an .npy output needs no other tensor) or whole:
        // the same message.
        let npy = dir.path().join("out.npy");
        args[7] = npy.to_str().unwrap();
        let r = run(&args);
        assert_eq!(String::from_utf8_lossy(&r.stderr), err, "{what}: read by its header, another message");
    }
    // An unknown extension for the output is refused before any work.
    let r = run(&[
        "--backend",
        "cpu",
        "--steps",
        "1",
        "--load",
        good.to_str().unwrap(),
        "--save",
        dir.path().join("out.pt").to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("must end in .npy or .safetensors"));
}

/// A checkpoint read from a pipe (no size to seek in: read whole) carries
/// its other tensors and metadata out as one read from a file does.
#[cfg(unix)]
#[test]
fn a_checkpoint_from_a_pipe_goes_out_as_one_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    checkpoint(&input, "weight", Dtype::BF16, 200, 6);
    let fifo = dir.path().join("pipe.safetensors");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let (from_pipe, from_file) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    let writer = {
        let (input, fifo) = (input.clone(), fifo.clone());
        std::thread::spawn(move || std::fs::write(&fifo, std::fs::read(&input).unwrap()).unwrap())
    };
    for (load, save) in [(&fifo, &from_pipe), (&input, &from_file)] {
        let r = run(&[
            "--backend",
            "cpu",
            "--load",
            load.to_str().unwrap(),
            "--save",
            save.to_str().unwrap(),
            "--steps",
            "2",
        ]);
        assert_eq!(r.status.code(), Some(0), "{}", String::from_utf8_lossy(&r.stderr));
    }
    writer.join().unwrap();
    let (a, b) = (std::fs::read(&from_pipe).unwrap(), std::fs::read(&from_file).unwrap());
    assert!(a == b, "a pipe's checkpoint saved otherwise than the file's");
    let st = SafeTensors::deserialize(&a).unwrap();
    assert_eq!(st.tensor("step").unwrap().data(), 1234i64.to_le_bytes());
    // A pipe is copied only as far as its header places bytes: one that
    // goes on (here without end) is refused at the first byte too many,
    // not copied until the disk is full.
    let endless = {
        let (input, fifo) = (input.clone(), fifo.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            pipe.write_all(&std::fs::read(&input).unwrap()).unwrap();
            while pipe.write_all(&[0u8; 4096]).is_ok() {}
        })
    };
    let r = run(&["scan", fifo.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("bytes past its tensors' data"), "{r:?}");
    endless.join().unwrap();
    // The temporary folder's failure is named as its own.
    let writer = std::thread::spawn(move || std::fs::write(&fifo, std::fs::read(&input).unwrap()));
    let r = Command::new(BIN)
        .args(["scan", dir.path().join("pipe.safetensors").to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("TMPDIR", dir.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("(TMPDIR)"), "{r:?}");
    let _ = writer.join();
}

/// A loaded checkpoint's other tensors are copied from the file loaded when
/// the table is saved, not held: the file replaced at its path since (as
/// `--save` = `--load` does) still gives its own tensors; one changed in
/// place is refused, and nothing is written.
#[test]
fn carried_tensors_come_from_the_file_loaded_and_a_changed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    checkpoint(&input, "weight", Dtype::F32, 50, 4);
    let before = std::fs::read(&input).unwrap();
    let loaded = latent_line::tables::load(&input, "weight").unwrap();
    let carried = loaded.carried.as_ref().expect("carried");
    let out = dir.path().join("out.safetensors");
    // Replaced at its path (a new file: its tensors at other places, as its
    // table is F64): the loaded one's go out.
    let other = dir.path().join("other.safetensors");
    checkpoint(&other, "weight", Dtype::F64, 50, 4);
    std::fs::rename(&other, &input).unwrap();
    latent_line::tables::save(&out, "weight", loaded.shape, &loaded.data, Some(carried), None).unwrap();
    let (a, b) = (SafeTensors::deserialize(&before).unwrap(), std::fs::read(&out).unwrap());
    let b = SafeTensors::deserialize(&b).unwrap();
    for t in ["bias", "step"] {
        assert_eq!(a.tensor(t).unwrap().data(), b.tensor(t).unwrap().data(), "{t}");
    }
    // Changed in place (the same file, a byte of its step counter): refused.
    let input2 = dir.path().join("in2.safetensors");
    checkpoint(&input2, "weight", Dtype::F32, 50, 4);
    let loaded = latent_line::tables::load(&input2, "weight").unwrap();
    let bytes = std::fs::read(&input2).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let at = st.tensor("step").unwrap().data().as_ptr() as usize - bytes.as_ptr() as usize;
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&input2).unwrap();
        f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&[0x55]).unwrap();
    }
    let out2 = dir.path().join("out2.safetensors");
    let err = latent_line::tables::save(&out2, "weight", loaded.shape, &loaded.data, loaded.carried.as_ref(), None)
        .expect_err("a changed input carried over");
    assert!(err.to_string().contains("changed since it was loaded") && err.to_string().contains("\"step\""), "{err}");
    assert!(!out2.exists());
    // … unless a checkpoint was followed first (as a run's checkpoints
    // are): its tensors come from there, and the loaded file is let go.
    let input3 = dir.path().join("in3.safetensors");
    checkpoint(&input3, "weight", Dtype::F32, 50, 4);
    let mut loaded = latent_line::tables::load(&input3, "weight").unwrap();
    let ck = dir.path().join("ck.safetensors");
    latent_line::tables::save(&ck, "weight", loaded.shape, &loaded.data, loaded.carried.as_ref(), None).unwrap();
    let carried = loaded.carried.as_mut().unwrap();
    assert!(!carried.follow(&dir.path().join("nothing.safetensors")), "followed a file that is not there");
    assert!(carried.follow(&ck));
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&input3).unwrap();
        f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&[0x55]).unwrap();
    }
    let out3 = dir.path().join("out3.safetensors");
    latent_line::tables::save(&out3, "weight", loaded.shape, &loaded.data, loaded.carried.as_ref(), None).unwrap();
    let out3 = std::fs::read(&out3).unwrap();
    assert_eq!(SafeTensors::deserialize(&out3).unwrap().tensor("step").unwrap().data(), 1234i64.to_le_bytes());
}

/// An input whose header is near the format's 100 MB limit with its own
/// metadata: the run state, which would push the saved header past it,
/// goes beside the file (`FILE.state.json`, as a large one does), where the
/// save failed after the training; the checkpoint resumes to the table of
/// an unbroken run, its metadata carried over.
#[test]
fn a_run_state_with_no_room_in_the_header_goes_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let (rows, dim) = (10, 3);
    let weight: Vec<u8> = table(rows, dim).iter().flat_map(|v| v.to_le_bytes()).collect();
    let big = "x".repeat(99_999_800);
    let meta = HashMap::from([("big".to_string(), big.clone())]);
    let tensors = vec![("weight".to_string(), TensorView::new(Dtype::F32, vec![rows, dim], &weight).unwrap())];
    std::fs::write(p("in.safetensors"), safetensors::tensor::serialize(tensors, Some(meta)).unwrap()).unwrap();
    let base = ["--backend", "cpu", "--quiet"];
    let go = |more: &[&str]| {
        let o = run(&[&base[..], more].concat());
        assert_eq!(o.status.code(), Some(0), "{more:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    go(&["--load", &p("in.safetensors"), "--steps", "2", "--save", &p("ck.safetensors")]);
    assert!(dir.path().join("ck.safetensors.state.json").exists(), "no run state beside the checkpoint");
    go(&["--resume", &p("ck.safetensors"), "--steps", "4", "--save", &p("resumed.safetensors")]);
    go(&["--load", &p("in.safetensors"), "--steps", "4", "--save", &p("whole.safetensors")]);
    let read = |n: &str| std::fs::read(p(n)).unwrap();
    let (resumed, whole) = (read("resumed.safetensors"), read("whole.safetensors"));
    let (r, w) = (SafeTensors::deserialize(&resumed).unwrap(), SafeTensors::deserialize(&whole).unwrap());
    assert_eq!(r.tensor("weight").unwrap().data(), w.tensor("weight").unwrap().data(), "not the unbroken run's table");
    let (_, m) = SafeTensors::read_metadata(&resumed).unwrap();
    assert_eq!(m.metadata().as_ref().and_then(|m| m.get("big")), Some(&big), "metadata not carried over");
}
