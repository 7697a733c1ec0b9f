// batch_io.wgsl — SPEC §10's batches, one table chunk per dispatch, one
// invocation per element of the batch's slots (VEC4: per vec4):
//   gather:  rows (and velocity rows) of this chunk → the batch buffer x
//            (and xv), so the step's passes read a contiguous batch;
//   scatter: a kept step's rows → the chunk's rows: x_b under a
//            double-buffered guard, x_a (stepped in place) otherwise; a
//            dropped step (state.undo) or an aborted run writes nothing;
//            DIRECT: the step wrote in place, and only a dropped one gets
//            its rows' old values back, from x_b (an indirect dispatch: no
//            workgroups after a kept step).
// A batched run has one table buffer: state.cur stays 0 (reduce.wgsl).
// Only the step's rows are read and written. Host owner:
// `src/gpu/batch.rs`, `GpuTrainer::encode_phase`; CPU mirror: `src/cpu/general.rs`.

struct BatchIo {
    slots: u32,     // slots in the batch buffers
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override MOMENTUM: bool = false;
// fused_step.wgsl's DIRECT: the step wrote in place; under a
// double-buffered guard it logged its rows' old values in x_b (its
// `undo_log`), which a scatter copies back only when the guard dropped the
// step (state.undo = 1), on the step that aborts too.
override DIRECT: bool = false;
// fused_step.wgsl's VEC4 (D a multiple of 4): one invocation per vec4 of
// the slots, through the vec4 views of the same buffers (bindings 10–15).
override VEC4: bool = false;

@group(0) @binding(0) var<storage, read_write> table: array<f32>;
@group(0) @binding(1) var<storage, read_write> vel: array<f32>;   // 16-byte stand-in without momentum
@group(0) @binding(2) var<storage, read_write> x_a: array<f32>;
@group(0) @binding(3) var<storage, read_write> x_b: array<f32>;   // x_a's stand-in when single-buffered is a 16-byte one
@group(0) @binding(4) var<storage, read_write> xv_a: array<f32>;
@group(0) @binding(5) var<storage, read_write> xv_b: array<f32>;
@group(0) @binding(6) var<storage, read> slots: array<vec4<u32>>;
@group(0) @binding(7) var<uniform> chunk: Chunk;
@group(0) @binding(8) var<storage, read_write> state: State;
@group(0) @binding(9) var<uniform> io: BatchIo;
@group(0) @binding(10) var<storage, read_write> table4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> vel4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> x_a4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> x_b4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read_write> xv_a4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> xv_b4: array<vec4<f32>>;

// Elements (VEC4: vec4s) of one slot's row.
fn per_row() -> u32 {
    return select(D, D / 4u, VEC4);
}

// The element (slot, column; VEC4: the vec4) of invocation e, and where
// its row lies in this chunk: DEAD when the slot is dead or its row is in
// another chunk.
fn local_at(e: u32) -> u32 {
    let n = per_row();
    if (e >= io.slots * n) {
        return DEAD;
    }
    let row = slots[e / n].x;
    if (row == DEAD || row < chunk.row_base || row - chunk.row_base >= chunk.rows) {
        return DEAD;
    }
    return (row - chunk.row_base) * n + e % n;
}

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wg: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    let at = local_at(e);
    if (at == DEAD || state.halted != 0u) {
        return;
    }
    if (VEC4) {
        x_a4[e] = table4[at];
        if (MOMENTUM) {
            xv_a4[e] = vel4[at];
        }
        return;
    }
    x_a[e] = table[at];
    if (MOMENTUM) {
        xv_a[e] = vel[at];
    }
}

@compute @workgroup_size(WG)
fn scatter(@builtin(workgroup_id) wg: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    let at = local_at(e);
    if (at == DEAD || (DIRECT && state.undo == 0u) || (!DIRECT && (state.halted != 0u || state.undo != 0u))) {
        return;
    }
    let from_a = !DIRECT && !double_buffered();
    if (VEC4) {
        if (from_a) {
            table4[at] = x_a4[e];
            if (MOMENTUM) {
                vel4[at] = xv_a4[e];
            }
        } else {
            table4[at] = x_b4[e];
            if (MOMENTUM) {
                vel4[at] = xv_b4[e];
            }
        }
        return;
    }
    if (from_a) {
        table[at] = x_a[e];
        if (MOMENTUM) {
            vel[at] = xv_a[e];
        }
    } else {
        table[at] = x_b[e];
        if (MOMENTUM) {
            vel[at] = xv_b[e];
        }
    }
}

