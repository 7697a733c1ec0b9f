// scan_table.wgsl — SPEC §7 over one chunk of a table at memory speed:
// workgroup w scans rows [w·WG, (w+1)·WG), its lanes striding over the
// tile's elements so that loads are coalesced (`main_vec4`: 16 bytes a
// load where D is a multiple of 4). Findings go through
// scan.wgsl (SCAN_BUFS = 1); scan_finish.wgsl folds them.
// Host owner: `TableScanner` (src/gpu/scan.rs); CPU mirror: `scan_rows`.

struct ScanParams {
    stamp: u32,
    count: u32,     // workgroups over all chunks (scan_finish)
    _pad0: u32,
    _pad1: u32,
}

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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    scan_reset(lid);
    workgroupBarrier();
    let tile = w * WG;   // first local row of the tile
    if (tile >= chunk.rows) {
        return;          // uniform: the whole workgroup leaves
    }
    let base = tile * D;
    let n = min(WG, chunk.rows - tile) * D;
    for (var e = lid; e < n; e = e + WG) {
        note_element(e, table[base + e]);
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
    let tile = w * WG;
    if (tile >= chunk.rows) {
        return;
    }
    let base4 = tile * (D / 4u);
    let n4 = min(WG, chunk.rows - tile) * (D / 4u);
    for (var e4 = lid; e4 < n4; e4 = e4 + WG) {
        let v = table4[base4 + e4];
        let b = bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u);
        if (any(b == vec4<u32>(0x7f800000u))) {
            for (var c = 0u; c < 4u; c = c + 1u) {
                note_element(e4 * 4u + c, v[c]);
            }
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
