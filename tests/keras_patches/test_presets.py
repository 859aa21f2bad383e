"""Save a keras_gptq model as a KerasHub preset; reload it in a fresh process.

Each backend saves, then a *fresh* process reloads through both
`CausalLM.from_preset` and `Backbone.from_preset` and must reproduce the
logits. A preset written under one backend also reloads under the others.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_gptq
from helpers.models import build_causal_lm
from helpers.models import logits

_RELOAD = r"""
import os, sys, json
import numpy as np
sys.path.insert(0, {tests!r})
import keras, keras_hub
{maybe_import}
preset, tokens_file, out_file = sys.argv[1:4]
tokens = np.load(tokens_file)
task = keras_hub.models.CausalLM.from_preset(preset)
inputs = {{"token_ids": tokens, "padding_mask": np.ones_like(tokens)}}
np.save(out_file, keras.ops.convert_to_numpy(task(inputs)))
backbone = keras_hub.models.Backbone.from_preset(preset)
hidden = keras.ops.convert_to_numpy(backbone(inputs))
same = keras.ops.convert_to_numpy(task.backbone(inputs))
assert np.array_equal(hidden, same), "Backbone.from_preset differs"
print("RELOADED", keras.config.backend())
"""


def _reload(preset, tokens, tmp_path, backend, import_keras_gptq=True):
    tokens_file = str(tmp_path / "tokens.npy")
    out_file = str(tmp_path / f"logits_{backend}.npy")
    np.save(tokens_file, tokens)
    script = _RELOAD.format(
        tests=os.path.dirname(__file__),
        maybe_import="import keras_gptq" if import_keras_gptq else "")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", script, preset, tokens_file, out_file],
        capture_output=True, text=True, env=env, timeout=600)
    return proc, out_file


def _dir_size(path):
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, calibration_tokens, heldout_tokens):
    """A 4-bit g16 llama3 model saved as float and as GPTQ presets."""
    root = tmp_path_factory.mktemp("presets")
    model = build_causal_lm("llama3")
    model.save_to_preset(str(root / "float"))
    config = keras_gptq.GPTQConfig(
        dataset=calibration_tokens, num_samples=16, sequence_length=64,
        weight_bits=4, group_size=16, activation_order=True)
    keras_gptq.quantize(model, config, verbose=False)
    model.save_to_preset(str(root / "gptq"))
    return root, logits(model, heldout_tokens)


def test_reload_in_fresh_process_same_logits(saved, heldout_tokens,
                                             tmp_path):
    root, expected = saved
    backend = keras.config.backend()
    proc, out_file = _reload(str(root / "gptq"), heldout_tokens, tmp_path,
                             backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out_file)
    np.testing.assert_allclose(got, expected,
                               atol=1e-5 * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("other", ["jax", "tensorflow", "torch"])
def test_reload_under_every_backend(saved, heldout_tokens, tmp_path, other):
    root, expected = saved
    proc, out_file = _reload(str(root / "gptq"), heldout_tokens, tmp_path,
                             other)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(out_file), expected,
                               atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_reload_without_import_fails_naming_keras_gptq(saved, heldout_tokens,
                                                       tmp_path):
    root, _ = saved
    proc, _ = _reload(str(root / "gptq"), heldout_tokens, tmp_path,
                      keras.config.backend(), import_keras_gptq=False)
    assert proc.returncode != 0
    assert "keras_gptq" in proc.stderr


def test_preset_holds_packed_policies_and_is_smaller(saved):
    root, _ = saved
    config = json.load(open(root / "gptq" / "config.json"))
    policies = config["config"]["dtype"]["config"]["policy_map"]
    assert len(policies) == 14
    assert all(p["registered_name"] == "keras_gptq>PackedGPTQPolicy"
               for p in policies.values())
    float_weights = os.path.getsize(root / "float" / "model.weights.h5")
    gptq_weights = os.path.getsize(root / "gptq" / "model.weights.h5")
    assert gptq_weights < float_weights


def test_smollm3_attention_output_paths_are_unique():
    # KerasHub builds SmolLM3's o_proj in __init__, outside its name scope:
    # without the patch every layer's o_proj has the path "o_proj".
    from helpers.families import build_family
    model = build_family("smollm3")
    paths = [layer.path for layer in model.backbone._flatten_layers()
             if layer.name == "o_proj"]
    assert paths == [f"transformer_layer_{i}/self_attn/o_proj"
                     for i in range(2)]


def test_layers_missing_the_saved_policy_get_packed_storage(tmp_path):
    # SmolLM3's backbone does not pass its dtype-policy map down to its
    # layers: a reload rebuilds them float unless keras_gptq packs them.
    import keras_hub
    from helpers.families import build_family
    model = build_family("smollm3")
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(
        dataset=np.arange(2048) % 256, num_samples=4, sequence_length=16,
        weight_bits=4, group_size=16, add_start_token=False), verbose=False)
    model.save_to_preset(str(tmp_path / "gptq"))
    tokens = np.arange(32, dtype="int32").reshape(2, 16)
    again = keras_hub.models.CausalLM.from_preset(str(tmp_path / "gptq"))
    assert sum(keras_gptq.storage.is_packed(layer)
               for layer in again.backbone._flatten_layers()) == 14
    np.testing.assert_array_equal(logits(again, tokens),
                                  logits(model, tokens))
