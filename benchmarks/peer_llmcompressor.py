"""The llm-compressor side of `peer_compare.py` (runs in llm-compressor's venv).

Loads a Hugging Face folder in float32 with transformers, runs
llm-compressor's `GPTQModifier` through `oneshot` on the token windows
`peer_compare.py` wrote (the very windows keras_gptq calibrates on), and
writes the result as a *float* Hugging Face folder whose quantized linear
weights hold their dequantized values, so that keras_gptq's process loads
it into KerasHub and scores it exactly as it scores its own result.

This file imports only torch, transformers, datasets and llm-compressor:
it never imports keras_gptq (the two live in different virtualenvs).

Usage (normally called by peer_compare.py):
    /work/venv-llmc/bin/python benchmarks/peer_llmcompressor.py \
        --model-dir FOLDER --windows windows.npy --out OUT_FOLDER \
        --result result.json [--actorder weight|none] [--damping 0.01]
"""

import argparse
import json
import os
import resource
import shutil
import time

import numpy as np

# Scale and zero-point tensors llm-compressor attaches to quantized modules.
_QUANT_SUFFIXES = ("weight_scale", "weight_zero_point", "weight_g_idx",
                   "weight_global_scale", "weight_shape")


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--windows", required=True,
                        help=".npy of int token windows [num_samples, length]")
    parser.add_argument("--out", required=True,
                        help="folder for the dequantized float result")
    parser.add_argument("--result", required=True, help="JSON with timings")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--actorder", default="weight",
                        choices=["weight", "none"])
    parser.add_argument("--damping", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default)")
    return parser.parse_args(argv)


def _recipe(args):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization import QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier

    weights = QuantizationArgs(num_bits=args.bits, type="int",
                               symmetric=False, strategy="group",
                               group_size=args.group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    return GPTQModifier(
        config_groups={"group_0": scheme}, ignore=["lm_head"],
        dampening_frac=args.damping, block_size=128,
        # SmolLM2 is 576 wide: 4.5 groups of 128 (the last one partial, as
        # keras_gptq and the GPTQ reference do it).
        bypass_divisibility_checks=True,
        actorder=None if args.actorder == "none" else args.actorder)


def _levels_per_group(weight, group_size):
    """The largest number of distinct values in one row group."""
    rows = weight.reshape(weight.shape[0], -1, group_size)
    return max(len(np.unique(g)) for g in rows[:8].reshape(-1, group_size))


def _write_float_folder(model, model_dir, out):
    """Writes the (dequantized) float weights as an HF folder at `out`."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    for name in os.listdir(model_dir):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(model_dir, name), out)
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if name.endswith(_QUANT_SUFFIXES) or "_observer" in name:
            continue
        if tensor.data_ptr() in seen:  # tied lm_head
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to("cpu").float().contiguous()
    save_file(tensors, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})


def main(argv=None):
    """Quantizes with llm-compressor, writes the float folder and timings."""
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    windows = np.load(args.windows)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir,
                                                 dtype=torch.float32)
    load_s = time.perf_counter() - start
    dataset = Dataset.from_dict({
        "input_ids": windows.tolist(),
        "attention_mask": np.ones_like(windows).tolist()})
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=_recipe(args),
            num_calibration_samples=len(windows),
            max_seq_length=windows.shape[1], batch_size=args.batch_size,
            pipeline="sequential")
    quantize_s = time.perf_counter() - start
    probe = dict(model.named_modules())["model.layers.0.mlp.down_proj"]
    levels = _levels_per_group(probe.weight.detach().float().numpy(),
                               args.group_size)
    _write_float_folder(model, args.model_dir, args.out)
    with open(args.result, "w") as f:
        json.dump({"load_s": load_s, "quantize_s": quantize_s,
                   "levels_in_a_group": int(levels),
                   "peak_rss_mb": resource.getrusage(
                       resource.RUSAGE_SELF).ru_maxrss / 1024}, f)


if __name__ == "__main__":
    main()
