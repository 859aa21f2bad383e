"""The mixed 4/8-bit benchmark's settings and reporting (no models run).

The benchmark itself quantizes the bundled SmolLM2 once per setting; here
only which layers each setting raises to 8 bits, the mean bits, its table
and its refusal of unknown methods are pinned.
"""

import importlib.util
import os
import types

import pytest

import keras_gptq

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location(
    "mixed_precision",
    os.path.join(HERE, "..", "..", "benchmarks", "mixed_precision.py"))
mixed_precision = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mixed_precision)
pytestmark = pytest.mark.one_backend  # settings and text only

BLOCKS = 30  # SmolLM2-135M's transformer blocks
LAYERS = ("self_attention/query", "self_attention/key",
          "self_attention/value", "self_attention/attention_output",
          "feedforward_gate_dense", "feedforward_intermediate_dense",
          "feedforward_output_dense")


def eight_bit_paths(method):
    """The Llama 3 layer paths that `method`'s overrides raise to 8 bits."""
    config = keras_gptq.GPTQConfig(
        dataset=[[1, 2, 3]], weight_bits=4,
        overrides=mixed_precision.METHODS[method][1] or None)
    return {f"transformer_layer_{b}/{name}" for b in range(BLOCKS)
            for name in LAYERS
            if config.for_layer(f"transformer_layer_{b}/{name}").weight_bits
            == 8}


def test_each_setting_raises_exactly_its_layers():
    assert eight_bit_paths("gptq-4") == set()
    assert eight_bit_paths("down-8") == {
        f"transformer_layer_{b}/feedforward_output_dense"
        for b in range(BLOCKS)}
    assert eight_bit_paths("vo-8") == {
        f"transformer_layer_{b}/self_attention/{name}"
        for b in range(BLOCKS) for name in ("value", "attention_output")}
    assert eight_bit_paths("ends-8") == {
        f"transformer_layer_{b}/{name}" for b in (0, BLOCKS - 1)
        for name in LAYERS}


def test_mean_bits_weighs_each_matrix_by_its_size():
    layers = [types.SimpleNamespace(shape=(3, 2), bits=4),
              types.SimpleNamespace(shape=(1, 2), bits=8)]
    assert mixed_precision.mean_bits(layers) == (6 * 4 + 2 * 8) / 8
    assert mixed_precision.mean_bits([]) is None


def _row(method, ppl, bits=None, preset=100.0):
    return {"method": method, "perplexity": ppl, "bits": bits,
            "layers_8bit": 0 if bits else None, "preset_mb": preset,
            "weights_mb": preset, "quant_s": 60.0, "load_avg": 2.0,
            "backend": "jax"}


def test_table_compares_with_float_and_with_4_bits():
    args = mixed_precision.parse_args(["--samples", "16"])
    page = mixed_precision.render([
        _row("float", 10.0, preset=500.0), _row("gptq-4", 12.0, 4.0),
        _row("down-8", 11.0, 4.5, 110.0),
        {"method": "vo-8", "error": 1}], args)
    assert "16 x 256 tokens" in page
    assert "| float32 | 10.00 | +0.0% |  | 500 | 500 | 32 |" in page
    assert ("| 8-bit `down_proj` (feedforward_output_dense) | 11.00 | +10.0% "
            "| -8.3% | 110 | 110 | 4.50 | 0 | 60 | 2.0 |") in page
    assert "| 8-bit attention `v_proj` + `o_proj` | failed (exit 1) |" in page


def test_unknown_methods_are_refused():
    with pytest.raises(SystemExit, match="unknown: \\['nope'\\]"):
        mixed_precision.main(["--methods", "gptq-4,nope"])
