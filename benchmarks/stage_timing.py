"""Where a quantization run's time goes: the report's per-stage split.

Quantizes the bundled model (or another `--model`) with the demo's default
settings (4-bit g128, act-order, static groups, mse, GPTAQ) and any demo
flag given after the script's own, then prints the report's stage table
(`QuantizationReport.stage_seconds`) as markdown, with the machine's load
average (the times are only as steady as the machine is idle).

Usage:
    KERAS_BACKEND=jax python benchmarks/stage_timing.py \
        [--model default] [demo flags, e.g. --samples 8 --seq-len 256]
"""

import argparse
import os
import sys


def render(report, load_before, load_after):
    """The markdown table of `report`'s stages, share of the wall time."""
    lines = ["| stage | seconds | share |", "|---|---:|---:|"]
    for name, seconds in report.stage_seconds().items():
        share = seconds / report.seconds if report.seconds else 0.0
        lines.append(f"| {name} | {seconds:.1f} | {share:.0%} |")
    lines.append(f"| **total** | **{report.seconds:.1f}** | |")
    lines.append(f"\n{report.calibration_tokens} calibration tokens, "
                 f"{len(report.layers)} layers; load average "
                 f"{load_before:.1f} before, {load_after:.1f} after.")
    return "\n".join(lines)


def main(argv=None):
    """Runs one quantization and prints its stage table."""
    own = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    own.add_argument("--model", default="default",
                     help="a preset folder, 'default' (bundled SmolLM2) or "
                     "a name of keras_gptq.cli.common.QWEN_MODELS")
    args, rest = own.parse_known_args(argv)
    import keras_gptq
    from keras_gptq.cli import common
    from keras_gptq.examples import bundled
    from keras_gptq.examples import demo

    settings = demo.parse_args(rest)
    model = common.load_model(args.model)
    tokenizer = model.preprocessor.tokenizer
    config = common.config_from_args(settings, bundled.calibration_texts(),
                                     tokenizer)
    load_before = os.getloadavg()[0]
    report = keras_gptq.quantize(model, config, verbose=False)
    print(render(report, load_before, os.getloadavg()[0]))
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
