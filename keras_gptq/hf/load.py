"""`load_hf_gptq`: a Hugging Face GPTQ folder (AutoGPTQ, GPTQModel, optimum,
`export_hf`) → a KerasHub CausalLM holding the checkpoint's packed weights.

The levels, zero points, float16 scales (kept exactly, as float32) and group
indices go straight into keras_gptq storage: nothing is dequantized and
quantized again. Embeddings, norms, lm_head and biases load through
KerasHub's own transformers converter.
"""

import glob
import json
import os
import types

import keras_hub
import numpy as np

from keras_gptq import storage
from keras_gptq.hf import configs
from keras_gptq.hf import families
from keras_gptq.hf import format as hf_format
from keras_gptq.model import layout as layout_lib

_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def _read_json(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _Tensors:
    """Lazy read access to every `*.safetensors` file of a folder."""

    def __init__(self, folder):
        from safetensors import safe_open

        paths = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not paths:
            raise FileNotFoundError(f"{folder!r} holds no .safetensors file.")
        self._files = [safe_open(p, framework="np") for p in paths]
        self._where = {k: f for f in self._files for k in f.keys()}

    def keys(self):
        return self._where.keys()

    def get(self, name):
        return self._where[name].get_tensor(name) if (
            name in self._where) else None


def _load_float(backbone, family, tensors):
    """Assigns every float tensor of the checkpoint to its Keras variables
    (`Family.float_variables`, and an untied lm_head)."""
    table = family.float_variables(backbone)
    head = families.lm_head(backbone)
    if head is not None:
        table["lm_head.weight"] = [head]
    for name, variables in table.items():
        value = tensors.get(name)
        if value is None:
            raise hf_format.UnsupportedCheckpointError(
                f"The checkpoint has no tensor {name!r}.")
        if name == "lm_head.weight":
            value = value.T
        values = families.from_hf_tensor(
            name, value, [tuple(v.shape) for v in variables])
        for variable, part in zip(variables, values):
            variable.assign(part.astype(variable.dtype))


def _split_rows(arrays, layouts):
    """Splits a fused module's `(q, scale, zero, g_idx)` into its layers."""
    q, scale, zero, g_idx = arrays
    bounds = [0]
    for lay in layouts:
        bounds.append(bounds[-1] + lay.rows)
    if bounds[-1] != q.shape[0]:
        return None
    return [(q[a:b], scale[a:b], zero[a:b], g_idx)
            for a, b in zip(bounds, bounds[1:])]


def _load_float_module(name, layers, tensors, transposed):
    """A module stored unquantized: its `weight` (`[in, out]` when
    `transposed`, GPT-2's Conv1D) into the layers' kernels."""
    weight = tensors.get(f"{name}.weight")
    if weight is None:
        raise hf_format.UnsupportedCheckpointError(
            f"The checkpoint has neither {name}.qweight nor {name}.weight.")
    weight = weight.T if transposed else weight
    layouts = [layout_lib.layer_layout(layer) for layer in layers]
    bounds = np.cumsum([0] + [lay.rows for lay in layouts])
    if weight.shape != (bounds[-1], layouts[0].columns):
        raise hf_format.UnsupportedCheckpointError(
            f"{name}.weight {weight.shape} does not fit "
            f"{[layer.path for layer in layers]}.")
    for layer, lay, a, b in zip(layers, layouts, bounds, bounds[1:]):
        layer._kernel.assign(lay.matrix_to_kernel(weight[a:b]).astype(
            layer._kernel.dtype))


def _write_module(name, layers, tensors, bits, group_size, fmt):
    parts = {k: tensors.get(f"{name}.{k}") for k in _PARTS}
    arrays = hf_format.from_hf(parts, bits, fmt, group_size, name=name)
    layouts = [layout_lib.layer_layout(layer) for layer in layers]
    split = _split_rows(arrays, layouts)
    if split is None or any(lay.columns != arrays[0].shape[1]
                            for lay in layouts):
        raise hf_format.UnsupportedCheckpointError(
            f"{name}: packed shape {arrays[0].shape} (out, in) does not fit "
            f"{[layer.path for layer in layers]}.")
    for layer, (q, scale, zero, g_idx) in zip(layers, split):
        result = types.SimpleNamespace(q=q, scale=scale, zero=zero,
                                       g_idx=g_idx)
        storage.write_packed(layer, result, bits, group_size)


def _preprocessor(family, folder):
    """The CausalLM preprocessor from the folder's tokenizer files, or None
    when the folder has none."""
    cls = getattr(keras_hub.models, family.causal_lm + "Preprocessor")
    if not all(os.path.isfile(os.path.join(folder, n))
               for n in family.tokenizer_files):
        return None
    return cls.from_preset(folder)


def load_hf_gptq(folder, dtype=None):
    """Loads a Hugging Face GPTQ folder as a KerasHub CausalLM.

    Reads `config.json` (`quantization_config`, else `quantize_config.json`)
    and every `*.safetensors` file. v1 (`checkpoint_format="gptq"`, zero
    points stored minus one) and v2 (`"gptq_v2"`), symmetric and asymmetric
    grids, act-order `g_idx`, 2/3/4/8 bits and `group_size=-1` all load.
    Modules stored unquantized (`weight` instead of `qweight`) stay float.

    Args:
        folder: a folder written by `export_hf`, AutoGPTQ, GPTQModel or
            optimum, for a Llama-family (`LlamaForCausalLM`) or GPT-2
            (`GPT2LMHeadModel`) model.
        dtype: optional Keras dtype policy for the float parts.

    Returns:
        A `Llama3CausalLM` or `GPT2CausalLM`; its preprocessor is built from
        the folder's tokenizer files (None when there are none).

    Raises:
        ValueError: an unsupported architecture (names the supported ones)
            or settings, e.g. quantized lm_head, or a v1 zero point that
            wraps (`hf_format.UnsupportedCheckpointError`).
        FileNotFoundError: no `config.json` or no `.safetensors` file.

    Example:

    ```python
    model = keras_gptq.load_hf_gptq("Llama-3.2-1B-gptq")
    model.generate("The capital of France is", max_length=20)
    ```
    """
    folder = os.fspath(folder)
    config = _read_json(folder, "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder!r} has no config.json.")
    bits, group_size, fmt = hf_format.read_quantization_config(
        config, _read_json(folder, "quantize_config.json"))
    family = families.family_of_config(config)
    tensors = _Tensors(folder)
    backbone_cls = configs.converter(family.model_type).backbone_cls
    backbone = backbone_cls(
        **configs.backbone_kwargs(family.model_type, config), dtype=dtype)
    _load_float(backbone, family, tensors)
    modules = family.linear_modules(backbone)
    for name in sorted(modules):
        if f"{name}.qweight" in tensors.keys():
            _write_module(name, modules[name], tensors, bits, group_size, fmt)
        else:
            _load_float_module(name, modules[name], tensors,
                               family.transposed_weights)
    cls = getattr(keras_hub.models, family.causal_lm)
    return cls(backbone=backbone, preprocessor=_preprocessor(family, folder))
