// batch_io.wgsl — SPEC §10's batches, one table chunk per dispatch, one
// invocation per element of the batch's slots:
//   gather:  rows (and velocity rows) of this chunk → the batch buffer x
//            (and xv), so the step's passes read a contiguous batch;
//   scatter: the current batch buffer (state.cur: the guard's choice) →
//            the chunk's rows; a dropped step writes back what it read;
//   settle:  one invocation, after the scatters: the batch buffers start
//            the next step from buffer A again.
// Only the step's rows are read and written. Host owner:
// `src/gpu/batch.rs`, `GpuTrainer::encode_phase`; CPU mirror: `src/cpu/general.rs`.

struct BatchIo {
    slots: u32,     // slots in the batch buffers
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override MOMENTUM: bool = false;
// fused_step.wgsl's DIRECT: the step wrote in place or into x_b; a scatter
// then copies x_b back only when the guard kept the step (state.cur = 1).
override DIRECT: bool = false;

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

// The element (slot, column) of invocation e, and where its row lies in
// this chunk: NONE when the slot is dead or its row is in another chunk.
fn local_at(e: u32) -> u32 {
    if (e >= io.slots * D) {
        return DEAD;
    }
    let row = slots[e / D].x;
    if (row == DEAD || row < chunk.row_base || row - chunk.row_base >= chunk.rows) {
        return DEAD;
    }
    return (row - chunk.row_base) * D + e % D;
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
    if (at == DEAD || state.halted != 0u || (DIRECT && state.cur == 0u)) {
        return;
    }
    if (state.cur == 0u) {
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

@compute @workgroup_size(1)
fn settle() {
    state.cur = 0u;
}
