"""What the benchmark scripts share: one method per fresh process.

Each benchmark row (a quantization method on a model) runs in its own
Python process, so that peak RSS and timings belong to that row alone.
`run_worker` starts `script --worker METHOD --result FILE FLAGS...` and
returns the JSON row the worker wrote; `peak_rss_mb`, `weights_mb` and
`dir_mb` are the measurements every worker takes.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time


def peak_rss_mb():
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakSampler(threading.Thread):
    """Samples this process's RSS until stopped; keeps the peak."""

    def __init__(self):
        import psutil
        super().__init__(daemon=True)
        self.process, self.peak, self.running = psutil.Process(), 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.join()
        return self.peak


def weights_mb(model):
    """The bytes of every weight of `model` (packed levels, scales and float
    weights as stored), in MiB."""
    import numpy as np
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
               for v in model.weights) / 2**20


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


def preset_mb(model, prefix):
    """The size of `model.save_to_preset` (a temporary folder), in MB."""
    import shutil
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        model.save_to_preset(folder)
        return dir_mb(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def reused_rows(path):
    """`{method: row}` of the finished rows of a previous `.json` output
    (`path` None: none)."""
    if not path:
        return {}
    with open(path) as f:
        return {r["method"]: r for r in json.load(f)["rows"]
                if "error" not in r}


def run_rows(methods, run_one, render, args):
    """Runs `run_one(method)` for each of `methods` (or keeps its row from
    `args.reuse`); after each, writes `args.out` + `.json` (args and rows)
    and `.md` (`render(rows, args)`). Prints and returns the table."""
    reused = reused_rows(args.reuse)
    rows = []
    for method in methods:
        rows.append(reused.get(method) or run_one(method))
        page = write_outputs(rows, render, args)
    print(page)
    return page


def write_outputs(rows, render, args):
    """Writes `args.out` + `.json` (args and rows) and `.md` (the table
    `render(rows, args)`); returns the table."""
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    page = render(rows, args)
    with open(args.out + ".md", "w") as f:
        f.write(page + "\n")
    return page


def add_row_flags(parser, samples):
    """Adds the flags of a calibrate-and-score benchmark: `--samples`
    (default `samples`), `--seq-len`, `--eval-windows`, `--reuse` and the
    hidden `--worker`/`--result` of `run_worker`."""
    import argparse
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--reuse", default=None,
                        help="a previous .json; its finished rows are kept")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def row_flags(args):
    """The `add_row_flags` values of `args` as a worker's command-line
    flags (`--samples`, `--seq-len`, `--eval-windows`)."""
    return ["--samples", str(args.samples), "--seq-len", str(args.seq_len),
            "--eval-windows", str(args.eval_windows)]


def chosen(text, allowed, flag):
    """The comma-separated names of `text`; exits naming `flag` and the
    allowed names when one is unknown."""
    names = text.split(",")
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        sys.exit(f"{flag} must only name {list(allowed)}; unknown: "
                 f"{unknown}")
    return names


def time_generate(model, prompt, batch, total, repeats, compile_first=True):
    """Best-of-`repeats` seconds for `model.generate` to fill
    `[batch, total]` greedily from `prompt` (token ids; one warm-up call
    compiles the shape first unless `compile_first` is False; infinity
    when `repeats` is 0)."""
    import numpy as np
    ids = np.zeros((batch, total), "int32")
    ids[:, :len(prompt)] = prompt
    mask = np.zeros((batch, total), bool)
    mask[:, :len(prompt)] = True
    inputs = {"token_ids": ids, "padding_mask": mask}
    if compile_first:
        model.generate(inputs, stop_token_ids=None)  # compiles this shape
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(inputs, stop_token_ids=None)
        best = min(best, time.perf_counter() - start)
    return best


def hf_folder(model):
    """The converted float Hugging Face folder (cached) of a benchmark
    model name (`smollm2`, `qwen2.5-0.5b`, `qwen2.5-1.5b`): what the CLI's
    `--low-memory` reads for it."""
    from keras_gptq.cli import quantize as quantize_cli
    return quantize_cli.low_memory_source(
        "default" if model == "smollm2" else model)
