// anchor_sum.wgsl — attached mode (SPEC §4): the anchor term of every slot,
// summed over fixed segments of SEG slots, one invocation per column:
//   ta = Σ_j c_j·((p − x_j)/d1_j − (p − q)/d0),
//   tb = Σ_j c_j·((q − x_j)/d2_j − (q − p)/d0),
// in slot order within a segment; prepare.wgsl folds the segments in
// order, so the result is deterministic (no float atomics). Reads the
// coefficients the PREP pass of fused_step.wgsl wrote. One more read of the
// step's rows: the price of attached anchors. Host owner:
// `GpuTrainer::encode_phase`; CPU mirror: read A of `src/cpu/general.rs`.

const SEG: u32 = 256u;
override DIRECT: bool = false;   // fused_step.wgsl's: rows read from the table (table_a) by row

@group(0) @binding(0) var<storage, read> table_a: array<f32>;
@group(0) @binding(1) var<storage, read> table_b: array<f32>;
@group(0) @binding(2) var<storage, read> anchors: array<f32>;
@group(0) @binding(3) var<storage, read> state: State;
@group(0) @binding(6) var<uniform> chunk: Chunk;
@group(0) @binding(13) var<storage, read> slots: array<vec4<u32>>;
@group(0) @binding(14) var<storage, read> coef: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> colpart: array<f32>;   // per segment: ta (D), tb (D)

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = linear_workgroup(wg, nwg);
    let blocks = (D + WG - 1u) / WG;
    let k = (w % blocks) * WG + lid;
    let seg = w / blocks;
    if (k >= D || seg * SEG >= chunk.rows || state.halted != 0u) {
        return;
    }
    let cur = state.cur;
    let p = anchors[k];
    let q = anchors[D + k];
    let d0 = state.d0;
    var ta = 0.0;
    var tb = 0.0;
    var bad = vec2<bool>(false, false);   // a slot made ta (x), tb (y) NaN
    let end = min(seg * SEG + SEG, chunk.rows);
    for (var i = seg * SEG; i < end; i = i + 1u) {
        var at = i * D + k;
        if (BATCHED) {
            let row = slots[i].x;
            if (row == DEAD) {
                continue;
            }
            if (DIRECT) {
                at = row * D + k;
            }
        }
        let cf = coef[i];   // the chunk's own coefficients
        let x = select(table_a[at], table_b[at], cur == 1u);
        // A poisoned slot: NaN in the terms it names (fused_step.wgsl's
        // coef.w: 1 for a's, 2 for b's), from bits.
        let poisons = u32(cf.w);
        bad = bad | vec2<bool>((poisons & 1u) != 0u, (poisons & 2u) != 0u);
        ta = ta + cf.x * ((p - x) * cf.y - over_d0(p - q, d0));
        tb = tb + cf.x * ((q - x) * cf.z - over_d0(q - p, d0));
    }
    let at = (chunk.seg_base + seg) * 2u * D;
    colpart[at + k] = select(ta, nan(), bad.x);
    colpart[at + D + k] = select(tb, nan(), bad.y);
}
