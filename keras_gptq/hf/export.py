"""`export_hf`: a keras_gptq-quantized KerasHub model → a Hugging Face GPTQ
folder that transformers (with GPTQModel) and vLLM load.

The packed levels, zero points and group indices are copied exactly; scales
and the biases of quantized modules become float16, as the format demands
(a relative change of at most 2**-11 per scale). `load_hf_gptq` of the
folder gives a Keras model with exactly the exported numbers.
"""

import collections
import json
import os
import warnings

import keras
import numpy as np
from keras_hub.src.utils.transformers.export import hf_exporter

from keras_gptq.algorithm import grid
from keras_gptq.hf import configs
from keras_gptq.hf import families
from keras_gptq.hf import format as hf_format
from keras_gptq.hf import parts
from keras_gptq.utils.files import write_folder_atomically


def _choose_format(checkpoint_format, arrays):
    """`"auto"`: v1 for symmetric grids (every consumer reads it), v2 for
    asymmetric ones (GPTQModel and transformers refuse asymmetric v1 files
    that GPTQModel did not write)."""
    if checkpoint_format not in hf_format.EXPORT_FORMATS:
        raise ValueError("checkpoint_format must be one of "
                         f"{hf_format.EXPORT_FORMATS}, got "
                         f"{checkpoint_format!r}.")
    if checkpoint_format != "auto":
        return checkpoint_format
    return "gptq" if _symmetric(arrays) else "gptq_v2"


def _symmetric(arrays):
    """True when every zero point is the middle level (a symmetric grid)."""
    return all(np.all(a.zero == 1 << (a.bits - 1)) for a in arrays.values())


def _quantized_tensors(model, family, checkpoint_format):
    """`(tensors, quantization_config settings, quantized module names)`.

    Modules whose layers are all float (skipped by `filters` or
    `overrides`) are written as a float `weight` with a '-:' `dynamic`
    entry; modules quantized with other settings than the most common ones
    get a '+:' entry.
    """
    modules = family.linear_modules(model.backbone)
    skipped = {name for name, module in modules.items()
               if not any(part.is_packed() for part in module)}
    if skipped == set(modules):
        parts.stack(*next(iter(modules.items())))  # raises: not quantized
    arrays = {name: parts.stack(name, module)
              for name, module in modules.items() if name not in skipped}
    settings = {name: (a.bits, a.group_size) for name, a in arrays.items()}
    (bits, group_size), _ = collections.Counter(
        settings.values()).most_common(1)[0]
    fmt = _choose_format(checkpoint_format, arrays)
    tensors = {}
    for name, a in arrays.items():
        try:
            packed = hf_format.to_hf(a.q, a.scale, a.zero, a.g_idx, a.bits,
                                     fmt)
        except hf_format.UnsupportedCheckpointError as err:
            raise hf_format.UnsupportedCheckpointError(f"{name}: {err}") from None
        tensors.update({f"{name}.{k}": v for k, v in packed.items()})
    for name in skipped:
        weight = np.concatenate([p.float_matrix() for p in modules[name]])
        tensors[f"{name}.weight"] = np.ascontiguousarray(
            weight.T if family.transposed_weights else weight)
    config = dict(
        bits=bits, group_size=group_size, checkpoint_format=fmt,
        desc_act=not all(grid.has_contiguous_groups(a.g_idx, a.group_size)
                         for a in arrays.values()),
        sym=_symmetric(arrays), dynamic=hf_format.dynamic_entries(
            settings, (bits, group_size), skipped))
    return tensors, config, set(arrays)


def _float_tensors(model, family, quantized_modules):
    """`{hf name: numpy}` of the float tensors (float32; the biases of
    quantized modules float16, as the format stores them)."""
    backbone = model.backbone
    variables = family.float_variables(backbone)
    head = family.lm_head(backbone)
    tensors = {}
    for name, (parts, heads) in variables.items():
        value = family.to_hf_tensor(name, [np.asarray(
            keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")))
            for v in parts], heads)
        if name.rsplit(".", 1)[0] in quantized_modules:
            value = value.astype(np.float16)
        tensors[name] = np.ascontiguousarray(value)
    for name, module in family.linear_modules(
            backbone, family.float_modules).items():
        if any(part.is_packed() for part in module):
            raise ValueError(
                f"{name} is quantized, but the format keeps it float "
                "(mixture-of-experts routers): quantize with "
                "quantize_router=False.")
        tensors[f"{name}.weight"] = np.ascontiguousarray(np.concatenate(
            [part.float_matrix() for part in module]))
    if head is not None:
        tensors["lm_head.weight"] = np.ascontiguousarray(np.asarray(
            keras.ops.convert_to_numpy(keras.ops.cast(head, "float32"))).T)
    return tensors


def _write_folder(folder, model, config, tensors, qconfig):
    from safetensors.numpy import save_file

    from keras_gptq import __version__

    save_file(tensors, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    settings = hf_format.quantization_config(version=__version__, **qconfig)
    config["quantization_config"] = settings
    for name, content in (("config.json", config),
                          ("quantize_config.json", settings)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer",
                        None)
    if tokenizer is None:
        return
    if type(tokenizer).__name__ in hf_exporter.MODEL_TOKENIZER_CONFIGS:
        hf_exporter.export_tokenizer(tokenizer, folder)
    else:
        warnings.warn(
            f"The tokenizer is not written: KerasHub cannot export a "
            f"{type(tokenizer).__name__} to the transformers format. Copy "
            "the original checkpoint's tokenizer files into the folder.",
            stacklevel=3)


def _check_target(folder, overwrite):
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"{folder!r} is a file, not a folder.")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise FileExistsError(
            f"{folder!r} exists and is not empty. Pass overwrite=True (CLI: "
            "--overwrite) to replace it, or choose another folder.")


def export_hf(model, folder, checkpoint_format="gptq",
              module_names="transformers", damp_percent=0.01,
              true_sequential=True, overwrite=False):
    """Writes a keras_gptq-quantized model as a Hugging Face GPTQ folder.

    The folder holds `config.json` (with `quantization_config`),
    `quantize_config.json`, `model.safetensors` and, when the model has a
    preprocessor, the tokenizer files. It is written beside `folder` and
    swapped into place (`utils.files.write_folder_atomically`), so a
    failure never leaves a half-written folder.

    Args:
        model: a KerasHub CausalLM of a family in `hf.families.FAMILIES`
            (Llama 3, GPT-2, Gemma, Gemma 3, Mistral, Qwen2, Qwen3,
            Mixtral, Qwen-MoE, Qwen3-MoE, Phi-3, OPT, Bloom) whose
            transformer blocks (expert banks included) were quantized by
            `keras_gptq.quantize` with one bits/group size; MoE routers
            stay float.
        folder: the output folder.
        checkpoint_format: `"gptq"` (v1: stores zero - 1; read by vLLM,
            transformers and GPTQModel, which however refuse *asymmetric*
            v1 files not written by GPTQModel; refused here when a zero
            point is 0), `"gptq_v2"` (true zeros; GPTQModel, transformers,
            vLLM versions that read gptq_v2) or `"auto"` (v1 for symmetric
            grids, v2 for asymmetric ones).
        module_names: `"transformers"` (the names transformers' float
            checkpoints, the hub's GPTQ checkpoints and vLLM use, e.g.
            Mixtral's `block_sparse_moe.experts.N.w1/w3/w2`, Phi-3's
            fused `mlp.gate_up_proj`) or `"gptqmodel"` (the names
            GPTQModel 7.7.0 loads: Mixtral's `mlp.experts.N.gate_proj/
            up_proj/down_proj` and router `mlp.gate`, Phi-3's
            `mlp.gate_proj` and `mlp.up_proj`). They differ for Mixtral
            and Phi-3 only (`hf.families.Family.other_names`);
            `load_hf_gptq` reads either.
        damp_percent, true_sequential: recorded in the config (the format
            keeps them as metadata; they do not change loading).
        overwrite: replace a non-empty `folder`.

    Returns:
        `folder`.

    Raises:
        ValueError: an unknown `checkpoint_format` or `module_names`,
            an unsupported model (names the supported ones), a
            layer that is not quantized, mixed settings, fused q/k/v with
            different g_idx, or a v1 zero point of 0.
        FileExistsError: `folder` is not empty and `overwrite` is False.

    Example:

    ```python
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(dataset=texts,
                                                     tokenizer=tokenizer))
    keras_gptq.export_hf(model, "smollm2-gptq")
    # transformers: AutoModelForCausalLM.from_pretrained("smollm2-gptq")
    keras_gptq.export_hf(mixtral, "mixtral-gptq", module_names="gptqmodel")
    # GPTQModel: GPTQModel.load("mixtral-gptq")
    ```
    """
    families.check_module_names(module_names)
    family = families.family_of_model(model).named(module_names)
    folder = os.path.abspath(os.fspath(folder))
    _check_target(folder, overwrite)
    config = configs.hf_config(model, family)
    tensors, qconfig, modules = _quantized_tensors(model, family,
                                                   checkpoint_format)
    tensors.update(_float_tensors(model, family, modules))
    qconfig.update(damp_percent=damp_percent, true_sequential=true_sequential)
    write_folder_atomically(folder, lambda staging: _write_folder(
        staging, model, config, tensors, qconfig))
    return folder
