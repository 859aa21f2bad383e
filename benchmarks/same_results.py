"""Same results before and after a change: solver outputs and saved presets.

A refactor must not move a number. This script records what one checkout
computes and compares two records bit for bit:

    # the solver over every setting combination (1024 solves, seconds),
    # and the Hugging Face int32 packing of every bit width, both ways
    PYTHONPATH=/path/to/old/checkout python benchmarks/same_results.py solver old.npz
    python benchmarks/same_results.py solver new.npz
    python benchmarks/same_results.py compare old.npz new.npz

    # two presets (e.g. `make demo DEMO_ARGS="--out DIR"` on each checkout)
    python benchmarks/same_results.py compare old_preset/ new_preset/

`solver` works with the layout since 2026-12-01 (`keras_gptq.algorithm.
solver`, `SolverSettings`) and with the one before it (`keras_gptq.solver`,
keyword arguments), so a checkout from either side can be recorded.
Settings: bits 2/3/4/8 x group -1/16 x symmetric x act-order x static
groups x mse x GPTAQ (`dXXT`) x a given RTN grid, on two random matrices
whose Hessians have dead columns; then `pack_int32`/`unpack_int32` of
random levels for bits 2/3/4/8 along both axes. `compare` exits 1 when
anything differs.
"""

import argparse
import itertools
import json
import os
import sys

import numpy as np


def _api():
    """`(solve(W, H, settings dict, dXXT, group_params), grid module, HF
    format module)` of whichever layout is importable."""
    try:
        from keras_gptq.algorithm import grid
        from keras_gptq.algorithm import solver
        from keras_gptq.hf import format as hf_format
    except ImportError:  # the layout before 2026-12-01
        from keras_gptq import grid
        from keras_gptq import hf_format
        from keras_gptq import solver

        def solve(W, H, settings, **data):
            return solver.solve_gptq(W, H, **settings, **data)

        return solve, grid, hf_format

    def solve(W, H, settings, **data):
        return solver.solve_gptq(W, H, solver.SolverSettings(**settings),
                                 **data)

    return solve, grid, hf_format


def _hf_packing(hf_format):
    """`{name: array}` of HF int32 packing and unpacking, every bit width."""
    rng = np.random.default_rng(1)
    out = {}
    for bits in (2, 3, 4, 8):
        for shape, axis in (((96, 7), 0), ((5, 64), 1), ((32, 1), 0)):
            levels = rng.integers(0, 2**bits, size=shape)
            words = hf_format.pack_int32(levels, bits, axis)
            key = f"hf_{bits}_{shape[0]}x{shape[1]}_{axis}"
            out[f"{key}/words"] = words
            out[f"{key}/levels"] = hf_format.unpack_int32(words, bits, axis)
    return out


def _problems():
    rng = np.random.default_rng(0)
    for rows, cols in ((24, 64), (16, 72)):
        W = rng.normal(size=(rows, cols)).astype(np.float32)
        X = rng.normal(size=(512, cols)) * rng.uniform(0.1, 3, size=cols)
        X[:, [3, 10]] = 0  # dead columns
        H = (2 / 512 * X.T @ X).astype(np.float32)
        X_float = X + 0.05 * rng.normal(size=X.shape)
        dXXT = (2 / 512 * (X_float - X).T @ X).astype(np.float32)
        yield W, H, dXXT


ALL_SETTINGS = tuple(itertools.product((2, 3, 4, 8), (-1, 16),
                                      *[(False, True)] * 6))


def record_solver(path, combinations=ALL_SETTINGS):
    """Solves each `(bits, group, symmetric, act_order, static, mse, gptaq,
    given_grid)` combination on each problem and packs HF words; saves all
    outputs to `path`."""
    solve, grid, hf_format = _api()
    out = _hf_packing(hf_format)
    for case, (W, H, dXXT) in enumerate(_problems()):
        for bits, group, sym, act, static, mse, asym, given in combinations:
            settings = dict(bits=bits, group_size=group, symmetric=sym,
                            activation_order=act, static_groups=static,
                            block_size=16, damping=0.01, mse=mse)
            params = grid.group_params(W, group, bits, sym, mse) if (
                given) else None
            result = solve(W, H, settings, dXXT=dXXT if asym else None,
                           group_params=params)
            key = f"{case}_{bits}_{group}_{sym}_{act}_{static}_{mse}_{asym}_{given}"
            for field in ("q", "scale", "zero", "g_idx", "damping"):
                out[f"{key}/{field}"] = np.asarray(getattr(result, field))
    np.savez(path, **out)
    solves = sum(name.endswith("/q") for name in out)
    print(f"{solves} solves and {len(out) - 5 * solves} HF packing arrays "
          f"saved to {path}")


def _preset_arrays(folder):
    from keras_gptq.utils.files import preset_arrays

    arrays = preset_arrays(folder)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        arrays["config.json"] = np.array(json.dumps(json.load(f),
                                                    sort_keys=True))
    return arrays


def _arrays(path):
    if os.path.isdir(path):
        return _preset_arrays(path)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def compare(a, b):
    """Prints how many arrays of `a` and `b` differ; returns that count."""
    left, right = _arrays(a), _arrays(b)
    names = sorted(set(left) | set(right))
    differ = [n for n in names if n not in left or n not in right
              or left[n].dtype != right[n].dtype
              or not np.array_equal(left[n], right[n])]
    print(f"{len(names)} arrays; {len(differ)} differ"
          + (f": {differ[:10]}" if differ else " (bit-identical)"))
    return len(differ)


def main(argv=None):
    """Runs `solver OUT` or `compare A B` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("solver").add_argument("out")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "solver":
        record_solver(args.out)
        return 0
    return 1 if compare(args.a, args.b) else 0


if __name__ == "__main__":
    sys.exit(main())
