"""The Hugging Face GPTQ format: packing pinned word by word, the v1/v2 zero
rule, exact round trips Keras → HF → Keras → HF, and an independent reader.
"""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.utils.transformers.export import hf_exporter

from helpers import hf_spec
import keras_gptq
from helpers.families import build_family
from helpers.models import build_causal_lm
from helpers.models import logits
from helpers.models import markov_tokens
from helpers.hf import numpy_weights
from helpers.hf import packed_model
from helpers.hf import quantized_modules
from helpers.hf import read_folder
from helpers.hf import spec_float_tensors
from helpers.hf import write_float_folder
from keras_gptq.hf import format as hf_format

TOKENS = markov_tokens(64, seed=5).reshape(2, 32)


def as_int32(word):
    return np.array(word & 0xFFFFFFFF, dtype=np.uint32).view(np.int32)


# ------------------------------------------------------------ packing --

def test_4bit_levels_fill_a_word_low_nibble_first():
    levels = np.zeros((32, 1), np.int64)
    levels[:8, 0] = [1, 2, 3, 4, 5, 6, 7, 8]
    levels[8:16, 0] = 15
    words = hf_format.pack_int32(levels, 4)
    assert words.dtype == np.int32 and words.shape == (4, 1)
    assert words[:, 0].tolist() == [as_int32(0x87654321), as_int32(0xFFFFFFFF),
                                    0, 0]


def test_3bit_levels_10_and_21_straddle_words():
    levels = np.zeros((32, 1), np.int64)
    levels[10, 0], levels[21, 0], levels[0, 0] = 7, 5, 3
    words = hf_format.pack_int32(levels, 3)[:, 0].tolist()
    # level 10: stream bits 30..32; level 21 (0b101): stream bits 63..65.
    assert words == [as_int32(0xC0000003), as_int32(0x80000001), 2]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_matches_the_spec_stream_on_both_axes(bits):
    rng = np.random.default_rng(bits)
    levels = rng.integers(0, 1 << bits, (64, 3))
    words = hf_format.pack_int32(levels, bits, axis=0)
    assert words.shape == (64 * bits // 32, 3)
    for o in range(3):
        assert words[:, o].tolist() == hf_spec.stream_words(levels[:, o], bits)
        assert hf_spec.stream_values(words[:, o], bits) == levels[:, o].tolist()
    np.testing.assert_array_equal(hf_format.unpack_int32(words, bits), levels)
    rows = hf_format.pack_int32(levels.T, bits, axis=1)
    np.testing.assert_array_equal(rows, words.T)
    np.testing.assert_array_equal(hf_format.unpack_int32(rows, bits, axis=1),
                                  levels.T)


def test_an_axis_not_a_multiple_of_32_is_refused():
    with pytest.raises(hf_format.UnsupportedCheckpointError, match="32"):
        hf_format.pack_int32(np.zeros((48, 2)), 4)


# -------------------------------------------------------------- zeros --

def layer_arrays(bits=4, out=32, columns=64, group_size=32, zero_low=1):
    rng = np.random.default_rng(0)
    groups = columns // group_size
    return (rng.integers(0, 1 << bits, (out, columns)),
            rng.uniform(0.01, 0.02, (out, groups)).astype(np.float32),
            rng.integers(zero_low, 1 << bits, (out, groups)),
            np.arange(columns) // group_size)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_tensor_shapes_dtypes_and_the_zero_rule(bits):
    q, scale, zero, g_idx = layer_arrays(bits)
    for fmt, stored in (("gptq", zero - 1), ("gptq_v2", zero)):
        t = hf_format.to_hf(q, scale, zero, g_idx, bits, fmt)
        assert t["qweight"].shape == (64 * bits // 32, 32)
        assert t["qzeros"].shape == (2, 32 * bits // 32)
        assert t["scales"].shape == (2, 32) and t["scales"].dtype == np.float16
        assert t["g_idx"].dtype == np.int32
        assert [hf_spec.stream_values(t["qzeros"][g], bits)
                for g in range(2)] == stored.T.tolist()
        back = hf_format.from_hf(t, bits, fmt, 32)
        for got, want in zip(back, (q, scale.astype(np.float16), zero, g_idx)):
            np.testing.assert_array_equal(got, want)


def test_v1_refuses_a_zero_point_of_0_and_names_the_fix():
    q, scale, zero, g_idx = layer_arrays(zero_low=0)
    assert zero.min() == 0
    with pytest.raises(hf_format.UnsupportedCheckpointError,
                       match="checkpoint_format='gptq_v2'"):
        hf_format.to_hf(q, scale, zero, g_idx, 4, "gptq")
    t = hf_format.to_hf(q, scale, zero, g_idx, 4, "gptq_v2")
    np.testing.assert_array_equal(hf_format.from_hf(t, 4, "gptq_v2", 32)[2],
                                  zero)


def test_a_wrapping_v1_zero_is_refused_on_import():
    q, scale, zero, g_idx = layer_arrays()
    zero[0, 0] = 15  # stored 15 means 16 in v1: not a 4-bit zero point
    t = hf_format.to_hf(q, scale, zero, g_idx, 4, "gptq_v2")
    with pytest.raises(hf_format.UnsupportedCheckpointError, match="wraps"):
        hf_format.from_hf(t, 4, "gptq", 32, name="m")


def test_quantization_config_fields():
    config = hf_format.quantization_config(3, -1, True, False, "gptq_v2",
                                           version="9")
    assert {k: config[k] for k in (
        "quant_method", "bits", "group_size", "desc_act", "sym",
        "checkpoint_format", "static_groups", "true_sequential",
        "damp_percent")} == {
        "quant_method": "gptq", "bits": 3, "group_size": -1,
        "desc_act": True, "sym": False, "checkpoint_format": "gptq_v2",
        "static_groups": False, "true_sequential": True,
        "damp_percent": 0.01}
    assert hf_format.read_quantization_config(
        {"quantization_config": config}) == (3, -1, "gptq_v2")
    with pytest.raises(ValueError, match="awq"):
        hf_format.read_quantization_config({"quantization_config": {
            "quant_method": "awq", "bits": 4}})


# -------------------------------------------------- model round trips --

ROUND_TRIPS = [  # family, bits, group_size, sym, act_order
    ("llama3", 4, 32, True, False),
    ("llama3", 3, 32, False, True),
    ("llama3", 2, -1, False, False),
    ("gpt2", 8, 64, True, True),
    ("gpt2", 3, -1, False, True),
    ("gpt2", 4, 32, False, False),
]


@pytest.mark.parametrize("family,bits,group_size,sym,act_order", ROUND_TRIPS)
def test_keras_hf_keras_hf_round_trip_is_exact(tmp_path, family, bits,
                                               group_size, sym, act_order):
    model = packed_model(family, bits, group_size, sym, act_order)
    keras_gptq.export_hf(model, tmp_path / "a")
    config, first = read_folder(tmp_path / "a")
    qc = config["quantization_config"]
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"],
            qc["checkpoint_format"]) == (
        bits, group_size, sym, act_order and group_size != -1, "gptq")
    with open(tmp_path / "a" / "quantize_config.json") as f:
        assert json.load(f) == qc
    again = keras_gptq.load_hf_gptq(tmp_path / "a")
    assert type(again) is type(model)
    want, got = numpy_weights(model), numpy_weights(again)
    assert list(got) == list(want)
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)
    np.testing.assert_array_equal(logits(again, TOKENS), logits(model, TOKENS))
    keras_gptq.export_hf(again, tmp_path / "b")
    second = read_folder(tmp_path / "b")[1]
    assert sorted(second) == sorted(first)
    for name in first:
        assert first[name].dtype == second[name].dtype
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_scales_become_float16_and_only_they_change(tmp_path):
    model = packed_model("llama3", fp16_scales=False)
    keras_gptq.export_hf(model, tmp_path / "a")
    again = keras_gptq.load_hf_gptq(tmp_path / "a")
    want, got = numpy_weights(model), numpy_weights(again)
    changed = [p for p in want if not np.array_equal(want[p], got[p])]
    assert changed and all(p.endswith("kernel_scale") for p in changed)
    for path in changed:
        np.testing.assert_array_equal(
            got[path], want[path].astype(np.float16).astype(np.float32))
        assert np.max(np.abs(got[path] / want[path] - 1)) <= 2.0 ** -11
    keras_gptq.export_hf(again, tmp_path / "b")
    first, second = (read_folder(tmp_path / n)[1] for n in "ab")
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_gptq_quantized_models_round_trip(tmp_path, calibration_tokens):
    for family in ("llama3", "gpt2"):
        model = build_causal_lm(family)
        keras_gptq.quantize(model, keras_gptq.GPTQConfig(
            dataset=calibration_tokens[:4000], num_samples=4,
            sequence_length=32, group_size=32, activation_order=True),
            verbose=False)
        folder = keras_gptq.export_hf(model, tmp_path / family,
                                      checkpoint_format="auto")
        again = keras_gptq.load_hf_gptq(folder)
        want, got = numpy_weights(model), numpy_weights(again)
        for path in want:
            if path.endswith("kernel_scale"):
                want[path] = want[path].astype(np.float16).astype(np.float32)
            if family == "gpt2" and path.endswith("bias"):  # fp16 in format
                continue
            np.testing.assert_array_equal(got[path], want[path], err_msg=path)
        np.testing.assert_allclose(logits(again, TOKENS),
                                   logits(model, TOKENS), atol=2e-3)


# ------------------------------------------------ independent readers --

@pytest.mark.parametrize("family,bits,sym", [("llama3", 3, False),
                                             ("gpt2", 4, True)])
def test_spec_reader_matches_keras_hubs_own_export(tmp_path, family, bits,
                                                   sym):
    model = packed_model(family, bits, 32, sym, act_order=True)
    keras_gptq.export_hf(model, tmp_path / "hf")
    config, tensors = spec_float_tensors(tmp_path / "hf")
    backbone = model.backbone
    expected = hf_exporter.MODEL_EXPORTERS[type(backbone).__name__](
        backbone, include_lm_head=True)
    if getattr(backbone, "tie_word_embeddings", True):  # transformers ties
        assert expected.pop("lm_head.weight") is not None
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        value = np.asarray(keras.ops.convert_to_numpy(value))
        tol = 1e-3 if name.endswith("bias") else 1e-6  # fp16 biases
        np.testing.assert_allclose(tensors[name], value, atol=tol,
                                   rtol=tol, err_msg=name)


@pytest.mark.parametrize("family", ["llama3", "gpt2"])
def test_keras_hubs_float_converter_gives_the_same_logits(tmp_path, family):
    model = packed_model(family, 4, 32, sym=False, act_order=True)
    keras_gptq.export_hf(model, tmp_path / "hf")
    config = write_float_folder(tmp_path / "hf", tmp_path / "float")
    if family == "llama3":
        backbone = keras_hub.models.Llama3Backbone.from_preset(
            str(tmp_path / "float"), layer_norm_epsilon=config["rms_norm_eps"])
    else:  # KerasHub's converter assumes n_inner = 4 * n_embd
        backbone = keras_hub.models.GPT2Backbone.from_preset(
            str(tmp_path / "float"), intermediate_dim=config["n_inner"])
    reference = type(model)(backbone=backbone, preprocessor=None)
    np.testing.assert_allclose(logits(reference, TOKENS),
                               logits(model, TOKENS), atol=1e-3)


# ------------------------------------------------------------- errors --

def test_asymmetric_zero_of_0_needs_v2(tmp_path):
    model = packed_model("llama3", zero_low=0)
    with pytest.raises(ValueError, match="checkpoint_format='gptq_v2'"):
        keras_gptq.export_hf(model, tmp_path / "v1")
    assert not os.path.exists(tmp_path / "v1")
    keras_gptq.export_hf(model, tmp_path / "auto", checkpoint_format="auto")
    config, tensors = read_folder(tmp_path / "auto")
    assert config["quantization_config"]["checkpoint_format"] == "gptq_v2"
    again = keras_gptq.load_hf_gptq(tmp_path / "auto")
    np.testing.assert_array_equal(logits(again, TOKENS), logits(model, TOKENS))


def test_fused_c_attn_needs_one_g_idx(tmp_path):
    model = packed_model("gpt2")
    attn = model.backbone.get_layer("transformer_layer_0")._self_attention_layer
    attn._key_dense.g_idx.assign(np.roll(
        keras.ops.convert_to_numpy(attn._key_dense.g_idx), 1))
    with pytest.raises(ValueError, match="c_attn.*g_idx"):
        keras_gptq.export_hf(model, tmp_path / "x")


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="FalconCausalLM.*Llama3CausalLM"):
        keras_gptq.export_hf(build_family("falcon"), tmp_path / "g")
    with pytest.raises(ValueError, match="not quantized"):
        keras_gptq.export_hf(build_causal_lm("llama3"), tmp_path / "f")
    assert not os.path.exists(tmp_path / "g") and not os.path.exists(
        tmp_path / "f")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    model = packed_model("llama3")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        keras_gptq.export_hf(model, tmp_path / "full")
    keras_gptq.export_hf(model, tmp_path / "full", overwrite=True)
    assert sorted(os.listdir(tmp_path / "full")) == [
        "config.json", "model.safetensors", "quantize_config.json"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    from keras_gptq.utils import files

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(files, "_swap_in", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        keras_gptq.export_hf(packed_model("llama3"), tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_load_refuses_what_it_cannot_read(tmp_path):
    keras_gptq.export_hf(packed_model("llama3"), tmp_path / "hf")
    config, _ = read_folder(tmp_path / "hf")
    for change, message in (({"model_type": "falcon"}, "Llama3CausalLM"),
                            ({"quantization_config": None},
                             "not a GPTQ checkpoint")):
        edited = dict(config, **change)
        with open(tmp_path / "hf" / "config.json", "w") as f:
            json.dump(edited, f)
        if change.get("quantization_config", 1) is None:
            os.remove(tmp_path / "hf" / "quantize_config.json")
        with pytest.raises(ValueError, match=message):
            keras_gptq.load_hf_gptq(tmp_path / "hf")
    with pytest.raises(FileNotFoundError):
        keras_gptq.load_hf_gptq(tmp_path / "nowhere")


def test_exported_module_names_follow_transformers(tmp_path):
    keras_gptq.export_hf(packed_model("gpt2"), tmp_path / "g")
    keras_gptq.export_hf(packed_model("llama3"), tmp_path / "l")
    gpt2 = read_folder(tmp_path / "g")[1]
    llama = read_folder(tmp_path / "l")[1]
    assert quantized_modules(gpt2)[:4] == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert gpt2["transformer.h.0.attn.c_attn.qweight"].shape == (8, 192)
    assert gpt2["transformer.h.0.attn.c_attn.bias"].dtype == np.float16
    assert "transformer.wte.weight" in gpt2 and "lm_head.weight" not in gpt2
    assert quantized_modules(llama)[:7] == sorted(
        f"model.layers.0.{m}" for m in (
            "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
            "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj",
            "self_attn.v_proj"))
    assert llama["model.layers.0.self_attn.k_proj.qweight"].shape == (8, 32)
    assert {"model.embed_tokens.weight", "model.norm.weight",
            "lm_head.weight"} <= set(llama)


# -------------------------------------------------- the real default --

@pytest.mark.slow
def test_smollm2_exports_and_imports_exactly(tmp_path):
    """The bundled SmolLM2-135M, round-to-nearest 4-bit (group 64, sym,
    float16 scales) in keras_gptq storage: export → import is exact, and
    the tokenizer travels with it."""
    import types

    from helpers.hf import block_layers
    from keras_gptq.examples import bundled
    from keras_gptq.algorithm import grid
    from keras_gptq.model import layout
    from keras_gptq import storage

    model = bundled.load_default_model()
    for layer in block_layers(model):
        lay = layout.layer_layout(layer)
        q, scale, zero, g_idx = grid.rtn_quantize(lay.kernel_to_matrix(
            keras.ops.convert_to_numpy(layer._kernel)), 4, 64, True)
        storage.write_packed(layer, types.SimpleNamespace(
            q=q, scale=scale.astype(np.float16).astype(np.float32),
            zero=zero, g_idx=g_idx), 4, 64)
    keras_gptq.export_hf(model, tmp_path / "hf")
    config, tensors = read_folder(tmp_path / "hf")
    assert config["tie_word_embeddings"] and "lm_head.weight" not in tensors
    assert len(quantized_modules(tensors)) == 30 * 7
    again = keras_gptq.load_hf_gptq(tmp_path / "hf")
    text = "The capital of France is Paris."
    tokens = np.asarray(again.preprocessor.tokenizer(text))
    np.testing.assert_array_equal(
        tokens, np.asarray(model.preprocessor.tokenizer(text)))
    ids = tokens[None, :].astype(np.int32)
    np.testing.assert_array_equal(logits(again, ids), logits(model, ids))
