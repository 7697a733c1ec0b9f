// fused_step.wgsl — the full-table step for one chunk, in ONE pass: each
// invocation owns one row, reads it, computes d1, d2, r and the gradient,
// scans the loss, the gradient and the new values (SPEC §7), counts the
// near-singular rows (§8), and writes the row. With UPDATE = false it is
// the forward-only evaluation.
//
// TILED (an option, off by default: slower on an H200, see BENCHMARKS.md;
// where workgroup memory allows): the workgroup's WG
// rows are copied into workgroup memory with coalesced loads (consecutive
// lanes, consecutive addresses), computed there — one lane per row, the
// tile's rows padded to D + 1 floats so that lanes hit different banks —
// and copied out with coalesced stores. Each element is read from and
// written to memory exactly once. Without TILED each lane reads and writes
// its own row in memory directly (rows wider than the tile allows).
//
// Where the row is written depends on the guard (SPEC §9):
//  - ignore, skip-row: in place (skip-row first decides, then writes);
//  - skip-step, rollback, abort: into the other table buffer (table_a ⇄
//    table_b); reduce.wgsl switches `state.cur` only if the step was clean,
//    so a failing step is dropped without another pass over the table.
// Host owner: `GpuTrainer::encode_fused` (src/gpu/trainer.rs);
// CPU mirror: `CpuTrainer::pass` (src/cpu.rs); reference: src/reference.rs.

override UPDATE: bool = true;
// false only to measure what the fused scans cost (benches): with it the
// guard sees nothing, so the host allows it with `ignore` alone.
override SCAN: bool = true;
override TILED: bool = true;
override TR: u32 = 64u;   // rows a tile holds: WG when TILED, 1 otherwise (sizes `tile`)

@group(0) @binding(0) var<storage, read_write> table_a: array<f32>;
@group(0) @binding(1) var<storage, read_write> table_b: array<f32>;   // a 16-byte stand-in when single-buffered
@group(0) @binding(2) var<storage, read> anchors: array<f32>;         // p (D), then q (D)
@group(0) @binding(3) var<storage, read> state: State;
@group(0) @binding(4) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(5) var<uniform> params: Params;
@group(0) @binding(6) var<uniform> chunk: Chunk;
@group(0) @binding(7) var<storage, read_write> strikes: array<u32>;   // skip-row only, per global row

var<workgroup> wg_flags: vec2<u32>;   // (state.cur, state.halted), made uniform
var<workgroup> wg_near: atomic<u32>;
var<workgroup> tile: array<f32, TR * (D + 1u)>;

fn tile_at(i: u32, k: u32) -> u32 {
    return i * (D + 1u) + k;
}

// Column k of the lane's row: from the tile, or from memory at `base`.
fn read_x(cur: u32, lid: u32, base: u32, k: u32) -> f32 {
    if (TILED) {
        return tile[tile_at(lid, k)];
    }
    return load_x(cur, base + k);
}

// The lane's new value of column k: into the tile (copied out later), or
// straight to memory.
fn write_x(cur: u32, lid: u32, base: u32, k: u32, v: f32) {
    if (TILED) {
        tile[tile_at(lid, k)] = v;
    } else {
        store_x(cur, base + k, v);
    }
}

fn load_x(cur: u32, e: u32) -> f32 {
    if (cur == 0u) {
        return table_a[e];
    }
    return table_b[e];
}

// Double-buffered guards write the buffer that is not current.
fn store_x(cur: u32, e: u32, v: f32) {
    let dst = select(cur, 1u - cur, double_buffered());
    if (dst == 0u) {
        table_a[e] = v;
    } else {
        table_b[e] = v;
    }
}

// Gradient and new value of column k. A row that read a non-finite value,
// or where the naive formula divides by zero, gets NaN from bits: WGSL may
// assume no NaN exists, so arithmetic is never trusted to make one.
fn grad_at(x: f32, k: u32, c: f32, inv_d1: f32, inv_d2: f32, sep: f32, poisoned: bool) -> f32 {
    let p = anchors[k];
    let q = anchors[D + k];
    return select(row_grad(x, p, q, c, inv_d1, inv_d2) + sep * (p - q), nan(), poisoned);
}

fn new_value(x: f32, g: f32, lr: f32, poisoned: bool) -> f32 {
    return select(sgd_update(x, g, lr), nan(), poisoned);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    scan_reset(lid);
    if (lid == 0u) {
        wg_flags = vec2<u32>(state.cur, state.halted);
        atomicStore(&wg_near, 0u);
    }
    let flags = workgroupUniformLoad(&wg_flags);   // also the barrier after the resets
    if (UPDATE && flags.y != 0u) {
        return;   // aborted: steps do nothing; evaluations still run
    }
    let cur = flags.x;
    let i = w * WG + lid;
    // The tile: rows [w·WG, w·WG + n) of the chunk, n the same for all lanes.
    let tile_base = w * WG * D;
    let tile_len = select(0u, min(WG, chunk.rows - min(w * WG, chunk.rows)) * D, TILED);
    if (TILED) {
        for (var e = lid; e < tile_len; e = e + WG) {
            tile[tile_at(e / D, e % D)] = load_x(cur, tile_base + e);
        }
        workgroupBarrier();
    }
    var abs_r = 0.0;
    if (i < chunk.rows) {
        let base = i * D;
        var s = vec2<f32>(0.0, 0.0);
        var in_bad = false;
        for (var k = 0u; k < D; k = k + 1u) {
            let x = read_x(cur, lid, base, k);
            in_bad = in_bad || is_nonfinite(x);
            s = accumulate_sq(s, x, anchors[k], anchors[D + k]);
        }
        let row = chunk.row_base + i;
        s = pin_anchors(s, row, params.anchor_a, params.anchor_b, state.s0);
        let d1 = safe_dist(s.x, params.eps);
        let d2 = safe_dist(s.y, params.eps);
        let r = excess(d1, d2, state.d0);
        // The loss term of a row that read a non-finite value is NaN.
        var loss_scan = row_scan_new();
        if (SCAN) {
            loss_scan = row_scan_add(loss_scan, 0u, select(r, nan(), in_bad));
            scan_commit(0u, lid, loss_scan);
        }
        abs_r = select(abs(r), 0.0, row_scan_bad(loss_scan));   // sums cover finite terms
        let near = params.tau * state.d0;
        if (s.x < near * near || s.y < near * near) {
            atomicAdd(&wg_near, 1u);
        }
        if (UPDATE) {
            let lr = state.lr;
            let c = row_coef(r, params.w_red);
            let sep = separation_coef(row, params.anchor_a, params.anchor_b, state.d0, params.margin,
                                      params.margin_weight);
            let inv_d1 = safe_inv(d1);
            let inv_d2 = safe_inv(d2);
            let poisoned = in_bad || naive_blows_up(s);
            var gs = row_scan_new();
            var ts = row_scan_new();
            if (!writes_row(row, params.anchor_a, params.anchor_b)) {
                // (Tiled, the tile still holds the row: it is copied out as it is.)
                if (double_buffered() && !TILED) {
                    // Frozen anchors are carried into the next buffer unchanged.
                    for (var k = 0u; k < D; k = k + 1u) {
                        store_x(cur, base + k, load_x(cur, base + k));
                    }
                }
            } else if (GUARD == GUARD_SKIP_ROW) {
                // Decide first, then write: a row that would turn non-finite
                // keeps its old value and earns a strike.
                for (var k = 0u; k < D; k = k + 1u) {
                    let x = read_x(cur, lid, base, k);
                    let g = grad_at(x, k, c, inv_d1, inv_d2, sep, poisoned);
                    gs = row_scan_add(gs, k, g);
                    ts = row_scan_add(ts, k, new_value(x, g, lr, poisoned));
                }
                if (row_scan_bad(loss_scan) || row_scan_bad(gs) || row_scan_bad(ts)) {
                    strikes[row] = strikes[row] + 1u;
                } else {
                    for (var k = 0u; k < D; k = k + 1u) {
                        let x = read_x(cur, lid, base, k);
                        write_x(cur, lid, base, k, new_value(x, grad_at(x, k, c, inv_d1, inv_d2, sep, false), lr, false));
                    }
                }
            } else {
                for (var k = 0u; k < D; k = k + 1u) {
                    let x = read_x(cur, lid, base, k);
                    let g = grad_at(x, k, c, inv_d1, inv_d2, sep, poisoned);
                    let v = new_value(x, g, lr, poisoned);
                    if (SCAN) {
                        gs = row_scan_add(gs, k, g);
                        ts = row_scan_add(ts, k, v);
                    }
                    write_x(cur, lid, base, k, v);
                }
            }
            if (SCAN) {
                scan_commit(1u, lid, gs);
                scan_commit(2u, lid, ts);
            }
        }
    }
    if (TILED && UPDATE) {
        workgroupBarrier();
        for (var e = lid; e < tile_len; e = e + WG) {
            store_x(cur, tile_base + e, tile[tile_at(e / D, e % D)]);
        }
    }
    let total = workgroup_sum_max(lid, vec2<f32>(abs_r, abs_r));   // its barriers publish the scan atomics
    if (lid == 0u && w * WG < chunk.rows) {
        let gw = chunk.partial_base + w;
        partials[gw] = Partial(total.x, total.y, atomicLoad(&wg_near), 0u);
        let row0 = chunk.row_base + w * WG;
        for (var buf = 0u; buf < SCAN_BUFS; buf = buf + 1u) {
            let f = scan_first_local(buf);
            if (f != NONE) {
                scan_flush(buf, gw, state.stamp, row0, sc_bits[buf * MAX_WG + f / D]);
            }
        }
    }
}
