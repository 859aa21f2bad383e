"""What the benchmark scripts share: one method per fresh process.

Each benchmark row (a quantization method on a model) runs in its own
Python process, so that peak RSS and timings belong to that row alone.
`run_worker` starts `script --worker METHOD --result FILE FLAGS...` and
returns the JSON row the worker wrote; `peak_rss_mb` and `dir_mb` are the
measurements every worker takes.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def peak_rss_mb():
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_mb(path):
    """The total size of the files under `path`, in MB."""
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names) / 1e6


def run_worker(script, method, flags, python=None):
    """Runs `method` of `script` in a fresh process; returns its JSON row.

    Args:
        script: path of the benchmark script; it must accept
            `--worker METHOD --result PATH` plus `flags` and write its row
            as JSON to PATH.
        method: the method name passed to `--worker`.
        flags: list of further command-line arguments.
        python: the interpreter (default: this one).
    Returns:
        The row the worker wrote, or `{"method": method, "error": code}`
        when the process failed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [python or sys.executable, os.path.abspath(script), "--worker",
               method, "--result", path] + list(flags)
        print(f"--- {method}: {' '.join(cmd[2:])}", flush=True)
        proc = subprocess.run(cmd, env=dict(os.environ,
                                            TF_CPP_MIN_LOG_LEVEL="3"))
        if proc.returncode != 0:
            print(f"--- {method} failed with exit code {proc.returncode}",
                  flush=True)
            return {"method": method, "error": proc.returncode}
        with open(path) as f:
            return json.load(f)


def chosen(text, allowed, flag):
    """The comma-separated names of `text`; exits naming `flag` and the
    allowed names when one is unknown."""
    names = text.split(",")
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        sys.exit(f"{flag} must only name {list(allowed)}; unknown: "
                 f"{unknown}")
    return names


def time_generate(model, prompt, batch, total, repeats):
    """Best-of-`repeats` seconds for `model.generate` to fill
    `[batch, total]` greedily from `prompt` (token ids; one warm-up call
    compiles the shape first)."""
    import numpy as np
    ids = np.zeros((batch, total), "int32")
    ids[:, :len(prompt)] = prompt
    mask = np.zeros((batch, total), bool)
    mask[:, :len(prompt)] = True
    inputs = {"token_ids": ids, "padding_mask": mask}
    model.generate(inputs, stop_token_ids=None)  # compiles this shape
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(inputs, stop_token_ids=None)
        best = min(best, time.perf_counter() - start)
    return best
