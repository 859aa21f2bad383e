"""Expert Hessians: plain (each routed token once) vs weighted by the router.

GPTQModel accumulates each expert's Hessian from its routed tokens as they
are; the MoE output, though, scales each expert's output by its routing
weight `p`, so the error that matters is `p^2`-weighted (rows scaled by
`p`). This script quantizes tiny random-init MoE models of each KerasHub
family both ways (`keras_gptq.model.expert_walk.WEIGHT_BY_ROUTER`) and
prints the held-out logit error (mean squared difference to the float
model, on windows disjoint from the calibration ones) and RTN's.

Usage:
    python benchmarks/moe_weighting.py [--bits 3] [--samples 32]
"""

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "tests", "model"))

import keras_gptq  # noqa: E402
from helpers.models import logits  # noqa: E402
from helpers.models import markov_tokens  # noqa: E402
from keras_gptq.model import baselines  # noqa: E402
from keras_gptq.model import expert_walk  # noqa: E402
from test_experts import FAMILIES  # noqa: E402
from test_experts import build_moe  # noqa: E402


def _error(model, tokens, reference):
    return float(np.mean((logits(model, tokens) - reference) ** 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    heldout = markov_tokens(16 * 64, seed=2).reshape(16, 64)
    print("| family | calibration seed | RTN | plain | router-weighted "
          "| weighted / plain |")
    print("|---|---|---|---|---|---|")
    for family in FAMILIES:
        reference = logits(build_moe(family), heldout)
        rtn = build_moe(family)
        baselines.rtn_in_place(rtn, args.bits, 16)
        rtn_error = _error(rtn, heldout, reference)
        for seed in range(args.seeds):
            errors = []
            for weighted in (False, True):
                expert_walk.WEIGHT_BY_ROUTER = weighted
                model = build_moe(family)
                keras_gptq.quantize(model, keras_gptq.GPTQConfig(
                    dataset=markov_tokens(40_000, seed=10 + seed),
                    num_samples=args.samples, sequence_length=64,
                    weight_bits=args.bits, group_size=16,
                    calibration_batch_size=16, add_start_token=False),
                    verbose=False)
                errors.append(_error(model, heldout, reference))
            print(f"| {family} | {seed} | {rtn_error:.3e} | {errors[0]:.3e} "
                  f"| {errors[1]:.3e} | {errors[1] / errors[0]:.3f} |",
                  flush=True)
    expert_walk.WEIGHT_BY_ROUTER = False


if __name__ == "__main__":
    main()
