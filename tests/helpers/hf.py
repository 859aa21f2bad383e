"""Shared pieces of the Hugging Face GPTQ tests: synthetic packed models,
reading a folder's tensors, and a float HF folder built by the spec reader.
"""

import json
import os
import types

import keras
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from helpers import hf_spec
from helpers.families import build_family
from keras_gptq import storage
from keras_gptq.model import layout
from keras_gptq.model import structure


def block_layers(model):
    """Every Dense/EinsumDense of the model's transformer blocks."""
    return [layer for block in structure.sequential_blocks(model)
            for layer in structure.target_layers(block)]


def _random_result(rng, rows, columns, bits, group_size, sym, act_order,
                   fp16_scales, zero_low):
    maxq = (1 << bits) - 1
    size = columns if group_size == -1 else group_size
    groups = -(-columns // size)
    g_idx = np.arange(columns) // size
    if act_order:
        perm = np.random.default_rng(columns).permutation(columns)
        g_idx = np.empty(columns, np.int64)
        g_idx[perm] = np.arange(columns) // size
    scale = rng.uniform(0.002, 0.02, (rows, groups)).astype(np.float32)
    if fp16_scales:
        scale = scale.astype(np.float16).astype(np.float32)
    zero = (np.full((rows, groups), (maxq + 1) // 2) if sym else
            rng.integers(zero_low, maxq + 1, (rows, groups)))
    return types.SimpleNamespace(
        q=rng.integers(0, maxq + 1, (rows, columns)).astype(np.uint8),
        scale=scale, zero=zero.astype(np.uint8),
        g_idx=g_idx.astype(np.int32))


def pack_randomly(model, bits, group_size, sym, act_order, seed=0,
                  fp16_scales=True, zero_low=1, skip=None):
    """Puts random packed GPTQ weights into every block layer and expert
    bank (but those whose path contains `skip`).

    Matrices with the same number of input columns share one act-order
    permutation (as q, k and v do when they share a Hessian). Zero points
    are drawn from `[zero_low, 2**bits - 1]` unless `sym`.
    """
    rng = np.random.default_rng(seed)
    settings = (bits, group_size, sym, act_order, fp16_scales, zero_low)
    for layer in block_layers(model):
        if skip and skip in layer.path:
            continue
        lay = layout.layer_layout(layer)
        storage.write_packed(layer, _random_result(
            rng, lay.rows, lay.columns, *settings), bits, group_size)
    for block in structure.sequential_blocks(model):
        for moe in structure.target_banks(block):
            if skip and skip in moe.bank.path:
                continue
            results = {}
            for matrix in moe.family.matrices:
                experts, a, b = getattr(moe.bank, matrix.name).shape
                rows, columns = (b, a) if matrix.layout == "e_in_out" else (
                    a, b)
                results[matrix.name] = [_random_result(
                    rng, rows, columns, *settings) for _ in range(experts)]
            storage.write_packed_bank(moe.bank, moe.family, results, bits,
                                      group_size)
    return model


def pack_mixed(model, settings_for, sym=False, act_order=True, seed=0):
    """Puts random packed GPTQ weights into every block layer with the
    `(bits, group_size)` that `settings_for(layer.path)` gives; a layer
    for which it gives None stays float (dense families only)."""
    rng = np.random.default_rng(seed)
    for layer in block_layers(model):
        settings = settings_for(layer.path)
        if settings is None:
            continue
        lay = layout.layer_layout(layer)
        storage.write_packed(layer, _random_result(
            rng, lay.rows, lay.columns, *settings, sym, act_order,
            fp16_scales=True, zero_low=1), *settings)
    return model


# Widths that are multiples of 32, as the format packs 32 levels a word
# (`helpers.families` gives Gemma and Gemma 3 a hidden size of 48), and
# what the transformers architectures fix: Gemma 3's post norms, Bloom's
# 4 * hidden MLP.
HF_TINY = {
    "gemma": dict(hidden_dim=64, intermediate_dim=128, head_dim=16),
    "gemma3": dict(hidden_dim=64, intermediate_dim=128, head_dim=32,
                   use_post_ffw_norm=True, use_post_attention_norm=True),
    "bloom": dict(intermediate_dim=256),  # transformers: 4 * hidden
}


def float_model(family):
    """A tiny random-init float CausalLM of `family` (`helpers.families`)
    whose matrices the format can pack."""
    return build_family(family, **HF_TINY.get(family, {}))


def packed_model(family, bits=4, group_size=32, sym=False, act_order=True,
                 **kwargs):
    """A tiny random-init CausalLM with random packed weights."""
    return pack_randomly(float_model(family), bits, group_size, sym,
                         act_order, **kwargs)


def read_folder(folder):
    """`(config.json dict, {name: array})` of an exported folder."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    return config, load_file(os.path.join(folder, "model.safetensors"))


def quantized_modules(tensors):
    return sorted(k[:-len(".qweight")] for k in tensors
                  if k.endswith(".qweight"))


def spec_float_tensors(folder):
    """The folder's tensors with every GPTQ module dequantized by the spec
    reader into a float `weight` (Conv1D modules of GPT-2 as `[in, out]`)."""
    config, tensors = read_folder(folder)
    qc = config["quantization_config"]
    out = {}
    for name in quantized_modules(tensors):
        weight = hf_spec.dequantize(
            tensors.pop(f"{name}.qweight"), tensors.pop(f"{name}.qzeros"),
            tensors.pop(f"{name}.scales"), tensors.pop(f"{name}.g_idx"),
            hf_spec.module_bits(qc, name),
            qc["checkpoint_format"]).astype(np.float32)
        out[f"{name}.weight"] = weight.T if (
            config["model_type"] == "gpt2") else weight
    out.update({k: v.astype(np.float32) for k, v in tensors.items()})
    return config, out


def write_float_folder(folder, target):
    """Writes `target`: a plain float HF folder from the spec reader."""
    config, tensors = spec_float_tensors(folder)
    config = {k: v for k, v in config.items() if k != "quantization_config"}
    os.makedirs(target, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(target, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(target, "config.json"), "w") as f:
        json.dump(config, f)
    return config


def numpy_weights(model):
    """`{variable path: numpy array}` of a model's backbone."""
    return {v.path: np.asarray(keras.ops.convert_to_numpy(v))
            for v in model.backbone.weights}
