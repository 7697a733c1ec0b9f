//! SPEC §10: which rows each step takes. [`Batches`] is the plan of a run;
//! [`StepSlots`] is one step's rows as the kernels see them.
//!
//! A step's rows become *slots*: slot 0 is anchor a and slot 1 anchor b
//! (with their multiplicity in the batch, possibly 0: the anchors may be
//! updated without being in the batch, in modes `attached` and with the
//! separation term), then every other distinct row once, with how many
//! times the batch holds it. A duplicated row's gradient is its multiplicity
//! times one copy's (every copy reads the same snapshot), which is what
//! `nn.Embedding`'s backward sums — deterministically, with no atomics.
//! User batches are sorted (a row's slot follows the row order); random
//! batches keep the permutation's order.

use std::path::Path;

use crate::error::{Error, Result};
use crate::sampler::Sampler;

/// Where the rows of each step come from.
#[derive(Clone, Debug, Default)]
pub enum Batches {
    /// Every row, every step (the default).
    #[default]
    Full,
    /// `--batch B`: the next B rows of a per-epoch permutation keyed by the
    /// seed; an epoch's last batch is what is left (R mod B rows, where B
    /// does not divide R), so that each epoch takes every row once.
    Random { size: usize, seed: u64 },
    /// `--indices FILE`: the user's batches, cycled through.
    Indices(IndexBatches),
}

impl Batches {
    pub fn is_full(&self) -> bool {
        matches!(self, Batches::Full)
    }

    /// Checks the plan against a table of `rows` rows.
    pub fn validate(&self, rows: usize) -> Result<()> {
        match self {
            Batches::Full => Ok(()),
            Batches::Random { size, seed } => Sampler::new(rows, *size, *seed).map(|_| ()),
            Batches::Indices(ib) => {
                let bad = ib.rows.iter().find(|&&r| r as usize >= rows);
                match bad {
                    Some(r) => Err(Error::invalid("--indices", format!("row {r} is out of range for {rows} rows"))),
                    None => Ok(()),
                }
            }
        }
    }

    /// The rows of global step `step` (with repeats for user batches), or
    /// `None` for the full table; random batches that `Sampler::new`
    /// refuses for `rows` are refused.
    pub fn rows(&self, rows: usize, step: u64) -> Result<Option<Vec<u32>>> {
        Ok(match self {
            Batches::Full => None,
            Batches::Random { size, seed } => Some(Sampler::new(rows, *size, *seed)?.batch_rows(step)),
            Batches::Indices(ib) => Some(ib.batch(step).to_vec()),
        })
    }
}

/// A run's batches, ready to step (both backends keep one): the sampler
/// built once, and the user batches' slots (sorted, repeats counted) made
/// once, not at every step.
#[derive(Clone, Debug)]
pub(crate) enum Schedule {
    Full,
    Random { sampler: Sampler, a: u32, b: u32 },
    Given(Vec<StepSlots>),
}

impl Schedule {
    /// Checks `batches` against a table of `rows` rows with anchors a, b.
    pub fn new(batches: &Batches, rows: usize, a: u32, b: u32) -> Result<Self> {
        batches.validate(rows)?;
        Ok(match batches {
            Batches::Full => Schedule::Full,
            Batches::Random { size, seed } => Schedule::Random { sampler: Sampler::new(rows, *size, *seed)?, a, b },
            Batches::Indices(ib) => {
                Schedule::Given((0..ib.len() as u64).map(|i| StepSlots::new(ib.batch(i), a, b, true)).collect())
            }
        })
    }

    pub fn is_full(&self) -> bool {
        matches!(self, Schedule::Full)
    }

    /// Step `step`'s slots (`None` for the full table): a random batch is
    /// drawn (the host mirror of sample.wgsl), a user batch borrowed.
    pub fn slots(&self, step: u64) -> Option<std::borrow::Cow<'_, StepSlots>> {
        match self {
            Schedule::Full => None,
            Schedule::Random { sampler, a, b } => {
                Some(std::borrow::Cow::Owned(StepSlots::new(&sampler.batch_rows(step), *a, *b, false)))
            }
            Schedule::Given(all) => Some(std::borrow::Cow::Borrowed(&all[(step % all.len() as u64) as usize])),
        }
    }

    /// The host memory that user batches' slot lists take (all of them
    /// are held): 8 bytes a slot, 4 a slot's index as read, and about 112
    /// a batch (its list's own allocation and bookkeeping, measured: 2M
    /// one-row batches took about 219 MB); 0 for the others.
    pub fn lists_bytes(&self) -> u64 {
        match self {
            Schedule::Given(all) => all.iter().map(|s| s.slots.len() as u64 * 12 + 112).sum(),
            _ => 0,
        }
    }

    /// The slots of every user batch (0 for the others).
    pub fn total_slots(&self) -> u64 {
        match self {
            Schedule::Given(all) => all.iter().map(|s| s.slots.len() as u64).sum(),
            _ => 0,
        }
    }

    /// Most slots any step needs (anchors included): the size of the
    /// device's batch buffers (0 for the full table).
    pub fn max_slots(&self) -> usize {
        match self {
            Schedule::Full => 0,
            Schedule::Random { sampler, .. } => sampler.batch as usize + 2,
            Schedule::Given(all) => all.iter().map(|s| s.slots.len()).max().unwrap_or(2),
        }
    }
}

/// A table's rows, as Shape::new allows them (row indices are u32).
fn check_rows(rows: usize) -> Result<()> {
    if rows < 2 || rows as u64 > u32::MAX as u64 {
        return Err(Error::invalid("--indices", format!("batches for a table of {rows} rows, which no table has")));
    }
    Ok(())
}

/// User batches (`--indices`), validated: every index is a row.
#[derive(Clone, Debug)]
pub struct IndexBatches {
    /// Every batch's rows, one after another (4 bytes an index, however
    /// many batches: a 2-D file's rows are moved here, not copied).
    rows: Vec<u32>,
    /// Where each batch ends in `rows`.
    ends: Vec<usize>,
}

impl IndexBatches {
    /// Checks `batches` against a table of `rows` rows. An index out of
    /// range or negative is refused naming its position: `[j]` in a single
    /// batch, `[i, j]` when there are several (the layout of a 2-D file).
    pub fn new<T: Copy + Into<i128>>(batches: Vec<Vec<T>>, rows: usize) -> Result<Self> {
        if batches.is_empty() || batches.iter().any(|b| b.is_empty()) {
            return Err(Error::invalid("--indices", "every batch needs at least one index"));
        }
        check_rows(rows)?;
        let several = batches.len() > 1;
        let mut out = IndexBatches { rows: Vec::new(), ends: Vec::with_capacity(batches.len()) };
        for (i, batch) in batches.iter().enumerate() {
            for (j, v) in batch.iter().map(|&v| v.into()).enumerate() {
                if v < 0 || v >= rows as i128 {
                    let at = if several { format!("[{i}, {j}]") } else { format!("[{j}]") };
                    return Err(Error::invalid("--indices", crate::npy::index_out_of_range(&at, v, rows)));
                }
                out.rows.push(v as u32);
            }
            out.ends.push(out.rows.len());
        }
        Ok(out)
    }

    /// Reads a 1-D (one batch) or 2-D (one batch a row) integer `.npy`
    /// file and checks it against `rows`; errors name the file (and an
    /// index out of range its position in the file: `[j]` in a 1-D file,
    /// `[i, j]` in a 2-D one, one row or many).
    pub fn load(path: &Path, rows: usize) -> Result<Self> {
        check_rows(rows)?;
        // Every index was checked as it was read: the rows are moved in.
        let idx = crate::npy::load_indices(path, rows)?;
        let width = *idx.dims.last().expect("1-D or 2-D") as usize;
        let n = idx.values.len() / width;
        let mut ends = crate::npy::host_vec(path, n as u64, &format!("the ends of {n} batches"))?;
        ends.extend((1..=n).map(|i| i * width));
        Ok(IndexBatches { rows: idx.values, ends })
    }

    /// A fingerprint of the batches (their rows and where each ends): a
    /// checkpoint records it, so a resume can tell another index file.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3);
        for i in 0..self.ends.len() {
            let b = self.batch(i as u64);
            eat(b.len() as u64 | 1 << 63);
            b.iter().for_each(|&r| eat(r as u64));
        }
        h
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// The batch of global step `step` (steps cycle through the batches).
    pub fn batch(&self, step: u64) -> &[u32] {
        let i = (step % self.ends.len() as u64) as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.rows[start..self.ends[i]]
    }
}

/// One step's slots: `(row, multiplicity)`, anchors first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSlots {
    pub slots: Vec<(u32, u32)>,
    /// B: the batch's entries, repeats counted (`w_red = 1/B` for `mean`).
    pub entries: usize,
}

impl StepSlots {
    /// The slots of batch `rows` with anchors `a`, `b`; the other rows
    /// sorted (`sorted`) or in the batch's order (a batch without repeats).
    pub fn new(rows: &[u32], a: u32, b: u32, sorted: bool) -> Self {
        let mut slots = vec![(a, 0u32), (b, 0u32)];
        if sorted {
            let mut r = rows.to_vec();
            r.sort_unstable();
            for run in r.chunk_by(|x, y| x == y) {
                let (row, n) = (run[0], run.len() as u32);
                match row {
                    _ if row == a => slots[0].1 = n,
                    _ if row == b => slots[1].1 = n,
                    _ => slots.push((row, n)),
                }
            }
        } else {
            for &row in rows {
                match row {
                    _ if row == a => slots[0].1 += 1,
                    _ if row == b => slots[1].1 += 1,
                    _ => slots.push((row, 1)),
                }
            }
        }
        StepSlots { slots, entries: rows.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_put_anchors_first_and_count_repeats() {
        let s = StepSlots::new(&[5, 0, 5, 9, 3, 5, 0], 0, 9, true);
        assert_eq!(s.slots, vec![(0, 2), (9, 1), (3, 1), (5, 3)]);
        assert_eq!(s.entries, 7);
        let r = StepSlots::new(&[4, 2, 7], 0, 9, false);
        assert_eq!(r.slots, vec![(0, 0), (9, 0), (4, 1), (2, 1), (7, 1)]);
    }

    #[test]
    fn bad_indices_are_named_by_position() {
        let e = IndexBatches::new(vec![vec![0, 1], vec![2, -1]], 10).unwrap_err().to_string();
        assert!(e.contains("[1, 1]") && e.contains("-1"), "{e}");
        let e = IndexBatches::new(vec![vec![0, 10]], 10).unwrap_err().to_string();
        assert!(e.contains("[1]") && e.contains("10"), "{e}");
        assert!(IndexBatches::new(vec![vec![0, 9, 9]], 10).is_ok());
    }
}
