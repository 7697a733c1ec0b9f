// prepare.wgsl — between the two reads of a step that needs the whole step
// first (SPEC §4–§5), one workgroup:
//  - attached: each anchor's whole gradient, its own row term (from its
//    slot's coefficients) + the anchor term (anchor_sum.wgsl's segments,
//    folded in order) + the separation term, into `agrad`;
//  - clipping: ‖g‖ over the step (the PREP pass's partial sums, folded in
//    order, plus the anchors'), and the factor min(1, max/‖g‖) into
//    `state.clip` — NaN bits when ‖g‖ is not finite, so that every update
//    is non-finite and the guard acts (SPEC §9), never a silent scaling.
// Rows whose gradient is not finite are left out of the norm: the guard
// deals with them (a finite one whose Σ g² overflows f32 makes it +Inf). Host owner: `GpuTrainer::encode_phase`; CPU mirror:
// `src/cpu/general.rs`.

struct PrepareParams {
    count: u32,     // workgroups of the PREP pass (partials)
    segs: u32,      // segments of anchor_sum.wgsl
    slot_a: u32,    // the anchors' slots in coef_a and coef_b (a full table's:
    slot_b: u32,    // their rows within their chunks)
}

@group(0) @binding(0) var<storage, read> partials: array<Partial>;
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<uniform> pp: PrepareParams;
@group(0) @binding(4) var<storage, read> anchors: array<f32>;
// The PREP pass's coefficients of the chunks (or the batch) holding a and b.
@group(0) @binding(5) var<storage, read> coef_a: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> colpart: array<f32>;
@group(0) @binding(7) var<storage, read_write> agrad: array<f32>;
@group(0) @binding(8) var<storage, read> coef_b: array<vec4<f32>>;

var<workgroup> wg_halted: u32;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        wg_halted = state.halted;
    }
    if (workgroupUniformLoad(&wg_halted) != 0u) {
        return;
    }
    var n2 = 0.0;
    for (var j = lid; j < pp.count; j = j + WG) {
        n2 = n2 + partials[j].norm2;
    }
    var rows2 = workgroup_sum_max(lid, vec2<f32>(n2, 0.0)).x;
    // The anchors (attached): (Σ g², non-finite count) of a and of b.
    var acc = vec4<f32>(0.0, 0.0, 0.0, 0.0);
    if (MODE == MODE_ATTACHED) {
        let d0 = state.d0;
        for (var k = lid; k < D; k = k + WG) {
            let p = anchors[k];
            let q = anchors[D + k];
            // Both anchors' segments in one loop (each summed in segment
            // order): half the iterations of a loop each, against
            // lavapipe's 65 535 an invocation (reduce.wgsl).
            var sums = vec2<f32>(0.0, 0.0);
            for (var s = 0u; s < pp.segs; s = s + 1u) {
                sums = sums + vec2<f32>(colpart[s * 2u * D + k], colpart[s * 2u * D + D + k]);
            }
            for (var which = 0u; which < 2u; which = which + 1u) {
                let cf = select(coef_a[pp.slot_a], coef_b[pp.slot_b], which == 1u);
                let row = select(params.anchor_a, params.anchor_b, which == 1u);
                let x = select(p, q, which == 1u);
                let sum = sums[which];
                let sep = separation_coef(row, params.anchor_a, params.anchor_b, d0, params.margin, params.margin_weight);
                let g = select(with_separation(row_grad(x, p, q, cf.x, cf.y, cf.z) + sum, sep, p, q), nan(), cf.w != 0.0);
                agrad[which * D + k] = g;
                let bad = is_nonfinite(g);
                if (which == 0u) {
                    acc = acc + vec4<f32>(select(g * g, 0.0, bad), select(0.0, 1.0, bad), 0.0, 0.0);
                } else {
                    acc = acc + vec4<f32>(0.0, 0.0, select(g * g, 0.0, bad), select(0.0, 1.0, bad));
                }
            }
        }
    }
    let a = workgroup_sum_max(lid, acc.xy).x;
    let a_bad = workgroup_sum_max(lid, vec2<f32>(acc.y, acc.y)).y;
    let b = workgroup_sum_max(lid, acc.zw).x;
    let b_bad = workgroup_sum_max(lid, vec2<f32>(acc.w, acc.w)).y;
    if (lid == 0u) {
        var total = rows2;
        // (A finite gradient whose Σ g² overflows counts, as in fused_step.wgsl.)
        if (a_bad == 0.0) {
            total = total + a;
        }
        if (b_bad == 0.0) {
            total = total + b;
        }
        let norm = sqrt(total);
        state.norm = norm;
        var f = 1.0;
        if (is_nonfinite(norm)) {
            f = nan();
        } else if (norm > params.clip_norm) {
            f = params.clip_norm / norm;
        }
        state.clip = f;
    }
}
