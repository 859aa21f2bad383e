"""Per-layer math speed on SmolLM2-135M's shapes: grid, solve, report.

Times what `keras_gptq.model.solve.solve_matrix` does for one matrix (the
RTN grid fit, `solve_gptq`, the report's RTN-vs-GPTQ errors) on the four
matrix shapes of SmolLM2-135M (in->out: 576->576 q/o, 576->192 k/v,
576->1536 gate/up, 1536->576 down), with the demo's settings (4-bit g128,
act-order, static groups, mse, asymmetric calibration) and plain ones
(act-order only). The problems are random but correlated like real
activations (`solver_speed.make_problem`'s recipe, 8 x 256 tokens), GPTAQ's
`dXXT` from float inputs that differ from the quantized ones by noise.

With `--baseline DIR` (another checkout of keras_gptq, e.g. a
`git worktree` of main) each case runs on both codes in turn, in one run,
and the table shows both times, their ratio, and whether the integers are
identical, and the ratio of their output errors `tr(dW H dW^T)`
(`--reference`: also against the float64 oracle's). `--factor` adds the damped Hessian's inverse Cholesky factor
alone under 1 BLAS thread and under the default thread count.

Usage:
    python benchmarks/layer_speed.py [--baseline /path/to/old/checkout]
        [--repeats 3] [--factor]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576))  # (in, out)
PER_BLOCK = {(576, 576): 2, (576, 192): 2, (576, 1536): 2, (1536, 576): 1}
BLOCKS = 30
MARKER = "LAYER_SPEED_JSON "


def make_problem(seed, in_features, out_features, tokens):
    """Returns float32 `(W [out, in], H, dXXT)` from correlated inputs.

    `X` is white noise times a random mixing matrix plus a shared
    component (strong off-diagonal mass, like transformer activations);
    the float model's inputs are `X` plus 10% noise, so
    `dXXT = 2/N (X~ - X)^T X`.
    """
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((in_features, in_features))
    mixing = mixing / np.sqrt(in_features) + np.eye(in_features)
    mixing += 0.3 / np.sqrt(in_features)
    X = rng.standard_normal((tokens, in_features)) @ mixing
    X_float = X + 0.1 * rng.standard_normal(X.shape) * X.std(axis=0)
    H = (2.0 / tokens) * (X.T @ X)
    dXXT = (2.0 / tokens) * ((X_float - X).T @ X)
    W = 0.02 * rng.standard_normal((out_features, in_features))
    return W.astype(np.float32), H.astype(np.float32), dXXT.astype(np.float32)


def settings_for(name):
    """The `SolverSettings` of the demo (`"demo"`) or plain act-order."""
    from keras_gptq.algorithm.solver import SolverSettings

    demo = name == "demo"
    return SolverSettings(bits=4, group_size=128, activation_order=True,
                          static_groups=demo, mse=demo)


def time_case(W, H, dXXT, settings, repeats):
    """Best-of-`repeats` seconds of grid, solve and report; a hash of the
    integers, scales and zero points; the output error `tr(dW H dW^T)`."""
    from keras_gptq.algorithm import solver
    from keras_gptq.model import report

    best = {"grid": np.inf, "solve": np.inf, "report": np.inf}
    for _ in range(repeats):
        t0 = time.perf_counter()
        rtn_grid = settings.fit_grid(W)
        t1 = time.perf_counter()
        result = solver.solve_gptq(W, H, settings, dXXT=dXXT,
                                   group_params=rtn_grid)
        t2 = time.perf_counter()
        Q = solver.dequantize(result.q, result.scale, result.zero,
                              result.g_idx)
        t3 = time.perf_counter()
        report.layer_entry("x", W, Q, H, settings, result, 0.0,
                           rtn_grid=rtn_grid)
        t4 = time.perf_counter()
        for key, seconds in (("grid", t1 - t0), ("solve", t2 - t1),
                             ("report", t4 - t3)):
            best[key] = min(best[key], seconds)
    error = solver.output_error(W, Q, H)
    digest = hashlib.sha1(result.q.tobytes() + result.scale.tobytes()
                          + result.zero.tobytes()).hexdigest()[:12]
    return best, digest, error


def reference_error(W, H, dXXT, settings):
    """Output error of the float64 oracle (`tests/helpers/reference_gptq`)
    on the same problem and settings."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from helpers.reference_gptq import output_error
    from helpers.reference_gptq import reference_gptq

    res = reference_gptq(
        W, H, bits=settings.bits, group_size=settings.group_size,
        symmetric=settings.symmetric,
        activation_order=settings.activation_order,
        static_groups=settings.static_groups, mse=settings.mse, dXXT=dXXT)
    return output_error(W, res["Q"], H)


def factor_seconds(H, repeats):
    """Best seconds of the inverse Cholesky factor: `{threads: s}` for 1
    BLAS thread and the default count."""
    import threadpoolctl

    from keras_gptq.algorithm import solver

    H = np.asarray(H, np.float64)
    damped = H[::-1, ::-1] + np.eye(len(H)) * 0.01 * np.mean(np.diag(H))
    damped = damped.astype(np.float32)
    out = {}
    for threads in (1, None):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            label = threads or threadpoolctl.threadpool_info()[0][
                "num_threads"]
            best = np.inf
            for _ in range(repeats):
                start = time.perf_counter()
                solver._reversed_inverse_factor(damped.copy())
                best = min(best, time.perf_counter() - start)
        out[f"factor_{'1' if threads else 'default'}"] = best
        out[f"threads_{'1' if threads else 'default'}"] = label
    return out


def run_cases(args):
    """Times every (settings, shape) case in this process; prints JSON."""
    sys.path.insert(0, os.environ.get("LAYER_SPEED_CODE", REPO))
    for name in ("demo", "plain"):
        settings = settings_for(name)
        for in_f, out_f in SHAPES:
            W, H, dXXT = make_problem(args.seed, in_f, out_f, args.tokens)
            dX = dXXT if name == "demo" else None
            best, digest, error = time_case(W, H, dX, settings, args.repeats)
            row = dict(best, settings=name, shape=f"{in_f}->{out_f}",
                       q=digest, error=error)
            if args.reference:
                row["ref_error"] = reference_error(W, H, dX, settings)
            if args.factor and name == "plain":
                row.update(factor_seconds(H, args.repeats))
            print(MARKER + json.dumps(row), flush=True)


def run_code(code, args):
    """Runs `run_cases` on the keras_gptq at `code`; returns its rows."""
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               "--repeats", str(args.repeats), "--tokens", str(args.tokens),
               "--seed", str(args.seed)] + ["--factor"] * args.factor + [
                   "--reference"] * args.reference
    env = dict(os.environ, PYTHONPATH=code, LAYER_SPEED_CODE=code)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE,
                          text=True, check=True)
    return [json.loads(line[len(MARKER):])
            for line in done.stdout.splitlines() if line.startswith(MARKER)]


def model_seconds(rows, key):
    """Seconds of `key` for one whole model (30 blocks x 7 matrices)."""
    return BLOCKS * sum(
        row[key] * PER_BLOCK[tuple(int(d) for d in row["shape"].split("->"))]
        for row in rows)


def render(new, old):
    """Markdown table: per case, new times and (with a baseline) old."""
    keys = ("grid", "solve", "report")
    head = "| settings | in->out | " + " | ".join(f"{k} (s)" for k in keys)
    if old:
        head += " | " + " | ".join(f"{k} before (s)" for k in keys)
        head += " | before/after (sum) | same integers | error after/before"
    head += " | error / oracle's |" if "ref_error" in new[0] else " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    old_by = {(r["settings"], r["shape"]): r for r in old}
    for row in new:
        cells = [row["settings"], row["shape"]]
        cells += [f"{row[k]:.3f}" for k in keys]
        base = old_by.get((row["settings"], row["shape"]))
        if base:
            cells += [f"{base[k]:.3f}" for k in keys]
            ratio = sum(base[k] for k in keys) / sum(row[k] for k in keys)
            cells += [f"{ratio:.1f}x", str(base["q"] == row["q"]),
                      f"{row['error'] / base['error']:.5f}"]
        if "ref_error" in row:
            cells.append(f"{row['error'] / row['ref_error']:.5f}")
        lines.append("| " + " | ".join(cells) + " |")
    for name in ("demo", "plain"):
        for label, rows in (("after", new), ("before", old)):
            part = [r for r in rows if r["settings"] == name]
            if part:
                total = {k: model_seconds(part, k) for k in keys}
                lines.append(
                    f"\n{name}, {label}: whole model (30 blocks x 7 "
                    "matrices) " + ", ".join(
                        f"{k} {v:.1f} s" for k, v in total.items()))
    factors = [r for r in new if "factor_1" in r]
    if factors:
        lines.append("\n| in | factor, 1 BLAS thread (s) | factor, "
                     "default threads (s) | ratio |\n|---|---|---|---|")
        for r in factors:
            lines.append(
                f"| {r['shape'].split('->')[0]} | {r['factor_1']:.4f} | "
                f"{r['factor_default']:.4f} ({r['threads_default']}) | "
                f"{r['factor_default'] / r['factor_1']:.1f}x |")
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark (on this checkout, and the baseline if given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="another keras_gptq checkout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8 * 256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factor", action="store_true",
                        help="also time the factorisation per thread count")
    parser.add_argument("--reference", action="store_true",
                        help="also the float64 oracle's error (slow)")
    parser.add_argument("--worker", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_cases(args)
        return
    load = os.getloadavg()[0]
    old = run_code(os.path.abspath(args.baseline), args) if (
        args.baseline) else []
    new = run_code(REPO, args)
    print(f"Per-layer math, best of {args.repeats}; load average "
          f"{load:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} CPUs)\n")
    print(render(new, old))


if __name__ == "__main__":
    main()
