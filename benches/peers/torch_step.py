"""The steps of latent-line in PyTorch, timed with CUDA events: the peers
that `cargo bench` is compared with (SPEC §15). Same sizes, lr and ε;
endpoints `detached` (the anchors' snapshot is detached, as in the original
code), reduction `sum`. The full-table step (eager, torch.compile) and a
random batch of BATCH rows through `nn.Embedding` (dense and sparse
gradients; successive windows of one permutation, as latent-line's epochs).
Prints median milliseconds per step (events around each step, the host
waiting on each), and for the steps also the time a step over QUEUED in a
row with one wait at the end (launches overlapping the device, as a
training loop runs); the bars take the faster.
Usage: python3 benches/peers/torch_step.py [ROWS] [DIM] [BATCH]"""
import sys
import torch

R = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
D = int(sys.argv[2]) if len(sys.argv) > 2 else 64
BATCH = min(int(sys.argv[3]) if len(sys.argv) > 3 else 65_536, R)
LR, EPS, A, B = 0.2, 1e-8, 0, R - 1
SPAN = max(R - BATCH, 1)   # batch windows start in [0, SPAN)
dev = "cuda"


def loss_fn(w):
    p, q = w[A].detach(), w[B].detach()
    d1 = torch.sqrt(((w - p) ** 2).sum(1) + EPS)
    d2 = torch.sqrt(((w - q) ** 2).sum(1) + EPS)
    d0 = torch.sqrt(((p - q) ** 2).sum() + EPS)
    return (d1 + d2 - d0).abs().sum()


def make_step():
    w = torch.nn.Parameter(torch.randn(R, D, device=dev))
    opt = torch.optim.SGD([w], lr=LR)

    def step():
        # (set_to_none: the backward writes a fresh gradient, no memset
        # and accumulate: the peer at its fastest, as its batch step.)
        opt.zero_grad(set_to_none=True)
        loss_fn(w).backward()
        opt.step()

    return w, step


def make_batch_step(sparse):
    emb = torch.nn.Embedding(R, D, sparse=sparse, device=dev)
    opt = torch.optim.SGD(emb.parameters(), lr=LR)
    perm = torch.randperm(R, device=dev)
    at = [0]

    def step():
        s = at[0]
        at[0] = (s + BATCH) % SPAN
        idx = perm[s:s + BATCH]
        opt.zero_grad(set_to_none=True)
        w = emb.weight
        p, q = w[A].detach(), w[B].detach()
        e = emb(idx)
        d1 = torch.sqrt(((e - p) ** 2).sum(1) + EPS)
        d2 = torch.sqrt(((e - q) ** 2).sum(1) + EPS)
        d0 = torch.sqrt(((p - q) ** 2).sum() + EPS)
        (d1 + d2 - d0).abs().sum().backward()
        opt.step()

    return step


QUEUED = 50


def timed(fn, iters=50, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def queued(fn, reps=3):
    """ms a call over QUEUED calls between two events, best of `reps`."""
    best = None
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(QUEUED):
            fn()
        e.record()
        e.synchronize()
        t = s.elapsed_time(e) / QUEUED
        best = t if best is None else min(best, t)
    return best


def show(name, fn, warm=5):
    print(f"{name:40} {timed(fn, warm=warm):8.4f} ms")
    print(f"{name + f' ×{QUEUED} queued':40} {queued(fn):8.4f} ms")


src = torch.randn(R, D, device=dev)
dst = torch.empty_like(src)
print(f"torch {torch.__version__} · {torch.cuda.get_device_name()} · {R} × {D} f32")
print(f"{'copy (dst.copy_(src))':40} {timed(lambda: dst.copy_(src)):8.4f} ms")
# Quick ones first, torch.compile (its compile can take a minute) last, so
# that a call's time limit costs the fewest figures.
big = torch.randn(1 << 28, device=dev)  # 1 GiB
# The answer stays on the device (no `bool()`, which would wait for it
# inside the timed span): the device's work alone, as our scan's GPU time.
print(f"{'isfinite(w).all(), 1 GiB':40} {timed(lambda: torch.isfinite(big).all()):8.4f} ms")
bdst = torch.empty_like(big)
print(f"{'copy, 1 GiB':40} {timed(lambda: bdst.copy_(big)):8.4f} ms")
del big, bdst
for sparse in (False, True):
    show(f"batch {BATCH} ({'sparse' if sparse else 'dense'} grad)", make_batch_step(sparse))
w, step = make_step()
show("eager step (autograd + SGD)", step)
try:
    w, step = make_step()
    show("torch.compile step", torch.compile(step), warm=3)
except Exception as e:  # noqa: BLE001 - report and go on
    print(f"{'torch.compile step':40} failed: {type(e).__name__}: {e}"[:200])
