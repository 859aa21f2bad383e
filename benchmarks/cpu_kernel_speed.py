"""The native JAX CPU kernel (`keras_gptq/storage/cpu_kernel.cc`) against
float32 and the reference path, interleaved in one process.

Two measurements (JAX on CPU only):

- `generate` (default): SmolLM2-135M float32, packed 4-bit g128 (RTN) on
  the reference path, and the same packed model on the native kernel,
  each `generate` call (greedy, `stop_token_ids=None`) taken in turn, best
  of `--rounds`: first token (one token after a short prompt) and decode
  tokens/s (`--new-tokens` more tokens, minus the first-token time).
- `--rows`: one compiled call of 20 SmolLM2-shaped matrices (576 -> 1536,
  4-bit g128) at several row counts, reference (dequantize, then a float
  dot) against the kernel (its lookup path below
  `cpu_kernel.BLOCKED_FROM` rows, its blocked path from there;
  `KERAS_GPTQ_CPU_KERNEL_THREADS` sets its threads).

Usage:

    KERAS_BACKEND=jax python benchmarks/cpu_kernel_speed.py [--batch 8]
    KERAS_BACKEND=jax python benchmarks/cpu_kernel_speed.py --rows
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402


def _packed_model(kernel):
    """SmolLM2 packed 4-bit g128; `kernel=False` keeps the reference
    path."""
    from keras_gptq import storage
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines
    from keras_gptq.storage import kernels
    model = bundled.load_default_model()
    baselines.rtn_packed(model, 4, 128)
    for layer in model._flatten_layers():
        if storage.is_packed(layer) and hasattr(layer, "g_idx"):
            state = kernels.state(layer)
            if kernel and state.cpu_group is None:
                raise SystemExit("the native kernel is not in use")
            if not kernel:
                kernels.disable_cpu_kernel(layer)
    return model


def compare_generate(args):
    """Prints first-token ms and decode tok/s per model (see above)."""
    from keras_gptq.examples import bundled
    models = {"float": bundled.load_default_model(),
              "packed reference": _packed_model(False),
              "packed kernel": _packed_model(True)}
    prompt = np.asarray(models["float"].preprocessor.tokenizer(
        "The capital of France is"))
    for model in models.values():
        model.preprocessor = None

    def timed(model, extra):
        n = len(prompt)
        ids = np.zeros((args.batch, n + extra), "int32")
        ids[:, :n] = prompt
        mask = np.zeros(ids.shape, bool)
        mask[:, :n] = True
        start = time.perf_counter()
        model.generate({"token_ids": ids, "padding_mask": mask},
                       stop_token_ids=None)
        return time.perf_counter() - start

    for model in models.values():  # compile both shapes
        timed(model, 1), timed(model, 1 + args.new_tokens)
    times = {name: ([], []) for name in models}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, model in models.items():
            times[name][0].append(timed(model, 1))
            times[name][1].append(timed(model, 1 + args.new_tokens))
    print(f"batch {args.batch}, {args.new_tokens} new tokens, best of "
          f"{args.rounds}; load average {min(loads):.1f}-{max(loads):.1f}")
    for name, (first, full) in times.items():
        decode = args.batch * args.new_tokens / (min(full) - min(first))
        print(f"{name:17s} first token {min(first) * 1e3:7.1f} ms  "
              f"decode {decode:6.2f} tok/s")


def compare_rows(args):
    """Prints ms per compiled call of 20 matrices, reference vs kernel."""
    import jax
    import jax.numpy as jnp
    from keras_gptq.algorithm import grid
    from keras_gptq.storage import cpu_kernel
    from keras_gptq.storage import packed_layer
    from keras_gptq.storage import packing
    from keras_gptq.storage import policy as policy_lib
    columns, rows, group, count = 576, 1536, 128, 20
    policy = policy_lib.PackedGPTQPolicy("gptq/4/128")
    rng = np.random.default_rng(0)
    groups = grid.num_groups(group, columns)
    weights = [(jnp.asarray(packing.pack(
        rng.integers(0, 16, (rows, columns)), 4)),
        jnp.asarray(rng.uniform(0.001, 0.01, (rows, groups)), jnp.float32),
        jnp.asarray(rng.integers(0, 16, (rows, groups)), jnp.uint8))
        for _ in range(count)]
    g_idx = grid.contiguous_g_idx(group, columns)

    def make(kernel):
        def chain(x, weights):
            for packed, scale, zero in weights:
                if kernel:
                    y = cpu_kernel.matmul(x, packed, scale, zero, 4, group)
                else:
                    y = x @ packed_layer.dequantize_rows(
                        packed, scale, zero, g_idx, policy, columns, True,
                        transposed=True)
                x = jnp.tanh(y[:, :columns] + y[:, columns:2 * columns])
            return x
        return jax.jit(chain)

    calls = {"reference": make(False), "kernel": make(True)}
    for tokens in args.row_counts:
        x = jnp.asarray(rng.normal(size=(tokens, columns)), jnp.float32)
        best = {}
        for name, call in calls.items():
            call(x, weights).block_until_ready()
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call(x, weights).block_until_ready()
                best[name] = min(best.get(name, 1e9),
                                 time.perf_counter() - start)
        print(f"{tokens:4d} rows  " + "  ".join(
            f"{n} {t * 1e3:7.2f} ms" for n, t in best.items())
            + f"  (load {os.getloadavg()[0]:.1f})", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", action="store_true",
                        help="the row-count sweep instead of generate")
    parser.add_argument("--row-counts", default="1,8,16,64,65,128,256,512")
    args = parser.parse_args(argv)
    args.row_counts = [int(n) for n in args.row_counts.split(",")]
    (compare_rows if args.rows else compare_generate)(args)


if __name__ == "__main__":
    main()
