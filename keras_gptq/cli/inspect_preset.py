"""`keras-gptq inspect`: the packed layers of a keras_gptq preset and its
size, read from `config.json` and `model.weights.h5` without building the
model."""

import json
import math
import os
import re
import sys

from keras_gptq.cli import common


def add_parser(subparsers, parent):
    """Adds the `inspect` subcommand."""
    p = subparsers.add_parser(
        "inspect", parents=[parent],
        help="show the packed layers of a keras_gptq preset and its size.",
        description="Per-layer bits, group size and packed vs float bytes "
                    "of a keras_gptq preset, read from config.json and "
                    "model.weights.h5 without building the model.")
    p.add_argument("preset", metavar="PRESET_FOLDER",
                   help="a folder written by `keras-gptq quantize` (or by "
                        "`save_to_preset` after `keras_gptq.quantize`).")
    p.set_defaults(command=run)


_FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def read_policies(config_path):
    """Returns `({layer path: (bits, group_size)}, float dtype name)`.

    Reads the backbone's serialized `DTypePolicyMap` and keeps the
    `keras_gptq>PackedGPTQPolicy` entries.
    """
    with open(config_path, encoding="utf-8") as f:
        dtype = json.load(f).get("config", {}).get("dtype")
    policy_map = dtype.get("config", {}).get("policy_map", {}) if (
        isinstance(dtype, dict)) else {}
    policies, source = {}, None
    for path, policy in policy_map.items():
        if str(policy.get("registered_name", "")) != (
                "keras_gptq>PackedGPTQPolicy"):
            continue
        _, bits, group = policy["config"]["mode"].split("/")
        policies[path] = (int(bits), int(group))
        source = source or policy["config"].get("source_name")
    default = dtype.get("config", {}).get("default_policy") if (
        isinstance(dtype, dict)) else None
    name = source or (default if isinstance(default, str) else None)
    return policies, name or "float32"


def _packed_set(q, scale, zero, g_idx):
    """`(rows, columns, bits, groups, packed_bytes)` of one packed matrix
    (levels, scales, zeros, group indices), or None. An expert bank's
    matrix has a leading expert axis; its rows are experts x outputs."""
    dtypes = [str(d.dtype) for d in (q, scale, zero, g_idx)]
    if dtypes != ["uint8", "float32", "uint8", "int32"] or (
            q.ndim != g_idx.ndim + 1 or q.ndim not in (2, 3)):
        return None
    if scale.shape != zero.shape or scale.shape[:-1] != q.shape[:-1]:
        return None
    columns = g_idx.shape[-1]
    if q.shape[-1] % math.ceil(columns / 8):
        return None
    rows = math.prod(q.shape[:-1])
    packed = sum(d.size * d.dtype.itemsize for d in (q, scale, zero, g_idx))
    return rows, columns, q.shape[-1] // math.ceil(columns / 8), (
        scale.shape[-1]), packed


def _packed_layer(vars_group):
    """The packed matrices of one h5 `vars` group: `[(rows, columns, bits,
    groups, packed_bytes)]`, one for a Dense layer, one per matrix of an
    expert bank (packed sets come last, after float biases)."""
    data = [vars_group[n] for n in sorted(vars_group.keys(), key=int)]
    found, end = [], len(data)
    while end >= 4 and (entry := _packed_set(*data[end - 4:end])):
        found.insert(0, entry)
        end -= 4
    # keras_gptq storage keeps at most a float bias per packed matrix.
    return found if end <= len(found) else []


def _readable(h5_path):
    """`layers/decoder_1/_attention/_query/vars` -> `decoder_1/attention/query`.

    The weights file names layers by their attribute names, without the
    private underscores (the model is not built, so its own layer paths are
    unknown here).
    """
    parts = h5_path.removeprefix("layers/").split("/")[:-1]
    return "/".join(part.lstrip("_") or part for part in parts)


def _natural_key(name):
    """Sorts `block_2` before `block_10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_packed_layers(weights_path):
    """Returns `[(layer name, rows, columns, bits, groups, bytes)]`, layers
    named readably (see `_readable`) in natural order."""
    import h5py
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.endswith("/vars"):
            entries = _packed_layer(obj)
            for k, entry in enumerate(entries):
                suffix = f"#{k}" if len(entries) > 1 else ""
                found.append((_readable(name) + suffix, *entry))

    with h5py.File(weights_path, "r") as f:
        f.visititems(visit)
    return sorted(found, key=lambda entry: _natural_key(entry[0]))


def _group_size(columns, bits, groups, modes):
    """The group size of a layer, taken from the policy modes that fit."""
    fits = {g for b, g in modes if b == bits and (
        (groups == 1 and g in (-1, columns)) or (
            g > 0 and math.ceil(columns / g) == groups))}
    if len(fits) == 1:
        return fits.pop()
    return -1 if groups == 1 else math.ceil(columns / groups)


def _files(folder):
    """`(config.json, model.weights.h5)` paths of a preset folder."""
    paths = (os.path.join(folder, "config.json"),
             os.path.join(folder, "model.weights.h5"))
    for path in paths:
        if not os.path.isfile(path):
            raise common.CLIError(f"{path!r} not found: is {folder!r} a "
                                  "KerasHub preset folder?")
    return paths


def run(args):
    """Prints the packed layers of `args.preset` and the size saving."""
    folder = args.preset
    config_path, weights_path = _files(folder)
    policies, float_dtype = read_policies(config_path)
    layers = read_packed_layers(weights_path)
    if not policies or not layers:
        raise common.CLIError(f"{folder!r} holds no keras_gptq packed layers.")
    count = len({entry[0].split("#")[0] for entry in layers})
    if len(policies) != count:
        print(f"warning: config.json lists {len(policies)} packed layers but "
              f"model.weights.h5 holds {count}.", file=sys.stderr)
    packed_total, float_total = _print_layers(
        layers, set(policies.values()), float_dtype)
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(folder) for f in files)
    as_float = size - packed_total + float_total
    print(f"{count} packed layers: {packed_total} bytes packed vs "
          f"{float_total} bytes {float_dtype} "
          f"({float_total / max(packed_total, 1):.2f}x smaller)")
    print(f"preset size: {size} bytes; with these layers in {float_dtype}: "
          f"{as_float} bytes ({as_float / max(size, 1):.2f}x)")
    return 0


def _print_layers(layers, modes, float_dtype):
    """Prints one line per packed layer; returns `(packed bytes, float
    bytes)` in all."""
    width = _FLOAT_BYTES.get(float_dtype, 4)
    pad = max(len("layer"), *(len(entry[0]) for entry in layers))
    print(f"{'layer':<{pad}} {'shape':>11} {'bits':>4} {'group':>5} "
          f"{'packed B':>10} {float_dtype + ' B':>12}")
    packed_total = float_total = 0
    for name, rows, columns, bits, groups, packed in layers:
        group = _group_size(columns, bits, groups, modes)
        floats = rows * columns * width
        packed_total, float_total = packed_total + packed, float_total + floats
        print(f"{name:<{pad}} {f'{rows}x{columns}':>11} {bits:>4} "
              f"{group:>5} {packed:>10} {floats:>12}")
    return packed_total, float_total
