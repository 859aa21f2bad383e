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

import keras_hub
import numpy as np

from keras_gptq.hf import configs
from keras_gptq.hf import families
from keras_gptq.hf import format as hf_format
from keras_gptq.hf import parts

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
    head = family.lm_head(backbone)
    if head is not None:
        table["lm_head.weight"] = ([head], 1)
    for name, (variables, heads) in table.items():
        value = tensors.get(name)
        if value is None:
            raise hf_format.UnsupportedCheckpointError(
                f"The checkpoint has no tensor {name!r}.")
        if name == "lm_head.weight":
            value = value.T
        values = family.from_hf_tensor(
            name, value, [tuple(v.shape) for v in variables], heads)
        for variable, part in zip(variables, values):
            variable.assign(part.astype(variable.dtype))


def _row_bounds(name, module, shape):
    """Each part's `[start, stop)` rows of a module of `shape (out, in)`."""
    shapes = [part.shape() for part in module]
    bounds = np.cumsum([0] + [rows for rows, _ in shapes])
    if tuple(shape) != (bounds[-1], shapes[0][1]) or any(
            columns != shapes[0][1] for _, columns in shapes):
        raise hf_format.UnsupportedCheckpointError(
            f"{name}: shape {tuple(shape)} (out, in) does not fit "
            f"{[part.name for part in module]}.")
    return list(zip(bounds, bounds[1:]))


def _load_float_module(name, module, tensors, transposed):
    """A module stored unquantized: its `weight` (`[in, out]` when
    `transposed`, GPT-2's Conv1D) into the layers' kernels."""
    weight = tensors.get(f"{name}.weight")
    if weight is None:
        raise hf_format.UnsupportedCheckpointError(
            f"The checkpoint has neither {name}.qweight nor {name}.weight.")
    weight = weight.T if transposed else weight
    for part, (a, b) in zip(module, _row_bounds(name, module, weight.shape)):
        part.write_float(weight[a:b])


def _write_module(name, module, tensors, settings, writer):
    """A GPTQ module's rows, collected by `writer` (a `parts.Writer`)."""
    bits, group_size, fmt, dynamic = settings
    own = hf_format.module_settings(dynamic, name, (bits, group_size))
    if own is None:
        raise hf_format.UnsupportedCheckpointError(
            f"{name} has a qweight, but `dynamic` keeps it float.")
    bits, group_size = own
    stored = {k: tensors.get(f"{name}.{k}") for k in _PARTS}
    q, scale, zero, g_idx = hf_format.from_hf(stored, bits, fmt, group_size,
                                              name=name)
    for part, (a, b) in zip(module, _row_bounds(name, module, q.shape)):
        writer.add(part, parts.Packed(bits, group_size, q[a:b], scale[a:b],
                                      zero[a:b], g_idx))


def _named_family(family, backbone, tensors):
    """`family` with its linear modules named as the checkpoint names them
    (a naming of `families.MODULE_NAMES`: transformers' or GPTQModel's),
    found from the tensor names.

    Raises:
        UnsupportedCheckpointError: no naming finds every module (a
            `qweight` or a float `weight`); names one missing module of
            each naming.
    """
    missing = {}
    for module_names in families.MODULE_NAMES:
        named = family.named(module_names)
        modules = {**named.linear_modules(backbone),
                   **named.linear_modules(backbone, named.float_modules)}
        absent = [name for name in modules if not {
            f"{name}.qweight", f"{name}.weight"} & tensors.keys()]
        if not absent:
            return named
        missing.setdefault(absent[0], module_names)
    raise hf_format.UnsupportedCheckpointError(
        "The checkpoint's linear modules follow no naming that "
        f"{family.architecture} has: " + "; ".join(
            f"{naming} names need {name}.qweight or {name}.weight"
            for name, naming in missing.items()) + ".")


def _load_modules(backbone, family, tensors, settings):
    """Every linear module: GPTQ ones packed, float ones (and routers)
    into float kernels."""
    modules = family.linear_modules(backbone)
    writer = parts.Writer()
    for name in sorted(modules):
        if f"{name}.qweight" in tensors.keys():
            _write_module(name, modules[name], tensors, settings, writer)
        else:
            _load_float_module(name, modules[name], tensors,
                               family.transposed_weights)
    writer.write()
    for name, module in family.linear_modules(
            backbone, family.float_modules).items():
        _load_float_module(name, module, tensors, False)


def _preprocessor(family, folder):
    """The CausalLM preprocessor from the folder's tokenizer files, or None
    when the folder has none."""
    cls = getattr(keras_hub.models, family.causal_lm + "Preprocessor")
    if family.tokenizer_files is None or not all(
            os.path.isfile(os.path.join(folder, n))
            for n in family.tokenizer_files):
        return None
    return cls.from_preset(folder)


def load_hf_gptq(folder, dtype=None):
    """Loads a Hugging Face GPTQ folder as a KerasHub CausalLM.

    Reads `config.json` (`quantization_config`, else `quantize_config.json`)
    and every `*.safetensors` file. v1 (`checkpoint_format="gptq"`, zero
    points stored minus one) and v2 (`"gptq_v2"`), symmetric and asymmetric
    grids, act-order `g_idx`, 2/3/4/8 bits and `group_size=-1` all load.
    Modules stored unquantized (`weight` instead of `qweight`) stay float;
    GPTQModel's per-module `dynamic` bits and group sizes are read. Module
    names may be transformers' or GPTQModel's (they differ for Mixtral and
    Phi-3, see `export_hf`'s `module_names`), told apart by the tensor
    names.

    Args:
        folder: a folder written by `export_hf`, AutoGPTQ, GPTQModel or
            optimum, of an architecture in `hf.families.FAMILIES`
            (`LlamaForCausalLM`, `GPT2LMHeadModel`, `GemmaForCausalLM`,
            `Gemma3ForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`,
            `Qwen3ForCausalLM`, `MixtralForCausalLM`,
            `Qwen2MoeForCausalLM`, `Qwen3MoeForCausalLM`,
            `Phi3ForCausalLM`, `OPTForCausalLM`, `BloomForCausalLM`).
        dtype: optional Keras dtype policy for the float parts.

    Returns:
        The family's KerasHub CausalLM; its preprocessor is built from the
        folder's tokenizer files by KerasHub's converter (None when there
        are none, and for Phi-3, OPT and Bloom, which KerasHub cannot
        convert).

    Raises:
        ValueError: an unsupported architecture (names the supported ones)
            or settings, e.g. quantized lm_head, a v1 zero point that
            wraps, or module names of no known naming
            (`hf_format.UnsupportedCheckpointError`).
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
    fallback = _read_json(folder, "quantize_config.json")
    bits, group_size, fmt = hf_format.read_quantization_config(config,
                                                               fallback)
    dynamic = (config.get("quantization_config") or fallback).get("dynamic")
    family = families.family_of_config(config)
    tensors = _Tensors(folder)
    cls = getattr(keras_hub.models, family.causal_lm)
    backbone_cls = cls.backbone_cls
    backbone = backbone_cls(
        **configs.backbone_kwargs(family.model_type, config), dtype=dtype)
    family = _named_family(family, backbone, tensors)
    _load_float(backbone, family, tensors)
    _load_modules(backbone, family, tensors,
                  (bits, group_size, fmt, dynamic))
    return cls(backbone=backbone, preprocessor=_preprocessor(family, folder))
