//! SPEC §10's sampler is a permutation: over one epoch every row is visited
//! exactly once, for R not a multiple of B and R above 2^24, on the device
//! and on the host (the same integers), and seeds and epochs change the order.

mod common;

use common::*;
use latent_line::gpu::GpuSampler;
use latent_line::sampler::Sampler;

/// Every row of 0..R exactly once.
fn is_permutation(mut v: Vec<u32>, rows: u32) -> bool {
    v.sort_unstable();
    v.len() == rows as usize && v.iter().enumerate().all(|(i, &r)| i as u32 == r)
}

#[test]
fn one_epoch_of_batches_visits_every_row_once() {
    let seed = seed("sampler_epoch");
    for (rows, batch) in [(2usize, 1usize), (3, 2), (1000, 7), (1001, 1001), (4096, 64), (65_537, 1000)] {
        let s = Sampler::new(rows, batch, seed).unwrap();
        let steps = s.steps_per_epoch();
        assert_eq!(steps, rows.div_ceil(batch) as u64);
        let mut all = Vec::new();
        for step in 0..steps {
            let b = s.batch_rows(step);
            let mut sorted = b.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), b.len(), "duplicates in a step, R {rows} B {batch}, seed {seed}");
            all.extend(b);
        }
        assert!(is_permutation(all, rows as u32), "R {rows} B {batch}, seed {seed}");
        // The next epoch is another permutation, in another order.
        let next: Vec<u32> = (steps..2 * steps).flat_map(|t| s.batch_rows(t)).collect();
        let first: Vec<u32> = (0..steps).flat_map(|t| s.batch_rows(t)).collect();
        assert!(is_permutation(next.clone(), rows as u32), "epoch 1, R {rows}, seed {seed}");
        if rows > 3 {
            assert_ne!(next, first, "epochs 0 and 1 in the same order, R {rows}, seed {seed}");
        }
    }
}

#[test]
fn different_seeds_give_different_orders() {
    let seed = seed("sampler_seeds");
    let a = Sampler::new(10_000, 100, seed).unwrap();
    let b = Sampler::new(10_000, 100, seed.wrapping_add(1)).unwrap();
    assert_ne!(a.batch_rows(0), b.batch_rows(0), "seed {seed}");
}

#[test]
fn device_permutation_matches_the_host_above_2_pow_24_rows() {
    let seed = seed("sampler_gpu");
    // 2^24 + 3 rows: above f32's exact integers, and a Feistel width of 26
    // bits, so cycle-walking runs (2^26 > R).
    let rows = (1u32 << 24) + 3;
    let s = Sampler::new(rows as usize, 1 << 20, seed).unwrap();
    let g = GpuSampler::new(gpu(), s, rows);
    for epoch in [0u32, 5] {
        let got = g.positions(epoch, 0, rows).unwrap();
        let want: Vec<u32> = (0..rows).map(|x| s.permute(epoch, x).unwrap()).collect();
        assert!(got == want, "epoch {epoch}: device and host differ, seed {seed}");
        assert!(is_permutation(got, rows), "epoch {epoch}, seed {seed}");
    }
    // A step's slot on the device is the host's batch.
    let slot = s.slot(17);
    assert_eq!(g.positions(slot.epoch, slot.start, slot.count).unwrap(), s.batch_rows(17), "seed {seed}");
}

#[test]
fn unpermute_inverts_the_permutation() {
    let seed = seed("sampler_inverse");
    for rows in [2usize, 5, 1000, 65_537] {
        let s = Sampler::new(rows, 1, seed).unwrap();
        for epoch in [0u32, 3] {
            for x in (0..rows as u32).step_by(rows / 64 + 1) {
                let row = s.permute(epoch, x).unwrap();
                assert_eq!(s.unpermute(epoch, row).unwrap(), x, "R {rows} epoch {epoch} position {x}, seed {seed}");
            }
        }
        // Past the rows: an error (a cycle walk from there need never meet
        // a row, and hung before), on the host and on the device.
        let past = rows as u32;
        assert!(s.permute(0, past).unwrap_err().to_string().contains("past the permutation's"));
        assert!(s.unpermute(0, past).unwrap_err().to_string().contains("past the permutation's"));
        if rows == 1000 {
            let g = GpuSampler::new(gpu(), s, rows as u32);
            let e = g.positions(0, past - 10, 11).unwrap_err().to_string();
            assert!(e.contains("positions 990..1001 are past the 1000 rows"), "{e}");
            assert_eq!(g.positions(0, past - 10, 10).unwrap().len(), 10);
        }
    }
}
