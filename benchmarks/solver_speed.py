"""Solver speed and accuracy: keras_gptq vs Keras's native GPTQ vs the reference.

Runs GPTQ on the same random Dense-shaped problems three ways, on one Keras
backend per process:

* native: Keras 3's own solver (`keras.src.quantizers.gptq.GPTQ`) on a
  `Dense` layer whose kernel is W^T and whose Hessian is set to our H;
* ours: `keras_gptq.algorithm.solver.solve_gptq`;
* reference: the float64 numpy oracle in `tests/helpers/reference_gptq.py`.

It prints a markdown table of wall times and of the output error
`tr((W - Q) H (W - Q)^T)` of each, with error ratios against the reference.
Native and ours are timed after a warm-up call on the same shapes (so jit /
op compilation is excluded; the fastest of `--repeats` / `--native-repeats`
timed calls counts); the first-call times are reported as well. The
reference runs once. The problems are fixed by `--seed`.

Usage:
    python benchmarks/solver_speed.py --backend jax
    python benchmarks/solver_speed.py --backend all --quick
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
FULL_SHAPES = ((768, 3072), (3072, 768))  # (in, out)
QUICK_SHAPES = ((256, 512), (512, 256))
JSON_MARKER = "SOLVER_SPEED_JSON "


def make_problem(seed, in_features, out_features, tokens):
    """Returns float32 `(W [out, in], H [in, in])` with correlated inputs.

    Activations are white noise times a random mixing matrix plus a shared
    component, so H = 2/N X^T X has strong off-diagonal mass, like real
    transformer activations; weights are Gaussian with std 0.02.
    """
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((in_features, in_features)) / np.sqrt(in_features)
    mixing += np.eye(in_features) + 0.3 / np.sqrt(in_features)
    X = rng.standard_normal((tokens, in_features)) @ mixing
    H = (2.0 / tokens) * (X.T @ X)
    W = 0.02 * rng.standard_normal((out_features, in_features))
    return W.astype(np.float32), H.astype(np.float32)


def native_solve(W, H, bits, group_size, symmetric):
    """Runs Keras's native GPTQ on one Dense layer; returns `(seconds, Q)`.

    The timed part is `GPTQ.quantize_and_correct_layer()` (damping, inverse,
    column loop, writing the packed kernel) up to the kernel being readable
    on the host. `Q [out, in]` is read back through the layer's own
    dequantizing forward pass on the identity matrix.

    On torch it runs under `torch.no_grad()`: the kernel is a trainable
    parameter, and with autograd on, the graph keeps every intermediate of
    the column loop alive (3072->768 grew past 21 GB and was killed for
    memory on a 23 GB machine; 1.8 GB peak under no_grad). No-grad only
    makes native faster.
    """
    import keras
    from keras.src.quantizers.gptq import GPTQ
    from keras.src.quantizers.gptq_config import GPTQConfig

    out_features, in_features = W.shape
    config = GPTQConfig(
        dataset=None,
        tokenizer=None,
        weight_bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        activation_order=False,
        hessian_damping=0.01,
    )
    layer = keras.layers.Dense(out_features, use_bias=False, dtype="float32")
    layer.build((None, in_features))
    layer.kernel.assign(W.T)
    layer.quantize("gptq", config=config)
    solver = GPTQ(layer, config)
    solver.hessian = keras.ops.convert_to_tensor(H, dtype="float32")

    with no_autograd():
        start = time.perf_counter()
        solver.quantize_and_correct_layer()
        keras.ops.convert_to_numpy(layer.quantized_kernel)
        seconds = time.perf_counter() - start

        identity = np.eye(in_features, dtype=np.float32)
        Q = keras.ops.convert_to_numpy(layer(identity)).T
    return seconds, Q


def no_autograd():
    """`torch.no_grad()` on the torch backend, a no-op context elsewhere."""
    import keras

    if keras.config.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def ours_solve(W, H, bits, group_size, symmetric):
    """Runs `keras_gptq.algorithm.solver.solve_gptq`; returns
    `(seconds, Q)`."""
    from keras_gptq.algorithm.solver import SolverSettings
    from keras_gptq.algorithm.solver import dequantize
    from keras_gptq.algorithm.solver import solve_gptq

    start = time.perf_counter()
    res = solve_gptq(W, H, SolverSettings(
        bits=bits, group_size=group_size, symmetric=symmetric,
        activation_order=False, static_groups=False, block_size=128,
        damping=0.01, mse=False))
    seconds = time.perf_counter() - start
    Q = dequantize(res.q, res.scale, res.zero, res.g_idx)
    return seconds, np.asarray(Q)


def factorization_floor(H, repeats):
    """Best seconds of the damped Hessian's inverse Cholesky factor alone.

    Every exact GPTQ solver, native included, must factor the `[in, in]`
    Hessian before its first column; no solver can beat `native / floor`.
    """
    from keras_gptq.algorithm.solver import inverse_cholesky

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        inverse_cholesky(H, 0.01)
        best = min(best, time.perf_counter() - start)
    return best


def reference_solve(W, H, bits, group_size, symmetric):
    """Runs the float64 reference oracle; returns `(seconds, Q)`."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from helpers.reference_gptq import reference_gptq

    start = time.perf_counter()
    res = reference_gptq(W, H, bits=bits, group_size=group_size, symmetric=symmetric)
    return time.perf_counter() - start, res["Q"]


def ours_available():
    """True when `keras_gptq.algorithm.solver` imports; otherwise prints why not."""
    try:
        from keras_gptq.algorithm.solver import solve_gptq  # noqa: F401
    except ImportError as error:
        print(f"keras_gptq.algorithm.solver unavailable ({error}); 'ours' skipped",
              file=sys.stderr)
        return False
    return True


def benchmark_shape(in_features, out_features, args, with_ours):
    """Times native, ours and reference on one shape; returns a result dict."""
    from helpers.reference_gptq import output_error

    W, H = make_problem(args.seed, in_features, out_features, args.tokens)
    settings = (args.bits, args.group_size, args.symmetric)
    row = {"shape": f"{in_features}->{out_features}"}

    row["native_first"], _ = native_solve(W, H, *settings)
    row["native"], Q_native = min(
        (native_solve(W, H, *settings) for _ in range(args.native_repeats)),
        key=lambda r: r[0])
    row["native_err"] = output_error(W, Q_native, H)

    if with_ours:
        row["ours_first"], _ = ours_solve(W, H, *settings)
        row["ours"], Q_ours = min(
            (ours_solve(W, H, *settings) for _ in range(args.repeats)),
            key=lambda r: r[0])
        row["ours_err"] = output_error(W, Q_ours, H)
        row["floor"] = factorization_floor(H, args.repeats)

    row["ref"], Q_ref = reference_solve(W, H, *settings)
    row["ref_err"] = output_error(W, Q_ref, H)
    return row


def run_backend(args):
    """Benchmarks every shape on the current process's backend.

    Returns the result dicts; with `--json` also prints each as it finishes.
    """
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, os.path.join(REPO, "tests"))
    sys.path.insert(0, REPO)
    import keras

    if keras.config.backend() != args.backend:
        raise RuntimeError(f"Keras backend is {keras.config.backend()}, "
                           f"wanted {args.backend}: set it before importing keras")
    with_ours = ours_available()
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    rows = []
    for in_features, out_features in shapes:
        row = benchmark_shape(in_features, out_features, args, with_ours)
        row["backend"] = args.backend
        rows.append(row)
        if args.json:  # one line per shape, so a later crash loses nothing
            print(JSON_MARKER + json.dumps(row), flush=True)
        print(f"done {args.backend} {row['shape']}", file=sys.stderr, flush=True)
    return rows


def run_all_backends(args):
    """Re-runs this script once per backend (KERAS_BACKEND is per process).

    Returns `(rows, failures)`: the rows of the backends that finished, and
    one message per backend whose process failed.
    """
    rows, failures = [], []
    for backend in BACKENDS:
        command = [sys.executable, os.path.abspath(__file__), "--backend", backend,
                   "--json", "--tokens", str(args.tokens), "--seed", str(args.seed),
                   "--bits", str(args.bits), "--group-size", str(args.group_size),
                   "--repeats", str(args.repeats),
                   "--native-repeats", str(args.native_repeats)]
        command += ["--quick"] * args.quick + ["--symmetric"] * args.symmetric
        env = dict(os.environ, KERAS_BACKEND=backend)
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            failures.append(f"backend {backend} failed (exit {done.returncode})")
        for line in done.stdout.splitlines():
            if line.startswith(JSON_MARKER):
                rows.append(json.loads(line[len(JSON_MARKER):]))
    return rows, failures


def format_table(rows):
    """Renders result dicts as a markdown table (times in seconds)."""
    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "n/a"

    def ratio(row, num, den):
        return f"{row[num] / row[den]:.2f}" if num in row and den in row else "n/a"

    lines = [
        "| backend | in->out | native 1st (s) | native (s) | ours 1st (s) | ours (s) "
        "| native/ours | factorization floor (s) | native/floor (best "
        "possible) | reference (s) | err native | err ours | err ref "
        "| native/ref | ours/ref |",
        "|" + "---|" * 15,
    ]
    for row in rows:
        lines.append("| " + " | ".join([
            row["backend"], row["shape"],
            cell(row, "native_first", "{:.2f}"), cell(row, "native", "{:.2f}"),
            cell(row, "ours_first", "{:.2f}"), cell(row, "ours", "{:.3f}"),
            ratio(row, "native", "ours"), cell(row, "floor", "{:.3f}"),
            ratio(row, "native", "floor"), cell(row, "ref", "{:.2f}"),
            cell(row, "native_err", "{:.4g}"), cell(row, "ours_err", "{:.4g}"),
            cell(row, "ref_err", "{:.4g}"),
            ratio(row, "native_err", "ref_err"), ratio(row, "ours_err", "ref_err"),
        ]) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS + ("all",), default="all")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes (256->512, 512->256) for a smoke run")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls of ours after the first; the fastest counts")
    parser.add_argument("--native-repeats", type=int, default=1,
                        help="timed calls of native after the first (slow on torch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the benchmark and prints the markdown table."""
    args = parse_args(argv)
    failures = []
    if args.backend == "all":
        rows, failures = run_all_backends(args)
    else:
        rows = run_backend(args)
    if args.json:
        return
    settings = (f"{args.bits}-bit, group {args.group_size}, "
                f"{'symmetric' if args.symmetric else 'asymmetric'}, "
                f"{args.tokens} tokens, error = tr((W-Q) H (W-Q)^T)")
    print(f"GPTQ solver speed ({settings})\n")
    print(format_table(rows))
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
