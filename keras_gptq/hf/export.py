"""`export_hf`: a keras_gptq-quantized KerasHub model → a Hugging Face GPTQ
folder that transformers (with GPTQModel) and vLLM load.

The packed levels, zero points and group indices are copied exactly; scales
and the biases of quantized modules become float16, as the format demands
(a relative change of at most 2**-11 per scale). `load_hf_gptq` of the
folder gives a Keras model with exactly the exported numbers.
"""

import json
import os

import keras
import numpy as np
from keras_hub.src.utils.transformers.export import hf_exporter

from keras_gptq import storage
from keras_gptq.algorithm import grid
from keras_gptq.hf import configs
from keras_gptq.hf import families
from keras_gptq.hf import format as hf_format
from keras_gptq.utils.files import write_folder_atomically


def _layer_arrays(layer):
    """`(bits, group_size, q, scale, zero, g_idx)` of a packed layer."""
    if not storage.is_packed(layer):
        raise ValueError(
            f"Layer {layer.path!r} is not quantized by keras_gptq; "
            "export_hf needs every Dense/EinsumDense of the transformer "
            "blocks quantized (run keras_gptq.quantize without `filters`).")
    policy = storage.layer_policy(layer)
    columns = layer._gptq_layout.columns
    q = storage.unpack(keras.ops.convert_to_numpy(layer.quantized_kernel),
                       policy.weight_bits, columns)
    return (policy.weight_bits, policy.group_size, q,
            *(keras.ops.convert_to_numpy(v) for v in (
                layer.kernel_scale, layer.kernel_zero, layer.g_idx)))


def _module_arrays(name, layers):
    """One HF module's arrays; fused parts are stacked along `out`."""
    parts = [_layer_arrays(layer) for layer in layers]
    bits, group_size, _, _, _, g_idx = parts[0]
    for other in parts[1:]:
        if other[:2] != (bits, group_size):
            raise ValueError(f"{name}: its fused parts have different bits "
                             "or group sizes.")
        if not np.array_equal(other[5], g_idx):
            raise ValueError(
                f"{name} fuses {[l.path for l in layers]}, which were "
                "quantized with different column orders (g_idx), so they "
                "cannot share the one g_idx of the fused module. Quantize "
                "them with activation_order=False, or so that they share "
                "one Hessian.")
    stack = [np.concatenate([p[i] for p in parts], axis=0) for i in (2, 3, 4)]
    return bits, group_size, (*stack, g_idx)


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
    bits = {a[0] for a in arrays.values()}.pop()
    return all(np.all(a[3] == 1 << (bits - 1)) for a in arrays.values())


def _quantized_tensors(model, family, checkpoint_format):
    """`(tensors, quantization_config settings)` of the packed modules."""
    modules = family.linear_modules(model.backbone)
    arrays, settings = {}, set()
    for name, layers in modules.items():
        bits, group_size, module = _module_arrays(name, layers)
        arrays[name] = (bits, *module)
        settings.add((bits, group_size))
    if len(settings) != 1:
        raise ValueError(
            f"The layers use several (bits, group_size) settings {settings}; "
            "the format's quantization_config holds one.")
    (bits, group_size), = settings
    fmt = _choose_format(checkpoint_format, arrays)
    tensors = {}
    for name, (_, q, scale, zero, g_idx) in arrays.items():
        try:
            packed = hf_format.to_hf(q, scale, zero, g_idx, bits, fmt)
        except hf_format.UnsupportedCheckpointError as err:
            raise hf_format.UnsupportedCheckpointError(f"{name}: {err}") from None
        tensors.update({f"{name}.{k}": v for k, v in packed.items()})
    config = dict(
        bits=bits, group_size=group_size, checkpoint_format=fmt,
        desc_act=not all(grid.has_contiguous_groups(a[4], group_size)
                         for a in arrays.values()),
        sym=_symmetric(arrays))
    return tensors, config, set(modules)


def _float_tensors(model, family, quantized_modules):
    """`{hf name: numpy}` of the float tensors (float32; the biases of
    quantized modules float16, as the format stores them)."""
    backbone = model.backbone
    variables = family.float_variables(backbone)
    head = families.lm_head(backbone)
    tensors = {}
    for name, parts in variables.items():
        value = families.to_hf_tensor(name, [np.asarray(
            keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")))
            for v in parts])
        if name.rsplit(".", 1)[0] in quantized_modules:
            value = value.astype(np.float16)
        tensors[name] = np.ascontiguousarray(value)
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
    if tokenizer is not None:
        hf_exporter.export_tokenizer(tokenizer, folder)


def _check_target(folder, overwrite):
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"{folder!r} is a file, not a folder.")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise FileExistsError(
            f"{folder!r} exists and is not empty. Pass overwrite=True (CLI: "
            "--overwrite) to replace it, or choose another folder.")


def export_hf(model, folder, checkpoint_format="gptq", damp_percent=0.01,
              true_sequential=True, overwrite=False):
    """Writes a keras_gptq-quantized model as a Hugging Face GPTQ folder.

    The folder holds `config.json` (with `quantization_config`),
    `quantize_config.json`, `model.safetensors` and, when the model has a
    preprocessor, the tokenizer files. It is written beside `folder` and
    swapped into place (`utils.files.write_folder_atomically`), so a
    failure never leaves a half-written folder.

    Args:
        model: a `Llama3CausalLM` or `GPT2CausalLM` whose transformer blocks
            were quantized by `keras_gptq.quantize` (one bits/group size).
        folder: the output folder.
        checkpoint_format: `"gptq"` (v1: stores zero - 1; read by vLLM,
            transformers and GPTQModel, which however refuse *asymmetric*
            v1 files not written by GPTQModel; refused here when a zero
            point is 0), `"gptq_v2"` (true zeros; GPTQModel, transformers,
            vLLM versions that read gptq_v2) or `"auto"` (v1 for symmetric
            grids, v2 for asymmetric ones).
        damp_percent, true_sequential: recorded in the config (the format
            keeps them as metadata; they do not change loading).
        overwrite: replace a non-empty `folder`.

    Returns:
        `folder`.

    Raises:
        ValueError: an unsupported model (names the supported ones), a
            layer that is not quantized, mixed settings, fused q/k/v with
            different g_idx, or a v1 zero point of 0.
        FileExistsError: `folder` is not empty and `overwrite` is False.

    Example:

    ```python
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(dataset=texts,
                                                     tokenizer=tokenizer))
    keras_gptq.export_hf(model, "smollm2-gptq")
    # transformers: AutoModelForCausalLM.from_pretrained("smollm2-gptq")
    ```
    """
    family = families.family_of_model(model)
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
