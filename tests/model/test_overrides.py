"""Per-layer settings (`GPTQConfig(overrides=...)`): validation, GPTQModel
`dynamic` semantics, and a mixed 4/8-bit model through quantize, the
preset (reload, `inspect`) and `export_hf`'s refusal."""

import os

import keras_hub
import numpy as np
import pytest

import keras_gptq
from helpers.models import build_causal_lm
from helpers.models import logits
from helpers.models import markov_tokens
from keras_gptq import storage
from keras_gptq.cli import inspect_preset

TOKENS = markov_tokens(64, seed=5).reshape(2, 32)


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


def test_mixed_bits_survive_the_preset_and_export_refuses_them(
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
    with pytest.raises(ValueError, match="attention_output.* not quantized.*"
                                         "overrides"):
        keras_gptq.export_hf(again, tmp_path / "hf")


def test_export_refuses_mixed_bits_naming_overrides(tmp_path,
                                                    calibration_tokens):
    model = build_causal_lm("llama3")
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(
        dataset=calibration_tokens[:2000], num_samples=2, sequence_length=32,
        group_size=32, overrides={"query": {"weight_bits": 8}}),
        verbose=False)
    with pytest.raises(ValueError, match=r"several \(bits, group_size\) "
                                         r"settings.*overrides.*dynamic"):
        keras_gptq.export_hf(model, tmp_path / "hf")
    assert not os.path.exists(tmp_path / "hf")
