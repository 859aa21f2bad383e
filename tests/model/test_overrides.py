"""Per-layer settings (`GPTQConfig(overrides=...)`): validation, GPTQModel
`dynamic` semantics, and a mixed 4/8-bit model (one layer skipped) through
quantize, the preset (reload, `inspect`) and the HF export (`dynamic`),
exactly back, and transformers' float model on it."""

import os
import subprocess

import keras_hub
import numpy as np
import pytest

import keras_gptq
from helpers.models import build_causal_lm
from helpers.models import logits
from helpers.models import markov_tokens
from keras_gptq import storage
from helpers.hf import read_folder
from helpers.hf import write_float_folder
from keras_gptq.cli import inspect_preset

TOKENS = markov_tokens(64, seed=5).reshape(2, 32)
HF_PYTHON = os.environ.get("KERAS_GPTQ_HF_PYTHON", "/work/venv-hf/bin/python")
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                         "helpers", "hf_float_reference.py")


def config(overrides, **kwargs):
    return keras_gptq.GPTQConfig(dataset=[[1, 2, 3]], overrides=overrides,
                                 **kwargs)


def test_validation_names_the_entry_and_the_fix():
    with pytest.raises(ValueError, match=r"overrides\['ffw'\]\['weight_bits'"
                                         r"\].*\[2, 3, 4, 8\]"):
        config({"ffw": {"weight_bits": 5}})
    with pytest.raises(ValueError, match="cannot set 'block_size'"):
        config({"ffw": {"block_size": 64}})
    with pytest.raises(ValueError, match="invalid regex"):
        config({"(": {"weight_bits": 8}})
    with pytest.raises(ValueError, match="takes no settings"):
        config({"-:ffw": {"weight_bits": 8}})
    with pytest.raises(TypeError, match="dict"):
        config(["ffw"])


def test_gptqmodel_spelling_and_first_match_wins():
    c = config({"+:layer_0/.*query": {"bits": 8, "sym": True,
                                      "desc_act": True, "damp_percent": 0.1},
                "-:attention_output": {}, "query": None},
               group_size=32)
    assert c.overrides["+:layer_0/.*query"] == {
        "weight_bits": 8, "symmetric": True, "activation_order": True,
        "hessian_damping": 0.1}
    first = c.for_layer("transformer_layer_0/self_attention/query")
    assert (first.weight_bits, first.symmetric, first.group_size) == (
        8, True, 32)
    assert c.for_layer("transformer_layer_1/self_attention/query") is None
    assert c.for_layer("transformer_layer_1/attention_output") is None
    assert c.for_layer("transformer_layer_1/feedforward_gate_dense") is c
    again = keras_gptq.GPTQConfig.from_config(c.get_config(),
                                              dataset=[[1, 2]])
    assert again.overrides == c.overrides


def test_mixed_bits_survive_the_preset_and_the_hf_export(
        tmp_path, calibration_tokens):
    model = build_causal_lm("llama3")
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(
        dataset=calibration_tokens[:4000], num_samples=4, sequence_length=32,
        group_size=32, overrides={
            "feedforward_output_dense": {"weight_bits": 8, "group_size": 64},
            "transformer_layer_1/self_attention/attention_output": None}),
        verbose=False)
    block = model.backbone.get_layer("transformer_layer_1")
    attention = block._self_attention_layer
    def settings(layer):
        policy = storage.layer_policy(layer)
        return policy.weight_bits, policy.group_size

    assert settings(block._feedforward_output_dense) == (8, 64)
    assert settings(attention._query_dense) == (4, 32)
    assert not storage.is_packed(attention._output_dense)
    model.save_to_preset(str(tmp_path / "mixed"))
    again = keras_hub.models.CausalLM.from_preset(str(tmp_path / "mixed"))
    np.testing.assert_array_equal(logits(again, TOKENS),
                                  logits(model, TOKENS))
    policies, _ = inspect_preset.read_policies(
        os.path.join(tmp_path, "mixed", "config.json"))
    assert policies["transformer_layer_0/feedforward_output_dense"] == (8, 64)
    assert policies["transformer_layer_0/self_attention/query"] == (4, 32)
    assert "transformer_layer_1/self_attention/attention_output" not in (
        policies)
    keras_gptq.export_hf(again, tmp_path / "hf", checkpoint_format="auto")
    config, tensors = read_folder(tmp_path / "hf")
    dynamic = config["quantization_config"]["dynamic"]
    assert dynamic[r"-:^model\.layers\.1\.self_attn\.o_proj$"] == {}
    assert dynamic[r"+:^model\.layers\.0\.mlp\.down_proj$"] == {
        "bits": 8, "group_size": 64}
    assert len(dynamic) == 3
    assert tensors["model.layers.1.self_attn.o_proj.weight"].dtype == (
        np.float32)
    assert tensors["model.layers.1.mlp.down_proj.scales"].shape == (2, 64)
    loaded = keras_gptq.load_hf_gptq(tmp_path / "hf")  # float16 scales
    np.testing.assert_allclose(logits(loaded, TOKENS), logits(again, TOKENS),
                               atol=2e-3)
    keras_gptq.export_hf(loaded, tmp_path / "hf2", checkpoint_format="auto")
    config2, tensors2 = read_folder(tmp_path / "hf2")
    assert config2["quantization_config"] == config["quantization_config"]
    for name in tensors:
        np.testing.assert_array_equal(tensors2[name], tensors[name])
    if os.path.isfile(HF_PYTHON):  # transformers' float Llama agrees
        write_float_folder(tmp_path / "hf", tmp_path / "float")
        np.save(tmp_path / "float" / "tokens.npy", TOKENS)
        subprocess.run([HF_PYTHON, REFERENCE, str(tmp_path / "float")],
                       check=True, capture_output=True)
        np.testing.assert_allclose(np.load(tmp_path / "float" / "logits.npy"),
                                   logits(loaded, TOKENS), atol=1e-4)


def test_gptqmodel_dynamic_is_read_on_import(tmp_path):
    from keras_gptq.hf import format as hf_format
    dynamic = {"-:.*o_proj": {}, "+:.*q_proj": {"bits": 8, "sym": True},
               ".*": {"group_size": 64}}
    assert hf_format.module_settings(
        dynamic, "model.layers.3.self_attn.o_proj", (4, 128)) is None
    assert hf_format.module_settings(
        dynamic, "model.layers.3.self_attn.q_proj", (4, 128)) == (8, 128)
    assert hf_format.module_settings(
        dynamic, "model.layers.3.mlp.up_proj", (4, 128)) == (4, 64)
    with pytest.raises(ValueError, match="pack_dtype"):
        hf_format.module_settings({".*": {"pack_dtype": "int16"}}, "m",
                                  (4, 128))
