"""The steps of latent-line in JAX (`jit`), the other peer of `cargo bench`
(SPEC §15): the full-table step and a random batch of BATCH rows (a window
of one permutation, scattered back with `.at[].add`), same sizes, lr and ε,
endpoints `detached`, reduction `sum`. The table is donated, so the update
is in place. JAX has no device-event timer, so each step is timed three
ways on the host, and the bars take the fastest: one call at a time around
`block_until_ready` (dispatch and the wait included), median of many;
QUEUED calls in a row with one wait at the end (dispatch overlapping the
device, as a training loop runs), the total over QUEUED; QUEUED steps in
one `jit` (`lax.fori_loop`: one dispatch), the total over QUEUED.
A JAX without its GPU backend (no CUDA plugin: it falls back to the CPU
with a warning) is refused, exit 2: a peer on the host's CPU is no peer.
LATENT_LINE_PEER_CPU=1 lets it run there (checking the script).
Usage: python3 benches/peers/jax_step.py [ROWS] [DIM] [BATCH]"""
import os
import sys
import time

import jax
import jax.numpy as jnp

R = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
D = int(sys.argv[2]) if len(sys.argv) > 2 else 64
BATCH = min(int(sys.argv[3]) if len(sys.argv) > 3 else 65_536, R)
LR, EPS, A, B = 0.2, 1e-8, 0, R - 1
SPAN = max(R - BATCH, 1)   # batch windows start in [0, SPAN)
if jax.default_backend() != "gpu" and os.environ.get("LATENT_LINE_PEER_CPU") != "1":
    print(f"jax {jax.__version__}: backend `{jax.default_backend()}`, not a GPU; refusing to time it as a peer")
    sys.exit(2)


def excess_sum(e, p, q):
    d1 = jnp.sqrt(jnp.sum((e - p) ** 2, axis=1) + EPS)
    d2 = jnp.sqrt(jnp.sum((e - q) ** 2, axis=1) + EPS)
    d0 = jnp.sqrt(jnp.sum((p - q) ** 2) + EPS)
    return jnp.sum(jnp.abs(d1 + d2 - d0))


@jax.jit
def copy(w):
    return w + 0.0


def full_step(w):
    p, q = jax.lax.stop_gradient(w[A]), jax.lax.stop_gradient(w[B])
    return w - LR * jax.grad(excess_sum)(w, p, q)


def batch_step(w, perm, start):
    # The window is cut inside the jit: one dispatch per step, as ours.
    idx = jax.lax.dynamic_slice(perm, (start,), (BATCH,))
    p, q = jax.lax.stop_gradient(w[A]), jax.lax.stop_gradient(w[B])
    g = jax.grad(excess_sum)(w[idx], p, q)
    return w.at[idx].add(-LR * g)


QUEUED = 50


def full_steps(w):
    return jax.lax.fori_loop(0, QUEUED, lambda i, w: full_step(w), w)


def batch_steps(w, perm, start):
    # Successive windows from `start`, as the calls below take them.
    def body(i, w):
        return batch_step(w, perm, (start + i * BATCH) % SPAN)
    return jax.lax.fori_loop(0, QUEUED, body, w)


full_steps = jax.jit(full_steps, donate_argnums=0)
batch_steps = jax.jit(batch_steps, donate_argnums=0)
full_step = jax.jit(full_step, donate_argnums=0)
batch_step = jax.jit(batch_step, donate_argnums=0)


def timed(fn, w, iters=50, warm=5):
    """(median ms of one call and its wait, ms a call over QUEUED calls
    with one wait, the table)."""
    for _ in range(warm):
        w = fn(w)
    w.block_until_ready()
    times = []
    for _ in range(iters):
        s = time.perf_counter()
        w = fn(w)
        w.block_until_ready()
        times.append((time.perf_counter() - s) * 1e3)
    times.sort()
    queued = []
    for _ in range(3):
        s = time.perf_counter()
        for _ in range(QUEUED):
            w = fn(w)
        w.block_until_ready()
        queued.append((time.perf_counter() - s) * 1e3 / QUEUED)
    return times[len(times) // 2], min(queued), w


def timed_loop(fn, w, reps=5):
    """ms a step of `fn` (QUEUED steps in one jit), best of `reps`, and the table."""
    w = fn(w)
    w.block_until_ready()
    best = None
    for _ in range(reps):
        s = time.perf_counter()
        w = fn(w)
        w.block_until_ready()
        t = (time.perf_counter() - s) * 1e3 / QUEUED
        best = t if best is None else min(best, t)
    return best, w


def show(name, one, queued, looped):
    print(f"{name:40} {one:8.4f} ms  (one call, then its wait)")
    print(f"{name + f' ×{QUEUED} queued':40} {queued:8.4f} ms  (a call, {QUEUED} in a row, one wait)")
    print(f"{name + ' in fori_loop':40} {looped:8.4f} ms  (a step, {QUEUED} in one jit)")


key = jax.random.PRNGKey(0)
w = jax.random.normal(key, (R, D), dtype=jnp.float32)
print(f"jax {jax.__version__} · {jax.default_backend()} · {jax.devices()[0].device_kind} · {R} × {D} f32")
t, _, _ = timed(copy, w)
print(f"{'copy (w + 0, jit)':40} {t:8.4f} ms")
t, tq, w = timed(full_step, w)
tl, w = timed_loop(full_steps, w)
show("jit step (grad + SGD)", t, tq, tl)
perm = jax.random.permutation(key, R)
at = [0]


def next_batch(w):
    s = at[0]
    at[0] = (s + BATCH) % SPAN
    return batch_step(w, perm, s)


def next_batches(w):
    s = at[0]
    at[0] = (s + QUEUED * BATCH) % SPAN
    return batch_steps(w, perm, s)


t, tq, w = timed(next_batch, w)
tl, w = timed_loop(next_batches, w)
show(f"jit batch {BATCH}", t, tq, tl)
