// reduce.wgsl — the end of a pass, one workgroup: fold the per-workgroup
// partials in a fixed order (Σ|r|, max|r|, near-singular rows), fold the
// scan findings (scan.wgsl), let the guard decide (SPEC §9), and write the
// step's record (layout in common.wgsl) into `scan_out`, the records
// buffer. Host owner: `GpuTrainer::encode_reduce`; CPU mirror:
// `guard::decide` (src/guard.rs).

struct ReduceParams {
    count: u32,     // workgroups of the pass (partials and scan details)
    update: u32,    // 0 for an evaluation: no guard decision
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> partials: array<Partial>;
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<uniform> rp: ReduceParams;
@group(0) @binding(4) var<storage, read> strikes: array<u32>;
@group(0) @binding(5) var<storage, read> slots: array<vec4<u32>>;   // BATCHED: the scans list slots
// rollback: each chunk's grid for copy_table.wgsl's restore, and the
// indirect dispatch arguments written here — that grid after a rollback,
// no workgroups otherwise, so a step that keeps its table pays nothing.
@group(0) @binding(6) var<storage, read> restore_grid: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> restore_args: array<vec4<u32>>;

var<workgroup> wg_head: vec2<u32>;   // (state.halted, state.record)

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        wg_head = vec2<u32>(state.halted, state.record);
    }
    let head = workgroupUniformLoad(&wg_head);
    let slot = head.y * REC_WORDS;
    if (head.x != 0u && rp.update != 0u) {
        for (var j = lid; j < REC_WORDS; j = j + WG) {
            scan_out[slot + j] = select(0u, ACT_NOT_RUN, j == 5u);
        }
        if (lid == 0u) {
            state.record = head.y + 1u;
        }
        return;
    }
    var acc = vec2<f32>(0.0, 0.0);
    var near = 0u;
    for (var j = lid; j < rp.count; j = j + WG) {
        let v = partials[j];
        acc = vec2<f32>(acc.x + v.sum, max(acc.y, v.max));
        near = near + v.near;
    }
    let total = workgroup_sum_max(lid, acc);
    let near_total = workgroup_sum_min_u32(lid, vec2<u32>(near, 0u)).x;
    // SPEC §9 acts on what a step would write: the gradient and the rows
    // written. A non-finite loss term alone is reported, not acted on (a
    // row read with a non-finite value is poisoned, so it is in both).
    var bad = false;
    for (var buf = 0u; buf < SCAN_BUFS; buf = buf + 1u) {
        let found = scan_collect(lid, buf, rp.count, state.stamp, slot + REC_HEADER + buf * SCAN_WORDS);
        bad = bad || (found && buf > 0u);
    }
    // Strike counts of the rows listed for the rows written (skip-row).
    storageBarrier();
    let table_block = slot + REC_HEADER + 2u * SCAN_WORDS;
    let listed = select(0u, scan_out[table_block + 10u], GUARD == GUARD_SKIP_ROW);
    for (var j = lid; j < SCAN_CAP; j = j + WG) {
        var n = 0u;
        if (j < listed) {
            var row = scan_out[table_block + 12u + j];
            if (BATCHED) {
                row = slots[row].x;
            }
            n = strikes[row];
        }
        scan_out[table_block + SCAN_WORDS + j] = n;
    }
    if (lid == 0u) {
        let lr = state.lr;
        var action = ACT_APPLIED;
        if (rp.update == 0u) {
            action = ACT_EVALUATED;
        } else if (GUARD == GUARD_IGNORE) {
            action = select(ACT_APPLIED, ACT_IGNORED, bad);
        } else if (GUARD == GUARD_SKIP_ROW) {
            action = select(ACT_APPLIED, ACT_SKIPPED_ROWS, bad);
        } else if (!bad) {
            state.cur = 1u - state.cur;
            state.skips = 0u;
        } else if (GUARD == GUARD_SKIP_STEP) {
            state.skips = state.skips + 1u;
            action = ACT_SKIPPED_STEP;
            if (state.skips >= params.max_skips) {
                state.halted = 1u;
                action = ACT_ABORTED;
            }
        } else if (GUARD == GUARD_ROLLBACK) {
            state.rollbacks = state.rollbacks + 1u;
            if (state.rollbacks > params.max_rollbacks) {
                state.halted = 1u;
                action = ACT_ABORTED;
            } else {
                state.restore = 1u;
                state.lr = lr * params.backoff;
                action = ACT_ROLLED_BACK;
            }
        } else {
            state.halted = 1u;
            action = ACT_ABORTED;
        }
        if (GUARD == GUARD_ROLLBACK && rp.update != 0u) {
            for (var c = 0u; c < arrayLength(&restore_grid); c = c + 1u) {
                restore_args[c] = select(vec4<u32>(0u, 1u, 1u, 0u), restore_grid[c], state.restore != 0u);
            }
        }
        scan_out[slot] = bitcast<u32>(total.x);
        scan_out[slot + 1u] = bitcast<u32>(total.y);
        scan_out[slot + 2u] = bitcast<u32>(state.d0);
        scan_out[slot + 3u] = bitcast<u32>(state.s0);
        scan_out[slot + 4u] = near_total;
        scan_out[slot + 5u] = action;
        scan_out[slot + 6u] = bitcast<u32>(lr);
        scan_out[slot + 7u] = state.cur;
        scan_out[slot + 8u] = bitcast<u32>(state.norm);
        scan_out[slot + 9u] = select(0u, 1u, CLIP && rp.update != 0u);
        state.record = head.y + 1u;
    }
}
