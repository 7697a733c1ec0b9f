// copy_table.wgsl — the rollback policy's snapshot (SPEC §9), one chunk,
// one invocation per element:
//   snapshot: current table → snapshot (encoded every N steps);
//   restore:  snapshot → current table, only when reduce.wgsl asked for it
//             (`state.restore`), so a rollback needs no host round trip;
//             with momentum the velocity restarts from 0 (it belongs to
//             the trajectory that failed).
// Host owner: `GpuTrainer::encode_phase`, `Phase::Snapshot` and
// `Phase::Restore` (src/gpu/trainer/encode.rs); CPU mirror:
// `CpuTrainer::snapshot_if_due` and the restore in `CpuTrainer::pass`
// (src/cpu.rs).

@group(0) @binding(0) var<storage, read_write> table_a: array<f32>;
@group(0) @binding(1) var<storage, read_write> table_b: array<f32>;
@group(0) @binding(2) var<storage, read_write> snap: array<f32>;
@group(0) @binding(3) var<storage, read> state: State;
@group(0) @binding(4) var<uniform> chunk: Chunk;
@group(0) @binding(5) var<storage, read_write> vel_a: array<f32>;   // 16-byte stand-ins without momentum
@group(0) @binding(6) var<storage, read_write> vel_b: array<f32>;

override MOMENTUM: bool = false;

@compute @workgroup_size(WG)
fn snapshot(@builtin(workgroup_id) wg: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e >= chunk.rows * D || state.halted != 0u) {
        return;
    }
    snap[e] = select(table_a[e], table_b[e], state.cur == 1u);
}

@compute @workgroup_size(WG)
fn restore(@builtin(workgroup_id) wg: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let e = linear_workgroup(wg, nwg) * WG + lid;
    if (e >= chunk.rows * D || state.restore == 0u || state.halted != 0u) {
        return;
    }
    if (state.cur == 0u) {
        table_a[e] = snap[e];
        if (MOMENTUM) {
            vel_a[e] = 0.0;
        }
    } else {
        table_b[e] = snap[e];
        if (MOMENTUM) {
            vel_b[e] = 0.0;
        }
    }
}
