"""Inference speed of SmolLM2-135M: float32, Keras's int4, keras_gptq packed.

One run per backend (`KERAS_BACKEND`), each row in a fresh process:

- `float`: float32 weights;
- `keras-int4`: Keras's own `int4` mode (RTN, block 128);
- `packed`: keras_gptq packed 4-bit, group 128, contiguous groups (RTN
  levels, stored as GPTQ results are);
- `packed-act-order`: keras_gptq GPTQ 4-bit, group 128, act-order (groups
  in a permuted column order; a small calibration, since only the layout
  matters for speed).
- `<method>-no-kernel` (e.g. `packed-no-kernel`): the same with the native
  JAX CPU kernel turned off (`kernels.disable_cpu_kernel`: the reference
  path), to show what the kernel brings.

Measured with greedy `generate` (best of `--repeats`, each shape compiled
first):
- prefill BxL: tokens/s to fill a `[B, L + 1]` sequence from an `L`-token
  prompt (the prompt pass plus one token);
- first token: seconds to add one token to a short prompt;
- decode at batch B: new tokens/s, from the time to add `--new-tokens`
  more tokens minus the first-token time;
- weights: MB of the model's variables, plus what a fast kernel holds
  beyond them (`keras_gptq.storage.kernels.cached_bytes`: torch's int4
  copy, less the packed variable it empties).

Usage (defaults are modest for a 2-core CPU; `--full` gives the issue's
sizes, prefill 1x256 and 8x256, 32 new tokens; `--interleaved` times every
method in one process, in alternation, for steadier ratios when the
machine is shared):

    KERAS_BACKEND=jax python benchmarks/inference_speed.py [--full]
        [--interleaved]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402  (benchmarks/_worker.py)

METHODS = ("float", "keras-int4", "packed", "packed-no-kernel",
           "packed-act-order")
NO_KERNEL = "-no-kernel"
PROMPT = "The capital of France is"
FULL = {"prefill_length": 256, "new_tokens": 32}


def _dense_only(layer):
    import keras
    return isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))


def _apply(method, model, args):
    """Quantizes `model` in place by `method`."""
    import keras
    import keras_gptq
    from keras_gptq import storage
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines
    from keras_gptq.storage import kernels
    if method.endswith(NO_KERNEL):
        _apply(method[:-len(NO_KERNEL)], model, args)
        for layer in model._flatten_layers():
            if storage.is_packed(layer) and hasattr(layer, "g_idx"):
                kernels.disable_cpu_kernel(layer)
    elif method == "keras-int4":
        model.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(
            block_size=128), filters=_dense_only)
    elif method == "packed":
        baselines.rtn_packed(model, 4, 128)
    elif method == "packed-act-order":
        keras_gptq.quantize(model, keras_gptq.GPTQConfig(
            dataset=bundled.calibration_texts(),
            tokenizer=model.preprocessor.tokenizer, weight_bits=4,
            group_size=128, activation_order=True,
            num_samples=args.calibration_samples, sequence_length=64),
            verbose=False)
    elif method != "float":
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")


def _weights_mb(model):
    import numpy as np
    from keras_gptq import storage
    from keras_gptq.storage import kernels
    total = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                for v in model.weights)
    total += sum(kernels.cached_bytes(layer)
                 for layer in model._flatten_layers()
                 if storage.is_packed(layer) and hasattr(layer, "g_idx"))
    return total / 2**20


def _plan(model, args):
    """The generate calls to time: `[(name, prompt ids, batch, total)]`."""
    import numpy as np
    x = model.preprocessor.generate_preprocess(PROMPT)
    short = np.asarray(x["token_ids"])[np.asarray(x["padding_mask"], bool)]
    long = np.resize(short, args.prefill_length)
    plan = [(f"prefill {b}", long, b, args.prefill_length + 1)
            for b in args.batches]
    for b in args.batches:
        plan.append((f"first {b}", short, b, len(short) + 1))
        plan.append((f"longer {b}", short, b, len(short) + 1 + args.new_tokens))
    return plan


def _metrics(seconds, args):
    """`{metric: value}` from the best seconds of each planned call."""
    out = {}
    for b in args.batches:
        out[f"prefill {b}x{args.prefill_length} tok/s"] = (
            b * args.prefill_length / seconds[f"prefill {b}"])
    for b in args.batches:
        if b == 1:
            out["first token s"] = seconds["first 1"]
        out[f"decode b{b} tok/s"] = b * args.new_tokens / (
            seconds[f"longer {b}"] - seconds[f"first {b}"])
    return out


def _measure(model, args):
    """`{metric: value}` for one model (see the module docstring)."""
    plan = _plan(model, args)
    preprocessor, model.preprocessor = model.preprocessor, None
    try:
        seconds = {name: _worker.time_generate(model, prompt, batch, total,
                                               args.repeats)
                   for name, prompt, batch, total in plan}
    finally:
        model.preprocessor = preprocessor
    return _metrics(seconds, args)


def interleaved(methods, args):
    """Every method's model in this one process, timed in alternation.

    For each planned call, each model is compiled first, then the rounds
    go model after model (`--repeats` rounds, best of each), so a change
    in machine load during the run hits every row alike: on a shared
    machine the ratios are steadier than with one process per row. Memory
    columns are the models' own variables, as in the other mode.
    """
    import keras
    import keras_gptq  # noqa: F401  (installs the packed-layer seam)
    from keras_gptq.examples import bundled
    models = {}
    for method in methods:
        keras.utils.set_random_seed(0)
        models[method] = bundled.load_default_model()
        _apply(method, models[method], args)
    plan = _plan(next(iter(models.values())), args)
    for model in models.values():
        model.preprocessor = None
    best = {m: {} for m in models}
    for name, prompt, batch, total in plan:
        for method, model in models.items():
            best[method][name] = _worker.time_generate(
                model, prompt, batch, total, 0)  # compiles only
        for _ in range(args.repeats):
            for method, model in models.items():
                seconds = _worker.time_generate(model, prompt, batch, total,
                                                1, compile_first=False)
                best[method][name] = min(best[method][name], seconds)
    return [{"method": m, "backend": keras.config.backend(),
             "weights MB": _weights_mb(models[m]),
             **_metrics(best[m], args)} for m in models]


def worker(method, result_path, args):
    """Runs one method in this process and writes its numbers as JSON."""
    import keras
    import keras_gptq  # noqa: F401  (installs the packed-layer seam)
    from keras_gptq.examples import bundled
    keras.utils.set_random_seed(0)
    model = bundled.load_default_model()
    _apply(method, model, args)
    result = {"method": method, "backend": keras.config.backend(),
              "weights MB": _weights_mb(model), **_measure(model, args)}
    with open(result_path, "w") as f:
        json.dump(result, f)


def render(rows, args):
    """A markdown table, each speed also as a ratio to the float row."""
    base = next((r for r in rows if r["method"] == "float"), None)
    metrics = [k for k in rows[0] if k not in ("method", "backend")]
    head = "| method | " + " | ".join(metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for row in rows:
        cells = []
        for key in metrics:
            value = row[key]
            cell = f"{value:.3f}" if key.endswith(" s") else f"{value:.1f}"
            if base is not None and row is not base:
                cell += f" ({value / base[key]:.2f}x)"
            cells.append(cell)
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--prefill-length", type=int, default=64)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--calibration-samples", type=int, default=8)
    parser.add_argument("--full", action="store_true",
                        help="prefill 256 and 32 new tokens")
    parser.add_argument("--out", default=None,
                        help="JSON file for the rows (default: none)")
    parser.add_argument("--interleaved", action="store_true",
                        help="all methods in one process, timed in "
                        "alternation (steadier ratios on a shared machine)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker(*args.worker, args)
    if args.interleaved:
        rows = interleaved(args.methods.split(","), args)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
        print(render(rows, args))
        return None
    rows = []
    flags = ["--prefill-length", str(args.prefill_length), "--batches",
             ",".join(map(str, args.batches)), "--new-tokens",
             str(args.new_tokens), "--repeats", str(args.repeats),
             "--calibration-samples", str(args.calibration_samples)]
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            path = os.path.join(tmp, f"{method}.json")
            subprocess.run([sys.executable, __file__, *flags, "--worker",
                            method, path], check=True)
            with open(path) as f:
                rows.append(json.load(f))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    print(render(rows, args))


if __name__ == "__main__":
    main()
