"""keras_gptq against llm-compressor on the same model, windows and settings.

One run, one table. Every row runs in its own process (its own peak RSS):
1. `windows`: the calibration windows keras_gptq builds for the model
   (start token first where its preprocessor adds one, documents joined by
   the end token), saved as a `[num_samples, seq_len]` token array;
2. `float` and `rtn`: the float model and round-to-nearest at the same
   bits and group size;
3. `keras_gptq`: GPTQ on exactly those windows (the 2-D array is used row
   for row), at llm-compressor's settings (act-order with static groups,
   which is what llm-compressor's default `actorder="weight"` does, or no
   act-order; damping 0.01 of the mean diagonal; block 128; asymmetric
   min-max grid); `keras_gptq-best` adds keras_gptq's best settings;
4. `llm-compressor`: `GPTQModifier` through `oneshot` in its own virtualenv
   (`benchmarks/peer_llmcompressor.py`, transformers float32, sequential
   pipeline) on the same windows; its dequantized weights are loaded into
   KerasHub and scored here, so every perplexity is computed by the same
   code on the same tokens.

Usage:
    KERAS_BACKEND=jax python benchmarks/peer_compare.py \
        [--model default|qwen2.5-0.5b] [--samples 128] [--seq-len 256] \
        [--group-size 128] [--actorder weight|none] \
        [--peer-python /work/venv-llmc/bin/python]

llm-compressor cannot group 128 over SmolLM2's 576 columns (it requires
the width to be a multiple of the group size); use `--group-size 64` there.
Writes `benchmarks/peer_compare_<model>_g<group>.{md,json}`.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ("float", "rtn", "keras_gptq", "keras_gptq-best", "llm-compressor")
BEST = dict(asymmetric_calibration=True, mse=True)


def hf_folder(model_name):
    """The Hugging Face folder the model is loaded from (converted once)."""
    from keras_gptq.examples import bundled
    from keras_gptq.examples import qwen
    if model_name == "default":
        return bundled.default_model_folder()
    return qwen.qwen2_5_folder(model_name.split("-")[-1])


def load_folder(model_name, folder):
    """Loads a float HF folder of `model_name`'s architecture as a CausalLM."""
    import keras_hub
    from keras_gptq.examples import bundled
    if model_name == "default":
        return bundled.load_llama_folder(folder)
    return keras_hub.models.QwenCausalLM.from_preset(folder)


def _gptq_settings(args, best=False):
    settings = dict(weight_bits=args.bits, group_size=args.group_size,
                    activation_order=args.actorder == "weight",
                    static_groups=args.actorder == "weight",
                    hessian_damping=0.01, block_size=128, symmetric=False,
                    calibration_batch_size=8)
    if best:
        settings.update(BEST)
    return settings


def worker(method, result_path, args):
    """Runs one row in this process and writes it as JSON."""
    import keras
    import numpy as np

    import keras_gptq
    from keras_gptq.examples import bundled
    from keras_gptq.model import baselines
    from keras_gptq.model import calibration

    folder = args.peer_folder if method == "llm-compressor" else \
        hf_folder(args.model)
    start = time.perf_counter()
    model = load_folder(args.model, folder)
    out = {"method": method, "load_s": time.perf_counter() - start,
           "backend": keras.config.backend(), "quant_s": 0.0}
    tokenizer = model.preprocessor.tokenizer
    if method == "windows":
        windows = calibration.calibration_windows(
            bundled.calibration_texts(), tokenizer, args.samples,
            args.seq_len, seed=0,
            framing=calibration.model_framing(model, tokenizer, "auto"))
        np.save(args.windows, windows)
        out["first_tokens"] = windows[:, 0].tolist()[:4]
    start = time.perf_counter()
    if method == "rtn":
        baselines.rtn_packed(model, args.bits, args.group_size)
    elif method.startswith("keras_gptq"):
        config = keras_gptq.GPTQConfig(
            dataset=np.load(args.windows), num_samples=args.samples,
            sequence_length=args.seq_len,
            **_gptq_settings(args, best=method.endswith("best")))
        keras_gptq.quantize(model, config, verbose=False)
    if method != "llm-compressor":
        out["quant_s"] = time.perf_counter() - start
    out["peak_rss_mb"] = _worker.peak_rss_mb()
    out["load_avg"] = os.getloadavg()[0]
    if method != "windows":
        out["perplexity"] = keras_gptq.evaluate_perplexity(
            model, bundled.evaluation_texts(), tokenizer,
            sequence_length=512, max_tokens=512 * args.eval_windows + 1)
    with open(result_path, "w") as f:
        json.dump(out, f)


def run_peer(args, tmp):
    """Runs llm-compressor in its venv; returns its timings (or an error)."""
    result = os.path.join(tmp, "peer.json")
    cmd = [args.peer_python, os.path.join(HERE, "peer_llmcompressor.py"),
           "--model-dir", hf_folder(args.model), "--windows", args.windows,
           "--out", args.peer_folder, "--result", result,
           "--bits", str(args.bits), "--group-size", str(args.group_size),
           "--actorder", args.actorder, "--damping", "0.01"]
    print(f"--- llm-compressor: {' '.join(cmd)}", flush=True)
    log = os.path.join(tmp, "peer.log")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log) as f:
            print(f.read()[-3000:])
        return {"error": proc.returncode}
    with open(result) as f:
        return json.load(f)


def _flags(args):
    return ["--model", args.model, "--samples", str(args.samples),
            "--seq-len", str(args.seq_len), "--bits", str(args.bits),
            "--group-size", str(args.group_size), "--actorder", args.actorder,
            "--eval-windows", str(args.eval_windows),
            "--windows", args.windows, "--peer-folder", args.peer_folder]


def render(rows, args):
    """The markdown page for `rows` (a dict method -> row)."""
    flt = rows.get("float", {}).get("perplexity")
    rtn = rows.get("rtn", {}).get("perplexity")
    lines = [
        f"# keras_gptq vs llm-compressor: {args.model}, {args.bits}-bit "
        f"g{args.group_size}", "",
        f"Generated by `benchmarks/peer_compare.py {' '.join(sys.argv[1:])}`"
        f" on {datetime.date.today()}. Calibration: the same "
        f"{args.samples} x {args.seq_len} token windows for both tools; "
        f"act-order: {args.actorder}; perplexity on {args.eval_windows} x "
        "512 tokens of the bundled evaluation text, scored by keras_gptq "
        "for every row (llm-compressor's dequantized weights loaded into "
        "KerasHub). Each row ran in its own process; load: 1-minute load "
        "average (2 cores) when the row finished.", "",
        "| method | perplexity | RTN loss recovered | quantize (s) | "
        "peak RSS (MB) | load |", "|---|---|---|---|---|---|"]
    for name in ROWS:
        row = rows.get(name)
        if row is None:
            continue
        if "error" in row:
            lines.append(f"| {name} | failed ({row['error']}) | | | | |")
            continue
        ppl = row["perplexity"]
        rec = "" if name in ("float", "rtn") or None in (flt, rtn) else \
            f"{100 * (rtn - ppl) / (rtn - flt):.0f}%"
        lines.append(f"| {name} | {ppl:.3f} | {rec} | {row['quant_s']:.0f} "
                     f"| {row['peak_rss_mb']:.0f} | {row['load_avg']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default",
                        choices=["default", "qwen2.5-0.5b", "qwen2.5-1.5b"])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--actorder", default="weight",
                        choices=["weight", "none"])
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--peer-python", default=os.environ.get(
        "KERAS_GPTQ_LLMC_PYTHON", "/work/venv-llmc/bin/python"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--windows", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peer-folder", default=None,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs every row, prints the table and writes the md/json files."""
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.result, args)
    chosen = _worker.chosen(args.rows, ROWS, "--rows")
    if "llm-compressor" in chosen and not os.path.exists(args.peer_python):
        raise SystemExit(
            f"--peer-python {args.peer_python} does not exist. Create it: "
            "python3 -m venv /work/venv-llmc && /work/venv-llmc/bin/pip "
            "install torch==2.13.0 llmcompressor==0.14.0.1")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        args.windows = os.path.join(tmp, "windows.npy")
        args.peer_folder = os.path.join(tmp, "peer_model")
        script = os.path.abspath(__file__)
        windows = _worker.run_worker(script, "windows", _flags(args))
        if "error" in windows:
            raise SystemExit("Building the calibration windows failed.")
        for name in chosen:
            if name == "llm-compressor":
                peer = run_peer(args, tmp)
                if "error" in peer:
                    rows[name] = {"method": name, "error": peer["error"]}
                    continue
                row = _worker.run_worker(script, name, _flags(args))
                if "error" not in row:
                    row.update(quant_s=peer["quantize_s"],
                               peak_rss_mb=peer["peak_rss_mb"],
                               peer=peer)
                rows[name] = row
            else:
                rows[name] = _worker.run_worker(script, name, _flags(args))
            print(render(rows, args), flush=True)
    stem = os.path.join(HERE, f"peer_compare_{args.model}_g{args.group_size}")
    with open(stem + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(render(rows, args))
    print(f"Wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
