"""`quantize_preset` on a float Hugging Face folder, block by block.

The preset it writes must hold the integers that quantizing the folder's
model in memory gives, where the in-memory model is loaded by KerasHub's
own transformers converter (an independent reading of the same tensors).
"""

import gc
import json
import os

import keras_hub
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

import keras_gptq
from helpers.families import build_family
from helpers.hf import pack_randomly
from helpers.hf import packed_model
from helpers.hf import write_float_folder
from helpers.models import float_kernels
from helpers.models import logits
from helpers.models import markov_tokens
from keras_gptq.hf import blocks as hf_blocks
from keras_gptq.hf import format as hf_format
from keras_gptq.model import low_memory
from keras_gptq.utils.files import preset_arrays

TOKENS = markov_tokens(64, seed=5).reshape(2, 32)


def _config(**kwargs):
    settings = dict(dataset=markov_tokens(8000, seed=1), num_samples=16,
                    sequence_length=32, weight_bits=4, group_size=16,
                    calibration_batch_size=8, activation_order=True,
                    add_start_token=False)
    settings.update(kwargs)
    return keras_gptq.GPTQConfig(**settings)


def _float_folder(family, root):
    """A tiny float transformers folder of `family` (random weights)."""
    if family == "gpt2":  # KerasHub's GPT-2 converter assumes 4 * hidden
        model = pack_randomly(build_family("gpt2", intermediate_dim=256),
                              8, 32, sym=False, act_order=False)
    else:
        model = packed_model(family, 8, 32, sym=False, act_order=False)
    keras_gptq.export_hf(model, root / "gptq")
    write_float_folder(root / "gptq", root / "float")
    return root / "float"


def _in_memory(folder, out, config):
    """KerasHub's converter loads the folder; quantize; save."""
    backbone = keras_hub.models.Backbone.from_preset(str(folder))
    task = next(c for c in _causal_lms() if c.backbone_cls is type(backbone))
    model = task(backbone=backbone, preprocessor=None)
    report = keras_gptq.quantize(model, config, verbose=False)
    model.save_to_preset(str(out))
    return report


def _causal_lms():
    return [getattr(keras_hub.models, n) for n in dir(keras_hub.models)
            if n.endswith("CausalLM") and n != "CausalLM"]


# Llama 3 (plain), GPT-2 (Conv1D [in, out] tensors, tied head), Qwen2
# (q/k/v biases, untied head), Mixtral (experts as banks, float router).
@pytest.mark.parametrize("family", ["llama3", "gpt2", "qwen", "mixtral"])
def test_same_integers_as_in_memory(family, tmp_path):
    folder = _float_folder(family, tmp_path)
    in_memory = _in_memory(folder, tmp_path / "in_memory", _config())
    report = keras_gptq.quantize_preset(folder, tmp_path / "low", _config(),
                                        verbose=False)
    left = preset_arrays(tmp_path / "in_memory")
    right = preset_arrays(tmp_path / "low")
    assert left.keys() == right.keys()
    differ = [k for k in left if left[k].dtype != right[k].dtype
              or not np.array_equal(left[k], right[k])]
    assert not differ, differ
    assert any(v.dtype == np.uint8 for v in right.values())
    assert [e.name for e in report.layers] == [
        e.name for e in in_memory.layers]
    reloaded = keras_hub.models.CausalLM.from_preset(str(tmp_path / "low"))
    expected = keras_hub.models.CausalLM.from_preset(
        str(tmp_path / "in_memory"))
    np.testing.assert_array_equal(logits(reloaded, TOKENS),
                                  logits(expected, TOKENS))


def test_blocks_are_read_one_at_a_time(tmp_path, monkeypatch):
    """Each block's tensors are read only once the block before it is
    packed, and never twice."""
    folder = _float_folder("llama3", tmp_path)
    reads = []
    get = hf_blocks.load.Tensors.get

    def spy(self, name):
        reads.append(name)
        return get(self, name)

    monkeypatch.setattr(hf_blocks.load.Tensors, "get", spy)
    keras_gptq.quantize_preset(folder, tmp_path / "low", _config(),
                               verbose=False)
    layers = [int(n.split(".")[2]) for n in reads if ".layers." in n]
    assert layers == sorted(layers)  # block 0's tensors, then block 1's
    assert len(reads) == len(set(reads))
    assert reads[-1] == "lm_head.weight"  # for the save only
    outside = [n for n in reads[:-1] if ".layers." not in n]
    assert reads[:len(outside)] == outside  # embeddings and norm first


def test_one_float_block_alive_at_a_time(tmp_path, monkeypatch):
    folder = _float_folder("qwen", tmp_path)
    seen = []  # per block: float kernels alive in the blocks
    load = hf_blocks.FolderBlocks.load

    def watched(self, block):
        if self.index[id(block)] not in self.loaded:
            gc.collect()
            seen.append(len(float_kernels(self.backbone.transformer_layers)))
        load(self, block)
        assert len(float_kernels([block])) == 7

    monkeypatch.setattr(hf_blocks.FolderBlocks, "load", watched)
    keras_gptq.quantize_preset(folder, tmp_path / "low", _config(),
                               verbose=False)
    assert seen == [0, 0]  # nothing float in any block before each load


def test_the_untied_head_is_read_only_for_the_save(tmp_path, monkeypatch):
    """An untied lm_head is as large as the embedding; the walk never uses
    it, so it stays unread until every block is done."""
    folder = _float_folder("llama3", tmp_path)
    states = []
    load = hf_blocks.FolderBlocks.load

    def watched(self, block):
        states.append(low_memory.is_deferred(self.head))
        load(self, block)

    monkeypatch.setattr(hf_blocks.FolderBlocks, "load", watched)
    keras_gptq.quantize_preset(folder, tmp_path / "low", _config(),
                               verbose=False)
    assert states and all(states)
    head = load_file(folder / "model.safetensors")["lm_head.weight"]
    saved = [v for k, v in preset_arrays(tmp_path / "low").items()
             if v.shape == head.T.shape]
    assert any(np.array_equal(v, head.T) for v in saved)


def test_tensors_are_read_as_safetensors_writes_them(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch
    rng = np.random.default_rng(0)
    arrays = {"f32": rng.standard_normal((3, 5)).astype(np.float32),
              "f16": rng.standard_normal((4,)).astype(np.float16),
              "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
              "u8": np.arange(7, dtype=np.uint8), "scalar": np.float32(2.5),
              "empty": np.zeros((0, 3), np.float32)}
    save_file({k: np.asarray(v) for k, v in arrays.items()},
              str(tmp_path / "a.safetensors"))
    bf16 = torch.randn(4, 6).to(torch.bfloat16)
    save_torch({"bf16": bf16}, str(tmp_path / "b.safetensors"))
    tensors = hf_blocks.load.Tensors(str(tmp_path))
    assert set(tensors.keys()) == set(arrays) | {"bf16"}
    for name, want in arrays.items():
        got = tensors.get(name)
        assert got.dtype == np.asarray(want).dtype and got.flags.writeable
        np.testing.assert_array_equal(got, want)
    got = tensors.get("bf16")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, bf16.float().numpy())
    assert tensors.get("absent") is None


def test_a_truncated_file_is_named(tmp_path):
    save_file({"w": np.ones((64, 64), np.float32)},
              str(tmp_path / "m.safetensors"))
    with open(tmp_path / "m.safetensors", "r+b") as f:
        f.truncate(2000)
    with pytest.raises(ValueError, match="truncated in 'w'"):
        hf_blocks.load.Tensors(str(tmp_path)).get("w")


def test_a_missing_tensor_is_named(tmp_path):
    folder = _float_folder("llama3", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(hf_format.UnsupportedCheckpointError,
                       match="model.layers.1.mlp.down_proj"):
        keras_gptq.quantize_preset(folder, tmp_path / "low", _config(),
                                   verbose=False)
    assert not os.path.exists(tmp_path / "low")


def test_a_quantized_folder_is_refused(tmp_path):
    packed = packed_model("llama3", 4, 32)
    keras_gptq.export_hf(packed, tmp_path / "gptq")
    with pytest.raises(ValueError, match="already quantized.*load_hf_gptq"):
        keras_gptq.quantize_preset(tmp_path / "gptq", tmp_path / "low",
                                   _config(), verbose=False)


def test_an_unsupported_architecture_is_refused(tmp_path):
    folder = _float_folder("llama3", tmp_path)
    with open(folder / "config.json") as f:
        config = json.load(f)
    config.update(model_type="falcon", architectures=["FalconForCausalLM"])
    with open(folder / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="supported"):
        keras_gptq.quantize_preset(folder, tmp_path / "low", _config(),
                                   verbose=False)


def test_the_folder_model_is_built_without_values(tmp_path):
    folder = _float_folder("qwen", tmp_path)
    with hf_blocks.open_folder(str(folder), _config()) as (model, source):
        assert all(low_memory.is_deferred(v)
                   for v in model.backbone.variables)
        assert source.reads
