"""Loading and saving a preset: wall time and peak RSS, in one process.

`CausalLM.from_preset(PRESET)`, then `save_to_preset` into a temporary
folder beside it, then `from_preset` of that copy; each step's wall time
and the peak RSS over each (sampled every 20 ms), as one markdown row. For
a quantized preset this is the packed layers' load (`load_packed`) and save
(`save_packed`) at scale; run it before and after a change to either.

Usage:
    KERAS_BACKEND=jax python benchmarks/preset_io.py PRESET [--repeats 2]
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _worker  # noqa: E402


def measure(preset):
    """`{step: (seconds, peak MB)}` for load, save and reload of `preset`."""
    import keras_hub

    import keras_gptq  # noqa: F401  (packed layers load)
    steps = {}
    parent = os.path.dirname(os.path.abspath(preset))
    copy = tempfile.mkdtemp(prefix="preset_io_", dir=parent)

    def timed(name, step):
        sampler = _worker.PeakSampler()
        sampler.start()
        start = time.perf_counter()
        try:
            return step()
        finally:
            steps[name] = (time.perf_counter() - start,
                           sampler.stop() / 2**20)

    try:
        model = timed("load", lambda: keras_hub.models.CausalLM.from_preset(
            preset))
        timed("save", lambda: model.save_to_preset(
            os.path.join(copy, "preset")))
        del model
        gc.collect()  # the first model's arrays must not count in reload
        timed("reload", lambda: keras_hub.models.CausalLM.from_preset(
            os.path.join(copy, "preset")))
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return steps


def render(rows, preset, backend):
    """The markdown table of `rows` (one `measure` result per repeat)."""
    lines = [f"`{preset}`, backend {backend}, load average "
             f"{os.getloadavg()[0]:.1f}", "",
             "| repeat | load s | save s | reload s | peak RSS load / save "
             "/ reload (MB) |", "|---|---|---|---|---|"]
    for i, steps in enumerate(rows, 1):
        lines.append(
            f"| {i} | {steps['load'][0]:.1f} | {steps['save'][0]:.1f} | "
            f"{steps['reload'][0]:.1f} | {steps['load'][1]:.0f} / "
            f"{steps['save'][1]:.0f} / {steps['reload'][1]:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    """Measures `--repeats` fresh processes and prints the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        with open(args.worker, "w") as f:
            json.dump(measure(args.preset), f)
        return
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "steps.json")
            subprocess.run([sys.executable, __file__, args.preset,
                            "--worker", out], check=True)
            with open(out) as f:
                rows.append(json.load(f))
    print(render(rows, args.preset,
                 os.environ.get("KERAS_BACKEND", "tensorflow")))


if __name__ == "__main__":
    main()
