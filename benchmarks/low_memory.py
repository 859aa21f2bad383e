"""Peak memory and time: quantizing in memory vs block by block from disk.

The model (`--model`: the bundled SmolLM2-135M-Instruct, or
Qwen2.5-Coder-0.5B/1.5B-Instruct of `keras_gptq.examples.qwen`; float32)
is saved once as a KerasHub preset (`<cache>/<name>-preset`, see
`keras_gptq.examples.cache`); its converted Hugging Face folder is cached
too. Then each way (`--methods`) runs in its own fresh process:

- `in-memory`: `CausalLM.from_preset(preset)`, `keras_gptq.quantize`,
  `save_to_preset`;
- `low-memory`: `keras_gptq.quantize_preset(preset, out, config)`;
- `low-memory-hf`: `keras_gptq.quantize_preset(hf_folder, out, config)`,
  reading the float Hugging Face folder block by block.

Both use the same config (4-bit, group 128, act-order, `--samples` x
`--seq-len` windows of the bundled text, the preset's tokenizer). Each row
reports the process's RSS after imports, its peak RSS while loading,
quantizing and saving (sampled every 20 ms; `ru_maxrss` would include the
parent's) and the wall time of load + quantize + save; the last line says whether the two saved presets hold the same
integers (every variable of the weights file equal).

Usage: KERAS_BACKEND=jax python benchmarks/low_memory.py [--samples 32]
       [--seq-len 256] [--model smollm2|qwen2.5-0.5b|qwen2.5-1.5b]
       [--methods in-memory,low-memory,low-memory-hf] [--keep DIR]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402

METHODS = ("in-memory", "low-memory", "low-memory-hf")
MODELS = {"smollm2": "smollm2-135m", "qwen2.5-0.5b": "qwen2.5-coder-0.5b",
          "qwen2.5-1.5b": "qwen2.5-coder-1.5b"}


def float_preset(model):
    """The model saved as a KerasHub preset (built once; the save is all
    or nothing)."""
    from keras_gptq.examples import bundled
    from keras_gptq.examples import cache
    from keras_gptq.examples import qwen
    folder = os.path.join(cache.cache_root(), MODELS[model] + "-preset")
    if not os.path.isfile(os.path.join(folder, "model.weights.h5")):
        loaded = (bundled.load_default_model() if model == "smollm2"
                  else qwen.load_qwen2_5(model.split("-")[1]))
        loaded.save_to_preset(folder)
    return folder


def _config(preset, args):
    import keras_hub

    import keras_gptq
    from keras_gptq.examples import bundled
    return keras_gptq.GPTQConfig(
        dataset=bundled.calibration_texts(),
        tokenizer=keras_hub.tokenizers.Tokenizer.from_preset(preset),
        weight_bits=4, group_size=128, activation_order=True,
        num_samples=args.samples, sequence_length=args.seq_len)


def worker(args):
    """Runs one way (`args.worker`) and writes its row to `args.result`."""
    import keras_hub
    import psutil

    import keras_gptq
    runtime = psutil.Process().memory_info().rss / 2**20
    out = os.path.join(args.out_root, args.worker)
    config = _config(args.preset, args)
    sampler = _worker.PeakSampler()
    sampler.start()
    start = time.perf_counter()
    if args.worker == "in-memory":
        model = keras_hub.models.CausalLM.from_preset(args.preset)
        report = keras_gptq.quantize(model, config, verbose=False)
        model.save_to_preset(out)
    else:
        source = (args.preset if args.worker == "low-memory"
                  else args.hf_folder)
        report = keras_gptq.quantize_preset(source, out, config,
                                            verbose=False)
    seconds = time.perf_counter() - start
    row = dict(method=args.worker, runtime_mb=runtime,
               peak_rss_mb=sampler.stop() / 2**20, seconds=seconds,
               quantize_seconds=report.seconds, layers=len(report.layers))
    with open(args.result, "w") as f:
        json.dump(row, f)


def same_integers(a, b):
    """True when two presets' weights files hold the same arrays."""
    import numpy as np

    from keras_gptq.utils.files import preset_arrays
    left, right = preset_arrays(a), preset_arrays(b)
    return left.keys() == right.keys() and all(
        np.array_equal(left[k], right[k]) for k in left)


def main():
    """Runs both ways in fresh processes and prints them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--model", choices=MODELS, default="smollm2")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the first way's quantized preset in DIR")
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--hf-folder", help=argparse.SUPPRESS)
    parser.add_argument("--out-root", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    methods = _worker.chosen(args.methods, METHODS, "--methods")
    preset = float_preset(args.model)
    float_mb = _worker.dir_mb(preset)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(preset)) as root:
        flags = ["--samples", str(args.samples), "--seq-len",
                 str(args.seq_len), "--preset", preset, "--out-root",
                 root, "--hf-folder", _worker.hf_folder(args.model)]
        rows = [_worker.run_worker(__file__, m, flags) for m in methods]
        same = all("error" not in r for r in rows) and all(
            same_integers(os.path.join(root, methods[0]),
                          os.path.join(root, m)) for m in methods[1:])
        if args.keep and os.path.isdir(os.path.join(root, methods[0])):
            shutil.move(os.path.join(root, methods[0]), args.keep)
    print(f"\n{args.model} float32 preset: {float_mb:.0f} MB; "
          f"{args.samples} x {args.seq_len} calibration, 4-bit g128 "
          "act-order")
    print(f"| way | RSS after imports (MB) | peak RSS (MB) | above imports "
          "(MB) | load + quantize + save (s) | quantize (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | failed ({r['error']}) | | | | |")
            continue
        print(f"| {r['method']} | {r['runtime_mb']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['runtime_mb']:.0f} | "
              f"{r['seconds']:.0f} | {r['quantize_seconds']:.0f} |")
    print(f"same integers in every preset: {same}")


if __name__ == "__main__":
    main()
