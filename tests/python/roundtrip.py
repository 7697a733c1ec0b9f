"""Round trip with Python's numpy and safetensors (issue 6): Python writes
tables (several dtypes, several tensors in one file), latent-line trains and
saves them, Python reads them back and checks shape, dtype, the values moved
and every other tensor untouched. Usage: python3 roundtrip.py LATENT_LINE_BIN"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

BIN = sys.argv[1]
# A fresh seed (or LATENT_LINE_TEST_SEED), printed, and repeated on failure.
SEED = int(os.environ.get("LATENT_LINE_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
print(f"roundtrip.py: seed {SEED} (replay with LATENT_LINE_TEST_SEED={SEED})")
rng = np.random.default_rng(SEED)
failures = []


def run(*args):
    r = subprocess.run([BIN, "--backend", "cpu", "--steps", "3", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"latent-line {' '.join(args)} failed (seed {SEED}): {r.stderr}")


def check(cond, what):
    if not cond:
        failures.append(what)


with tempfile.TemporaryDirectory() as d:
    for dtype in [np.float32, np.float64, np.float16]:
        weight = rng.uniform(-2, 2, size=(500, 12)).astype(dtype)
        others = {
            "bias": rng.normal(size=(12,)).astype(np.float16),
            "step": np.array([1234], dtype=np.int64),
            "head.weight": rng.normal(size=(3, 4)).astype(np.float32),
        }
        src, dst = os.path.join(d, "in.safetensors"), os.path.join(d, "out.safetensors")
        save_file({"emb.weight": weight, **others}, src, metadata={"format": "pt"})
        run("--load", src, "--save", dst, "--tensor", "emb.weight")
        out = load_file(dst)
        w = out["emb.weight"]
        check(w.dtype == np.float32 and w.shape == weight.shape, f"{dtype.__name__}: weight {w.dtype} {w.shape}")
        check(np.isfinite(w).all(), f"{dtype.__name__}: non-finite values")
        check(not np.array_equal(w, weight.astype(np.float32)), f"{dtype.__name__}: the table did not move")
        for k, v in others.items():
            check(out[k].dtype == v.dtype and np.array_equal(out[k], v), f"{dtype.__name__}: {k} changed")
        check(sorted(out) == sorted(["emb.weight", *others]), f"{dtype.__name__}: tensors {sorted(out)}")

    # .npy: float64 in, float32 out.
    table = rng.normal(size=(400, 7))
    src, dst = os.path.join(d, "in.npy"), os.path.join(d, "out.npy")
    np.save(src, table)
    run("--load", src, "--save", dst)
    out = np.load(dst)
    check(out.dtype == np.float32 and out.shape == table.shape, f"npy: {out.dtype} {out.shape}")
    check(np.isfinite(out).all() and not np.array_equal(out, table.astype(np.float32)), "npy: not trained")

if failures:
    raise SystemExit(f"round trip failed (seed {SEED}): " + "; ".join(failures))
print("python round trip: ok (safetensors f32/f64/f16 with other tensors; npy f64)")
