"""JAX, TensorFlow and torch quantize the same weights to the same integers.

The float preset, calibration and held-out tokens are written once; each
backend quantizes the preset in a fresh process, saves every layer's
unpacked levels and its held-out perplexity, and the results are compared:
at least 99.9% of the integers and perplexity within 0.5% must agree.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import save_tiny_preset

BACKENDS = ("jax", "tensorflow", "torch")

_QUANTIZE = r"""
import sys
import keras, keras_hub, numpy as np
import keras_gptq
from keras_gptq import storage
preset, calibration, heldout, out = sys.argv[1:5]
model = keras_hub.models.CausalLM.from_preset(preset)
keras_gptq.quantize(model, keras_gptq.GPTQConfig(
    dataset=np.load(calibration), num_samples=16, sequence_length=64,
    weight_bits=4, group_size=16, activation_order=True), verbose=False)
levels = {}
for layer in model._flatten_layers():
    if storage.is_packed(layer):
        packed = keras.ops.convert_to_numpy(layer.quantized_kernel)
        levels[layer.path] = storage.unpack(
            packed, layer.dtype_policy.weight_bits, layer._gptq_layout.columns)
perplexity = keras_gptq.evaluate_perplexity(
    model, np.load(heldout), sequence_length=64)
np.savez(out, perplexity=perplexity, **levels)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """`{backend: npz}` from one quantization per backend, run in parallel."""
    root = save_tiny_preset(tmp_path_factory.mktemp("cross_backend"),
                            calibration=20_000, heldout=2048)
    procs = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        procs[backend] = subprocess.Popen(
            [sys.executable, "-c", _QUANTIZE, str(root / "float"),
             str(root / "ids.npy"), str(root / "heldout.npy"),
             str(root / f"{backend}.npz")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for backend, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (backend, err[-3000:])
    return {b: np.load(root / f"{b}.npz") for b in BACKENDS}


@pytest.mark.slow
@pytest.mark.parametrize("other", ["tensorflow", "torch"])
def test_backends_agree_on_integers_and_perplexity(results, other):
    jax, them = results["jax"], results[other]
    layers = sorted(k for k in jax.files if k != "perplexity")
    assert len(layers) == 14 and sorted(
        k for k in them.files if k != "perplexity") == layers
    same = sum(int(np.sum(jax[k] == them[k])) for k in layers)
    total = sum(jax[k].size for k in layers)
    print(f"jax vs {other}: {same / total:.5%} of {total} integers agree; "
          f"perplexity {float(jax['perplexity']):.4f} vs "
          f"{float(them['perplexity']):.4f}")
    assert same / total >= 0.999
    assert abs(float(them["perplexity"]) / float(jax["perplexity"]) - 1) < (
        0.005)
