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


def read_json(folder, name):
    """The JSON file `name` of `folder` as a dict, or None when absent."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# safetensors dtype names -> numpy dtypes; BF16 is widened to float32.
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": np.uint16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class Tensors:
    """Read access to every `*.safetensors` file of a folder, one tensor
    at a time.

    Each tensor is read with one positioned file read into its own array:
    nothing is memory-mapped, so a tensor read and dropped leaves no pages
    of the file counted in the process's memory (a block-by-block run
    stays small even when it has read the whole checkpoint). bfloat16
    tensors are returned as float32 (exact).

    Raises:
        FileNotFoundError: the folder holds no `.safetensors` file.
        ValueError: a file whose header is not safetensors', or a dtype
            outside `_DTYPES`.
    """

    def __init__(self, folder):
        paths = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not paths:
            raise FileNotFoundError(f"{folder!r} holds no .safetensors file.")
        self._where = {}  # name: (path, dtype, shape, start, stop)
        for path in paths:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                try:
                    header = json.loads(f.read(size))
                except ValueError as e:
                    raise ValueError(
                        f"{path!r} is not a safetensors file: {e}") from e
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in _DTYPES:
                    raise ValueError(
                        f"{path!r}: tensor {name!r} has dtype "
                        f"{info['dtype']}, which keras_gptq does not read.")
                start, stop = info["data_offsets"]
                self._where[name] = (path, info["dtype"],
                                     tuple(info["shape"]), 8 + size + start,
                                     stop - start)

    def keys(self):
        """Every tensor name of the folder."""
        return self._where.keys()

    def get(self, name):
        """Tensor `name` as a numpy array (read now), or None if absent."""
        if name not in self._where:
            return None
        path, dtype, shape, offset, nbytes = self._where[name]
        array = np.empty(shape, _DTYPES[dtype])
        if array.nbytes != nbytes:
            raise ValueError(f"{path!r}: tensor {name!r} holds {nbytes} "
                             f"bytes, not a {dtype} array of {shape}.")
        if nbytes:
            with open(path, "rb") as f:
                f.seek(offset)
                if f.readinto(memoryview(array.reshape(-1)).cast(
                        "B")) != nbytes:
                    raise ValueError(f"{path!r} is truncated in {name!r}.")
        if dtype == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array


def float_table(backbone, family):
    """`{hf tensor name: ([keras variables], heads)}` of every float tensor
    of the checkpoint (`Family.float_variables`, and an untied lm_head)."""
    table = family.float_variables(backbone)
    head = family.lm_head(backbone)
    if head is not None:
        table["lm_head.weight"] = ([head], 1)
    return table


def load_float_tensor(name, variables, heads, family, tensors):
    """Assigns float tensor `name` of the checkpoint to its Keras
    `variables` (one entry of `float_table`)."""
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


def _load_float(backbone, family, tensors):
    """Assigns every float tensor of the checkpoint to its Keras
    variables."""
    for name, (variables, heads) in float_table(backbone, family).items():
        load_float_tensor(name, variables, heads, family, tensors)


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


def load_float_module(name, module, tensors, transposed):
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


def named_family(family, backbone, tensors):
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
            load_float_module(name, modules[name], tensors,
                              family.transposed_weights)
    writer.write()
    for name, module in family.linear_modules(
            backbone, family.float_modules).items():
        load_float_module(name, module, tensors, False)


def preprocessor(family, folder):
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
    config = read_json(folder, "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder!r} has no config.json.")
    fallback = read_json(folder, "quantize_config.json")
    bits, group_size, fmt = hf_format.read_quantization_config(config,
                                                               fallback)
    dynamic = (config.get("quantization_config") or fallback).get("dynamic")
    family = families.family_of_config(config)
    tensors = Tensors(folder)
    cls = getattr(keras_hub.models, family.causal_lm)
    backbone_cls = cls.backbone_cls
    backbone = backbone_cls(
        **configs.backbone_kwargs(family.model_type, config), dtype=dtype)
    family = named_family(family, backbone, tensors)
    _load_float(backbone, family, tensors)
    _load_modules(backbone, family, tensors,
                  (bits, group_size, fmt, dynamic))
    return cls(backbone=backbone, preprocessor=preprocessor(family, folder))
