"""JAX on CPU: formulations of a 4-bit grouped matmul, one matrix, timed.

Compares `x @ W.T` on float32 weights with packed 4-bit levels (two a
byte, group-major scales and zero points) computed five ways:

- `dequant`: unpack, per-column scale and zero point, float dot (what
  `keras_gptq.storage` runs on JAX and TensorFlow);
- `split`: even and odd columns as two planes, two half-size dots
  (no interleave of the levels);
- `rowreduce`: `sum(x * W, axis=in)` with the dequantization inline,
  reduced per group, scaled per group after the sum;
- `colreduce`: the same with levels stored `[in, out]` (reduction along
  the major axis, output contiguous);
- `groupdot`: per-group dots of float levels (`einsum`), scaled after.

Prints min/median microseconds per call (single-threaded XLA, to keep a
shared machine's noise down) for each shape and batch size.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false \\
        intra_op_parallelism_threads=1" \\
        python benchmarks/packed_matmul_formulations.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = ((1536, 576, 64), (576, 1536, 128), (1536, 576, 128))


def _time(f, *args, n=30):
    f(*args).block_until_ready()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[0] * 1e6, times[len(times) // 2] * 1e6


def formulations(rows, columns, size):
    """`{name: f(x, packed, scale, zero)}` for one shape (even `size`)."""
    groups = -(-columns // size)
    half = size // 2

    def per_column(t, width, repeat):
        return jnp.repeat(t.astype(jnp.float32), repeat, axis=1)[:, :width]

    def dequant(x, P, S, Z):
        L = jnp.stack([P & 15, P >> 4], -1).reshape(rows, columns)
        W = (L.astype(jnp.float32) - per_column(Z, columns, size)) * (
            per_column(S, columns, size))
        return x @ W.T

    def split(x, P, S, Z):
        def plane(q):
            return (q.astype(jnp.float32) - per_column(Z, columns // 2, half)
                    ) * per_column(S, columns // 2, half)
        dims = (((1,), (1,)), ((), ()))
        return (jax.lax.dot_general(x[:, 0::2], plane(P & 15), dims)
                + jax.lax.dot_general(x[:, 1::2], plane(P >> 4), dims))

    def rowreduce(x, P, S, Z):  # needs columns % size == 0
        m = x.shape[0]
        xr = x.reshape(m, 1, groups, half, 2)
        Pg = P.reshape(1, rows, groups, half)
        t = jnp.sum(xr[..., 0] * (Pg & 15).astype(jnp.float32)
                    + xr[..., 1] * (Pg >> 4).astype(jnp.float32), axis=-1)
        xs = x.reshape(m, 1, groups, size).sum(-1)
        return jnp.sum((t - Z.astype(jnp.float32)[None] * xs) * S[None], -1)

    def colreduce(x, PT, ST, ZT):  # levels [in / 2, out], scales [G, out]
        m = x.shape[0]
        xe = x[:, 0::2].reshape(m, groups, half, 1)
        xo = x[:, 1::2].reshape(m, groups, half, 1)
        Pg = PT.reshape(1, groups, half, rows)
        t = jnp.sum(xe * (Pg & 15).astype(jnp.float32)
                    + xo * (Pg >> 4).astype(jnp.float32), axis=2)
        xs = x.reshape(m, groups, size).sum(-1)[:, :, None]
        return jnp.sum((t - ZT.astype(jnp.float32)[None] * xs) * ST[None], 1)

    def groupdot(x, PT, ST, ZT):
        m = x.shape[0]
        Pg = PT.reshape(groups, half, rows)
        t = (jnp.einsum("mgk,gko->mgo", x[:, 0::2].reshape(m, groups, half),
                        (Pg & 15).astype(jnp.float32))
             + jnp.einsum("mgk,gko->mgo", x[:, 1::2].reshape(m, groups, half),
                          (Pg >> 4).astype(jnp.float32)))
        xs = x.reshape(m, groups, size).sum(-1)[:, :, None]
        return jnp.sum((t - ZT.astype(jnp.float32)[None] * xs) * ST[None], 1)

    found = {"dequant": dequant, "split": split}
    if columns % size == 0:
        found.update(rowreduce=rowreduce, colreduce=colreduce,
                     groupdot=groupdot)
    return found


def main():
    rng = np.random.default_rng(0)
    for rows, columns, size in SHAPES:
        groups = -(-columns // size)
        levels = rng.integers(0, 16, (rows, columns)).astype(np.uint8)
        P = (levels[:, 0::2] | (levels[:, 1::2] << 4)).astype(np.uint8)
        S = rng.uniform(0.01, 0.02, (rows, groups)).astype(np.float32)
        Z = rng.integers(0, 16, (rows, groups)).astype(np.uint8)
        g = np.arange(columns) // size
        W = (levels.astype(np.float32) - Z[:, g]) * S[:, g]
        row_major = tuple(map(jnp.asarray, (P, S, Z)))
        col_major = tuple(map(jnp.asarray, (P.T.copy(), S.T.copy(),
                                             Z.T.copy())))
        for m in (1, 8, 256):
            x = jnp.asarray(rng.normal(size=(m, columns)).astype(np.float32))
            expected = x @ jnp.asarray(W.T)
            cells = [f"{rows}x{columns} g{size} M={m}"]
            low, mid = _time(jax.jit(lambda x, W: x @ W), x,
                             jnp.asarray(W.T.copy()))
            cells.append(f"float {low:.0f}/{mid:.0f}")
            for name, f in formulations(rows, columns, size).items():
                args = col_major if name in ("colreduce", "groupdot") else (
                    row_major)
                f = jax.jit(f)
                error = float(jnp.max(jnp.abs(f(x, *args) - expected)))
                low, mid = _time(f, x, *args, n=30 if m < 256 else 5)
                cells.append(f"{name} {low:.0f}/{mid:.0f} (err {error:.0e})")
            print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
