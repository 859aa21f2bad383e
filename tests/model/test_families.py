"""Every text CausalLM family of KerasHub 0.32, quantized as a user would.

For each family of `helpers.families.FAMILIES` (a tiny random model):
`model.quantize("gptq", config=keras_gptq.GPTQConfig(...))` on Markov
calibration tokens, then

- the quantize cell: GPTQ's held-out logit error (against the float
  model) is below round-to-nearest's on the same grid;
- the full cell: the float and quantized models are saved with
  `save_to_preset`; a fresh process reloads the quantized preset with
  `keras_hub.models.CausalLM.from_preset` and must give the same logits;
  the weights file shrinks by at least `SAVED_FRACTION` of the bytes of
  the blocks' float matrices (all of them: attention, MLP, experts).

How the matrix is split so that CI (3 backends) stays in budget: the
quantize cell runs for every family on every backend (a few seconds a
family); the full cell, which adds a save and a fresh-process reload, runs
for each family on ONE backend per run, fixed by a rotation:
`FAMILIES` index mod 3 -> jax, tensorflow, torch (`helpers.rotation`).
All of a backend's reloads share one fresh process. Set
`KERAS_GPTQ_ALL_FAMILY_CELLS=1` to run every full cell on the current
backend. On JAX the Qwen3.5 families' quantize cells are marked slow: JAX
compiles each op of the Gated DeltaNet's unrolled 64-step chunk loop per
shape when it runs eagerly (about a minute); their full cells rotate to
TensorFlow and torch, where the same model runs in a second.

Mixture-of-experts families are held to the same checks: their expert
banks are quantized (router gates stay float), so their weights shrink
like dense families'.
"""

import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_gptq
from helpers import rotation
from helpers.families import FAMILIES
from helpers.families import build_family
from helpers.models import logits
from helpers.models import markov_tokens
from keras_gptq.model import baselines

NAMES = list(FAMILIES)
BITS, GROUP = 4, 16
# 4-bit levels with a float32 scale and a uint8 zero per 16 columns take
# 0.20 of a float32 matrix, so quantizing a block's matrices saves 0.8 of
# their bytes; at least this fraction must be saved.
SAVED_FRACTION = 0.6
_SLOW_ON_JAX = ("qwen3_5", "qwen3_5_moe")


def _runs_full_cell(name):
    return rotation.runs_here(NAMES.index(name))


def _config():
    return keras_gptq.GPTQConfig(
        dataset=markov_tokens(8000, seed=1), num_samples=16,
        sequence_length=32, calibration_batch_size=8, weight_bits=BITS,
        group_size=GROUP, add_start_token=False,  # Markov data: no <bos>
        # The check is GPTQ vs RTN on the mean error over all positions,
        # which uniform weighting minimises; random tiny models have no
        # attention sink to protect (the default's gain is measured on
        # real models: benchmarks/sink_weight.py, real_models.py).
        sink_weight=1.0)


def _heldout():
    # The calibration batches' shape: JAX compiles eager ops per shape.
    return markov_tokens(8 * 32, seed=2).reshape(8, 32)


def _error(a, b):
    return float(np.mean((a - b) ** 2))


@functools.lru_cache(maxsize=None)
def _quantized(name):
    """Quantizes family `name` once per process.

    Returns `(model, float_logits, rtn_error, gptq_error)`.
    """
    model = build_family(name)
    heldout = _heldout()
    reference = logits(model, heldout)
    originals = baselines.rtn_in_place(model, BITS, GROUP)
    rtn_error = _error(logits(model, heldout), reference)
    baselines.restore_kernels(originals)
    model.quantize("gptq", config=_config())
    return model, reference, rtn_error, _error(logits(model, heldout),
                                                reference)


def _cell(name, marks=()):
    return pytest.param(name, id=name, marks=marks)


def _quantize_cells():
    backend, cells = keras.config.backend(), []
    for name in NAMES:
        marks = [pytest.mark.slow] if (
            name in _SLOW_ON_JAX and backend == "jax") else []
        cells.append(_cell(name, marks))
    return cells


@pytest.mark.parametrize("name", _quantize_cells())
def test_quantize_beats_round_to_nearest(name):
    model, _, rtn_error, gptq_error = _quantized(name)
    assert model.gptq_report.layers, "no layer was quantized"
    assert gptq_error < rtn_error, (gptq_error, rtn_error)


_RELOAD = r"""
import json, sys, traceback
import numpy as np
import keras, keras_hub
import keras_gptq
root, names, tokens_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tokens = np.load(tokens_file)
for name in names:
    try:
        task = keras_hub.models.CausalLM.from_preset(f"{root}/{name}/gptq")
        out = task({"token_ids": tokens, "padding_mask": np.ones_like(tokens)})
        np.save(f"{root}/{name}/reloaded.npy", keras.ops.convert_to_numpy(
            keras.ops.cast(out, "float32")))
    except Exception:
        open(f"{root}/{name}/error.txt", "w").write(traceback.format_exc())
"""


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """`{name: (quantized logits, reloaded logits or error text)}` for the
    families whose full cell runs here: each is quantized and saved, then
    one fresh process reloads them all."""
    names = [n for n in NAMES if _runs_full_cell(n)]
    root = tmp_path_factory.mktemp("families")
    tokens_file = str(root / "heldout.npy")
    np.save(tokens_file, _heldout())
    expected = {}
    for name in names:
        build_family(name).save_to_preset(str(root / name / "float"))
        model = _quantized(name)[0]
        model.save_to_preset(str(root / name / "gptq"))
        expected[name] = logits(model, _heldout())
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(root), json.dumps(names),
         tokens_file], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for name in names:
        error = root / name / "error.txt"
        got = (error.read_text() if error.exists()
               else np.load(root / name / "reloaded.npy"))
        out[name] = (expected[name], got)
    return root, out


def _full_cells():
    """The full cells of this backend (the others run on theirs: nothing
    is skipped, every cell runs on some backend in every CI run)."""
    return [_cell(name, []) for name in NAMES if _runs_full_cell(name)]


@pytest.mark.parametrize("name", _full_cells())
def test_preset_reloads_in_fresh_process_with_same_logits(reloaded, name):
    _, results = reloaded
    expected, got = results[name]
    assert not isinstance(got, str), got[-3000:]
    np.testing.assert_allclose(got, expected,
                               atol=1e-5 * np.abs(expected).max(), rtol=0)


def block_matrix_bytes(model):
    """Bytes of the float matrices (variables of 2 or more axes) of the
    model's transformer blocks."""
    blocks = model.get_quantization_layer_structure("gptq")[
        "sequential_blocks"]
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
               for block in blocks for v in block.weights
               if len(v.shape) >= 2)


@pytest.mark.parametrize("name", _full_cells())
def test_weights_file_shrinks_like_quantized_blocks(reloaded, name):
    root, _ = reloaded
    sizes = [os.path.getsize(root / name / kind / "model.weights.h5")
             for kind in ("float", "gptq")]
    matrices = block_matrix_bytes(build_family(name))
    assert sizes[0] - sizes[1] >= SAVED_FRACTION * matrices, (
        sizes, matrices)
