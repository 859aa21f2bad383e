"""The `keras-gptq` command: quantize, evaluate and inspect presets.

A thin layer over the library: every subcommand parses its flags, loads what
it needs and calls the public API (`GPTQConfig`, `quantize`,
`evaluate_perplexity`). Keras is imported lazily, inside the commands, so
that `--backend` can still choose the backend.

Exit codes: 0 success, 1 error reported by the library (one line on stderr,
`--debug` for the traceback), 2 usage error, 130 interrupted.

Examples:

```
keras-gptq quantize default --out smollm2-gptq --act-order --backend jax
keras-gptq eval smollm2-gptq --max-tokens 20000
keras-gptq inspect smollm2-gptq
keras-gptq export-hf smollm2-gptq --out smollm2-gptq-hf
keras-gptq import-hf smollm2-gptq-hf --out smollm2-gptq-again
```
"""

import argparse
import json
import math
import os
import re
import sys

_BACKENDS = ("jax", "tensorflow", "torch")
_BUNDLED, _WIKITEXT, _DEFAULT_MODEL = "bundled", "wikitext", "default"
_REEXEC_MARKER = "_KERAS_GPTQ_CLI_REEXEC"


class CLIError(Exception):
    """An error the CLI reports as `keras-gptq: error: ...` (exit code 1)."""


def _common_parser():
    """Flags every subcommand accepts."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend", choices=_BACKENDS, default=None,
        help="Keras backend to run on (default: $KERAS_BACKEND or Keras's "
             "configured backend).")
    common.add_argument(
        "--debug", action="store_true",
        help="on error, print the full Python traceback.")
    return common


def _add_model_argument(parser):
    parser.add_argument(
        "preset", metavar="PRESET_OR_FOLDER",
        help="a KerasHub preset folder, a Hugging Face-style folder KerasHub "
             "can convert, a KerasHub preset handle, or 'default' for the "
             "bundled SmolLM2-135M-Instruct.")


def _add_data_arguments(parser, default_text):
    parser.add_argument(
        "--dataset", default=_BUNDLED, metavar="FILE|bundled|wikitext",
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


def _add_quantize_parser(subparsers, common):
    p = subparsers.add_parser(
        "quantize", parents=[common],
        help="quantize a model with GPTQ and save it as a KerasHub preset.",
        description="Quantize the Dense/EinsumDense layers of a causal LM "
                    "with GPTQ, print the per-layer report and save the "
                    "model with `save_to_preset`.")
    _add_model_argument(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to save the quantized preset to (an existing "
                        "preset there is replaced only once the new one is "
                        "completely written).")
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8),
                   help="bits per weight (default: 4).")
    p.add_argument("--group-size", type=int, default=128, metavar="N",
                   help="input columns sharing one scale and zero point; "
                        "-1 for one per output channel (default: 128).")
    p.add_argument("--act-order", action="store_true",
                   help="quantize columns in order of decreasing Hessian "
                        "diagonal (act-order, desc_act).")
    p.add_argument("--static-groups", action="store_true",
                   help="with --act-order and groups: fit every group's "
                        "grid up front from the original weights.")
    p.add_argument("--mse", action="store_true",
                   help="search shrunken ranges for each grid (lower "
                        "rounding error, a little slower).")
    p.add_argument("--true-sequential", action="store_true",
                   help="quantize a block's layers in execution order, each "
                        "on inputs from the already-quantized ones.")
    p.add_argument("--asymmetric-calibration", action="store_true",
                   help="GPTAQ: fit each layer to the float model's output, "
                        "correcting earlier blocks' error (about twice the "
                        "forward passes).")
    p.add_argument("--symmetric", action="store_true",
                   help="symmetric grid (zero point fixed at the middle).")
    p.add_argument("--damping", type=float, default=0.01, metavar="F",
                   help="Hessian damping, a fraction of its mean diagonal "
                        "(default: 0.01).")
    p.add_argument("--samples", type=int, default=128, metavar="N",
                   help="number of calibration windows (default: 128).")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for choosing the calibration windows "
                        "(default: 0).")
    _add_data_arguments(p, "bundled.calibration_texts()")
    p.set_defaults(command=quantize_command)


def _add_eval_parser(subparsers, common):
    p = subparsers.add_parser(
        "eval", parents=[common],
        help="print the perplexity of a model on evaluation text.",
        description="Sliding-window perplexity (disjoint windows) of a "
                    "causal LM, float or quantized.")
    _add_model_argument(p)
    _add_data_arguments(p, "bundled.evaluation_texts()")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="use at most N tokens of the data (default: all).")
    p.set_defaults(command=eval_command)


def _add_inspect_parser(subparsers, common):
    p = subparsers.add_parser(
        "inspect", parents=[common],
        help="show the packed layers of a keras_gptq preset and its size.",
        description="Per-layer bits, group size and packed vs float bytes "
                    "of a keras_gptq preset, read from config.json and "
                    "model.weights.h5 without building the model.")
    p.add_argument("preset", metavar="PRESET_FOLDER",
                   help="a folder written by `keras-gptq quantize` (or by "
                        "`save_to_preset` after `keras_gptq.quantize`).")
    p.set_defaults(command=inspect_command)


def build_parser():
    """Returns the `keras-gptq` argument parser (no Keras import)."""
    parser = argparse.ArgumentParser(
        prog="keras-gptq",
        description="GPTQ post-training quantization for Keras 3 / KerasHub.",
        epilog="Exit codes: 0 success, 1 error, 2 usage error, 130 "
               "interrupted.")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND",
                                       required=True)
    common = _common_parser()
    _add_quantize_parser(subparsers, common)
    _add_eval_parser(subparsers, common)
    _add_inspect_parser(subparsers, common)
    from keras_gptq import cli_hf  # export-hf, import-hf
    cli_hf.add_parsers(subparsers, common)
    return parser


def select_backend(backend, argv):
    """Makes Keras run on `backend`; re-executes the CLI if Keras is loaded.

    Importing `keras_gptq` imports Keras, so by the time this module runs the
    backend may already be fixed; then the command is run again in a fresh
    interpreter with `KERAS_BACKEND` set (at most once).

    Raises:
        CLIError: the re-executed process still has another backend.
    """
    if backend is None:
        return
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = backend
        return
    if keras.config.backend() == backend:
        return
    if os.environ.get(_REEXEC_MARKER):
        raise CLIError(f"could not switch Keras to the {backend!r} backend "
                       f"(it is {keras.config.backend()!r}).")
    env = dict(os.environ, KERAS_BACKEND=backend, **{_REEXEC_MARKER: "1"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable,
              [sys.executable, "-m", "keras_gptq.cli", *argv], env)


def load_model(preset):
    """Loads a `CausalLM` from a folder, a handle, or 'default' (bundled)."""
    if preset == _DEFAULT_MODEL:
        from keras_gptq import bundled
        return bundled.load_default_model()
    looks_like_path = os.sep in preset or preset.startswith(".")
    if "://" not in preset and not os.path.exists(preset) and looks_like_path:
        raise CLIError(f"no such preset folder: {preset!r}.")
    if os.path.exists(preset) and not os.path.isdir(preset):
        raise CLIError(f"{preset!r} is a file; pass the preset folder.")
    import keras_hub
    return keras_hub.models.CausalLM.from_preset(preset)


def load_data(dataset, evaluation):
    """Returns text or token ids for `--dataset`, in a form the library takes.

    Args:
        dataset: a file path, 'bundled' or 'wikitext'.
        evaluation: True for evaluation text, False for calibration text.
    """
    from keras_gptq import bundled
    if dataset == _BUNDLED:
        return (bundled.evaluation_texts() if evaluation
                else bundled.calibration_texts())
    if dataset == _WIKITEXT:
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


def _tokenizer(model):
    preprocessor = getattr(model, "preprocessor", None)
    return getattr(preprocessor, "tokenizer", None)


def quantize_command(args):
    """`keras-gptq quantize`: GPTQ-quantizes a model and saves the preset."""
    import keras_gptq
    model = load_model(args.preset)
    config = keras_gptq.GPTQConfig(
        dataset=load_data(args.dataset, evaluation=False),
        tokenizer=_tokenizer(model), weight_bits=args.bits,
        num_samples=args.samples, sequence_length=args.seq_len,
        hessian_damping=args.damping, group_size=args.group_size,
        symmetric=args.symmetric, activation_order=args.act_order,
        static_groups=args.static_groups, mse=args.mse,
        true_sequential=args.true_sequential,
        asymmetric_calibration=args.asymmetric_calibration, seed=args.seed)
    report = keras_gptq.quantize(model, config, verbose=not args.quiet)
    if not args.quiet:
        print(report)
    model.save_to_preset(args.out)
    print(f"Saved the quantized preset to {args.out}")
    return 0


def eval_command(args):
    """`keras-gptq eval`: prints a model's perplexity."""
    import keras
    import keras_gptq
    model = load_model(args.preset)
    perplexity = keras_gptq.evaluate_perplexity(
        model, load_data(args.dataset, evaluation=True),
        tokenizer=_tokenizer(model), sequence_length=args.seq_len,
        max_tokens=args.max_tokens, verbose=not args.quiet)
    print(f"perplexity: {perplexity:.4f} (backend {keras.config.backend()})")
    return 0


# --------------------------------------------------------------- inspect --

_FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def read_policies(config_path):
    """Returns `({layer path: (bits, group_size)}, float dtype name)`.

    Reads the backbone's serialized `DTypePolicyMap` and keeps the
    `keras_gptq>PackedGPTQPolicy` entries.
    """
    with open(config_path, encoding="utf-8") as f:
        dtype = json.load(f).get("config", {}).get("dtype")
    policy_map = dtype.get("config", {}).get("policy_map", {}) if (
        isinstance(dtype, dict)) else {}
    policies, source = {}, None
    for path, policy in policy_map.items():
        if str(policy.get("registered_name", "")) != (
                "keras_gptq>PackedGPTQPolicy"):
            continue
        _, bits, group = policy["config"]["mode"].split("/")
        policies[path] = (int(bits), int(group))
        source = source or policy["config"].get("source_name")
    default = dtype.get("config", {}).get("default_policy") if (
        isinstance(dtype, dict)) else None
    name = source or (default if isinstance(default, str) else None)
    return policies, name or "float32"


def _packed_layer(vars_group):
    """`(rows, columns, bits, groups, packed_bytes)` of one h5 `vars` group
    holding keras_gptq packed storage, or None."""
    names = sorted(vars_group.keys(), key=int)
    if len(names) not in (4, 5):
        return None
    q, scale, zero, g_idx = (vars_group[n] for n in names[-4:])
    dtypes = [str(d.dtype) for d in (q, scale, zero, g_idx)]
    if dtypes != ["uint8", "float32", "uint8", "int32"] or g_idx.ndim != 1:
        return None
    rows, columns = q.shape[0], g_idx.shape[0]
    if scale.shape != zero.shape or scale.shape[0] != rows or (
            q.shape[1] % math.ceil(columns / 8)):
        return None
    packed = sum(d.size * d.dtype.itemsize for d in (q, scale, zero, g_idx))
    return rows, columns, q.shape[1] // math.ceil(columns / 8), (
        scale.shape[1]), packed


def _readable(h5_path):
    """`layers/decoder_1/_attention/_query/vars` -> `decoder_1/attention/query`.

    The weights file names layers by their attribute names, without the
    private underscores (the model is not built, so its own layer paths are
    unknown here).
    """
    parts = h5_path.removeprefix("layers/").split("/")[:-1]
    return "/".join(part.lstrip("_") or part for part in parts)


def _natural_key(name):
    """Sorts `block_2` before `block_10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_packed_layers(weights_path):
    """Returns `[(layer name, rows, columns, bits, groups, bytes)]`, layers
    named readably (see `_readable`) in natural order."""
    import h5py
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.endswith("/vars"):
            entry = _packed_layer(obj)
            if entry is not None:
                found.append((_readable(name), *entry))

    with h5py.File(weights_path, "r") as f:
        f.visititems(visit)
    return sorted(found, key=lambda entry: _natural_key(entry[0]))


def _group_size(columns, bits, groups, modes):
    """The group size of a layer, taken from the policy modes that fit."""
    fits = {g for b, g in modes if b == bits and (
        (groups == 1 and g in (-1, columns)) or (
            g > 0 and math.ceil(columns / g) == groups))}
    if len(fits) == 1:
        return fits.pop()
    return -1 if groups == 1 else math.ceil(columns / groups)


def inspect_command(args):
    """`keras-gptq inspect`: prints the packed layers and the size saving."""
    folder = args.preset
    config_path = os.path.join(folder, "config.json")
    weights_path = os.path.join(folder, "model.weights.h5")
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise CLIError(f"{path!r} not found: is {folder!r} a KerasHub "
                           "preset folder?")
    policies, float_dtype = read_policies(config_path)
    layers = read_packed_layers(weights_path)
    if not policies or not layers:
        raise CLIError(f"{folder!r} holds no keras_gptq packed layers.")
    if len(policies) != len(layers):
        print(f"warning: config.json lists {len(policies)} packed layers but "
              f"model.weights.h5 holds {len(layers)}.", file=sys.stderr)
    modes = set(policies.values())
    width = _FLOAT_BYTES.get(float_dtype, 4)
    pad = max(len("layer"), *(len(entry[0]) for entry in layers))
    print(f"{'layer':<{pad}} {'shape':>11} {'bits':>4} {'group':>5} "
          f"{'packed B':>10} {float_dtype + ' B':>12}")
    packed_total = float_total = 0
    for name, rows, columns, bits, groups, packed in layers:
        group = _group_size(columns, bits, groups, modes)
        floats = rows * columns * width
        packed_total, float_total = packed_total + packed, float_total + floats
        print(f"{name:<{pad}} {f'{rows}x{columns}':>11} {bits:>4} "
              f"{group:>5} {packed:>10} {floats:>12}")
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(folder) for f in files)
    as_float = size - packed_total + float_total
    print(f"{len(layers)} packed layers: {packed_total} bytes packed vs "
          f"{float_total} bytes {float_dtype} "
          f"({float_total / max(packed_total, 1):.2f}x smaller)")
    print(f"preset size: {size} bytes; with these layers in {float_dtype}: "
          f"{as_float} bytes ({as_float / max(size, 1):.2f}x)")
    return 0


def main(argv=None):
    """Runs the `keras-gptq` command line; returns the exit code.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).

    Returns:
        0 on success, 1 on an error, 130 when interrupted (argparse exits
        with 2 itself on a usage error).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        select_backend(args.backend, argv)
        return args.command(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("keras-gptq: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the library's errors say what to fix
        if args.debug:
            raise
        message = str(err) or type(err).__name__
        print(f"keras-gptq: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
