//! How a table is split across storage bindings. Pure arithmetic, so it is
//! tested without a GPU: chunks hold whole rows, each within the device's
//! binding limit, and every dispatch over a chunk fits the workgroup grid.

use crate::config::Shape;
use crate::error::Result;

/// One storage binding's rows: `[row_base, row_base + rows)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub row_base: usize,
    pub rows: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    pub rows_per_chunk: usize,
    pub spans: Vec<ChunkSpan>,
}

impl ChunkLayout {
    /// The whole table in one storage binding: a batch's rows are then read
    /// and written in place (fused_step.wgsl's DIRECT, and SAMPLED).
    pub fn one_binding(&self) -> bool {
        self.spans.len() == 1
    }

    /// Splits `shape` into chunks of at most `max_binding_bytes` (and at most
    /// `max_chunk_rows` rows when given: tests force several bindings with it).
    /// Refuses, before any allocation, what a 2-D grid of `max_groups`² workgroups
    /// of `wg` invocations or u32 indices cannot address.
    pub fn new(
        shape: Shape,
        max_binding_bytes: u64,
        max_chunk_rows: Option<usize>,
        wg: u32,
        max_groups: u32,
    ) -> Result<Self> {
        let row_bytes = shape.dim as u64 * 4;
        if row_bytes > max_binding_bytes {
            return Err(shape.too_large(format!(
                "one row is {row_bytes} bytes, over the device's {max_binding_bytes}-byte storage binding limit"
            )));
        }
        // Element indices inside a chunk are u32, and the per-element kernels
        // must fit in a max_groups × max_groups grid.
        let grid_elems = wg as u64 * max_groups as u64 * max_groups as u64;
        let max_elems = (u32::MAX as u64).min(grid_elems).min(max_binding_bytes / 4);
        let mut rows_per_chunk = (max_elems / shape.dim as u64) as usize;
        if let Some(m) = max_chunk_rows {
            rows_per_chunk = rows_per_chunk.min(m.max(1));
        }
        if rows_per_chunk == 0 {
            return Err(shape.too_large(format!("one row does not fit a dispatch grid of {max_groups}² workgroups")));
        }
        let spans = (0..shape.rows)
            .step_by(rows_per_chunk)
            .map(|row_base| ChunkSpan { row_base, rows: rows_per_chunk.min(shape.rows - row_base) })
            .collect();
        Ok(ChunkLayout { rows_per_chunk, spans })
    }

    /// The chunk holding `row` and the row's index inside it.
    pub fn locate(&self, row: usize) -> (usize, usize) {
        (row / self.rows_per_chunk, row % self.rows_per_chunk)
    }
}

/// A dispatch of `groups` workgroups as an (x, y) grid within `max_groups`
/// per dimension; kernels flatten it back with `linear_workgroup`.
pub fn grid(groups: u32, max_groups: u32) -> (u32, u32) {
    if groups <= max_groups {
        (groups.max(1), 1)
    } else {
        (max_groups, groups.div_ceil(max_groups))
    }
}

/// Rows a workgroup of the fused step covers at most: the scans' masks
/// (scan.wgsl: 8 words a buffer) hold 256.
pub const MAX_WG_ROWS: u32 = 256;
/// The fused step takes more row blocks a workgroup only while a pass
/// keeps at least this many workgroups (enough to fill a large GPU: an
/// H200 holds about 8 × 132 workgroups of 256 at once).
pub const MIN_GROUPS: u64 = 1024;

/// Row blocks (of `block_rows` rows) each workgroup of the fused step takes
/// in turn, over a pass of `pass_rows` rows: `asked` where given (at most
/// MAX_WG_ROWS rows a workgroup), else fewer, fuller workgroups (a power
/// of two) while at least MIN_GROUPS remain to fill the device.
pub fn row_blocks(pass_rows: u64, block_rows: u32, asked: Option<u32>) -> u32 {
    let most = (MAX_WG_ROWS / block_rows.max(1)).max(1);
    if let Some(b) = asked {
        return b.clamp(1, most);
    }
    let mut b = 1;
    while b < most && pass_rows.div_ceil(block_rows as u64 * 2 * b as u64) >= MIN_GROUPS {
        b *= 2;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_table_within_the_binding_limit() {
        for (rows, dim, max_bytes, force) in [
            (10usize, 3usize, 1024u64, None),
            (1000, 64, 128 << 20, None),
            (1_000_000, 64, 128 << 20, None),
            (7, 5, 1 << 20, Some(3)),
        ] {
            let shape = Shape::new(rows, dim).unwrap();
            let l = ChunkLayout::new(shape, max_bytes, force, 64, 65_535).unwrap();
            assert_eq!(l.spans.iter().map(|s| s.rows).sum::<usize>(), rows);
            let mut next = 0;
            for s in &l.spans {
                assert_eq!(s.row_base, next);
                assert!(s.rows as u64 * dim as u64 * 4 <= max_bytes);
                next += s.rows;
            }
            for row in [0, rows / 2, rows - 1] {
                let (c, i) = l.locate(row);
                assert_eq!(l.spans[c].row_base + i, row);
            }
        }
        let l = ChunkLayout::new(Shape::new(1_000_000, 64).unwrap(), 128 << 20, None, 64, 65_535).unwrap();
        assert_eq!(l.spans.len(), 2, "256 MB over 128 MiB bindings");
    }

    #[test]
    fn refuses_a_row_wider_than_a_binding() {
        let err = ChunkLayout::new(Shape::new(4, 1000).unwrap(), 1024, None, 64, 65_535).unwrap_err();
        assert!(err.to_string().contains("4000 bytes"), "{err}");
    }

    #[test]
    fn row_blocks_fill_workgroups_while_enough_remain() {
        // 1M rows at 8 rows a block: 32 blocks (256 rows) leave 3 907 workgroups.
        assert_eq!(row_blocks(1_000_000, 8, None), 32);
        // A batch of 65 536 at 32 rows a block: 2 blocks keep 1 024 workgroups.
        assert_eq!(row_blocks(65_536, 32, None), 2);
        assert!(65_536u64.div_ceil(32 * 2) >= MIN_GROUPS && 65_536u64.div_ceil(32 * 4) < MIN_GROUPS);
        // Small passes keep one block; 256-row blocks cannot take more.
        assert_eq!(row_blocks(3000, 8, None), 1);
        assert_eq!(row_blocks(100_000_000, 256, None), 1);
        // Asked for: capped at 256 rows a workgroup.
        assert_eq!(row_blocks(10, 64, Some(8)), 4);
        assert_eq!(row_blocks(10, 8, Some(2)), 2);
        for (rows, block) in [(1u64 << 30, 1u32), (12_345, 2), (1 << 20, 32)] {
            let b = row_blocks(rows, block, None);
            assert!(b.is_power_of_two() && b * block <= MAX_WG_ROWS);
        }
    }

    #[test]
    fn grid_covers_every_group_and_respects_the_limit() {
        for groups in [1u32, 65_535, 65_536, 1_000_000] {
            let (x, y) = grid(groups, 65_535);
            assert!(x <= 65_535 && y <= 65_535);
            assert!(x as u64 * y as u64 >= groups as u64);
            assert!((x as u64 * (y as u64 - 1)) < groups as u64);
        }
    }
}
