"""How much each calibration window's first position should weigh.

The first position of every window is the attention sink: every later
token attends to it. `GPTQConfig(sink_weight=w)` gives its rows weight `w`
in every Hessian (the others 1). This script quantizes a real model once
per weight (4-bit g128, act-order, the bundled calibration text) and
scores each on the bundled evaluation text, with float32 and RTN rows for
the "RTN loss recovered" column. Each row runs in its own process.

Usage:
    KERAS_BACKEND=jax python benchmarks/sink_weight.py \
        [--model default|qwen2.5-0.5b] [--weights 0.1,1,3,10,30,100] \
        [--samples 32] [--seq-len 256]
"""

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(method, result_path, args):
    """Runs one row (`float`, `rtn` or a weight) and writes it as JSON."""
    import keras_gptq
    from keras_gptq.cli import common
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines

    model = common.load_model(args.model)
    tokenizer = model.preprocessor.tokenizer
    start = time.perf_counter()
    if method == "rtn":
        baselines.rtn_packed(model, 4, 128)
    elif method != "float":
        keras_gptq.quantize(model, keras_gptq.GPTQConfig(
            dataset=bundled.calibration_texts(), tokenizer=tokenizer,
            num_samples=args.samples, sequence_length=args.seq_len,
            activation_order=True, sink_weight=float(method)),
            verbose=False)
    out = {"method": method, "quant_s": time.perf_counter() - start,
           "load_avg": os.getloadavg()[0],
           "perplexity": keras_gptq.evaluate_perplexity(
               model, bundled.evaluation_texts(), tokenizer,
               sequence_length=512, max_tokens=512 * args.eval_windows + 1)}
    with open(result_path, "w") as f:
        json.dump(out, f)


def render(rows, args):
    """The markdown table of `rows` (a list of worker rows)."""
    by = {r["method"]: r for r in rows if "error" not in r}
    flt = by.get("float", {}).get("perplexity")
    rtn = by.get("rtn", {}).get("perplexity")
    lines = [f"`benchmarks/sink_weight.py {' '.join(sys.argv[1:])}` "
             f"({datetime.date.today()}): {args.model}, 4-bit g128 "
             f"act-order, {args.samples} x {args.seq_len} calibration "
             f"tokens, perplexity on {args.eval_windows} x 512 tokens.", "",
             "| sink weight | perplexity | RTN loss recovered | "
             "quantize (s) | load |", "|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | failed | | | |")
            continue
        ppl = row["perplexity"]
        rec = "" if row["method"] in ("float", "rtn") or None in (
            flt, rtn) else f"{100 * (rtn - ppl) / (rtn - flt):.0f}%"
        lines.append(f"| {row['method']} | {ppl:.3f} | {rec} | "
                     f"{row['quant_s']:.0f} | {row['load_avg']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--weights", default="1,3,10,30,100")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs float, RTN and every weight; prints the table."""
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.result, args)
    flags = ["--model", args.model, "--samples", str(args.samples),
             "--seq-len", str(args.seq_len),
             "--eval-windows", str(args.eval_windows)]
    rows = []
    for method in ["float", "rtn"] + args.weights.split(","):
        rows.append(_worker.run_worker(__file__, method, flags))
        print(render(rows, args), flush=True)


if __name__ == "__main__":
    main()
