"""How the real models' float weights sit on their GGUF file's grid.

Both real models here are dequantized GGUF files (SmolLM2-135M: 4-bit
blocks of 32; Qwen2.5-Coder: mostly 5-bit blocks of 32). For each model
this prints, per matrix of one block, how many distinct values each run of
32 consecutive input columns holds (at most 16 on a 4-bit grid of 32),
then, with `--rtn-groups`, the bundled text's perplexity (the demo's
8 x 512 tokens) after 4-bit round-to-nearest at each group size, to show
how much of RTN's loss at group 128 comes from cutting across the file's
own groups of 32.

Usage:
    KERAS_BACKEND=jax python benchmarks/gguf_grid.py [--models smollm2,qwen2.5-0.5b]
        [--block 3] [--rtn-groups 32,64,128]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402

MODELS = ("smollm2", "qwen2.5-0.5b", "qwen2.5-1.5b")


def distinct_per_run(weight, run=32, limit=2000):
    """Distinct values in each run of `run` consecutive input columns of
    `weight [out, in]` (the first `limit` runs): `(max, mean)`."""
    runs = weight[:, :weight.shape[1] // run * run].reshape(-1, run)[:limit]
    counts = np.array([np.unique(r).size for r in runs])
    return int(counts.max()), float(counts.mean())


def grid_table(model, block):
    """Markdown rows: each matrix of `block` and its distinct counts."""
    from keras_gptq.hf.load import Tensors
    tensors = Tensors(_worker.hf_folder(model))
    rows = []
    for name in sorted(tensors.keys()):
        if f".layers.{block}." in name and name.endswith("proj.weight"):
            weight = tensors.get(name)
            top, mean = distinct_per_run(weight)
            rows.append(f"| {model} | {name} | {tuple(weight.shape)} | "
                        f"{top} | {mean:.1f} |")
    return rows


def rtn_perplexities(model, groups):
    """`{group size (0: float): perplexity}` of 4-bit RTN on the demo's
    8 x 512 evaluation tokens."""
    import keras_gptq
    from keras_gptq.cli import common
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines
    loaded = common.load_model("default" if model == "smollm2" else model)
    tokenizer = loaded.preprocessor.tokenizer

    def ppl():
        return keras_gptq.evaluate_perplexity(
            loaded, bundled.evaluation_texts(), tokenizer,
            sequence_length=512, max_tokens=512 * 8 + 1, verbose=False)

    out = {0: ppl()}
    for group in groups:
        originals = baselines.rtn_in_place(loaded, 4, group)
        out[group] = ppl()
        baselines.restore_kernels(originals)
    return out


def main(argv=None):
    """Prints the distinct-value table and the RTN group sweep."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,qwen2.5-0.5b")
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--rtn-groups", default="",
                   help="comma-separated group sizes for the RTN sweep "
                        "(first model only); empty skips it")
    args = p.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"--models must only name {list(MODELS)}; unknown: {unknown}")
    print("| model | matrix | shape | max distinct / 32 | mean |")
    print("|---|---|---|---|---|")
    for model in models:
        print("\n".join(grid_table(model, args.block)))
    if args.rtn_groups:
        groups = [int(g) for g in args.rtn_groups.split(",")]
        result = rtn_perplexities(models[0], groups)
        print(f"\n{models[0]}: float32 {result.pop(0):.3f}; " + ", ".join(
            f"RTN 4-bit g{g} {v:.3f}" for g, v in result.items()))


if __name__ == "__main__":
    main()
