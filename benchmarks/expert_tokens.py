"""How many routed tokens an expert needs before GPTQ beats round-to-nearest.

An expert sees only the calibration tokens routed to it. With `n` tokens
its `in x in` Hessian has rank at most `n`; GPTQ then fits the weights to
those few directions and can do worse than plain rounding on new inputs.
This script solves one `out x in` matrix with GPTQ on Hessians from `n`
correlated random input rows and reports its output error on 4000 held-out
rows, relative to RTN's on the same grid (mean and worst of 5 draws).
`keras_gptq.model.experts.MIN_TOKENS_PER_INPUT` comes from this table.

Usage:
    python benchmarks/expert_tokens.py [--columns 64] [--rows 128]
"""

import argparse

import numpy as np

from keras_gptq.algorithm import grid
from keras_gptq.algorithm import solver


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, default=64)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cols = args.columns
    mixing = rng.normal(size=(cols, cols)) / np.sqrt(cols) + np.eye(cols)
    W = rng.normal(size=(args.rows, cols)).astype(np.float32)
    held = (rng.normal(size=(4000, cols)) @ mixing).astype(np.float32)
    H_held = 2 / len(held) * held.T @ held
    settings = solver.SolverSettings(bits=args.bits,
                                     group_size=args.group_size)
    rtn = solver.dequantize(*grid.rtn_quantize(
        W, args.bits, args.group_size, False))
    rtn_error = solver.output_error(W, rtn, H_held)
    print("| tokens | tokens / inputs | GPTQ / RTN held-out error (mean) "
          "| worst |")
    print("|---|---|---|---|")
    for factor in (0.03, 0.125, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 4):
        n = max(2, int(factor * cols))
        ratios = []
        for _ in range(5):
            X = (rng.normal(size=(n, cols)) @ mixing).astype(np.float32)
            result = solver.solve_gptq(W, 2 / n * X.T @ X, settings)
            Q = solver.dequantize(result.q, result.scale, result.zero,
                                  result.g_idx)
            ratios.append(solver.output_error(W, Q, H_held) / rtn_error)
        print(f"| {n} | {n / cols:g} | {np.mean(ratios):.3f} | "
              f"{np.max(ratios):.3f} |")


if __name__ == "__main__":
    main()
