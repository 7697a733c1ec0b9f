// scan_table.wgsl — SPEC §7 over one chunk of a table at memory speed:
// workgroup w scans rows [w·TILE, (w+1)·TILE), its lanes striding over the
// tile's elements so that loads are coalesced (`main_vec4`: 16 bytes a
// load where D is a multiple of 4). Findings go through
// scan.wgsl (SCAN_BUFS = 1); scan_finish.wgsl folds them.
//
// A whole tile is read by a loop of constant count (D, an override) whose
// body only folds an integer maximum (common.wgsl's `exponent`), with no
// branch: a compiler can issue
// all of a lane's loads before the first returns, where a test and branch
// after each load kept one load in flight a lane (RADV's code waited on
// every load in turn: BENCHMARKS.md). Only a lane that saw a non-finite
// value reads its elements again to note them (the findings are atomics,
// the same in any order). The last, partial tile takes the plain loop.
// Host owner: `TableScanner` (src/gpu/scan.rs); CPU mirror: `scan_rows`.

struct ScanParams {
    stamp: u32,
    count: u32,     // workgroups over all chunks (scan_finish)
    _pad0: u32,
    _pad1: u32,
}

// Rows a workgroup scans: WG, or (on a software adapter, for wide rows)
// fewer, so that a lane's loops stay within lavapipe's 65 535 iterations
// an invocation (`scan_tile` in src/gpu/scan.rs); such tiles take the
// plain loop. Set by the host.
override TILE: u32 = 64u;

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<uniform> sp: ScanParams;
// main_vec4's view of the same chunk (D a multiple of 4): 16-byte loads,
// as the 16-byte copy that runs at twice the 4-byte one's bandwidth.
@group(0) @binding(3) var<storage, read> table4: array<vec4<f32>>;

// Element e of the tile (local row e / D), when it is not finite: counted
// and its row marked; the flush re-reads the first one's bits.
fn note_element(e: u32, v: f32) {
    if (is_nonfinite(v)) {
        scan_note(0u, e / D, row_scan_add(row_scan_new(), e % D, v));
    }
}

// note_element for the 4 elements of the tile's vec4 e4, looked at one by
// one only when one of them is not finite.
fn note_vec4(e4: u32, v: vec4<f32>) {
    if (any_nonfinite4(exponent4(v))) {
        for (var c = 0u; c < 4u; c = c + 1u) {
            note_element(e4 * 4u + c, v[c]);
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    scan_reset(lid);
    workgroupBarrier();
    let tile = w * TILE;   // first local row of the tile
    if (tile >= chunk.rows) {
        return;          // uniform: the whole workgroup leaves
    }
    let base = tile * D;
    if (TILE == WG && tile + WG <= chunk.rows) {
        // A whole tile: D loads a lane, none waiting on another (see the top).
        var seen = 0u;
        for (var k = 0u; k < D; k = k + 1u) {
            seen = max(seen, exponent(table[base + k * WG + lid]));
        }
        if (seen == EXPONENT) {
            for (var k = 0u; k < D; k = k + 1u) {
                note_element(k * WG + lid, table[base + k * WG + lid]);
            }
        }
    } else {
        let n = min(TILE, chunk.rows - tile) * D;
        for (var e = lid; e < n; e = e + WG) {
            note_element(e, table[base + e]);
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let f = scan_first_local(0u);
        if (f != NONE) {
            let row0 = chunk.row_base + tile;
            scan_flush(0u, chunk.partial_base + w, sp.stamp, row0, vec3<u32>(row0 + f / D, f % D, bitcast<u32>(table[base + f])));
        }
    }
}

// main with 16-byte loads (D a multiple of 4, so a row's elements start on
// a vec4): the same tiles, workgroups and findings; a vec4 with any
// non-finite value is looked at element by element.
@compute @workgroup_size(WG)
fn main_vec4(@builtin(workgroup_id) wg: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    scan_reset(lid);
    workgroupBarrier();
    let tile = w * TILE;
    if (tile >= chunk.rows) {
        return;
    }
    let base4 = tile * (D / 4u);
    if (TILE == WG && tile + WG <= chunk.rows) {
        // A whole tile: D / 4 loads a lane, none waiting on another.
        var seen = vec4<u32>(0u);
        for (var k = 0u; k < D / 4u; k = k + 1u) {
            seen = max(seen, exponent4(table4[base4 + k * WG + lid]));
        }
        if (any_nonfinite4(seen)) {
            for (var k = 0u; k < D / 4u; k = k + 1u) {
                note_vec4(k * WG + lid, table4[base4 + k * WG + lid]);
            }
        }
    } else {
        let n4 = min(TILE, chunk.rows - tile) * (D / 4u);
        for (var e4 = lid; e4 < n4; e4 = e4 + WG) {
            note_vec4(e4, table4[base4 + e4]);
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let f = scan_first_local(0u);
        if (f != NONE) {
            let row0 = chunk.row_base + tile;
            let at = base4 * 4u + f;
            scan_flush(0u, chunk.partial_base + w, sp.stamp, row0, vec3<u32>(row0 + f / D, f % D, bitcast<u32>(table4[at / 4u][at % 4u])));
        }
    }
}
