"""benchmarks/layer_heldout.py: per-layer errors and the mixed model."""

import os
import sys

import numpy as np

import keras_gptq
from helpers.models import build_causal_lm
from helpers.models import logits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))
import layer_heldout  # noqa: E402


def _quantized(tokens):
    model = build_causal_lm("llama3")
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(
        dataset=tokens, num_samples=16, sequence_length=64, weight_bits=4,
        group_size=32, add_start_token=False), verbose=False)
    return model


def test_layer_errors_cover_every_dense_layer_and_gptq_wins(
        calibration_tokens, heldout_tokens):
    quant = _quantized(calibration_tokens)
    rows = layer_heldout.layer_errors(
        build_causal_lm("llama3"), quant, [0, 1],
        np.asarray(heldout_tokens[:4]), bits=4,
        group_size=32)
    assert len(rows) == 2 * 7
    assert {r[2] for r in rows} == {64, 128}
    assert all(r[3] > 0 and r[4] > 0 for r in rows)
    assert sum(r[3] > r[4] for r in rows) >= 12  # GPTQ beats RTN held out


def test_mixed_weights_equal_the_preset_or_rtn_per_type(calibration_tokens,
                                                        heldout_tokens):
    quant = _quantized(calibration_tokens)
    tokens = np.asarray(heldout_tokens[:2])
    mixed = build_causal_lm("llama3")
    layer_heldout.mix_weights(mixed, quant, [], group_size=32)
    np.testing.assert_allclose(logits(mixed, tokens), logits(quant, tokens),
                               atol=1e-4, rtol=0)
    rounded = build_causal_lm("llama3")
    layer_heldout.mix_weights(rounded, quant, ["feedforward_output_dense"],
                              group_size=32)
    down = layer_heldout.dense_layers(
        rounded.backbone.transformer_layers[0])["feedforward_output_dense"]
    W = layer_heldout.float_matrix(layer_heldout.dense_layers(
        build_causal_lm("llama3").backbone.transformer_layers[0])[
        "feedforward_output_dense"])[1]
    np.testing.assert_allclose(layer_heldout.float_matrix(down)[1],
                               layer_heldout.rtn_matrix(W, group_size=32),
                               atol=1e-6)
