"""The Hugging Face GPTQ checkpoint format: packed tensors and their config.

This is the layout AutoGPTQ, GPTQModel, optimum/transformers and vLLM read.
For one linear module with `W[out, in]` quantized to `bits` bits in groups
of `group_size` input columns (`groups = ceil(in / group_size)`):

- `qweight`: int32 `[in * bits / 32, out]`. Each column holds the levels of
  one output row, packed along the input axis: 32 consecutive levels fill
  `bits` words as one little-endian bit stream (level `j` occupies stream
  bits `[bits * j, bits * (j + 1))`). 2-, 4- and 8-bit levels never cross a
  word; 3-bit levels 10 and 21 straddle two words. This is the stream of
  keras_gptq's own packed layers, read as int32 words
  (`keras_gptq.storage.packing`).
- `qzeros`: int32 `[groups, out * bits / 32]`: the zero points, packed the
  same way along the output axis.
- `scales`: float16 `[groups, out]`; `g_idx`: int32 `[in]`, the group of
  each input column (arbitrary with act-order, `desc_act`).
- `bias`: float16 `[out]`, when the module has one.

`W[o, i] = scales[g_idx[i], o] * (level[i, o] - zero[g_idx[i], o])`, where
the true zero is the stored one for `checkpoint_format="gptq_v2"` and the
stored one plus 1 for `"gptq"` (v1). A v1 file therefore cannot hold a zero
point of 0 (stored as -1 it spills into the neighbouring value); `to_hf`
refuses it rather than write a wrong checkpoint.

Everything here works on plain numpy arrays: no layers, no model.
"""


import re

import numpy as np

from keras_gptq.algorithm import grid
from keras_gptq.config import SUPPORTED_BITS
from keras_gptq.storage import packing

FORMATS = ("gptq", "gptq_v2")  # checkpoint_format values of the format
EXPORT_FORMATS = FORMATS + ("auto",)  # what `export_hf` accepts


class UnsupportedCheckpointError(ValueError):
    """A checkpoint or setting this format code cannot represent exactly."""


def _check_bits(bits):
    if bits not in SUPPORTED_BITS:
        raise UnsupportedCheckpointError(
            f"bits={bits} is not a GPTQ width; supported: {SUPPORTED_BITS}.")


def pack_int32(levels, bits, axis=0):
    """`packing.pack_words` (levels along `axis` -> int32 words), raising
    `UnsupportedCheckpointError` for what the format cannot hold."""
    _check_bits(bits)
    try:
        return packing.pack_words(levels, bits, axis)
    except ValueError as err:
        raise UnsupportedCheckpointError(str(err)) from None


def unpack_int32(words, bits, axis=0):
    """Inverse of `pack_int32`: int32 words -> int32 levels along `axis`."""
    _check_bits(bits)
    try:
        return packing.unpack_words(words, bits, axis)
    except ValueError as err:
        raise UnsupportedCheckpointError(str(err)) from None


def to_hf(q, scale, zero, g_idx, bits, checkpoint_format="gptq"):
    """Converts one layer's keras_gptq arrays to the HF GPTQ tensors.

    Args:
        q: `[out, in]` integer levels.
        scale: float `[out, groups]`; written as float16.
        zero: integer `[out, groups]` true zero points.
        g_idx: `[in]` group of each input column.
        bits: 2, 3, 4 or 8.
        checkpoint_format: `"gptq"` (v1, stores zero - 1) or `"gptq_v2"`.

    Returns:
        `{"qweight", "qzeros", "scales", "g_idx"}` numpy arrays.

    Raises:
        UnsupportedCheckpointError: a zero point of 0 with `"gptq"`, a scale
            that is not finite in float16, or a dimension not a multiple of
            32.
    """
    if checkpoint_format not in FORMATS:
        raise ValueError(f"checkpoint_format must be one of {FORMATS}, got "
                         f"{checkpoint_format!r}.")
    zero = np.asarray(zero, dtype=np.int64)
    if checkpoint_format == "gptq":
        if zero.size and zero.min() < 1:
            raise UnsupportedCheckpointError(
                "This layer has an asymmetric zero point of 0, which the v1 "
                "format (checkpoint_format='gptq', stores zero - 1) cannot "
                "hold. Export with checkpoint_format='gptq_v2' (read by "
                "GPTQModel and transformers; vLLM only where it supports "
                "gptq_v2) or 'auto', or quantize with symmetric=True.")
        zero = zero - 1
    scales = np.asarray(scale, dtype=np.float32).T.astype(np.float16)
    if not np.all(np.isfinite(scales)):
        raise UnsupportedCheckpointError(
            "A scale overflows float16, the format's scale type.")
    return {
        "qweight": pack_int32(np.asarray(q).T, bits, axis=0),
        "qzeros": pack_int32(zero.T, bits, axis=1),
        "scales": np.ascontiguousarray(scales),
        "g_idx": np.asarray(g_idx, dtype=np.int32),
    }


def from_hf(tensors, bits, checkpoint_format, group_size, name="module"):
    """Reads one module's HF GPTQ tensors into keras_gptq arrays.

    Args:
        tensors: mapping with `qweight`, `qzeros`, `scales` and optionally
            `g_idx` (default: column `i` in group `i // group_size`).
        bits, group_size: from the quantization config (-1: one group).
        checkpoint_format: `"gptq"` (v1) or `"gptq_v2"`.
        name: the module name, for error messages.

    Returns:
        `(q, scale, zero, g_idx)`: uint8 `[out, in]`, float32
        `[out, groups]` (the float16 values exactly), uint8 `[out, groups]`
        and int32 `[in]`.

    Raises:
        UnsupportedCheckpointError: inconsistent shapes, or a v1 zero point
            that wraps past `2**bits - 1` (an asymmetric zero of 0 written
            as v1: loaders disagree on its meaning).
    """
    _check_bits(bits)
    q = unpack_int32(tensors["qweight"], bits, axis=0).T
    out, columns = q.shape
    scales = np.asarray(tensors["scales"])
    zero = unpack_int32(tensors["qzeros"], bits, axis=1)[:, :out].T
    groups = grid.num_groups(group_size, columns)
    if scales.shape != (groups, out) or zero.shape != (out, groups):
        raise UnsupportedCheckpointError(
            f"{name}: scales {scales.shape} / qzeros do not match "
            f"{groups} groups of {out} outputs (in={columns}, "
            f"group_size={group_size}).")
    if checkpoint_format == "gptq":
        zero = zero + 1
        if zero.max() >= (1 << bits):
            raise UnsupportedCheckpointError(
                f"{name}: a v1 (checkpoint_format='gptq') zero point wraps "
                f"past {(1 << bits) - 1}: an asymmetric zero of 0 stored as "
                "-1, which loaders read differently. Re-export the "
                "checkpoint as gptq_v2.")
    elif checkpoint_format != "gptq_v2":
        raise UnsupportedCheckpointError(
            f"{name}: unknown checkpoint_format {checkpoint_format!r}; "
            f"supported: {FORMATS}.")
    g_idx = tensors.get("g_idx")
    g_idx = (grid.contiguous_g_idx(group_size, columns) if g_idx is None
             else np.asarray(g_idx)).astype(np.int32)
    if g_idx.shape != (columns,) or g_idx.min() < 0 or g_idx.max() >= groups:
        raise UnsupportedCheckpointError(
            f"{name}: g_idx must hold {columns} group numbers in "
            f"[0, {groups}).")
    return (q.astype(np.uint8), scales.astype(np.float32).T.copy(),
            zero.astype(np.uint8), g_idx)


def quantization_config(bits, group_size, desc_act, sym, checkpoint_format,
                        damp_percent=0.01, true_sequential=True,
                        static_groups=False, version="unknown",
                        dynamic=None):
    """Returns the `quantization_config` dict of `config.json`.

    `quantize_config.json` (AutoGPTQ/GPTQModel) holds the same dict;
    `dynamic` (per-module settings, see `dynamic_entries`) only when given.
    """
    config = {
        "quant_method": "gptq",
        "bits": int(bits),
        "group_size": int(group_size),
        "desc_act": bool(desc_act),
        "sym": bool(sym),
        "true_sequential": bool(true_sequential),
        "static_groups": bool(static_groups),
        "damp_percent": float(damp_percent),
        "checkpoint_format": checkpoint_format,
        "pack_dtype": "int32",
        "lm_head": False,
        "meta": {"quantizer": [f"keras_gptq:{version}"]},
    }
    if dynamic:
        config["dynamic"] = dynamic
    return config


# Per-module settings: GPTQModel's `dynamic` ({"+:regex": {settings},
# "-:regex": {}}, regexes `re.match`ed against module names, first match
# wins). Of its settings, bits and group_size change how a module is
# stored; these others are metadata.
_DYNAMIC_METADATA = ("sym", "desc_act", "damp_percent", "static_groups",
                     "true_sequential", "mse", "v2", "act_group_aware")


def dynamic_entries(settings, base, skipped):
    """`dynamic` for modules whose `(bits, group_size)` in `settings`
    (`{module name: (bits, group_size)}`) differ from `base`, and for the
    `skipped` modules, stored float: one exact regex each."""
    entries = {f"-:^{re.escape(name)}$": {} for name in sorted(skipped)}
    for name, (bits, group_size) in sorted(settings.items()):
        if (bits, group_size) != base:
            entries[f"+:^{re.escape(name)}$"] = {"bits": int(bits),
                                                 "group_size": int(group_size)}
    return entries


def module_settings(dynamic, name, base):
    """`(bits, group_size)` of module `name` under `dynamic`, or None when
    a '-:' entry keeps it float.

    Raises:
        UnsupportedCheckpointError: an entry sets what this reader does not
            handle, or bits it cannot hold.
    """
    for pattern, overrides in (dynamic or {}).items():
        regex = pattern[2:] if pattern[:2] in ("-:", "+:") else pattern
        if not re.match(regex, name):
            continue
        if pattern.startswith("-:"):
            return None
        unknown = set(overrides) - {"bits", "group_size", *_DYNAMIC_METADATA}
        if unknown:
            raise UnsupportedCheckpointError(
                f"dynamic[{pattern!r}] sets {sorted(unknown)}; keras_gptq "
                "reads per-module bits and group_size.")
        bits = int(overrides.get("bits", base[0]))
        _check_bits(bits)
        return bits, int(overrides.get("group_size", base[1]))
    return base


def read_quantization_config(config, fallback=None):
    """Validates a checkpoint's GPTQ settings.

    Args:
        config: the `config.json` dict.
        fallback: the `quantize_config.json` dict, if the folder has one.

    Returns:
        `(bits, group_size, checkpoint_format)`: the defaults of every
        module (`module_settings` applies the config's `dynamic`).

    Raises:
        UnsupportedCheckpointError: not GPTQ, or settings this reader does
            not handle (quantized lm_head, another pack dtype, bits).
    """
    qc = config.get("quantization_config") or fallback
    if not qc:
        raise UnsupportedCheckpointError(
            "config.json has no quantization_config (and there is no "
            "quantize_config.json): not a GPTQ checkpoint.")
    method = qc.get("quant_method", "gptq")
    if method != "gptq":
        raise UnsupportedCheckpointError(
            f"quant_method is {method!r}; only 'gptq' checkpoints load.")
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    if fmt not in FORMATS:
        raise UnsupportedCheckpointError(
            f"checkpoint_format {fmt!r} is not supported; supported: "
            f"{FORMATS}.")
    if qc.get("lm_head"):
        raise UnsupportedCheckpointError(
            "The checkpoint quantizes lm_head, which keras_gptq does not "
            "load.")
    if qc.get("pack_dtype", "int32") != "int32":
        raise UnsupportedCheckpointError(
            f"pack_dtype {qc['pack_dtype']!r}: only int32 packing loads.")
    bits = int(qc["bits"])
    _check_bits(bits)
    return bits, int(qc.get("group_size", -1)), fmt
