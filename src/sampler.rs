//! SPEC §10's random batches: each epoch is a pseudorandom permutation of
//! the rows keyed by (seed, epoch); step s of an epoch takes positions
//! [s·B, min((s + 1)·B, R)) of it, so a step never repeats a row and the
//! last batch of an epoch is the remainder when B does not divide R (as a
//! PyTorch `DataLoader` without `drop_last`). The permutation is a Feistel
//! network with cycle-walking — `shaders/sampler.wgsl` computes the same
//! integers on the device, with the round keys made here (`keys`); this
//! is its mirror, line for line.

use crate::error::{Error, Result};
use crate::rng::{counter_hash, mix32};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    // Private: made by `Sampler::new`, which checks them (0 rows or an
    // empty batch would divide by zero).
    pub(crate) rows: u32,
    pub(crate) batch: u32,
    pub(crate) seed: u64,
}

/// Where a step's batch lies: `count` positions from `start` of `epoch`'s permutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub epoch: u32,
    pub start: u32,
    pub count: u32,
}

/// Round key `round` of `epoch`: `counter_hash` (rng.wgsl's, mirrored) on
/// stream 7, the sampler's; the device takes them from the host.
fn round_key(seed: u64, epoch: u32, round: u32) -> u32 {
    counter_hash(seed, epoch, round, 7)
}

impl Sampler {
    pub fn new(rows: usize, batch: usize, seed: u64) -> Result<Self> {
        if batch == 0 || batch > rows {
            return Err(Error::invalid("--batch", format!("{batch} must be between 1 and the {rows} rows")));
        }
        let rows = u32::try_from(rows).map_err(|_| Error::invalid("--batch", "tables of 2^32 rows or more"))?;
        Ok(Sampler { rows, batch: batch as u32, seed })
    }

    /// Bits per Feistel half: the smallest h with 2^(2h) ≥ R.
    pub fn half_bits(&self) -> u32 {
        let bits = 32 - (self.rows - 1).leading_zeros(); // ⌈log2 R⌉ (R ≥ 2)
        bits.div_ceil(2).max(1)
    }

    pub fn steps_per_epoch(&self) -> u64 {
        (self.rows as u64).div_ceil(self.batch as u64)
    }

    /// The batch of global step `step` (steps count from 0 across epochs).
    pub fn slot(&self, step: u64) -> Slot {
        let per = self.steps_per_epoch();
        let start = (step % per) * self.batch as u64;
        Slot {
            epoch: (step / per) as u32,
            start: start as u32,
            count: (self.batch as u64).min(self.rows as u64 - start) as u32,
        }
    }

    fn feistel(&self, k: &[u32; 4], x: u32) -> u32 {
        let half = self.half_bits();
        let mask = (1u32 << half) - 1;
        let (mut l, mut r) = (x >> half, x & mask);
        for key in k {
            let t = l ^ (mix32(r ^ key) & mask);
            l = r;
            r = t;
        }
        (l << half) | r
    }

    /// `epoch`'s four round keys (sampler.wgsl takes them from the host).
    pub(crate) fn keys(&self, epoch: u32) -> [u32; 4] {
        [0, 1, 2, 3].map(|r| round_key(self.seed, epoch, r))
    }

    /// Cycle-walking: apply the network until the value is a row.
    fn walk(&self, k: &[u32; 4], x: u32) -> u32 {
        let mut y = self.feistel(k, x);
        while y >= self.rows {
            y = self.feistel(k, y);
        }
        y
    }

    /// Position `x` (< R) of `epoch`'s permutation. (A position past the
    /// rows is an error: the cycle walk from there need never meet a row.)
    pub fn permute(&self, epoch: u32, x: u32) -> Result<u32> {
        self.in_range("position", x)?;
        Ok(self.walk(&self.keys(epoch), x))
    }

    fn in_range(&self, what: &'static str, x: u32) -> Result<()> {
        if x >= self.rows {
            return Err(Error::invalid(what, format!("{x} is past the permutation's {} rows", self.rows)));
        }
        Ok(())
    }

    /// The inverse network: each round (l, r) → (r, l ^ F(r ^ k)) undone
    /// (`feistel_inv` of sampler.wgsl).
    fn feistel_inv(&self, k: &[u32; 4], y: u32) -> u32 {
        let half = self.half_bits();
        let mask = (1u32 << half) - 1;
        let (mut l, mut r) = (y >> half, y & mask);
        for key in k.iter().rev() {
            let t = r ^ (mix32(l ^ key) & mask);
            r = l;
            l = t;
        }
        (l << half) | r
    }

    /// The position of `row` in `epoch`'s permutation (the cycle walked
    /// backwards): `permute(epoch, unpermute(epoch, row)) == row`.
    pub fn unpermute(&self, epoch: u32, row: u32) -> Result<u32> {
        self.in_range("row", row)?;
        let k = self.keys(epoch);
        let mut x = self.feistel_inv(&k, row);
        while x >= self.rows {
            x = self.feistel_inv(&k, x);
        }
        Ok(x)
    }

    /// The rows of global step `step`.
    pub fn batch_rows(&self, step: u64) -> Vec<u32> {
        let s = self.slot(step);
        let k = self.keys(s.epoch);
        (s.start..s.start + s.count).map(|x| self.walk(&k, x)).collect()
    }
}
