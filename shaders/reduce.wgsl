// reduce.wgsl — the end of a pass, one workgroup: fold the per-workgroup
// partials in a fixed order (Σ|r|, max|r|, near-singular rows), fold the
// scan findings (scan.wgsl), let the guard decide (SPEC §9), and write the
// step's record (layout in common.wgsl) into `scan_out`, the records
// buffer. With UNDO its other workgroups put back a dropped batch's rows
// (below). Host owner: `GpuTrainer::encode_phase`, `Phase::Reduce`
// (src/gpu/trainer/encode.rs); records decoded by `Record` (src/record.rs); CPU mirror:
// `GuardState::decide` (src/guard.rs).

struct ReduceParams {
    count: u32,     // workgroups of the pass (partials and scan details)
    update: u32,    // 0 for an evaluation: no guard decision
    slots: u32,     // UNDO: slots of the batch (its undo log's rows)
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> partials: array<Partial>;
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<uniform> rp: ReduceParams;
@group(0) @binding(4) var<storage, read> strikes: array<u32>;
@group(0) @binding(5) var<storage, read> slots: array<vec4<u32>>;   // BATCHED: the scans' masks are of slots
// Grids that only the guard's decision opens, and the indirect dispatch
// arguments written here: a grid (x, y, z) when its flag (w: 0 for
// state.restore, copy_table.wgsl's restore after a rollback, one per chunk;
// 1 for state.undo, batch_io.wgsl's scatter of a dropped batch read in
// place, where UNDO does not do it in this pass) is set, no workgroups
// otherwise, so a step that keeps its table pays nothing. (A 16-byte
// stand-in pair when there are none.)
@group(0) @binding(6) var<storage, read> guard_grids: array<vec4<u32>>;
// How many: 0 with the stand-ins, so that a step with no indirect pass
// (a full table under skip-step or abort) reads no grid at its end, where
// lane 0 would wait on the load.
override GRIDS: u32 = 0u;
@group(0) @binding(7) var<storage, read_write> guard_args: array<vec4<u32>>;

// UNDO: a batch read in place under a double-buffered guard (fused_step.wgsl's
// `undo_log`, the table in one binding). Workgroup 0 is the reduce above;
// workgroups 1… put back the step's rows from the undo log if it was
// dropped, in this pass, where batch_io.wgsl's scatter took a pass of its
// own after it (indirect: no workgroups after a kept step, but a dispatch
// and a barrier every step). They cannot wait for workgroup 0's decision,
// nor read the state it rewrites, so they decide alike from the fused
// pass's own marks (`undo_mark`, zeroed by the host before each
// submission): the pass's stamp, and the stamp of the last pass of the
// submission whose scans found anything in the gradient or the rows
// written — workgroup 0's `bad` — with a flag that one did. A dropped step
// is one with findings (a halted run's passes do nothing, find nothing).
// Workgroups are counted over the whole grid (a 2-D one where the device,
// or `GpuOptions::max_groups`, allows few a dimension).
override UNDO: bool = false;
override MOMENTUM: bool = false;
@group(0) @binding(11) var<storage, read_write> undo_table: array<f32>;   // 16-byte stand-ins without UNDO
@group(0) @binding(12) var<storage, read_write> undo_vel: array<f32>;     // … and without momentum
@group(0) @binding(13) var<storage, read> undo_log: array<f32>;           // by slot: the rows' old values
@group(0) @binding(14) var<storage, read> undo_log_v: array<f32>;
@group(0) @binding(15) var<storage, read> undo_mark: array<u32>;          // (pass stamp, bad pass stamp, 1 if bad)

// Workgroup g of the `groups` after workgroup 0: its share of the dropped
// step's elements, slot-major, 4 bytes each (a rare pass: no vec4 views).
fn undo_rows(g: u32, groups: u32, lid: u32) {
    if ((undo_mark[2] == 0u) | (undo_mark[1] != undo_mark[0])) {
        return;   // kept (or halted before it): nothing to put back
    }
    let n = rp.slots * D;
    for (var e = g * WG + lid; e < n; e = e + groups * WG) {
        let row = slots[e / D].x;
        if (row == DEAD) {
            continue;
        }
        let at = row * D + e % D;   // the table in one binding: row_base 0
        undo_table[at] = undo_log[e];
        if (MOMENTUM) {
            undo_vel[at] = undo_log_v[e];
        }
    }
}

var<workgroup> wg_head: vec3<u32>;   // (state.halted, state.record, state.stamp)
const PARTIALS_AHEAD: u32 = 8u;       // partials a lane reads before folding them
var<workgroup> bf_hist: array<atomic<u32>, 256>;
var<workgroup> bf_pick: vec2<u32>;
var<workgroup> bf_count: atomic<u32>;
var<workgroup> bf_rows: array<u32, SCAN_CAP>;

// Each lane visits the bad rows of its workgroups' findings in `buf` (the
// masks' slots, mapped to rows) and either lists a row in `bf_rows` when it
// is ≤ `list_to` (`listing`), or counts its 8-bit digit at `digit.z` when
// its bits under `digit.x` equal `digit.y` (a radix round).
fn visit_bad_rows(lid: u32, buf: u32, nwg: u32, stamp: u32, listing: bool, digit: vec3<u32>, list_to: u32) {
    for (var j = lid; j < nwg; j = j + WG) {
        let at = (j * SCAN_BUFS + buf) * DETAIL_WORDS;
        if (scan_detail[at] != stamp) {
            continue;
        }
        let slot0 = scan_detail[at + 4u];
        for (var k = 0u; k < 8u; k = k + 1u) {
            var m = scan_detail[at + 8u + k];
            while (m != 0u) {
                let row = slots[slot0 + k * 32u + countTrailingZeros(m)].x;
                m = m & (m - 1u);
                if (!listing) {
                    if ((row & digit.x) == digit.y) {
                        atomicAdd(&bf_hist[(row >> digit.z) & 255u], 1u);
                    }
                } else if (row <= list_to) {
                    let at_list = atomicAdd(&bf_count, 1u);
                    if (at_list < SCAN_CAP) {
                        bf_rows[at_list] = row;
                    }
                }
            }
        }
    }
}

// A batch's scan block for `buf` after `scan_collect` folded its counts
// (all lanes call; `nwg` workgroups stamped `stamp`): the first element
// is the lowest row's, and the rows listed are the lowest SCAN_CAP rows,
// sorted — as over a table, though a batch's slots are in no row order.
// Rows are distinct within a step, so the SCAN_CAP-th lowest bad row is
// found exactly by a radix select (8 bits a round, integer atomics only),
// and the rows up to it are sorted by rank. Paid only when a pass found
// something.
fn batch_findings(lid: u32, buf: u32, nwg: u32, stamp: u32, out: u32) {
    // Bad rows in all, and the lowest workgroup finding's row (each
    // workgroup's finding is already its lowest row's).
    var acc = vec2<u32>(0u, NONE);
    for (var j = lid; j < nwg; j = j + WG) {
        let at = (j * SCAN_BUFS + buf) * DETAIL_WORDS;
        if (scan_detail[at] == stamp) {
            acc = vec2<u32>(acc.x + detail_rows(at), min(acc.y, scan_detail[at + 5u]));
        }
    }
    let total_low = workgroup_sum_min_u32(lid, acc);
    var owner = NONE;
    for (var j = lid; j < nwg; j = j + WG) {
        let at = (j * SCAN_BUFS + buf) * DETAIL_WORDS;
        if (scan_detail[at] == stamp && scan_detail[at + 5u] == total_low.y) {
            owner = min(owner, j);
        }
    }
    let who = workgroup_sum_min_u32(lid, vec2<u32>(0u, owner)).y;
    if (lid == 0u) {
        let at = (who * SCAN_BUFS + buf) * DETAIL_WORDS;
        scan_out[out + 7u] = total_low.y;
        scan_out[out + 8u] = scan_detail[at + 6u];
        scan_out[out + 9u] = scan_detail[at + 7u];
        scan_out[out + 11u] = 1u;
        atomicStore(&bf_count, 0u);
        bf_pick = vec2<u32>(total_low.x, 0u);
    }
    let total = workgroupUniformLoad(&bf_pick).x;   // made uniform for the barriers below
    // List rows ≤ bound: all of them, or up to the SCAN_CAP-th lowest.
    var bound = NONE;
    if (total > SCAN_CAP) {
        var pick = vec2<u32>(0u, SCAN_CAP);   // (prefix so far, rank wanted among its rows)
        for (var round = 0u; round < 4u; round = round + 1u) {
            let shift = 24u - 8u * round;
            // Bits above this digit must match the prefix (none in round 0).
            let high = select(0xffffffffu << ((shift + 8u) % 32u), 0u, round == 0u);
            for (var d = lid; d < 256u; d = d + WG) {
                atomicStore(&bf_hist[d], 0u);
            }
            workgroupBarrier();
            visit_bad_rows(lid, buf, nwg, stamp, false, vec3<u32>(high, pick.x & high, shift), 0u);
            workgroupBarrier();
            if (lid == 0u) {
                var below = 0u;
                var d = 0u;
                for (; d < 255u; d = d + 1u) {
                    let h = atomicLoad(&bf_hist[d]);
                    if (below + h >= pick.y) {
                        break;
                    }
                    below = below + h;
                }
                bf_pick = vec2<u32>(pick.x | (d << shift), pick.y - below);
            }
            pick = workgroupUniformLoad(&bf_pick);
        }
        bound = pick.x;
    }
    workgroupBarrier();
    visit_bad_rows(lid, buf, nwg, stamp, true, vec3<u32>(0u, 0u, 0u), bound);
    workgroupBarrier();
    // Sorted by rank (ties, which distinct rows never make, by position).
    let n = min(atomicLoad(&bf_count), SCAN_CAP);
    for (var i = lid; i < n; i = i + WG) {
        let v = bf_rows[i];
        var rank = 0u;
        for (var k = 0u; k < n; k = k + 1u) {
            let u = bf_rows[k];
            rank = rank + select(0u, 1u, u < v || (u == v && k < i));
        }
        scan_out[out + 12u + rank] = v;
    }
    if (lid == 0u) {
        scan_out[out + 10u] = n;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = linear_workgroup(wg, nwg);
    if (UNDO && w > 0u) {
        undo_rows(w - 1u, nwg.x * nwg.y - 1u, lid);
        return;
    }
    // Lane 0 reads the whole state and takes the scans' hit counts at
    // once, so that their round trips to memory may overlap (the pass is
    // one workgroup; on the H200 this moved its 14 µs by nothing
    // measurable). It keeps its copy (`st`), changes it and writes it back
    // at the end; no other invocation writes the state during this pass.
    var st: State;
    if (lid == 0u) {
        st = state;
        scan_take_hits_lane0();
        wg_head = vec3<u32>(st.halted, st.record, st.stamp);
        // This step's guard flags, set below only if it drops the step
        // (after a halted step, what follows it does nothing).
        st.restore = 0u;
        st.undo = 0u;
    }
    let head = workgroupUniformLoad(&wg_head);
    let hits = workgroupUniformLoad(&sc_hits);
    let slot = head.y * REC_WORDS;
    let stamp = head.z;
    if (head.x != 0u && rp.update != 0u) {
        for (var j = lid; j < REC_WORDS; j = j + WG) {
            scan_out[slot + j] = select(0u, ACT_NOT_RUN, j == 5u);
        }
        if (lid == 0u) {
            state = end_pass(st);
        }
        return;
    }
    // Each lane folds partials lid, lid + WG, … in that order, reading
    // PARTIALS_AHEAD of them before folding any, so that their loads are in
    // flight together: one at a time, this one workgroup waited on each in
    // turn (H200: 0.213 ms for 125 000 partials, about 0.44 µs a load a
    // lane; BENCHMARKS.md). The same order, so the same bits.
    var acc = vec2<f32>(0.0, 0.0);
    var near = 0u;
    for (var j0 = 0u; j0 < rp.count; j0 = j0 + PARTIALS_AHEAD * WG) {
        var ahead: array<Partial, PARTIALS_AHEAD>;
        for (var u = 0u; u < PARTIALS_AHEAD; u = u + 1u) {
            // Clamped, so every load is in range; only j < count is folded.
            ahead[u] = partials[min(j0 + u * WG + lid, rp.count - 1u)];
        }
        for (var u = 0u; u < PARTIALS_AHEAD; u = u + 1u) {
            if (j0 + u * WG + lid < rp.count) {
                acc = vec2<f32>(acc.x + ahead[u].sum, max(acc.y, ahead[u].max));
                near = near + ahead[u].near;
            }
        }
    }
    // (Lane 0 alone uses the totals: see workgroup_sum_max.)
    let folded = workgroup_sum_max_count(lid, acc, near);
    let total = folded.sum_max;
    let near_total = folded.count;
    // SPEC §9 acts on what a step would write: the gradient and the rows
    // written. A non-finite loss term alone is reported, not acted on (a
    // row read with a non-finite value is poisoned, so it is in both).
    // Decided from the hit counts alone, before any loop over the
    // findings: lavapipe ends every loop of an invocation once all of its
    // loops together have run 65 535 times (LP_MAX_TGSI_LOOP_ITERATIONS),
    // so a large batch with many bad rows could cut the loop over the
    // buffers short and let a bad step through (GpuTrainer::new refuses
    // shapes whose loops could reach the limit: `LoopBudget`).
    let bad = (hits[1] | hits[2]) != 0u;
    // The guard's action, its grids and the record's head, also before the
    // findings' loops, so that nothing the table depends on comes after
    // them; lane 0 writes the state back now (nothing below reads it).
    if (lid == 0u) {
        let lr = st.lr;
        var action = ACT_APPLIED;
        if (rp.update == 0u) {
            action = ACT_EVALUATED;
        } else if (GUARD == GUARD_IGNORE) {
            action = select(ACT_APPLIED, ACT_IGNORED, bad);
            st.skips = 0u;   // a step applied ends a run of skips (one resumed from skip-step's)
        } else if (GUARD == GUARD_SKIP_ROW) {
            action = select(ACT_APPLIED, ACT_SKIPPED_ROWS, bad);
            st.skips = 0u;
        } else if (!bad) {
            // A double-buffered guard keeps a clean step, switching table
            // buffers (a batched run has one: batch_io.wgsl's scatter
            // writes the kept rows); it drops any other (`st.undo`).
            if (!BATCHED) {
                st.cur = 1u - st.cur;
            }
            st.skips = 0u;
        } else if (GUARD == GUARD_SKIP_STEP) {
            st.undo = 1u;
            st.skips = st.skips + 1u;
            action = ACT_SKIPPED_STEP;
            if (st.skips > params.max_skips) {   // K skips allowed, as K rollbacks
                st.halted = 1u;
                action = ACT_ABORTED;
            }
        } else if (GUARD == GUARD_ROLLBACK) {
            st.undo = 1u;
            st.rollbacks = st.rollbacks + 1u;
            if (st.rollbacks > params.max_rollbacks) {
                st.halted = 1u;
                action = ACT_ABORTED;
            } else {
                st.restore = 1u;
                st.lr = lr * params.backoff;
                action = ACT_ROLLED_BACK;
            }
        } else {
            st.undo = 1u;
            st.halted = 1u;
            action = ACT_ABORTED;
        }
        if (double_buffered() && rp.update != 0u) {
            for (var c = 0u; c < GRIDS; c = c + 1u) {
                let g = guard_grids[c];
                let open = select(st.restore, st.undo, g.w == 1u) != 0u;
                guard_args[c] = select(vec4<u32>(0u, 1u, 1u, 0u), vec4<u32>(g.xyz, 0u), open);
            }
        }
        scan_out[slot] = bitcast<u32>(total.x);
        scan_out[slot + 1u] = bitcast<u32>(total.y);
        scan_out[slot + 2u] = bitcast<u32>(st.d0);
        scan_out[slot + 3u] = bitcast<u32>(st.s0);
        scan_out[slot + 4u] = near_total;
        scan_out[slot + 5u] = action;
        scan_out[slot + 6u] = bitcast<u32>(lr);
        scan_out[slot + 7u] = st.cur;
        scan_out[slot + 8u] = bitcast<u32>(st.norm);
        scan_out[slot + 9u] = select(0u, 1u, CLIP && rp.update != 0u);
        state = end_pass(st);
    }
    for (var buf = 0u; buf < SCAN_BUFS; buf = buf + 1u) {
        let block = slot + REC_HEADER + buf * SCAN_WORDS;
        let found = scan_collect(lid, buf, rp.count, stamp, block, !BATCHED, hits[buf]);
        if (BATCHED && found) {
            batch_findings(lid, buf, rp.count, stamp, block);
        }
    }
    // Strike counts of the rows listed for the rows written (skip-row:
    // the list is read back, so after a barrier; the other guards write
    // zeros).
    if (GUARD == GUARD_SKIP_ROW) {
        storageBarrier();
    }
    let table_block = slot + REC_HEADER + 2u * SCAN_WORDS;
    let listed = select(0u, scan_out[table_block + 10u], GUARD == GUARD_SKIP_ROW);
    for (var j = lid; j < SCAN_CAP; j = j + WG) {
        var n = 0u;
        if (j < listed) {
            n = strikes[scan_out[table_block + 12u + j]];
        }
        scan_out[table_block + SCAN_WORDS + j] = n;
    }
}

// Lane 0, last: the state to write back, with the next record slot and
// the next pass's stamp (its scan findings are told from older ones by
// it; see scan.wgsl).
fn end_pass(st: State) -> State {
    var s = st;
    s.record = st.record + 1u;
    s.stamp = st.stamp + 1u;
    return s;
}
