#!/usr/bin/env python3
"""Do two builds' GPU kernels give the same bits? For a kernel change meant
to change no result (a loop's bounds, a buffer picked once, a cheaper
test): random shapes, switches and options, each run by both builds on the
same adapter; the saved tables and the report's per-step records and events
must be equal byte for byte. BENCHMARKS.md, twelfth session.

    python3 benches/same_bits.py OLD_BIN NEW_BIN [--seed S] [--runs N]

OLD_BIN: e.g. a build of the commit before the change (git worktree, then
`cargo build --release`). Needs numpy and a Vulkan adapter (lavapipe will
do). Exit code 1 when any run differs, each printed with its options.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np


def case(rng):
    """One run's switches (environment) and command-line options."""
    env = {
        "LATENT_LINE_LANES": str(rng.choice([1, 2, 4, 8, 16])),
        "LATENT_LINE_WORKGROUP": str(rng.choice([64, 128, 256])),
        "LATENT_LINE_VEC4": rng.choice(["0", "1"]),
        "LATENT_LINE_KEPT_VECTORS": rng.choice(["0", "1"]),
        "LATENT_LINE_PREFETCH": rng.choice(["0", "1"]),
        "LATENT_LINE_SUBGROUPS": rng.choice(["0", "1"]),
        "LATENT_LINE_ROW_BLOCKS": str(rng.choice([1, 2, 4])),
        "LATENT_LINE_POISON_BRANCH": rng.choice(["0", "1"]),
    }
    rows = rng.choice([50, 333, 1000, 2500])
    args = ["--backend", "gpu", "--rows", str(rows), "--dim", str(rng.choice([1, 3, 4, 8, 12, 20, 36, 64, 100, 128])),
            "--steps", str(rng.choice([1, 3, 6])), "--seed", str(rng.randrange(1000)),
            "--endpoints", rng.choice(["frozen", "detached", "attached"]),
            "--on-nonfinite", rng.choice(["skip-step", "skip-row", "ignore", "rollback"]), "--quiet"]
    if rng.random() < 0.4:
        args += ["--momentum", "0.9"]
    if rng.random() < 0.3:
        args += ["--batch", str(rng.choice([7, 32, min(200, rows)]))]
    if rng.random() < 0.3:
        args += ["--margin", "5"]
    if rng.random() < 0.2:
        args += ["--clip-norm", "0.5"]   # the two-read step (as attached)
    if rng.random() < 0.2:
        args += ["--naive"]   # the naive formula's NaN rows
    if rng.random() < 0.2:
        args += ["--lr", "1e30"]   # overflow: non-finite values for the scans and guards
    return env, args


def run(binary, env, args, folder):
    """Exit code, the saved table's bytes, the report's steps and events."""
    table, report = os.path.join(folder, "t.npy"), os.path.join(folder, "r.json")
    for f in (table, report):
        if os.path.exists(f):
            os.remove(f)
    r = subprocess.run([binary, *args, "--save", table, "--report", report], env=env, capture_output=True, text=True)
    bits = np.load(table).tobytes() if os.path.exists(table) else None
    records = None
    if os.path.exists(report):
        j = json.load(open(report))   # its steps and events, less the steps' GPU times
        steps = [{k: v for k, v in e.items() if k != "gpu_seconds"} for e in j.get("steps") or []]
        records = json.dumps({"steps": steps, "events": j.get("events")}, sort_keys=True)
    return r.returncode, bits, records


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    a = p.parse_args()
    rng = random.Random(a.seed)
    base = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    differ = 0
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(a.runs):
            switches, args = case(rng)
            env = dict(base, **switches)
            old, new = run(a.old, env, args, folder), run(a.new, env, args, folder)
            if old != new:
                differ += 1
                print("DIFFERS:", " ".join(f"{k}={v}" for k, v in switches.items()), " ".join(args),
                      f"(exit {old[0]} / {new[0]}; table {'same' if old[1] == new[1] else 'differs'}; "
                      f"records {'same' if old[2] == new[2] else 'differ'})")
    print(f"seed {a.seed}: {a.runs} runs, {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
