"""`keras_gptq.quantize_preset`: the low-memory path, block by block.

The output preset must be the in-memory path's, file for file and integer
for integer, while no more than one block's float kernels are ever alive.
"""

import gc
import json
import os
import weakref

import keras
import numpy as np
import pytest

import keras_gptq
from helpers.families import build_family
from helpers.models import float_kernels
from helpers.models import markov_tokens
from keras_gptq.utils.files import preset_arrays
from keras_gptq.keras_patches.saving import CorruptPresetError
from keras_gptq.model import low_memory
from keras_gptq.model import pipeline

_WEIGHTS = "model.weights.h5"


def _config(**kwargs):
    settings = dict(dataset=markov_tokens(8000, seed=1), num_samples=16,
                    sequence_length=32, weight_bits=4, group_size=16,
                    calibration_batch_size=8)
    settings.update(kwargs)
    return keras_gptq.GPTQConfig(**settings)


def _assert_same_preset(a, b):
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in ("config.json", "task.json"):
        with open(os.path.join(a, name)) as fa, open(
                os.path.join(b, name)) as fb:
            assert json.load(fa) == json.load(fb), name
    left, right = preset_arrays(a), preset_arrays(b)
    assert left.keys() == right.keys()
    differ = [k for k in left if left[k].dtype != right[k].dtype
              or not np.array_equal(left[k], right[k])]
    assert not differ, differ
    assert any(v.dtype == np.uint8 for v in left.values())  # packed levels


@pytest.fixture(scope="module")
def llama3_preset(tmp_path_factory):
    """A tiny float Llama 3 preset folder."""
    folder = tmp_path_factory.mktemp("low_memory") / "float"
    build_family("llama3").save_to_preset(str(folder))
    return folder


@pytest.mark.parametrize("family,settings,filters", [
    ("llama3", dict(activation_order=True, asymmetric_calibration=True),
     None),
    ("gemma", dict(overrides={
        "ffw_linear": {"weight_bits": 8, "group_size": 8},
        r"decoder_block_0/attention/query": None}), None),
    ("gpt2", dict(true_sequential=True), [r"_dense", r"attention/query"]),
    ("mixtral", dict(activation_order=True, asymmetric_calibration=True),
     None),
])
def test_same_preset_as_in_memory(family, settings, filters, tmp_path):
    build_family(family).save_to_preset(str(tmp_path / "float"))
    import keras_hub
    model = keras_hub.models.CausalLM.from_preset(str(tmp_path / "float"))
    in_memory = keras_gptq.quantize(model, _config(**settings), filters,
                                    verbose=False)
    model.save_to_preset(str(tmp_path / "in_memory"))
    report = keras_gptq.quantize_preset(
        tmp_path / "float", tmp_path / "low", _config(**settings), filters,
        verbose=False)
    _assert_same_preset(tmp_path / "in_memory", tmp_path / "low")
    assert [e.name for e in report.layers] == [
        e.name for e in in_memory.layers]
    assert report.calibration_tokens == in_memory.calibration_tokens


def _placeholder_holders(model):
    """Layers tracking backend parameters (torch) for deferred variables:
    placeholders as large as the variables."""
    return [layer.name for layer in model._flatten_layers()
            if hasattr(layer, "_torch_params") and any(
                low_memory.is_deferred(v) for v in layer.variables)]


def test_one_float_block_alive_at_a_time(llama3_preset, tmp_path,
                                         monkeypatch):
    seen = []  # per block: float kernels alive in other blocks, and
    released = []  # whether every earlier block's kernels are gone
    refs = []
    load = low_memory.PresetBlocks.load

    def watched(self, block):
        if id(block) not in self.loaded:
            blocks = self.backbone.transformer_layers
            gc.collect()
            seen.append(len(float_kernels(blocks)))
            assert not _placeholder_holders(self.backbone)
            released.append(all(ref() is None for ref in refs))
            load(self, block)
            refs.extend(weakref.ref(k) for k in float_kernels([block]))
            assert len(float_kernels([block])) == 7
        return load(self, block)

    monkeypatch.setattr(low_memory.PresetBlocks, "load", watched)
    keras_gptq.quantize_preset(llama3_preset, tmp_path / "out", _config(),
                               verbose=False)
    assert seen == [0, 0]  # nothing float in any block before each load
    assert released == [True, True]
    gc.collect()
    assert refs and all(ref() is None for ref in refs)


def test_the_model_is_built_without_values(llama3_preset):
    model = low_memory._deferred_model(str(llama3_preset))
    assert model.backbone.variables
    assert all(low_memory.is_deferred(v) for v in model.backbone.variables)
    # Keras's global list would initialize them on a later StatelessScope.
    with keras.StatelessScope():
        pass
    assert all(low_memory.is_deferred(v) for v in model.backbone.variables)


def test_a_failed_run_writes_nothing(llama3_preset, tmp_path, monkeypatch):
    original = pipeline._solve_block
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_solve_block", fail_second)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        keras_gptq.quantize_preset(llama3_preset, out, _config(),
                                   verbose=False)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no half-written sibling either


def test_sharded_weights(llama3_preset, tmp_path):
    import keras_hub
    model = keras_hub.models.CausalLM.from_preset(str(llama3_preset))
    model.save_to_preset(str(tmp_path / "sharded"), max_shard_size=1e-4)
    assert not (tmp_path / "sharded" / _WEIGHTS).exists()
    keras_gptq.quantize_preset(tmp_path / "sharded", tmp_path / "from_shards",
                               _config(), verbose=False)
    keras_gptq.quantize_preset(llama3_preset, tmp_path / "from_one",
                               _config(), verbose=False)
    _assert_same_preset(tmp_path / "from_shards", tmp_path / "from_one")


def _hf_like(tmp_path, config='{"model_type": "llama"}'):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    return folder


@pytest.mark.parametrize("case,error,match", [
    ("config", TypeError, "GPTQConfig"),
    ("same_folder", ValueError, "is the input preset"),
    ("not_a_preset", ValueError, "has no config.json"),
    ("hf_without_tensors", FileNotFoundError, "no .safetensors file"),
    ("unknown_config", ValueError, "neither a KerasHub preset nor"),
    ("no_match", ValueError, "nothing to quantize"),
    ("bad_filter", ValueError, "invalid regex"),
])
def test_bad_arguments(case, error, match, llama3_preset, tmp_path):
    preset, out, config, filters = llama3_preset, tmp_path / "out", (
        _config()), None
    if case == "config":
        config = {"weight_bits": 4}
    elif case == "same_folder":
        out = llama3_preset
    elif case == "not_a_preset":
        preset = tmp_path
    elif case == "hf_without_tensors":  # tests/hf/test_hf_low_memory.py
        preset = _hf_like(tmp_path)
    elif case == "unknown_config":
        preset = _hf_like(tmp_path, '{"name": "x"}')
    elif case == "no_match":
        filters = "no_such_layer"
    elif case == "bad_filter":
        filters = "["
    with pytest.raises(error, match=match):
        keras_gptq.quantize_preset(preset, out, config, filters,
                                   verbose=False)
    assert not (tmp_path / "out").exists()


def test_truncated_weights_are_named(llama3_preset, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(llama3_preset, broken)
    with open(broken / _WEIGHTS, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CorruptPresetError, match="Could not open the weights"):
        keras_gptq.quantize_preset(broken, tmp_path / "out", _config(),
                                   verbose=False)
    assert not (tmp_path / "out").exists()


def test_quantized_preset_is_refused(llama3_preset, tmp_path):
    keras_gptq.quantize_preset(llama3_preset, tmp_path / "q", _config(),
                               verbose=False)
    with pytest.raises(ValueError, match="already quantized"):
        keras_gptq.quantize_preset(tmp_path / "q", tmp_path / "qq",
                                   _config(), verbose=False)
