"""Issue 5's bars, judged from one device call: criterion's medians (ours)
and the peers' lines in gpu.sh's log (PyTorch, JAX, the main job's wall
time). Prints each bar with the figures it rests on and PASS, MISS or
"not measured". Usage:
python3 benches/compare.py CRITERION_DIR GPU_LOG

The bars are set at their sizes (1M × 64, a batch of 65 536, a 1 GiB
scan, 100M × 64, the main job's 1M rows). Where a size is missing but the
same bench ran at another (a dry run: a software adapter's benches
shrink), the bar is judged at that size and its verdict says "(dry)": a
check of this script, never a bar's result."""
import glob
import json
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
log = open(sys.argv[2]).read() if len(sys.argv) > 2 and os.path.exists(sys.argv[2]) else ""

# Our medians in ms, by (group kind, function id): "gpu-time" (timestamp
# queries) preferred to "gpu" (wall clock).
ours = {}
for bench in glob.glob(os.path.join(root, "**", "new", "benchmark.json"), recursive=True):
    b = json.load(open(bench))
    est = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
    kind = "gpu-time" if b["group_id"].startswith("gpu-time") else b["group_id"].split("[")[0]
    ours[(kind, b["function_id"])] = est["median"]["point_estimate"] / 1e6

HUGE = f"{os.environ.get('HUGE_ROWS', '100000000')}x64"


def our(fid):
    """(ms, which clock) of a GPU bench, timestamps first."""
    for kind in ("gpu-time", "gpu"):
        if (kind, fid) in ours:
            return ours[(kind, fid)], kind
    return None, None


notes = []


def size_of(name, want, exclude=()):
    """`want` (e.g. "1000000x64") where bench `name` ran at it, else the
    one other D = 64 size it ran at (a dry run), else None; and whether
    that size is the bar's own."""
    if any(f == f"{name}/{want}" for _, f in ours):
        return want, True
    other = sorted({f.split("/", 1)[1] for _, f in ours if f.startswith(name + "/") and f.endswith("x64")} - set(exclude))
    if len(other) > 1:
        notes.append(f"{name} ran at {', '.join(other)}, not at {want}: no one size to judge")
    return (other[0], False) if len(other) == 1 else (None, True)


def section(title):
    """The part of the log under the last heading starting `== title`, to
    the next `== ` heading (empty if absent): the last, should a log hold
    an earlier call's too."""
    found = re.findall(r"^== " + re.escape(title) + r".*?$(.*?)(?=^== |\Z)", log, re.M | re.S)
    return found[-1] if found else ""


def peer(text, pattern):
    """The peer's fastest ms figure for `pattern` in `text`: over its lines
    as timed one at a time, queued (" ×50 queued") and, for JAX, in one jit
    ("in fori_loop"); the bars compare with the peer at its best."""
    found = re.findall(pattern + r"(?: ×\d+ queued| in fori_loop)?\s+([0-9.]+) ms", text)
    return min(float(f) for f in found) if found else None


def on_gpu(text, name):
    """Why a peer's figures are not a GPU peer's (None if they are): its
    header names the device it ran on (`jax … · gpu · …`, `torch … ·
    <CUDA device>`)."""
    if not text:
        return None
    head = re.search(r"^(jax|torch) \S+ · (.*)$", text, re.M)
    if head is None:
        # (No figures either, as when the script failed: nothing to leave out.)
        return f"{name}: figures without a header line, so no device to trust" if re.search(r" ms", text) else None
    if head.group(1) == "jax" and not head.group(2).startswith("gpu ·"):
        return f"{name} ran on `{head.group(2).split(' ·')[0]}`, not a GPU"
    return None


peer_logs, peer_notes = {}, []
for name in ("JAX", "PyTorch"):
    text = section(f"peers: {name}")
    why = on_gpu(text, name)
    if why:
        peer_notes.append(why)
    peer_logs[name] = "" if why else text
jax_log, torch_log = peer_logs["JAX"], peer_logs["PyTorch"]


def main_job():
    """(rows, seconds, why not) of the main job: only a run that exited 0
    on the GPU backend counts (`auto` falls back to the CPU when no
    adapter is found, and 1M rows on 16 cores would pass the bar)."""
    found = re.findall(r"^== main job: latent-line --rows (\d+).*?$(.*?)^wall ([0-9.]+) s(?:, exit (\d+))?", log, re.M | re.S)
    if not found:
        return None, None, None
    rows, body, secs, rc = found[-1]
    rows, secs, rc = int(rows), float(secs), rc or None
    if rc is not None and rc != "0":
        return rows, secs, f"exit {rc}"
    dev = re.search(r"^device +(\S+)", body, re.M)
    if dev is None:
        return rows, secs, "no `device` line"
    if dev.group(1) != "gpu":
        return rows, secs, f"ran on the {dev.group(1)}, not the GPU"
    return rows, secs, None


rows = []


def bar(name, ok, detail, real=True):
    verdict = "not measured" if ok is None else ("PASS" if ok else "MISS")
    if ok is not None and not real:
        verdict += " (dry)"
    rows.append((name, verdict, detail))


def fmt(x, unit="ms"):
    return "-" if x is None else f"{x:.4g} {unit}"


def floor(size):
    """The fastest copy of the table we have on the device (GPU time): the
    16-byte copy where it ran, else the 4-byte one."""
    found = [v for v in (our(f"copy-shader-vec4/{size}")[0], our(f"copy-shader/{size}")[0]) if v is not None]
    return min(found) if found else None


size, real = size_of("step-skip-step", "1000000x64", exclude=(HUGE,))
step, clock = our(f"step-skip-step/{size}")
copy = floor(size) if clock == "gpu-time" else our(f"copy/{size}")[0]
ratio = step / copy if step and copy else None
at = "" if real else f" (at {size})"
bar("full step 1M×64 ≤ 1.10× copy", None if ratio is None else ratio <= 1.10,
    f"step {fmt(step)} ({clock}), copy {fmt(copy)}, {fmt(ratio, '×')}{at}", real)
# Our wall clock a step, beside: the peers' figures are a span of their
# device events (PyTorch) or the host's clock (JAX), gaps between steps
# included, where ours is each step's own GPU time.
walls = [float(x) for x in re.findall(r"^speed +([0-9.]+) ms/step", section("the steps' own timestamps"), re.M)]
wall_note = f"; ours by wall clock {fmt(min(walls))}" if walls and real else ""
# The peers' own step keeps the original code's anchors (`detached`: p and q
# read from the table each step, the anchor rows updated) where ours is
# `frozen` by default: the peer bars take the slower of the two, so that
# they compare the same work or more of ours.
detached = our(f"step-skip-step-detached/{size}")[0]
judged = max(v for v in (step, detached) if v is not None) if step else None
for name, text, pat, times in [
    ("≥ 5× faster than torch.compile", torch_log, r"torch\.compile step", 5),
    ("≥ 5× faster than JAX jit", jax_log, r"jit step \(grad \+ SGD\)", 5),
    ("≥ 25× faster than PyTorch eager", torch_log, r"eager step \(autograd \+ SGD\)", 25),
]:
    p = peer(text, pat)
    also = f" (frozen {fmt(step)}, detached {fmt(detached)})" if detached else ""
    # A step reads and writes the table: it cannot beat the copy. Where the
    # bar needs a step under this card's copy, say so (out of any kernel's
    # reach on this card: the bars were set from an H100's peers).
    reach = ""
    if p and copy and p / times < copy:
        reach = f"; needs ≤ {fmt(p / times)}, under the copy {fmt(copy)}: out of reach here"
    bar(name, None if p is None or judged is None else p >= times * judged,
        f"peer {fmt(p)}, ours {fmt(judged)}{also}, {fmt(p / judged if p and judged else None, '×')}{wall_note}{reach}",
        real)

bsize, breal = None, True
for _, f in ours:
    m = re.match(r"batch-random-(\d+)/", f)
    if m and (bsize is None or m.group(1) == "65536"):
        bsize = m.group(1)
bsize = bsize or "65536"
bat_at, bat_real = size_of(f"batch-random-{bsize}", "1000000x64", exclude=(HUGE,))
breal = bat_real and bsize == "65536"
batch, bclock = our(f"batch-random-{bsize}/{bat_at}")
bar("random batch 65 536 of 1M×64 ≤ 50 µs", None if batch is None else batch <= 0.050,
    f"{fmt(batch)} ({bclock}){'' if breal else f' (a batch of {bsize} of {bat_at})'}", breal)
peers = {n: peer(t, p) for n, t, p in [("torch dense", torch_log, rf"batch {bsize} \(dense grad\)"),
                                        ("torch sparse", torch_log, rf"batch {bsize} \(sparse grad\)"),
                                        ("jax", jax_log, rf"jit batch {bsize}")]}
# The fastest of all three, or no verdict: with one missing (failed, or
# left out above) the fastest found might not be the fastest.
missing = [n for n, v in peers.items() if v is None]
fastest = min((v, n) for n, v in peers.items() if v is not None) if len(missing) < len(peers) else None
bar("batch ≥ 10× faster than the fastest peer",
    None if missing or batch is None else fastest[0] >= 10 * batch,
    f"fastest peer {fastest[1] + ' ' + fmt(fastest[0]) if fastest else '-'}, ours {fmt(batch)}"
    + (f"; missing: {', '.join(missing)}" if missing else ""), breal)

# The scan and its copy from the same clock: GPU time (beside the 16-byte
# shader copy) where the scan has it, else wall (copy_buffer_to_buffer).
scan_at, sreal = size_of("scan", "4194304x64")
scan, sclock = our(f"scan/{scan_at}")
scan_copy = ours.get((sclock, f"scan-copy/{scan_at}"))
bar("1 GiB scan ≥ 90% of the copy's bandwidth",
    None if scan is None or scan_copy is None else scan_copy / scan >= 0.90,
    f"scan {fmt(scan)} ({sclock}), copy per GiB moved {fmt(scan_copy)}{'' if sreal else f' (at {scan_at})'}", sreal)
isfinite = peer(torch_log, r"isfinite\(w\)\.all\(\), 1 GiB")
bar("1 GiB scan ≥ 4× faster than torch.isfinite(w).all()",
    None if scan is None or isfinite is None else isfinite >= 4 * scan,
    f"isfinite {fmt(isfinite)}, ours {fmt(scan)}", sreal)

# (At HUGE_ROWS, which gpu.sh passes: a dry run's is its own, "(dry)".)
huge = our(f"step-skip-step/{HUGE}")[0]
huge_copy = floor(HUGE)
hreal = HUGE == "100000000x64"
bar("100M×64 step ≤ 1.15× its copy", None if huge is None or huge_copy is None else huge / huge_copy <= 1.15,
    f"step {fmt(huge)}, copy {fmt(huge_copy)}{'' if hreal else f' (at {HUGE})'}", hreal)
rows_run, w, why = main_job()
bar("main job --rows 1000000 < 3 s wall", None if w is None or why else w < 3.0,
    f"{fmt(w, 's')} for {rows_run} rows{'; not counted: ' + why if why else ''}",
    rows_run in (None, 1_000_000))

width = max(len(r[0]) for r in rows)
print("issue 5's bars (one device call)")
for name, verdict, detail in rows:
    print(f"  {name:{width}}  {verdict:12}  {detail}")
for n in peer_notes:
    print(f"  (peer figures left out: {n})")
for n in notes:
    print(f"  ({n})")
