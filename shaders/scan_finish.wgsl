// scan_finish.wgsl — one workgroup: fold the findings of a table scan
// (scan_table.wgsl) into one scan block at scan_out[0..SCAN_WORDS].
// Host owner: `TableScanner` (src/gpu/scan.rs); CPU mirror: `scan_rows`
// (src/scan.rs).

struct ScanParams {
    stamp: u32,
    count: u32,     // workgroups over all chunks
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(2) var<uniform> sp: ScanParams;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    scan_collect(lid, 0u, sp.count, sp.stamp, 0u, true, scan_take_hits(lid).x);
}
