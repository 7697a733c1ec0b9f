// scan.wgsl — SPEC §7: non-finite scans by bit tests, folded into the
// passes that already touch the values (no extra pass over the table).
//
// Three stages, all integer (deterministic, no float atomics):
//  1. lanes note findings in workgroup atomics (only when a value is bad,
//     so a clean pass pays for the bit tests alone): counts, a bit per row,
//     the lowest (row, column);
//  2. `scan_flush`: lane 0 writes the workgroup's finding, stamped with the
//     pass, to `scan_detail` and counts the workgroup in `scan_hits`; a
//     clean workgroup writes nothing;
//  3. `scan_collect` (one workgroup, after the pass; `scan_take_hits`
//     first): when `scan_hits` says
//     there is anything, folds the stamped findings in row order into one
//     block: 64-bit counts, the first element, the lowest SCAN_CAP rows.
// A batch's pass runs over slots, not rows in order: there the flush gets
// the workgroup's lowest *row* (from `scan_lane_finding`), and reduce.wgsl
// lists the lowest rows itself (`batch_findings`), the masks being of slots.
// Host decoder: `Scan::from_words` (src/scan.rs); CPU mirror: `scan_rows`.
//
// Block layout (SCAN_WORDS u32): nan lo/hi, +inf lo/hi, −inf lo/hi,
// bad rows, first row, first column, first bits, rows listed, has-first,
// then SCAN_CAP rows. Detail layout (DETAIL_WORDS u32 per workgroup and
// buffer): stamp, nan, +inf, −inf, local row 0, first row, first column, first
// bits, 8 mask words (bit j: local row j has a finding). "Local row 0" is
// the row (a batch's pass: the slot) of mask bit 0; the first row is a
// row, its lowest finding's, in a batch's pass too.

override SCAN_BUFS: u32 = 3u;    // buffers scanned per pass: loss, gradient, rows written
const DETAIL_WORDS: u32 = 16u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(8) var<storage, read_write> scan_detail: array<u32>;
@group(0) @binding(9) var<storage, read_write> scan_hits: array<atomic<u32>>;
@group(0) @binding(10) var<storage, read_write> scan_out: array<u32>;

var<workgroup> sc_count: array<atomic<u32>, 9>;   // buf·3 + (nan, +inf, −inf)
var<workgroup> sc_mask: array<atomic<u32>, 24>;   // buf·8 + word
var<workgroup> sc_first: array<atomic<u32>, 3>;   // lowest local_row·D + column
var<workgroup> sc_bits: array<u32, 768>;          // buf·MAX_WG + lane: that lane's first bad bits
var<workgroup> sc_col: array<u32, 768>;           // … and its column
var<workgroup> sc_row: array<u32, 768>;           // … and its row (a lane may see several)
var<workgroup> sc_lanes: array<atomic<u32>, 24>;  // buf·8 + word: bit l, lane slot l has a finding
var<workgroup> sc_flag: u32;
var<workgroup> sc_hits: vec4<u32>;

// (NaN, +Inf, −Inf) as a one-hot of a value's bits; zeros when finite.
fn classify(v: f32) -> vec3<u32> {
    let b = bitcast<u32>(v);
    let nonfinite = is_nonfinite(v);
    let is_nan = nonfinite && (b & 0x007fffffu) != 0u;
    let inf = nonfinite && !is_nan;
    let neg = (b & 0x80000000u) != 0u;
    return vec3<u32>(select(0u, 1u, is_nan), select(0u, 1u, inf && !neg), select(0u, 1u, inf && neg));
}

// One row's findings in one buffer, kept in registers by its lane.
struct RowScan {
    counts: vec3<u32>,
    first_col: u32,   // NONE while clean
    bits: u32,
}

fn row_scan_new() -> RowScan {
    return RowScan(vec3<u32>(0u, 0u, 0u), NONE, 0u);
}

fn row_scan_add(acc: RowScan, col: u32, v: f32) -> RowScan {
    var a = acc;
    if (is_nonfinite(v)) {
        a.counts = a.counts + classify(v);
        if (a.first_col == NONE) {
            a.first_col = col;
            a.bits = bitcast<u32>(v);
        }
    }
    return a;
}

fn row_scan_bad(a: RowScan) -> bool {
    return a.first_col != NONE;
}

// Must run before any lane notes a finding, followed by a barrier.
fn scan_reset(lid: u32) {
    for (var j = lid; j < 24u; j = j + WG) {
        atomicStore(&sc_mask[j], 0u);
        atomicStore(&sc_lanes[j], 0u);
        if (j < 9u) {
            atomicStore(&sc_count[j], 0u);
        }
        if (j < 3u) {
            atomicStore(&sc_first[j], NONE);
        }
    }
}

// The counts, the row's mask bit and the lowest (row, column) of a bad
// row's findings, without the lane's bits: for a kernel that reads them
// again itself (scan_table.wgsl), so it keeps no per-lane slots in
// workgroup memory (a third slot array made its 1 GiB scan 36 % slower on
// an H200: workgroup memory is occupancy).
fn scan_note(buf: u32, local_row: u32, a: RowScan) {
    atomicAdd(&sc_count[buf * 3u], a.counts.x);
    atomicAdd(&sc_count[buf * 3u + 1u], a.counts.y);
    atomicAdd(&sc_count[buf * 3u + 2u], a.counts.z);
    atomicOr(&sc_mask[buf * 8u + local_row / 32u], 1u << (local_row % 32u));
    atomicMin(&sc_first[buf], local_row * D + a.first_col);
}

// Publishes a lane's findings in one row to the workgroup (a no-op when
// clean). The lane's first bits go to slot `lane_slot` of `sc_bits`, where
// the flush finds them for the workgroup's lowest finding; a lane that
// sees several rows (fused_step.wgsl's row blocks) keeps its lowest `row`'s
// there. Only that lane touches its slot, so no atomics are needed for it.
fn scan_commit(buf: u32, local_row: u32, lane_slot: u32, row: u32, a: RowScan) {
    if (!row_scan_bad(a)) {
        return;
    }
    scan_note(buf, local_row, a);
    let bit = 1u << (lane_slot % 32u);
    let had = (atomicOr(&sc_lanes[buf * 8u + lane_slot / 32u], bit) & bit) != 0u;
    if (!had || row < sc_row[buf * MAX_WG + lane_slot]) {
        sc_bits[buf * MAX_WG + lane_slot] = a.bits;
        sc_col[buf * MAX_WG + lane_slot] = a.first_col;
        sc_row[buf * MAX_WG + lane_slot] = row;
    }
}

// After a barrier: the first finding (column, bits) of lane slot `l` in
// `buf` within row `row`, or (NONE, 0) when it found nothing there (its
// part of that row's first finding, when the lane's lowest row is `row`).
fn scan_lane_finding(buf: u32, l: u32, row: u32) -> vec2<u32> {
    if ((atomicLoad(&sc_lanes[buf * 8u + l / 32u]) & (1u << (l % 32u))) == 0u || sc_row[buf * MAX_WG + l] != row) {
        return vec2<u32>(NONE, 0u);
    }
    return vec2<u32>(sc_col[buf * MAX_WG + l], sc_bits[buf * MAX_WG + l]);
}

// The mask bits of local rows with a finding in `buf` (word k: rows 32k…).
fn scan_mask(buf: u32, k: u32) -> u32 {
    return atomicLoad(&sc_mask[buf * 8u + k]);
}

// The workgroup's lowest finding in `buf` as local_row·D + column, or NONE.
fn scan_first_local(buf: u32) -> u32 {
    return atomicLoad(&sc_first[buf]);
}

// Lane 0, after a barrier: writes the workgroup's finding for `buf`, if
// any. `w` is the workgroup's index over the whole pass, `row0` the row
// (or slot) of local row 0, `first` the lowest finding: (row, column, bits).
fn scan_flush(buf: u32, w: u32, stamp: u32, row0: u32, first: vec3<u32>) {
    if (atomicLoad(&sc_first[buf]) == NONE) {
        return;
    }
    let at = (w * SCAN_BUFS + buf) * DETAIL_WORDS;
    for (var j = 0u; j < 8u; j = j + 1u) {
        scan_detail[at + 8u + j] = atomicLoad(&sc_mask[buf * 8u + j]);
    }
    scan_detail[at + 1u] = atomicLoad(&sc_count[buf * 3u]);
    scan_detail[at + 2u] = atomicLoad(&sc_count[buf * 3u + 1u]);
    scan_detail[at + 3u] = atomicLoad(&sc_count[buf * 3u + 2u]);
    scan_detail[at + 4u] = row0;
    scan_detail[at + 5u] = first.x;
    scan_detail[at + 6u] = first.y;
    scan_detail[at + 7u] = first.z;
    scan_detail[at] = stamp;
    atomicAdd(&scan_hits[buf], 1u);
}

// Rows with a finding in the detail at `at` (its mask's bits).
fn detail_rows(at: u32) -> u32 {
    var n = 0u;
    for (var k = 0u; k < 8u; k = k + 1u) {
        n = n + countOneBits(scan_detail[at + 8u + k]);
    }
    return n;
}

// One workgroup of WG lanes, all calling, before `scan_collect`: lane 0
// takes the workgroups counted in `scan_hits` for every buffer (at most 4)
// and clears them for the next pass, all in one round trip to memory (a
// clean pass's collection is this and little else); every lane gets them.
fn scan_take_hits(lid: u32) -> vec4<u32> {
    if (lid == 0u) {
        scan_take_hits_lane0();
    }
    return workgroupUniformLoad(&sc_hits);
}

// scan_take_hits' part for lane 0, into `sc_hits`, with no barrier: for a
// caller that issues it beside its own first reads and waits on all of
// them at one barrier (reduce.wgsl).
fn scan_take_hits_lane0() {
    var h = vec4<u32>(0u);
    for (var b = 0u; b < SCAN_BUFS; b = b + 1u) {
        h[b] = atomicExchange(&scan_hits[b], 0u);
    }
    sc_hits = h;
}

// One workgroup of WG lanes, all calling: folds the findings of `buf` over
// `nwg` workgroups stamped `stamp` into the block at scan_out[out..], in
// row order; `hits` is its count from `scan_take_hits`. Returns whether
// anything was found (uniform). With `in_order` false (a batch's slots)
// only the counts are folded: the first element and the rows are left to
// the caller.
fn scan_collect(lid: u32, buf: u32, nwg: u32, stamp: u32, out: u32, in_order: bool, hits: u32) -> bool {
    for (var j = lid; j < SCAN_WORDS; j = j + WG) {
        scan_out[out + j] = 0u;
    }
    // `hits` is uniform: a clean buffer (the usual case) is done with its
    // zeros, and waits on no barrier (a storage barrier may wait for the
    // stores in flight: this pass is one workgroup, so its time is such
    // waits in a row).
    if (hits == 0u) {
        return false;
    }
    storageBarrier();   // the zeros land before lane 0 and the listing lanes write
    // Totals and the first workgroup with a finding.
    var nan = vec2<u32>(0u, 0u);
    var pinf = vec2<u32>(0u, 0u);
    var ninf = vec2<u32>(0u, 0u);
    var rows_first = vec2<u32>(0u, NONE);
    for (var j = lid; j < nwg; j = j + WG) {
        let at = (j * SCAN_BUFS + buf) * DETAIL_WORDS;
        if (scan_detail[at] == stamp) {
            nan = add64(nan, vec2<u32>(scan_detail[at + 1u], 0u));
            pinf = add64(pinf, vec2<u32>(scan_detail[at + 2u], 0u));
            ninf = add64(ninf, vec2<u32>(scan_detail[at + 3u], 0u));
            rows_first = vec2<u32>(rows_first.x + detail_rows(at), min(rows_first.y, j));
        }
    }
    nan = workgroup_sum64(lid, nan);
    pinf = workgroup_sum64(lid, pinf);
    ninf = workgroup_sum64(lid, ninf);
    rows_first = workgroup_sum_min_u32(lid, rows_first);
    if (lid == 0u) {
        let at = (rows_first.y * SCAN_BUFS + buf) * DETAIL_WORDS;
        scan_out[out] = nan.x;
        scan_out[out + 1u] = nan.y;
        scan_out[out + 2u] = pinf.x;
        scan_out[out + 3u] = pinf.y;
        scan_out[out + 4u] = ninf.x;
        scan_out[out + 5u] = ninf.y;
        scan_out[out + 6u] = rows_first.x;
        if (in_order) {
            scan_out[out + 7u] = scan_detail[at + 5u];
            scan_out[out + 8u] = scan_detail[at + 6u];
            scan_out[out + 9u] = scan_detail[at + 7u];
            scan_out[out + 10u] = min(rows_first.x, SCAN_CAP);
            scan_out[out + 11u] = 1u;
        }
    }
    if (!in_order) {
        return true;
    }
    // The lowest SCAN_CAP rows: blocks of WG workgroups in order, each lane
    // placing its workgroup's rows after the rows of the lanes before it.
    var listed = 0u;
    let blocks = (nwg + WG - 1u) / WG;
    for (var blk = 0u; blk < blocks; blk = blk + 1u) {
        let j = blk * WG + lid;
        var at = 0u;
        var count = 0u;
        if (j < nwg) {
            at = (j * SCAN_BUFS + buf) * DETAIL_WORDS;
            if (scan_detail[at] == stamp) {
                count = detail_rows(at);
            }
        }
        let pre = workgroup_prefix_u32(lid, count);
        var pos = listed + pre.x;
        if (count > 0u && pos < SCAN_CAP) {
            let row0 = scan_detail[at + 4u];
            for (var k = 0u; k < 8u; k = k + 1u) {
                var m = scan_detail[at + 8u + k];
                while (m != 0u && pos < SCAN_CAP) {
                    scan_out[out + 12u + pos] = row0 + k * 32u + countTrailingZeros(m);
                    pos = pos + 1u;
                    m = m & (m - 1u);
                }
            }
        }
        listed = listed + pre.y;
        if (lid == 0u) {
            sc_flag = listed;
        }
        if (workgroupUniformLoad(&sc_flag) >= SCAN_CAP) {
            break;
        }
    }
    return true;
}
