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

from keras_gptq import storage
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


class _FloatLoader:
    """What KerasHub's converters call on their `SafetensorLoader`
    (`port_weight`), skipping the weights of quantized modules."""

    def __init__(self, tensors, quantized):
        self._tensors, self._quantized = tensors, quantized

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        module, kind = hf_weight_key.rsplit(".", 1)
        if kind == "weight" and any(
                m == module or m.endswith("." + module)
                for m in self._quantized):
            return  # filled by write_packed
        tensor = self.get_tensor(hf_weight_key)
        if hook_fn:
            tensor = hook_fn(tensor, list(keras_variable.shape))
        keras_variable.assign(tensor)

    def get_tensor(self, hf_weight_key):
        """One tensor, looked up across all of the folder's files."""
        for key in (hf_weight_key, *(p + hf_weight_key for p in (
                "transformer.", "model."))):
            value = self._tensors.get(key)
            if value is not None:
                return value
        raise KeyError(f"The checkpoint has no tensor {hf_weight_key!r}.")


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
    needed = {"llama": ("tokenizer.json", "tokenizer_config.json"),
              "gpt2": ("vocab.json", "merges.txt")}[family.model_type]
    if not all(os.path.isfile(os.path.join(folder, n)) for n in needed):
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
    backbone_cls = families.converter(family).backbone_cls
    backbone = backbone_cls(**families.backbone_kwargs(family, config),
                            dtype=dtype)
    modules = family.linear_modules(backbone)
    quantized = {name for name in modules if f"{name}.qweight" in tensors.keys()}
    families.converter(family).convert_weights(
        backbone, _FloatLoader(tensors, quantized), config)
    for name in sorted(quantized):
        _write_module(name, modules[name], tensors, bits, group_size, fmt)
    cls = getattr(keras_hub.models, family.causal_lm)
    return cls(backbone=backbone, preprocessor=_preprocessor(family, folder))
