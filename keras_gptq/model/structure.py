"""Which blocks a model runs, and which of their layers are quantized.

`sequential_blocks` finds the transformer blocks (the config's
`quantization_layer_structure`, else the model's own
`get_quantization_layer_structure("gptq")`); `target_layers` lists a
block's Dense/EinsumDense layers that `filters` selects and that are one
`W[out, in]` matrix (mixture-of-experts router gates only when asked);
`target_banks` lists its expert banks (`model/experts.py`); `plan_walk`
gathers both for every block, as the config's overrides select them;
`reset_compiled_functions` drops what a model compiled around its float
layers once they change.
"""

import dataclasses
import re
import warnings

import keras

from keras_gptq import storage
from keras_gptq.model import experts
from keras_gptq.model import layout as layout_lib


def _matches(layer, filters):
    if filters is None:
        return True
    if callable(filters) and not isinstance(filters, str):
        return bool(filters(layer))
    patterns = [filters] if isinstance(filters, str) else list(filters)
    names = (layer.name, getattr(layer, "path", layer.name) or layer.name)
    return any(re.search(p, n) for p in patterns for n in names)


def check_filters(filters):
    """Raises ValueError unless `filters` is None, a callable, or valid
    regex strings."""
    if filters is None or callable(filters) and not isinstance(filters, str):
        return
    patterns = [filters] if isinstance(filters, str) else filters
    if not isinstance(patterns, (list, tuple)) or not all(
        isinstance(p, str) for p in patterns
    ):
        raise ValueError(
            "`filters` must be a regex string, a list of regex strings, or "
            f"a callable taking a layer, but received {filters!r}."
        )
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(
                f"`filters` holds the invalid regex {p!r}: {e}."
            ) from None


def sequential_blocks(model, structure=None):
    """The model's transformer blocks, in the order it runs them.

    Args:
        model: a built model (typically a KerasHub `CausalLM`).
        structure: `GPTQConfig.quantization_layer_structure`, or None to ask
            the model (`get_quantization_layer_structure("gptq")`).

    Raises:
        ValueError: neither names the blocks.
    """
    if structure is None and hasattr(model, "get_quantization_layer_structure"):
        structure = model.get_quantization_layer_structure("gptq")
    if structure is None:
        raise ValueError(
            f"Cannot find the transformer blocks of {model.name!r}. Pass them "
            "as `GPTQConfig(..., quantization_layer_structure="
            "{'sequential_blocks': [block_1, block_2, ...]})`, the blocks "
            "in the order the model runs them."
        )
    return list(structure["sequential_blocks"])


def _check_float(layer):
    if layer.quantization_mode is not None:
        policy = storage.layer_policy(layer)
        raise ValueError(
            f"Layer {layer.path!r} is already quantized "
            f"({policy.name}). Quantize the float model: "
            "reload it from its float preset first."
        )


def target_layers(block, filters=None, quantize_router=False):
    """The Dense/EinsumDense layers of `block` to quantize.

    Layers that are not one linear map (e.g. a batched einsum) are skipped
    with a warning. Mixture-of-experts router gates are left out unless
    `quantize_router` (`GPTQConfig.quantize_router`).

    Raises:
        ValueError: a selected layer is already quantized.
    """
    found = []
    gates = [] if quantize_router else experts.router_gates(block)
    for layer in block._flatten_layers(include_self=True):
        if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            continue
        if not _matches(layer, filters) or any(layer is g for g in gates):
            continue
        _check_float(layer)
        try:
            layout_lib.layer_layout(layer)
        except layout_lib.UnsupportedLayerError as e:
            warnings.warn(f"Skipping {layer.path!r}: {e}", stacklevel=3)
            continue
        found.append(layer)
    return found


def target_banks(block, filters=None):
    """The `experts.MoeLayer`s of `block` whose expert bank `filters`
    selects (matched on the bank's name and path, e.g. `.../experts`).

    Raises:
        ValueError: a selected bank is already quantized.
    """
    found = [moe for moe in experts.moe_layers(block)
             if _matches(moe.bank, filters)]
    for moe in found:
        _check_float(moe.bank)
    return found


def reset_compiled_functions(model):
    """Drops the model's compiled train/test/predict/generate functions,
    which captured the float kernels."""
    for name in ("train_function", "test_function", "predict_function",
                 "generate_function"):
        if hasattr(model, name):
            setattr(model, name, None)


@dataclasses.dataclass
class WalkPlan:
    """What the walk visits.

    Attributes:
        blocks: the transformer blocks, in the order the model runs them.
        layers: `{id(block): [Dense/EinsumDense layers to quantize]}`.
        banks: `{id(block): [experts.MoeLayer to quantize]}`.
    """

    blocks: list
    layers: dict
    banks: dict


def plan_walk(model, config, filters=None):
    """The blocks of `model` and the layers and expert banks of each that
    `filters` and `config.overrides` select; None when there are none.

    Reads only the layers' types, paths and kernel shapes, not their
    values.
    """
    blocks = sequential_blocks(
        model, config.quantization_layer_structure)
    layers = {id(b): [layer for layer in target_layers(
        b, filters, config.quantize_router)
        if config.for_layer(layer.path) is not None] for b in blocks}
    banks = {id(b): [moe for moe in target_banks(b, filters)
                     if config.for_layer(moe.bank.path) is not None]
             for b in blocks}
    if not any(layers.values()) and not any(banks.values()):
        return None
    return WalkPlan(blocks, layers, banks)
