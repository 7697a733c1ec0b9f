#!/usr/bin/env bash
# What a GPU compiler makes of the fused step, on a machine without a GPU:
# Mesa's RADV compiles for an AMD card that is not there (RADV_FORCE_FAMILY,
# "Null hardware"), and LATENT_LINE_STATS_DEVICE points --profile's probe
# at it while the run itself is on lavapipe. Prints, per shape and switch,
# the fused step's UPDATE pipeline: VGPRs, spills, scratch, LDS, waves a
# SIMD and instructions (BENCHMARKS.md, seventh session).
#
#   bash benches/radv_stats.sh [FAMILY ...]     (default: navi21 vega10)
#
# BIN=path/to/latent-line compares another build; RADV_DEBUG=shaders,nocache
# in the environment also prints each pipeline's code (ACO's disassembly;
# without nocache a pipeline from Mesa's disk cache prints nothing).
#
# Needs mesa-vulkan-drivers (lavapipe and RADV) and a release build.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/latent-line}
[ -x "$BIN" ] || cargo build --release -q
icd() { ls /usr/share/vulkan/icd.d/"$1"_icd.*.json 2>/dev/null | head -1; }
LVP=$(icd lvp); RADV=$(icd radeon)
[ -n "$LVP" ] && [ -n "$RADV" ] || { echo "needs Mesa's lavapipe and RADV (mesa-vulkan-drivers)"; exit 1; }
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} VK_ICD_FILENAMES="$LVP:$RADV" LATENT_LINE_STATS_DEVICE=radv

# One shape: LABEL, then VAR=VALUE switches, then -- and latent-line options.
row() {
    local label=$1; shift
    local envs=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done; [ $# -gt 0 ] && shift
    local out line
    out=$(env LATENT_LINE_WORKGROUP=256 LATENT_LINE_LANES=8 LATENT_LINE_SUBGROUPS=1 LATENT_LINE_ROW_BLOCKS=8 "${envs[@]}" \
        "$BIN" --backend gpu --adapter llvmpipe --rows 4096 --steps 1 --profile "$@" 2>&1)
    line=$(echo "$out" | grep -m1 -E 'fused_step\.wgsl main (\[[A-Z=0-9 ]*UPDATE=1[A-Z=0-9 ]*\] )?· ')
    [ -n "$line" ] || { echo "$label: no statistics"; echo "$out" | tail -3; return; }
    f() { echo "$line" | grep -o "$1 [0-9]*" | head -1 | awk '{print $NF}'; }
    printf '%-32s VGPRs %3s  spilled %s  scratch %s  LDS %5s  waves/SIMD %2s  instructions %5s\n' "$label" \
        "$(f VGPRs)" "$(f 'Spilled VGPRs')" "$(f 'Scratch size')" "$(f 'LDS size')" "$(f 'Subgroups per SIMD')" "$(f Instructions)"
}

for fam in "${@:-navi21 vega10}"; do
    for family in $fam; do
        export RADV_FORCE_FAMILY=$family
        echo "== $family (fused step, UPDATE pipeline; workgroups of 256, subgroups)"
        # The GPU defaults first: 16-byte columns, D/16 lanes, no read-ahead.
        v4=(LATENT_LINE_VEC4=1 LATENT_LINE_LANES=4 LATENT_LINE_PREFETCH=0 LATENT_LINE_ROW_BLOCKS=4)
        row "D=64 default (16-byte, 4 lanes)" "${v4[@]}" --
        row "  random batch (in place)" "${v4[@]}" -- --batch 2048
        row "  read-ahead" "${v4[@]}" LATENT_LINE_PREFETCH=1 --
        row "  2 lanes" "${v4[@]}" LATENT_LINE_LANES=2 --
        row "  16 lanes" "${v4[@]}" LATENT_LINE_LANES=16 --
        row "D=128 default (16-byte, 8 l.)" "${v4[@]}" LATENT_LINE_LANES=8 -- --dim 128
        # 4-byte columns (D not a multiple of 4, or VEC4=0), 8 lanes.
        b4=(LATENT_LINE_VEC4=0 LATENT_LINE_LANES=8 LATENT_LINE_ROW_BLOCKS=8)
        row "D=64 4-byte, 8 lanes (vectors)" "${b4[@]}" --
        row "  no read-ahead" "${b4[@]}" LATENT_LINE_PREFETCH=0 --
        row "  kept in an array" "${b4[@]}" LATENT_LINE_KEPT_VECTORS=0 --
        row "  not kept (KEEP=0)" "${b4[@]}" LATENT_LINE_KEEP=0 --
        row "  16 lanes" "${b4[@]}" LATENT_LINE_LANES=16 --
    done
done
