"""GPTQ against round-to-nearest on the real models, with the share of
RTN's perplexity loss that GPTQ recovers.

Models: `smollm2` (SmolLM2-135M-Instruct, `keras_gptq.examples.bundled`),
`qwen2.5-0.5b` and `qwen2.5-1.5b` (Qwen2.5-Coder-Instruct,
`keras_gptq.examples.qwen`). Their float32 weights are dequantized GGUF
files (4/5-bit blocks), not the original releases.

Methods, all 4-bit, group 128, asymmetric grid:
  float        the float32 model
  rtn-4        round-to-nearest on the same grid and storage
  gptq-4       GPTQ, default settings + act-order
  gptq-4-best  GPTQ, act-order + static groups + mse + asymmetric
               calibration (GPTAQ): seed_table.py's `gptq-4-best`
GPTQ calibrates on `--samples` x `--seq-len` tokens of
`bundled.calibration_texts()`; perplexity is `keras_gptq.evaluate_perplexity`
on the first `--eval-windows` x 512 tokens of `bundled.evaluation_texts()`
(disjoint articles). recovered = (RTN - method) / (RTN - float).

Each method runs in its own fresh process (peak RSS is its own: loading +
quantizing), one after the other. With `--low-memory` the GPTQ methods
quantize the model's converted Hugging Face folder block by block
(`keras_gptq.quantize_preset`, never holding the float model), save the
preset under `--preset-dir` (default: a temporary folder) and score it
reloaded; a preset already there from an earlier run (its
`keras_gptq_row.json` beside it) is scored again without quantizing. Rows are saved as they finish in
`<out>.json`; `--reuse <out>.json` skips methods already measured.

Usage (from the repository root, keras_gptq installed or PYTHONPATH=.):
    KERAS_BACKEND=jax nice python benchmarks/real_models.py --model qwen2.5-0.5b
    python benchmarks/real_models.py --model smollm2 --methods float,rtn-4
Writes benchmarks/real_models_<model>.md and .json (override with --out).
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _worker  # noqa: E402  (benchmarks/_worker.py)

MODELS = ("smollm2", "qwen2.5-0.5b", "qwen2.5-1.5b")
# method -> (label, GPTQConfig switches; None for float / RTN)
METHODS = {
    "float": ("float32", None),
    "rtn-4": ("RTN 4-bit g128", None),
    "gptq-4-sink1": ("GPTQ 4-bit g128, act-order, every position weighs 1 "
                     "(before the sink weight)",
                     {"activation_order": True, "sink_weight": 1.0}),
    "gptq-4": ("GPTQ 4-bit g128, act-order (default sink weight)",
               {"activation_order": True}),
    "gptq-4-best": ("GPTQ 4-bit g128, act-order + static groups + mse + "
                    "asymmetric calibration (GPTAQ)",
                    {"activation_order": True, "static_groups": True,
                     "mse": True, "asymmetric_calibration": True}),
}


def load(model_name):
    """Loads one of `MODELS` as a KerasHub CausalLM (the CLI's loader)."""
    from keras_gptq.cli import common
    return common.load_model("default" if model_name == "smollm2"
                             else model_name)


def _quantize(method, model, args):
    """Applies `method` in place; returns (seconds, per-layer summary)."""
    import keras_gptq
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines
    start = time.perf_counter()
    if method == "rtn-4":
        baselines.rtn_packed(model, 4, 128)
    elif METHODS[method][1] is not None:
        report = keras_gptq.quantize(model, keras_gptq.GPTQConfig(
            dataset=bundled.calibration_texts(),
            tokenizer=model.preprocessor.tokenizer, weight_bits=4,
            group_size=128, num_samples=args.samples,
            sequence_length=args.seq_len, **METHODS[method][1]),
            verbose=False)
        return time.perf_counter() - start, [
            [layer.name, layer.rtn_error, layer.gptq_error, layer.damping]
            for layer in report.layers]
    return time.perf_counter() - start, None


def _low_memory(method, args, preset_dir):
    """`quantize_preset` of the model's float HF folder into
    `preset_dir/method` (reused when already there); returns `(model,
    load seconds, quantize seconds, per-layer summary)`."""
    import keras_hub

    import keras_gptq
    from keras_gptq.examples import bundled
    out = os.path.join(preset_dir, method)
    sidecar = os.path.join(out, "keras_gptq_row.json")
    if not os.path.isfile(sidecar):
        folder = _worker.hf_folder(args.model)
        start = time.perf_counter()
        report = keras_gptq.quantize_preset(folder, out, keras_gptq.GPTQConfig(
            dataset=bundled.calibration_texts(),
            tokenizer=keras_hub.tokenizers.Tokenizer.from_preset(folder),
            weight_bits=4, group_size=128, num_samples=args.samples,
            sequence_length=args.seq_len, **METHODS[method][1]),
            verbose=False)
        with open(sidecar, "w") as f:
            json.dump({"quant_s": time.perf_counter() - start,
                       "layers": [[e.name, e.rtn_error, e.gptq_error,
                                   e.damping] for e in report.layers]}, f)
    with open(sidecar) as f:
        row = json.load(f)
    start = time.perf_counter()
    model = keras_hub.models.CausalLM.from_preset(out)
    return (model, time.perf_counter() - start, row["quant_s"],
            row["layers"])


def worker(method, result_path, args):
    """Runs one method in this process and writes its numbers as JSON."""
    import keras
    import keras_gptq
    from keras_gptq.examples import bundled
    if args.low_memory and METHODS[method][1] is not None:
        model, load_s, quant_s, layers = _low_memory(method, args,
                                                     args.preset_dir)
    else:
        start = time.perf_counter()
        model = load(args.model)
        load_s = time.perf_counter() - start
        quant_s, layers = _quantize(method, model, args)
    out = {"method": method, "load_s": load_s, "quant_s": quant_s,
           "peak_rss_mb": _worker.peak_rss_mb(),
           "backend": keras.config.backend(),
           "load_avg": os.getloadavg()[0], "layers": layers}
    out["perplexity"] = keras_gptq.evaluate_perplexity(
        model, bundled.evaluation_texts(), model.preprocessor.tokenizer,
        sequence_length=512, max_tokens=512 * args.eval_windows + 1)
    with open(result_path, "w") as f:
        json.dump(out, f)


def _run_worker(method, args):
    """Runs `method` in a fresh process; its row, or `{"error": code}`."""
    low = ["--low-memory", "--preset-dir", args.preset_dir] if (
        args.low_memory) else []
    return _worker.run_worker(__file__, method, ["--model", args.model]
                              + _worker.row_flags(args) + low)


def recovered(row, rows):
    """(RTN - row) / (RTN - float) perplexity, or None without both."""
    by = {r["method"]: r.get("perplexity") for r in rows}
    if by.get("float") is None or by.get("rtn-4") is None:
        return None
    return (by["rtn-4"] - row["perplexity"]) / (by["rtn-4"] - by["float"])


def render(rows, args):
    """The markdown table of `rows`."""
    lines = [
        f"# {args.model}: GPTQ vs round-to-nearest, 4-bit g128",
        "",
        f"Generated by `benchmarks/real_models.py --model {args.model}` on "
        f"{time.strftime('%Y-%m-%d')}, backend "
        f"`{rows[0].get('backend', '?')}`. Float weights: a dequantized "
        "4/5-bit GGUF. Calibration: "
        f"{args.samples} x {args.seq_len} tokens of the bundled calibration "
        f"text; perplexity: {args.eval_windows} x 512 tokens of the bundled "
        "evaluation text. Peak RSS: loading + quantizing, one process per "
        "method; load: 1-minute load average when quantization ended "
        "(2 cores).",
        "",
        "| method | perplexity | vs float | RTN loss recovered | quantize (s) "
        "| peak RSS (MB) | load |",
        "|---|---|---|---|---|---|---|",
    ]
    base = next((r.get("perplexity") for r in rows if r["method"] == "float"),
                None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {METHODS[r['method']][0]} | failed (exit "
                         f"{r['error']}) | | | | | |")
            continue
        share = recovered(r, rows) if r["method"].startswith("gptq") else None
        lines.append(
            f"| {METHODS[r['method']][0]} | {r['perplexity']:.2f} | "
            + (f"{100 * (r['perplexity'] / base - 1):+.1f}%" if base else "")
            + " | " + (f"{100 * share:.0f}%" if share is not None else "")
            + f" | {r['quant_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['load_avg']:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, default="qwen2.5-0.5b")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--out", default=None,
                   help="output path without extension (default: "
                        "benchmarks/real_models_<model>)")
    p.add_argument("--low-memory", action="store_true",
                   help="GPTQ rows quantize the HF folder block by block "
                        "(quantize_preset), then score the saved preset")
    p.add_argument("--preset-dir", default=None,
                   help="with --low-memory: where the GPTQ presets are "
                        "saved, and reused from (default: a temporary "
                        "folder)")
    _worker.add_row_flags(p, samples=128)
    return p.parse_args(argv)


def main(argv=None):
    """Runs every method in its own process; writes the table as it goes."""
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.result, args)
    methods = _worker.chosen(args.methods, METHODS, "--methods")
    args.out = args.out or os.path.join(HERE, "real_models_" + args.model)
    with tempfile.TemporaryDirectory() as tmp:
        args.preset_dir = args.preset_dir or tmp
        _worker.run_rows(methods, lambda method: _run_worker(method, args),
                         render, args)


if __name__ == "__main__":
    main()
