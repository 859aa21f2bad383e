"""The `keras-gptq` command: quantize, evaluate, inspect, export and import.

A thin layer over the library: every subcommand (one module each) parses
its flags, loads what it needs and calls the public API. Exit codes: 0
success, 1 error reported by the library (one line on stderr, `--debug`
for the traceback), 2 usage error, 130 interrupted.

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
import os
import sys

from keras_gptq.cli import common
from keras_gptq.cli import evaluate
from keras_gptq.cli import hf
from keras_gptq.cli import inspect_preset
from keras_gptq.cli import quantize

REEXEC_MARKER = "_KERAS_GPTQ_CLI_REEXEC"
_COMMANDS = (quantize, evaluate, inspect_preset, hf)


def build_parser():
    """Returns the `keras-gptq` argument parser."""
    parser = argparse.ArgumentParser(
        prog="keras-gptq",
        description="GPTQ post-training quantization for Keras 3 / KerasHub.",
        epilog="Exit codes: 0 success, 1 error, 2 usage error, 130 "
               "interrupted.")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND",
                                       required=True)
    parent = common.common_parser()
    for command in _COMMANDS:
        command.add_parser(subparsers, parent)
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
    if os.environ.get(REEXEC_MARKER):
        raise common.CLIError(
            f"could not switch Keras to the {backend!r} backend (it is "
            f"{keras.config.backend()!r}).")
    env = dict(os.environ, KERAS_BACKEND=backend, **{REEXEC_MARKER: "1"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable,
              [sys.executable, "-m", "keras_gptq.cli", *argv], env)


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
