"""Prints criterion's medians as one table with the ratios that matter:
each step beside the copy of the same bytes, the scan's and the guard's
cost over the bare step, the table scan beside a copy. Usage:
python3 benches/summary.py CRITERION_DIR"""
import glob, json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
med = {}
for bench in glob.glob(os.path.join(root, "**", "new", "benchmark.json"), recursive=True):
    b = json.load(open(bench))
    est = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
    tp = b.get("throughput") or {}
    med[(b["group_id"], b["function_id"])] = (est["median"]["point_estimate"], tp.get("Bytes"))

groups = sorted({g for g, _ in med})
for g in groups:
    print(f"\n{g}")
    print(f"  {'bench':40} {'median':>12} {'GB/s':>8}  ratio")
    rows = sorted((f, v) for (gg, f), v in med.items() if gg == g)
    for f, (ns, nbytes) in rows:
        kind, _, size = f.partition("/")
        gbs = f"{nbytes / ns:.1f}" if nbytes else "-"
        # A step's floor: the fastest copy of the same bytes in this group
        # (gpu-time: the 4- or 16-byte shader copy; gpu: the API's copy),
        # first; then the bench it is a variant of, where that ran.
        copies = ["copy-shader", "copy-shader-vec4"] if g.startswith("gpu-time") else ["copy"]
        ran = [(med[(g, f"{c}/{size}")][0], c) for c in copies if (g, f"{c}/{size}") in med]
        copy = min(ran)[1] if ran else None
        base = {"step-ignore": "step-noscan", "step-skip-step": "step-noscan", "step-skip-step-1lane": "step-skip-step", "step-skip-step-wgfold": "step-skip-step",
                "step-skip-step-1block": "step-skip-step", "copy-shader-vec4": "copy-shader",
                **{f"step-skip-step-{l}lanes": "step-skip-step" for l in (1, 2, 4, 8, 16, 32)},
                "step-skip-step-4byte": "step-skip-step",
                "step-skip-step-4byte-nokeep": "step-skip-step-4byte", "step-skip-step-4byte-keptarray": "step-skip-step-4byte",
                "step-skip-step-noprefetch": "step-skip-step", "step-skip-step-prefetch": "step-skip-step", "step-skip-step-pqshared": "step-skip-step",
                "step-skip-step-pqshared-prefetch": "step-skip-step", "step-skip-step-noreduce": "step-skip-step",
                "step-skip-step-detached": "step-skip-step",
                "eval": "step-skip-step", "eval-4byte": "step-skip-step-4byte",
                "step-attached-clip": "step-skip-step", "scan": "scan-copy", "scan-4byte": "scan-copy"}.get(kind)
        if g == "cpu":
            floor = "memcpy-par" if (g, f"memcpy-par/{size}") in med else "memcpy"
            copy = floor if (g, f"{floor}/{size}") in med else None
            base = None
        parts = []
        if copy and (kind.startswith("step") or kind.startswith("eval") or (g == "cpu" and kind in ("scan", "memcpy"))) and kind != copy:
            parts.append(f"{ns / med[(g, f'{copy}/{size}')][0]:.3f}× {copy}")
        if base and base != copy and (g, f"{base}/{size}") in med:
            parts.append(f"{ns / med[(g, f'{base}/{size}')][0]:.3f}× {base}")
        ratio = " · ".join(parts)
        if kind.startswith("batch-"):
            ratio = f"{ns / 1e3:.1f} µs a step"
        print(f"  {f:40} {ns / 1e6:9.4f} ms {gbs:>8}  {ratio}")
