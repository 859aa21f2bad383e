"""Calibration over several devices (a Keras distribution on JAX) gives
the one-device integers, bit for bit, on CPU.

Each case runs in a fresh process with four host CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`): the tiny model is
quantized once without a distribution and once under
`keras.distribution.DataParallel` over the four devices, and every weight
(packed integers, scales, zero points, group indices, the float weights
left as they were) must be equal.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers.devices_worker import DEVICES
from helpers.models import build_causal_lm
from keras_gptq.model import devices

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BATCH = 4

# 11 batches: two runs of four split over the devices, then three left over
# (the last one shorter) that run on every device alike.
CASES = {
    "llama3-actorder": ("llama3", dict(activation_order=True)),
    "gpt2-gptaq-sequential": ("gpt2", dict(
        asymmetric_calibration=True, true_sequential=True)),
    "mixtral-experts": ("mixtral", dict(activation_order=True)),
}


def _run_worker(tmp_path, family, options):
    settings = dict(num_samples=BATCH * (2 * DEVICES + 2) + BATCH // 2,
                    sequence_length=32, weight_bits=3, group_size=16,
                    calibration_batch_size=BATCH)
    settings.update(options)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO,
                                                              "tests")]),
               XLA_FLAGS="--xla_force_host_platform_device_count="
               f"{DEVICES}")
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.devices_worker", str(tmp_path),
         family, json.dumps(settings)],
        capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(keras.config.backend() != "jax",
                    reason="Keras distributions run on JAX")
@pytest.mark.parametrize("case", list(CASES))
def test_four_devices_give_the_one_device_integers(case, tmp_path):
    family, options = CASES[case]
    _run_worker(tmp_path, family, options)
    with open(tmp_path / "split.json") as f:
        split = json.load(f)
    # The four-device run really split the layer inputs; one device never.
    assert split["one"] == 0 and split["four"] > 0, split
    # A model built before the distribution is refused, saying why.
    assert "set_distribution" in split.get("stale_error", ""), split
    floats = [np.load(tmp_path / f"{run}_float.npz") for run in
              ("one", "four")]
    assert sorted(floats[0].files) == sorted(floats[1].files)
    for name in floats[0].files:
        np.testing.assert_array_equal(floats[0][name], floats[1][name],
                                      err_msg=f"float {name}")
    one, four = (np.load(tmp_path / f"{run}.npz") for run in ("one", "four"))
    assert sorted(one.files) == sorted(four.files)
    # Packed layers (and expert banks) carry scales beside their integers.
    assert any("scale" in name for name in one.files), one.files
    for name in one.files:
        np.testing.assert_array_equal(one[name], four[name], err_msg=name)


def test_without_a_distribution_batches_and_inputs_are_unchanged():
    batches = [np.full((BATCH, 8), i, "int32") for i in range(3)]
    assert devices.global_batches(batches, None) == batches
    assert devices.placer(None) is None
    assert devices.batch_devices(None) == 1
    x = np.zeros((BATCH, 8, 16), "float32")
    parts = devices.batch_parts(x)
    assert len(parts) == 1 and parts[0] is x
    devices.check_model(build_causal_lm("llama3"), None)  # no error
