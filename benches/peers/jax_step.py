"""The steps of latent-line in JAX (`jit`), the other peer of `cargo bench`
(SPEC §15): the full-table step and a random batch of BATCH rows (a window
of one permutation, scattered back with `.at[].add`), same sizes, lr and ε,
endpoints `detached`, reduction `sum`. The table is donated, so the update
is in place. JAX has no device-event timer: each iteration is timed on the
host around `block_until_ready` (dispatch included), median of many.
Usage: python3 benches/peers/jax_step.py [ROWS] [DIM] [BATCH]"""
import sys
import time

import jax
import jax.numpy as jnp

R = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
D = int(sys.argv[2]) if len(sys.argv) > 2 else 64
BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else 65_536
LR, EPS, A, B = 0.2, 1e-8, 0, R - 1


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


full_step = jax.jit(full_step, donate_argnums=0)
batch_step = jax.jit(batch_step, donate_argnums=0)


def timed(fn, w, iters=50, warm=5):
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
    return times[len(times) // 2], w


key = jax.random.PRNGKey(0)
w = jax.random.normal(key, (R, D), dtype=jnp.float32)
print(f"jax {jax.__version__} · {jax.devices()[0].device_kind} · {R} × {D} f32")
t, _ = timed(copy, w)
print(f"copy (w + 0, jit)             {t:8.4f} ms")
t, w = timed(full_step, w)
print(f"jit step (grad + SGD)         {t:8.4f} ms")
perm = jax.random.permutation(key, R)
at = [0]


def next_batch(w):
    s = at[0]
    at[0] = (s + BATCH) % (R - BATCH)
    return batch_step(w, perm, s)


t, w = timed(next_batch, w)
print(f"jit batch {BATCH:<8}            {t:8.4f} ms")
