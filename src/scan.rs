//! SPEC §7: what a non-finite scan reports, the decoder of the shaders'
//! scan blocks (`shaders/scan.wgsl`), and the CPU scan that mirrors them.

use rayon::prelude::*;

/// Rows listed per scan (SPEC §7's cap).
pub const ROW_CAP: usize = 64;
/// u32 words of one scan block: 12 + [`ROW_CAP`] (see `shaders/scan.wgsl`).
pub const SCAN_WORDS: usize = 12 + ROW_CAP;

/// The lowest non-finite element of a buffer: flat index = row·D + col.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadElement {
    pub row: u64,
    pub col: u64,
    /// The raw IEEE-754 bits, which tell NaN payloads and signs apart.
    pub bits: u32,
}

impl BadElement {
    /// `NaN`, `+Inf` or `-Inf`.
    pub fn kind(&self) -> &'static str {
        match classify(f32::from_bits(self.bits)) {
            Some(Kind::PosInf) => "+Inf",
            Some(Kind::NegInf) => "-Inf",
            _ => "NaN",
        }
    }
}

/// Findings of one scan of one buffer. Counts are of elements, `bad_rows`
/// of rows holding at least one; `rows` lists the lowest [`ROW_CAP`] of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scan {
    pub nan: u64,
    pub pos_inf: u64,
    pub neg_inf: u64,
    pub bad_rows: u64,
    pub first: Option<BadElement>,
    pub rows: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nan,
    PosInf,
    NegInf,
}

/// SPEC §7: the bits decide (`x != x` may be optimised away elsewhere).
pub fn classify(v: f32) -> Option<Kind> {
    let b = v.to_bits();
    if b & 0x7f80_0000 != 0x7f80_0000 {
        None
    } else if b & 0x007f_ffff != 0 {
        Some(Kind::Nan)
    } else if b & 0x8000_0000 == 0 {
        Some(Kind::PosInf)
    } else {
        Some(Kind::NegInf)
    }
}

impl Scan {
    pub fn is_clean(&self) -> bool {
        self.bad_rows == 0
    }
    /// Non-finite elements of all kinds.
    pub fn nonfinite(&self) -> u64 {
        self.nan + self.pos_inf + self.neg_inf
    }

    /// Decodes a scan block written by `scan_collect` in `shaders/scan.wgsl`.
    pub(crate) fn from_words(w: &[u32]) -> Scan {
        let u64_at = |i: usize| w[i] as u64 | (w[i + 1] as u64) << 32;
        let listed = (w[10] as usize).min(ROW_CAP);
        Scan {
            nan: u64_at(0),
            pos_inf: u64_at(2),
            neg_inf: u64_at(4),
            bad_rows: w[6] as u64,
            first: (w[11] != 0).then(|| BadElement { row: w[7] as u64, col: w[8] as u64, bits: w[9] }),
            rows: w[12..12 + listed].iter().map(|&r| r as u64).collect(),
        }
    }

    /// Adds the findings of another part of the same buffer (rows disjoint
    /// from `self`'s, in any order): counts add, the lower first element
    /// stays, and the lowest [`ROW_CAP`] rows of both are kept.
    pub fn merge(mut self, other: Scan) -> Scan {
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        self.bad_rows += other.bad_rows;
        self.first = lower(self.first, other.first);
        for r in other.rows {
            self.list_row(r);
        }
        self
    }

    /// Notes one row's values (`row` is its global index; rows may come in
    /// any order, as a batch's do). The CPU mirror of a lane's
    /// `row_scan_add` + `scan_commit`.
    pub fn note_row(&mut self, row: u64, values: impl IntoIterator<Item = f32>) {
        let mut first = None;
        for (col, v) in values.into_iter().enumerate() {
            if let Some(kind) = classify(v) {
                match kind {
                    Kind::Nan => self.nan += 1,
                    Kind::PosInf => self.pos_inf += 1,
                    Kind::NegInf => self.neg_inf += 1,
                }
                first = first.or(Some(BadElement { row, col: col as u64, bits: v.to_bits() }));
            }
        }
        if first.is_some() {
            self.first = lower(self.first, first);
            self.bad_rows += 1;
            self.list_row(row);
        }
    }

    /// Keeps `row` if it is among the lowest [`ROW_CAP`] rows noted (in
    /// row order, this is a push).
    fn list_row(&mut self, row: u64) {
        let at = self.rows.partition_point(|&r| r < row);
        if at < ROW_CAP {
            self.rows.insert(at, row);
            self.rows.truncate(ROW_CAP);
        }
    }

    /// One line for people: counts, the first element, the rows.
    pub fn describe(&self) -> String {
        self.describe_of(true)
    }

    /// `describe`, of a buffer with one value a row (the loss terms) where
    /// `columns` is false: its first element is named by its row alone.
    pub fn describe_of(&self, columns: bool) -> String {
        if self.is_clean() {
            return "all finite".into();
        }
        let mut s = format!(
            "{} non-finite ({} NaN, {} +Inf, {} -Inf) in {} row{}",
            self.nonfinite(),
            self.nan,
            self.pos_inf,
            self.neg_inf,
            self.bad_rows,
            if self.bad_rows == 1 { "" } else { "s" }
        );
        if let Some(f) = self.first {
            let col = if columns { format!(", column {}", f.col) } else { String::new() };
            s += &format!("; first at row {}{col} ({}, bits 0x{:08x})", f.row, f.kind(), f.bits);
        }
        let list: Vec<String> = self.rows.iter().map(|r| r.to_string()).collect();
        s += &format!("; rows {}", list.join(", "));
        if self.bad_rows > self.rows.len() as u64 {
            s += &format!(", … ({} rows in all)", self.bad_rows);
        }
        s
    }
}

/// The element with the lower flat index (row, then column).
fn lower(a: Option<BadElement>, b: Option<BadElement>) -> Option<BadElement> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if (y.row, y.col) < (x.row, x.col) { y } else { x }),
        (x, y) => x.or(y),
    }
}

/// Rows per parallel task of the CPU scan.
const SCAN_BLOCK_ROWS: usize = 4096;

/// SPEC §7 on the host: scans a row-major table of `dim` columns whose
/// first row is global row `row_base`, in parallel, merged in row order
/// (`dim` 0 is taken as 1; row numbers past u64's range saturate).
pub fn scan_rows(values: &[f32], dim: usize, row_base: u64) -> Scan {
    let dim = dim.max(1);
    values
        .par_chunks(SCAN_BLOCK_ROWS.saturating_mul(dim))
        .enumerate()
        .map(|(blk, part)| {
            let mut s = Scan::default();
            // Fast path: a clean block is one pass of bit tests, with no
            // branch so that it vectorises (`all` stops at each element):
            // the least exponent gap `!bits & 0x7f800000` is 0 exactly
            // where a value is non-finite (scan_table.wgsl's test).
            if part.iter().fold(u32::MAX, |m, v| m.min(!v.to_bits() & 0x7f80_0000)) != 0 {
                return s;
            }
            for (i, row) in part.chunks(dim).enumerate() {
                s.note_row(row_base.saturating_add((blk * SCAN_BLOCK_ROWS + i) as u64), row.iter().copied());
            }
            s
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Scan::default(), Scan::merge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_reads_bits() {
        assert_eq!(classify(f32::NAN), Some(Kind::Nan));
        assert_eq!(classify(f32::from_bits(0xffc0_0001)), Some(Kind::Nan));
        assert_eq!(classify(f32::INFINITY), Some(Kind::PosInf));
        assert_eq!(classify(f32::NEG_INFINITY), Some(Kind::NegInf));
        assert_eq!(classify(f32::from_bits(1)), None); // subnormal
        assert_eq!(classify(f32::MAX), None);
    }

    #[test]
    fn cpu_scan_counts_lists_and_caps() {
        let dim = 3;
        let mut t = vec![1.0f32; 5000 * dim];
        let bad: Vec<usize> = (0..100).map(|i| i * 47 + 5).collect();
        for &r in &bad {
            t[r * dim + 2] = f32::NEG_INFINITY;
        }
        t[5 * dim] = f32::NAN;
        let s = scan_rows(&t, dim, 10);
        assert_eq!((s.nan, s.pos_inf, s.neg_inf, s.bad_rows), (1, 0, 100, 100));
        assert_eq!(s.first, Some(BadElement { row: 15, col: 0, bits: f32::NAN.to_bits() }));
        let want: Vec<u64> = bad.iter().take(ROW_CAP).map(|&r| r as u64 + 10).collect();
        assert_eq!(s.rows, want);
    }

    /// A batch notes its rows in slot order: the findings must not depend
    /// on it (SPEC §7: the lowest element, the lowest rows, sorted).
    #[test]
    fn notes_in_any_order_give_the_findings_in_row_order() {
        use rand::{seq::SliceRandom, Rng, SeedableRng};
        let seed = crate::test_seed("notes_in_any_order");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dim = 5;
        let rows: Vec<(u64, Vec<f32>)> = (0..300u64)
            .map(|r| {
                let mut v = vec![0.5f32; dim];
                if rng.random_bool(0.6) {
                    v[rng.random_range(0..dim)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.random_range(0..3)];
                }
                (r * 3 + 1, v)
            })
            .collect();
        let mut in_order = Scan::default();
        rows.iter().for_each(|(r, v)| in_order.note_row(*r, v.iter().copied()));
        let mut shuffled = rows.clone();
        shuffled.shuffle(&mut rng);
        // Noted in two shuffled halves, merged either way round.
        let (x, y) = shuffled.split_at(137);
        let part = |rows: &[(u64, Vec<f32>)]| {
            let mut s = Scan::default();
            rows.iter().for_each(|(r, v)| s.note_row(*r, v.iter().copied()));
            s
        };
        assert!(in_order.bad_rows > ROW_CAP as u64, "seed {seed}");
        assert_eq!(part(x).merge(part(y)), in_order, "seed {seed}");
        assert_eq!(part(y).merge(part(x)), in_order, "seed {seed}");
        assert_eq!(part(&shuffled), in_order, "seed {seed}");
        let first_bad = rows.iter().find(|(_, v)| v.iter().any(|x| !x.is_finite())).map(|(r, _)| *r);
        assert_eq!(in_order.first.map(|f| f.row), first_bad, "seed {seed}");
    }
}
