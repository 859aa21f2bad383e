"""All-or-nothing `save_to_preset`, and presets that fail to load clearly.

A failure (exception or KeyboardInterrupt) while saving into a folder that
holds a valid preset must leave that preset loading with identical logits;
a truncated or tampered preset must fail with an error naming the file and
the problem, never load into garbage outputs.
"""

import os
import shutil

import h5py
import keras
import keras_hub
import numpy as np
import pytest

import keras_gptq
from keras_gptq.utils import files
from helpers.models import build_causal_lm
from helpers.models import logits

QUERY = ("layers/llama_transformer_decoder/_self_attention_layer/"
         "_query_dense/vars/")


@pytest.fixture(scope="module")
def preset(tmp_path_factory, calibration_tokens, heldout_tokens):
    """A 4-bit g16 llama3 GPTQ preset and its reloaded logits."""
    folder = tmp_path_factory.mktemp("saving") / "gptq"
    model = build_causal_lm("llama3")
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(
        dataset=calibration_tokens, num_samples=8, sequence_length=64,
        weight_bits=4, group_size=16), verbose=False)
    model.save_to_preset(str(folder))
    return folder, _load_logits(folder, heldout_tokens)


def _load_logits(folder, tokens):
    return logits(keras_hub.models.CausalLM.from_preset(str(folder)), tokens)


def _copy(preset, tmp_path):
    target = tmp_path / "preset"
    shutil.copytree(preset, target)
    return target


class _Boom(Exception):
    pass


@pytest.mark.parametrize("failure", [_Boom, KeyboardInterrupt])
def test_failure_mid_save_keeps_the_old_preset(failure, preset, tmp_path,
                                               monkeypatch, heldout_tokens):
    folder, expected = preset
    target = _copy(folder, tmp_path)
    before = sorted(os.listdir(target))
    original = keras.Model.save_weights

    def write_then_fail(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)  # config and weights written
        raise failure("injected")

    monkeypatch.setattr(keras.Model, "save_weights", write_then_fail)
    with pytest.raises(failure):
        build_causal_lm("gpt2").save_to_preset(str(target))
    monkeypatch.undo()
    assert sorted(os.listdir(target)) == before
    assert os.listdir(tmp_path) == ["preset"]  # no temporary folder left
    np.testing.assert_array_equal(_load_logits(target, heldout_tokens),
                                  expected)


def test_failure_while_swapping_restores_the_old_preset(
        preset, tmp_path, monkeypatch, heldout_tokens):
    folder, expected = preset
    target = _copy(folder, tmp_path)
    renames, real_rename = [], os.rename

    def rename(src, dst):
        renames.append((src, dst))
        if len(renames) == 2:  # old aside done; moving the new one in fails
            raise OSError("injected")
        return real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        build_causal_lm("gpt2").save_to_preset(str(target))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["preset"]
    np.testing.assert_array_equal(_load_logits(target, heldout_tokens),
                                  expected)


def test_save_replaces_the_preset_and_keeps_other_files(preset, tmp_path,
                                                        heldout_tokens):
    folder, expected = preset
    target = _copy(folder, tmp_path)
    (target / "NOTES.txt").write_text("mine")
    model = build_causal_lm("llama3")
    model.save_to_preset(str(target))
    np.testing.assert_allclose(_load_logits(target, heldout_tokens),
                               logits(model, heldout_tokens), rtol=1e-6)
    assert (target / "NOTES.txt").read_text() == "mine"
    assert os.listdir(tmp_path) == ["preset"]


def test_saving_onto_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        build_causal_lm("llama3").save_to_preset(str(path))
    assert path.read_text() == "x"


def _truncate(folder):
    path = folder / "model.weights.h5"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _edit_h5(edit):
    def apply(folder):
        with h5py.File(folder / "model.weights.h5", "r+") as f:
            edit(f)
    return apply


def _replace(name, make):
    def edit(f):
        value = f[QUERY + name][()]
        del f[QUERY + name]
        f[QUERY + name] = make(value)
    return _edit_h5(edit)


def _drop(name):
    def edit(f):
        del f[QUERY + name]
    return _edit_h5(edit)


def _edit_json(old, new):
    def apply(folder):
        path = folder / "config.json"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
    return apply


CORRUPTIONS = {
    "truncated h5": (_truncate, ["model.weights.h5", "truncated"]),
    "kernel shape": (_replace("0", lambda v: v[:, : v.shape[1] // 2]),
                     ["model.weights.h5", "query", "'quantized_kernel'",
                      "shape"]),
    "kernel dtype": (_replace("0", lambda v: v.astype(np.int32) + 256),
                     ["model.weights.h5", "query", "dtype int32"]),
    "scale dtype": (_replace("1", lambda v: v.astype(np.float16)),
                    ["query", "'kernel_scale'", "dtype float16"]),
    "missing variable": (_drop("3"), ["query", "expects 4 saved variables",
                                      "holds 3"]),
    "g_idx out of range": (_replace("3", lambda v: v + 100),
                           ["query", "'g_idx'", "outside"]),
    "truncated json": (_edit_json("}", ""), ["config.json", "not valid JSON"]),
    "layout version": (_edit_json('"layout_version": 1',
                                  '"layout_version": 2'),
                       ["storage layout 2", "reads layout 1"]),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_preset_fails_naming_file_and_problem(case, preset,
                                                        tmp_path):
    folder, _ = preset
    target = _copy(folder, tmp_path)
    corrupt, fragments = CORRUPTIONS[case]
    corrupt(target)
    with pytest.raises(ValueError) as info:
        keras_hub.models.CausalLM.from_preset(str(target))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_save_and_load_never_dequantize_a_packed_kernel(
        tmp_path, monkeypatch, calibration_tokens, heldout_tokens):
    # Keras's saving walk reads every layer attribute looking for sublayers;
    # a packed layer's `kernel` property dequantizes the whole matrix. The
    # walk must skip it on packed layers (and only there: the reload gives
    # the same logits, so every variable was still found).
    from keras_gptq.storage import packed_layer
    model = build_causal_lm("llama3")
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(
        dataset=calibration_tokens, num_samples=4, sequence_length=32,
        weight_bits=4, group_size=16), verbose=False)
    expected = logits(model, heldout_tokens)
    reads = []
    original = packed_layer.dequantized_kernel
    monkeypatch.setattr(packed_layer, "dequantized_kernel",
                        lambda layer: reads.append(layer.path)
                        or original(layer))
    model.save_to_preset(str(tmp_path / "gptq"))
    model.save(str(tmp_path / "model.keras"))
    reloaded = keras_hub.models.CausalLM.from_preset(str(tmp_path / "gptq"))
    assert reads == []
    np.testing.assert_array_equal(logits(reloaded, heldout_tokens), expected)
    # The property itself still dequantizes when a user reads it.
    query = reloaded.backbone.transformer_layers[0]._self_attention_layer
    assert query._query_dense.kernel.shape == (64, 4, 16)
    assert reads == [query._query_dense.path]
