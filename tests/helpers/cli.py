"""Running the `keras-gptq` command in a subprocess."""

import os
import subprocess
import sys


def run_cli(*args):
    """Runs `python -m keras_gptq.cli ARGS`; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_gptq.cli", *args],
                          capture_output=True, text=True, env=env,
                          timeout=300)
