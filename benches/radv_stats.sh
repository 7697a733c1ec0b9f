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
    printf '%-28s VGPRs %3s  spilled %s  scratch %s  LDS %5s  waves/SIMD %2s  instructions %5s\n' "$label" \
        "$(f VGPRs)" "$(f 'Spilled VGPRs')" "$(f 'Scratch size')" "$(f 'LDS size')" "$(f 'Subgroups per SIMD')" "$(f Instructions)"
}

for fam in "${@:-navi21 vega10}"; do
    for family in $fam; do
        export RADV_FORCE_FAMILY=$family
        echo "== $family (fused step, UPDATE pipeline; workgroups of 256, 8 row blocks)"
        row "D=64, 8 lanes (default)" --
        row "PREFETCH=0" LATENT_LINE_PREFETCH=0 --
        row "KEEP=0" LATENT_LINE_KEEP=0 --
        row "KEPT_VECTORS=0 (an array)" LATENT_LINE_KEPT_VECTORS=0 --
        row "VEC4=1" LATENT_LINE_VEC4=1 --
        row "VEC4=1, 16 lanes" LATENT_LINE_VEC4=1 LATENT_LINE_LANES=16 --
        row "16 lanes" LATENT_LINE_LANES=16 --
        row "4 lanes (16 columns in vectors)" LATENT_LINE_LANES=4 --
        row "4 lanes, PREFETCH=0" LATENT_LINE_LANES=4 LATENT_LINE_PREFETCH=0 --
        row "D=128, 16 lanes (default)" LATENT_LINE_LANES=16 -- --dim 128
        row "random batch (read in place)" -- --batch 2048
    done
done
