//! Malformed table and index files, made by mutating valid ones at random
//! (seed printed): the readers never panic; each file is either read as a
//! table (or batches) whose size matches the file, or refused with an
//! error naming the file.

mod common;

use std::collections::HashMap;

use common::*;
use latent_line::{npy, tables};
use rand::Rng;
use safetensors::tensor::{Dtype, TensorView};

fn valid_npy(rows: usize, dim: usize) -> Vec<u8> {
    npy_of("<f4", &format!("({rows}, {dim})"), (0..rows * dim).flat_map(|i| (i as f32 * 0.25).to_le_bytes()).collect())
}

fn npy_of(descr: &str, shape: &str, data: Vec<u8>) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    h.push_str(&" ".repeat((10 + h.len() + 1).next_multiple_of(64) - (10 + h.len() + 1)));
    h.push('\n');
    let mut f = b"\x93NUMPY\x01\x00".to_vec();
    f.extend_from_slice(&(h.len() as u16).to_le_bytes());
    f.extend_from_slice(h.as_bytes());
    f.extend(data);
    f
}

fn valid_safetensors(rows: usize, dim: usize) -> Vec<u8> {
    let w: Vec<u8> = (0..rows * dim).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let b: Vec<u8> = vec![1, 2, 3, 4];
    let t = vec![
        ("weight".to_string(), TensorView::new(Dtype::F32, vec![rows, dim], &w).unwrap()),
        ("b".to_string(), TensorView::new(Dtype::U8, vec![4], &b).unwrap()),
    ];
    safetensors::tensor::serialize(t, Some(HashMap::new())).unwrap()
}

fn mutate(r: &mut impl Rng, mut f: Vec<u8>) -> Vec<u8> {
    match r.random_range(0..5) {
        0 => {
            // Flip a few bytes, mostly in the header.
            for _ in 0..r.random_range(1..6) {
                let span = f.len().min(140);
                let i = r.random_range(0..span.max(1));
                if i < f.len() {
                    f[i] = r.random();
                }
            }
        }
        1 => f.truncate(r.random_range(0..f.len())),
        2 => f.extend((0..r.random_range(1..64)).map(|_| r.random::<u8>())),
        3 => {
            // A digit of the header changed: lying shapes and lengths.
            let digits: Vec<usize> = (0..f.len().min(140)).filter(|&i| f[i].is_ascii_digit()).collect();
            if let Some(&i) = digits.get(r.random_range(0..digits.len().max(1))) {
                f[i] = b'0' + r.random_range(0..10);
            }
        }
        _ => {
            // The 8-byte length prefix of a safetensors header / npy version.
            let i = r.random_range(0..f.len().min(10));
            f[i] = f[i].wrapping_add(r.random_range(1..=255));
        }
    }
    f
}

#[test]
fn mutated_table_files_never_panic_and_are_refused_cleanly() {
    let seed = seed("fuzz_readers");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        let (ext, base) = if i % 2 == 0 { ("npy", valid_npy(5, 3)) } else { ("safetensors", valid_safetensors(5, 3)) };
        let bytes = mutate(&mut r, base);
        let path = dir.path().join(format!("t{i}.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        let got = std::panic::catch_unwind(|| tables::load(&path, "weight"));
        let got = got.unwrap_or_else(|_| panic!("panic reading mutation {i} ({ext}), seed {seed}"));
        // Reading the header and the table alone (a scan; no carrying
        // over) takes and refuses exactly the files the whole read does.
        let lean = std::panic::catch_unwind(|| tables::load_as(&path, "weight", npy::Overflow::Inf, false));
        let lean = lean.unwrap_or_else(|_| panic!("panic reading mutation {i} ({ext}) alone, seed {seed}"));
        match (&got, &lean) {
            (Ok(a), Ok(b)) => assert!(
                a.shape == b.shape && a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits()),
                "mutation {i}: the header-only read differs, seed {seed}"
            ),
            (Err(_), Err(b)) => {
                assert!(b.to_string().contains(&format!("t{i}.{ext}")), "mutation {i}: {b}, seed {seed}")
            }
            _ => panic!(
                "mutation {i} ({ext}): whole read {:?}, header-only read {:?}, seed {seed}",
                got.as_ref().map(|_| "ok"),
                lean.as_ref().map(|_| "ok")
            ),
        }
        match got {
            Ok(t) => {
                assert_eq!(t.data.len(), t.shape.rows * t.shape.dim, "mutation {i}, seed {seed}");
                assert!(t.data.len() * 2 <= bytes.len(), "mutation {i}: more values than the file holds, seed {seed}");
            }
            Err(e) => assert!(e.to_string().contains(&format!("t{i}.{ext}")), "mutation {i}: {e}, seed {seed}"),
        }
    }
}

#[test]
fn mutated_index_files_never_panic_and_are_refused_cleanly() {
    use latent_line::IndexBatches;
    let seed = seed("fuzz_indices");
    let mut r = rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let rows = 50;
    for i in 0..3000 {
        let base = match i % 3 {
            0 => npy_of("<i8", "(4, 6)", (0..24i64).flat_map(|v| (v * 2).to_le_bytes()).collect()),
            1 => npy_of("<i4", "(24,)", (0..24i32).flat_map(|v| v.to_le_bytes()).collect()),
            _ => npy_of("<i4", "(3, 8)", (0..24i32).flat_map(|v| (49 - v).to_le_bytes()).collect()),
        };
        let bytes = mutate(&mut r, base);
        let path = dir.path().join(format!("i{i}.npy"));
        std::fs::write(&path, &bytes).unwrap();
        let got = std::panic::catch_unwind(|| IndexBatches::load(&path, rows));
        let got = got.unwrap_or_else(|_| panic!("panic reading index mutation {i}, seed {seed}"));
        match got {
            Ok(b) => {
                let n: usize = (0..b.len() as u64).map(|s| b.batch(s).len()).sum();
                assert!(n * 4 <= bytes.len(), "mutation {i}: more indices than the file holds, seed {seed}");
                assert!(
                    (0..b.len() as u64).all(|s| b.batch(s).iter().all(|&x| (x as usize) < rows)),
                    "mutation {i}, seed {seed}"
                );
            }
            Err(e) => assert!(e.to_string().contains(&format!("i{i}.npy")), "mutation {i}: {e}, seed {seed}"),
        }
    }
}
