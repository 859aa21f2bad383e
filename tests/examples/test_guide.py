"""The guide runs top to bottom, offline, with its quick sizes.

`guides/quantize_smollm2_with_gptq.py` is run in a fresh process under the
current `KERAS_BACKEND` with `KERAS_GPTQ_GUIDE_QUICK=1` (8x128 calibration
tokens, 2x256 evaluation tokens, 24-token generations). It quantizes the
real default model, generates before and after, saves and reloads the
preset, and asserts the reloaded model generates the same text.

Measured on a 2-core CPU: 84 s on JAX, 176 s on TensorFlow, 409 s on torch
(eager generation and calibration); the torch run is skipped unless
`KERAS_GPTQ_GUIDE_TORCH=1`.
"""

import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

GUIDE = (pathlib.Path(__file__).resolve().parents[2] / "guides"
         / "quantize_smollm2_with_gptq.py")


@pytest.mark.slow
def test_guide_runs_quick(tmp_path):
    if (keras.config.backend() == "torch"
            and os.environ.get("KERAS_GPTQ_GUIDE_TORCH") != "1"):
        pytest.skip("about 7 minutes on torch; set KERAS_GPTQ_GUIDE_TORCH=1")
    env = dict(os.environ, KERAS_GPTQ_GUIDE_QUICK="1",
               KERAS_BACKEND=keras.config.backend(),
               TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, str(GUIDE)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "reloaded preset generates the same text: True" in out
    ppl = re.search(r"float ([\d.]+) -> GPTQ 4-bit ([\d.]+)", out)
    assert ppl, out[-3000:]
    float_ppl, gptq_ppl = map(float, ppl.groups())
    assert float_ppl < gptq_ppl < 2 * float_ppl
    for prompt in ("The capital of France is",
                   "Photosynthesis is the process by which"):
        assert out.count(prompt) >= 3  # header, float and gptq lines
