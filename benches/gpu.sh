#!/usr/bin/env bash
# The device check, run through the device tool on a GPU machine with
# prebuilt binaries (it builds nothing: the machine may have no Rust).
# Here, first:  bash benches/gpu.sh --prepare   (fills .dev/bin, .gl)
# There:        bash benches/gpu.sh              (carry .dev and .gl)
# It runs the GPU-facing tests on the real GPU, the main job, a 1 GiB
# `latent-line scan`, and `cargo bench`'s binary, then prints one table.
# `bash benches/gpu.sh quick`: the naive, forensics and subgroups tests, the main job
# and the GPU benches only (when device time is short).
set -u
MODE=${1:-full}
if [ "${1:-}" = "--prepare" ]; then
    set -e
    mkdir -p .dev/bin .gl
    pick() { python3 -c "
import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get('reason') == 'compiler-artifact' and m.get('executable') and m['target']['kind'] == ['$1']:
        print(m['target']['name'], m['executable'])"; }
    cargo test --release --no-run --message-format=json 2>/dev/null | pick test |
        while read -r name exe; do cp "$exe" ".dev/bin/$name"; done
    cargo bench --no-run --message-format=json 2>/dev/null | pick bench |
        while read -r name exe; do cp "$exe" ".dev/bin/$name"; done
    cp target/release/latent-line .dev/bin/
    strip .dev/bin/*
    if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
        o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
        mkdir -p /tmp/amd64/partial && apt-get $o update -qq && (cd .gl && apt-get $o download libvulkan1)
    fi
    du -sh .dev .gl
    exit 0
fi

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=/tmp CARGO_TARGET_DIR=/tmp/ct
B=.dev/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
date -u
echo "== latent-line devices (for the README)"
"$B/latent-line" devices

echo "== tests on this GPU"
TESTS="naive forensics subgroups batches backends_vs_reference"
[ "$MODE" = quick ] && TESTS="naive forensics subgroups"
for t in $TESTS; do
    "$B/$t" --test-threads 4 2>&1 | grep -E "^test |test result|panicked|seed" | grep -v "^test .* ok$" | tail -20
done

echo "== main job: latent-line --rows 1000000 (wall time, start-up included)"
s=$(date +%s.%N)
"$B/latent-line" --rows 1000000 --report "$OUT/main-job.json"
e=$(date +%s.%N)
echo "wall $(python3 -c "print(f'{$e - $s:.3f}')") s"

echo "== --profile: the kernels of the main job, and of a random batch step"
"$B/latent-line" --rows 1000000 --steps 50 --profile | grep -A14 "^profile"
"$B/latent-line" --rows 1000000 --steps 50 --batch 65536 --profile | grep -A14 "^profile"

if [ "$MODE" = quick ]; then
    "$B/step" --bench --warm-up-time 1 --measurement-time 2 --sample-size 10 gpu 2>&1 | grep -E "^gpu|time:" | grep -v "%"
    python3 benches/summary.py /tmp/ct/criterion | tee "$OUT/bench-summary.txt"
    exit 0
fi

echo "== naive on this GPU: default guard, then ignore"
"$B/latent-line" --rows 1000000 --naive --endpoints detached --steps 3 | grep -E "event|ABORT|guard|finite"
"$B/latent-line" --rows 1000000 --naive --endpoints detached --steps 1 --on-nonfinite ignore | grep -E "event|finite"

echo "== latent-line scan on a 1 GiB table"
"$B/latent-line" --rows 4194304 --dim 64 --steps 0 --save /tmp/big.npy >/dev/null
"$B/latent-line" scan /tmp/big.npy; echo "exit $?"

echo "== peers: PyTorch (CUDA events)"
PYTHONUNBUFFERED=1 timeout 180 python3 benches/peers/torch_step.py 1000000 64 65536 2>&1 | grep -v Warning
echo "== peers: JAX (jit; host timer around block_until_ready)"
PYTHONUNBUFFERED=1 timeout 120 python3 benches/peers/jax_step.py 1000000 64 65536 2>&1 | grep -v -i warning

echo "== 100M × 64: the main job's step (wall), then in the bench below (GPU time)"
"$B/latent-line" --rows 100000000 --dim 64 --steps 10 | grep -E "table|speed|finite"

echo "== cargo bench (criterion)"
LATENT_LINE_BENCH_HUGE=1 "$B/step" --bench --warm-up-time 1 --measurement-time 2 --sample-size 10 2>&1 | grep -E "^(gpu|cpu)|time:" | grep -v "%"
python3 benches/summary.py /tmp/ct/criterion | tee "$OUT/bench-summary.txt"
