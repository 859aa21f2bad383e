"""Packed GPTQ weights inside KerasHub's expert-bank layers.

An expert bank (e.g. `MixtralMoeExperts`) holds each expert matrix family
as one `[E, in, out]` (or `[E, out, in]`) variable. Packed, each such
variable `<name>` becomes four, the layout of a packed Dense layer
(`packed_layer.py`) with a leading expert axis:

- `<name>_quantized`: uint8 `[E, out, ceil(in / 8) * bits]` levels of each
  expert's `W[out, in]`, packed by `packing.pack`;
- `<name>_scale`: float32 `[E, out, groups]`; `<name>_zero`: uint8
  `[E, out, groups]`; `<name>_g_idx`: int32 `[E, in]` (act-order permutes
  each expert's groups on its own).

Biases and any other variable stay float. The bank carries a
`PackedGPTQPolicy`; the patch in `keras_gptq/keras_patches/expert_layers.py`
routes its build, call, save and load here. The matrices are described by
the family table's `ExpertMatrix`es (`name`, `layout`); storage does not
know where the numbers came from.
"""

import keras
import numpy as np
from keras import ops

from keras_gptq.algorithm import grid
from keras_gptq.storage import packed_layer
from keras_gptq.storage import packing
from keras_gptq.storage import policy as policy_lib

_SUFFIXES = ("_quantized", "_scale", "_zero", "_g_idx")


def packed_names(name):
    """`(levels, scale, zero, g_idx)` attribute names of matrix `name`."""
    return tuple(name + suffix for suffix in _SUFFIXES)


def _dims(matrix, shape):
    """`(experts, out, in)` of a bank variable of `shape`."""
    experts, a, b = (int(d) for d in shape)
    return (experts, b, a) if matrix.layout == "e_in_out" else (experts, a, b)


def _add_packed(bank, matrices, shapes):
    """Adds the packed variables (zeros) of each matrix to `bank`."""
    policy = policy_lib.packed_policy(bank)
    bank._gptq_bank_dims, bank._gptq_contiguous = {}, {}
    for matrix in matrices:
        experts, rows, columns = _dims(matrix, shapes[matrix.name])
        bank._gptq_bank_dims[matrix.name] = (experts, rows, columns)
        groups = grid.num_groups(policy.group_size, columns)
        width = packing.packed_width(columns, policy.weight_bits)
        specs = (((experts, rows, width), "uint8", "zeros"),
                 ((experts, rows, groups), "float32", "ones"),
                 ((experts, rows, groups), "uint8", "zeros"),
                 ((experts, columns), "int32", "zeros"))
        for attr, (shape, dtype, init) in zip(packed_names(matrix.name), specs):
            setattr(bank, attr, bank.add_weight(
                name=attr.lstrip("_"), shape=shape, initializer=init,
                dtype=dtype, trainable=False))


def _note_group_order(bank, matrix, g_idx):
    policy = policy_lib.packed_policy(bank)
    bank._gptq_contiguous[matrix.name] = all(
        grid.has_contiguous_groups(g, policy.group_size) for g in g_idx)


def build_packed_bank(bank, matrices):
    """Turns a just-built float bank (packed policy) into an empty packed
    one: its matrix variables are replaced by packed variables."""
    locked = bank._tracker.locked
    bank._tracker.unlock()
    shapes = {m.name: tuple(getattr(bank, m.name).shape) for m in matrices}
    for matrix in matrices:
        packed_layer._drop_variable(bank, matrix.name)
    _add_packed(bank, matrices, shapes)
    bank._is_quantized = True
    bank.is_gptq_calibrated = True
    if locked:
        bank._tracker.lock()
    packed_layer._retrack(bank)


def dequantized_kernels(bank, matrices):
    """`{name: [E, in, out] (or [E, out, in]) tensor}` in the bank's
    compute dtype, rebuilt from the packed levels."""
    policy = policy_lib.packed_policy(bank)
    kernels = {}
    for matrix in matrices:
        experts, rows, columns = bank._gptq_bank_dims[matrix.name]
        q, scale, zero, g_idx = (getattr(bank, n).value
                                 for n in packed_names(matrix.name))
        if bank._gptq_contiguous.get(matrix.name, False):
            W = packed_layer.dequantize_rows(
                ops.reshape(q, (experts * rows, -1)),
                ops.reshape(scale, (experts * rows, -1)),
                ops.reshape(zero, (experts * rows, -1)),
                g_idx[0], policy, columns, True)
            W = ops.reshape(W, (experts, rows, columns))
        else:
            W = ops.stack([packed_layer.dequantize_rows(
                q[e], scale[e], zero[e], g_idx[e], policy, columns, False)
                for e in range(experts)])
        if matrix.layout == "e_in_out":
            W = ops.swapaxes(W, 1, 2)
        kernels[matrix.name] = ops.cast(W, bank.compute_dtype)
    return kernels


def _saved_variables(bank, matrices):
    """`{name: variable}` in saved order: float variables (biases) in the
    bank's order, then each matrix's packed four."""
    packed = [getattr(bank, n) for m in matrices for n in packed_names(m.name)]
    every = bank._trainable_variables + bank._non_trainable_variables
    ordered = {v.name: v for v in every if not any(v is p for p in packed)}
    for matrix in matrices:
        for name in packed_names(matrix.name):
            ordered[name] = getattr(bank, name)
    return ordered


def save_bank(bank, matrices, store):
    """Writes the bank's variables to a Keras weights store."""
    for index, variable in enumerate(
            _saved_variables(bank, matrices).values()):
        store[str(index)] = variable


def load_bank(bank, matrices, store):
    """Loads the bank's variables, checking count, shapes, dtypes and
    ranges (`packed_layer.read_checked`)."""
    variables = _saved_variables(bank, matrices)
    values = packed_layer.read_checked(
        bank, store, variables, [packed_names(m.name) for m in matrices])
    for name, value in values.items():
        variables[name].assign(value)
    for matrix in matrices:
        _note_group_order(bank, matrix, values[packed_names(matrix.name)[3]])


def write_packed_bank(bank, family, results, bits, group_size):
    """Turns a float expert bank into a packed one, in place.

    Args:
        bank: a built, unquantized expert bank.
        family: its `ExpertFamily` (only `matrices` is read).
        results: `{matrix name: [SolverResult per expert]}`.
        bits, group_size: the settings the results were solved with.

    Returns:
        An undo token for `restore_float_bank`.
    """
    matrices = family.matrices
    old_policy = policy_lib.layer_policy(bank)
    floats = {m.name: getattr(bank, m.name) for m in matrices}
    token = (old_policy, floats, (list(bank._trainable_variables),
                                  list(bank._non_trainable_variables)))
    bank._tracker.unlock()
    try:
        policy_lib.set_policy(bank, policy_lib.PackedGPTQPolicy(
            f"gptq/{bits}/{group_size}", source_name=old_policy.name))
        _add_packed(bank, matrices, {n: v.shape for n, v in floats.items()})
        for matrix in matrices:
            solved = results[matrix.name]
            arrays = (np.stack([packing.pack(r.q, bits) for r in solved]),
                      np.stack([r.scale for r in solved]),
                      np.stack([r.zero for r in solved]),
                      np.stack([r.g_idx for r in solved]))
            for name, array in zip(packed_names(matrix.name), arrays):
                getattr(bank, name).assign(array)
            _note_group_order(bank, matrix, arrays[3])
            packed_layer._drop_variable(bank, matrix.name)
        bank._is_quantized = True
        bank.is_gptq_calibrated = True
    except BaseException:
        bank._tracker.lock()
        restore_float_bank(bank, token)
        raise
    bank._tracker.lock()
    packed_layer._retrack(bank)
    return token


def restore_float_bank(bank, token):
    """Undoes `write_packed_bank`: float variables and policy come back."""
    old_policy, floats, order = token
    packed = [n for name in floats for n in packed_names(name)]
    packed_layer.put_back_float(bank, packed, floats, old_policy, order)
