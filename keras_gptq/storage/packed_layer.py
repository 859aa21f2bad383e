"""Packed GPTQ weights inside Keras's Dense and EinsumDense layers.

Storage (per layer, under the names Keras's own GPTQ layers use):

- `quantized_kernel`: uint8 `[out, ceil(in / 8) * bits]`: the levels of
  `W[out, in]` packed along the input axis, 8 levels in `bits` bytes, low
  bits first (2- and 4-bit are 4 and 2 levels a byte; 3-bit straddles
  bytes; 8-bit is one byte a level).
- `kernel_scale`: float32 `[out, groups]`; `kernel_zero`: uint8
  `[out, groups]`; `g_idx`: int32 `[in]`, the group of each input column.
- `bias`: unchanged.

`W[o, i] = (level[o, i] - zero[o, g_idx[i]]) * scale[o, g_idx[i]]`, mapped to
the kernel by the layer's `MatrixLayout` (read from its equation).

That is the saved layout. In memory, an act-order layer holds its levels
with the columns sorted by group (`kernels.prepare`; `stored_levels` gives
the saved order back); the call is `kernels.matmul` on the input rows.

A quantized layer carries a `PackedGPTQPolicy` (`storage/policy.py`). The
functions here build, call, save, load and dequantize such a layer; the
patch in `keras_gptq/keras_patches/packed_layers.py` routes Dense's and
EinsumDense's GPTQ hooks to them when, and only when, the layer's policy
is a `PackedGPTQPolicy` (layers quantized by Keras's own GPTQ keep Keras's
behaviour). Presets therefore need `import keras_gptq` to load.
"""


import keras
import numpy as np
from keras import ops

from keras_gptq.algorithm import grid
from keras_gptq.model import layout as layout_lib
from keras_gptq.storage import kernels
from keras_gptq.storage import packing
from keras_gptq.storage import policy as policy_lib


def build_packed(layer, kernel_shape):
    """Creates the packed variables of `layer` (its policy says the bits)."""
    policy = policy_lib.packed_policy(layer)
    lay = layout_lib.layer_layout(layer, kernel_shape)
    layer._gptq_layout = lay
    groups = grid.num_groups(policy.group_size, lay.columns)
    width = packing.packed_width(lay.columns, policy.weight_bits)
    layer.is_gptq_calibrated = True
    layer.quantized_kernel = layer.add_weight(
        name="kernel", shape=(lay.rows, width),
        initializer="zeros", dtype="uint8", trainable=False)
    layer.kernel_scale = layer.add_weight(
        name="kernel_scale", shape=(lay.rows, groups), initializer="ones",
        dtype="float32", trainable=False)
    layer.kernel_zero = layer.add_weight(
        name="kernel_zero", shape=(lay.rows, groups), initializer="zeros",
        dtype="uint8", trainable=False)
    layer.g_idx = layer.add_weight(
        name="g_idx", shape=(lay.columns,), initializer="zeros",
        dtype="int32", trainable=False)


def _prepare(layer, levels, scale, zero, g_idx):
    """Readies the layer's matmul once its packed values are in place
    (`kernels.prepare`: act-order columns sorted, backend fast path)."""
    kernels.prepare(layer, levels, np.asarray(scale), np.asarray(zero),
                    np.asarray(g_idx))


def stored_levels(layer):
    """int32 numpy `[out, in]` levels in the original column order (the
    order `g_idx` describes, and the one saved to disk)."""
    policy = policy_lib.packed_policy(layer)
    levels = packing.unpack(ops.convert_to_numpy(layer.quantized_kernel),
                            policy.weight_bits, layer._gptq_layout.columns)
    perm = kernels.state(layer).perm
    if perm is None:
        return levels
    inverse = np.argsort(ops.convert_to_numpy(perm))
    return np.take(levels, inverse, axis=1)


def dequantized_matrix(layer):
    """Returns the layer's `W[out, in]` as a float32 backend tensor."""
    matrix = _stored_matrix(layer)
    perm = kernels.state(layer).perm
    if perm is None:
        return matrix
    inverse = np.argsort(ops.convert_to_numpy(perm)).astype(np.int32)
    return ops.take(matrix, inverse, axis=1)


def _stored_matrix(layer, transposed=False):
    """`W[out, in]` (`W.T` when `transposed`) in stored column order
    (act-order columns sorted)."""
    policy = policy_lib.packed_policy(layer)
    kernel = kernels.state(layer)
    return dequantize_rows(
        layer.quantized_kernel.value, layer.kernel_scale.value,
        layer.kernel_zero.value, kernel.stored_g_idx, policy,
        layer._gptq_layout.columns, kernel.contiguous, transposed)


def dequantize_rows(packed, scale, zero, g_idx, policy, columns,
                    contiguous, transposed=False):
    """`W[rows, columns]` (float32 backend tensor) from packed variables.

    Args:
        packed, scale, zero: `[rows, ...]` packed levels, scales, zeros.
        g_idx: `[columns]` group of each column.
        policy: the layer's `PackedGPTQPolicy` (bits, group size).
        columns: input features.
        contiguous: `g_idx` is `i // group_size` (then a reshape replaces
            two gathers).
        transposed: return `W.T`, `[columns, rows]`. The integer levels
            are transposed before the one elementwise float pass, so a
            compiled caller gets the float matrix in the layout its dot
            reads (`rows @ W.T` without a transposed copy of a float
            matrix; in a decode loop XLA hoists the whole pass out of the
            loop, and a transpose left inside it cost a full float copy of
            every weight per step).
    """
    levels = packing.unpack(packed, policy.weight_bits, columns, xp=ops)
    axis = 1
    if transposed:
        levels, scale, zero = (ops.transpose(t) for t in (levels, scale, zero))
        axis = 0
    levels = ops.cast(levels, "float32")
    if contiguous:
        # Scales and zero points repeated to one per column: XLA fuses the
        # broadcast into the one elementwise pass over the levels (a
        # padded [rows, groups, size] view of a short last group did not).
        size = grid.group_columns(policy.group_size, columns)

        def per_column(t):
            t = ops.repeat(ops.cast(t, "float32"), size, axis=axis)
            return t[:columns] if transposed else t[:, :columns]

        return (levels - per_column(zero)) * per_column(scale)
    g_idx = ops.cast(g_idx, "int32")
    scale = ops.take(scale, g_idx, axis=axis)
    zero = ops.cast(ops.take(zero, g_idx, axis=axis), "float32")
    return (levels - zero) * scale


def dequantized_kernel(layer):
    """Returns the layer's float kernel (compute dtype), rebuilt from levels."""
    kernel = layer._gptq_layout.matrix_to_kernel(
        dequantized_matrix(layer), xp=ops)
    return ops.cast(kernel, layer.compute_dtype)


def packed_call(layer, inputs):
    """The layer's forward pass: `kernels.matmul` on its input rows."""
    inputs = ops.cast(inputs, layer.compute_dtype)
    y = kernels.eager_matmul(layer, inputs)
    if y is None:
        rows = layer._gptq_layout.inputs_to_rows(inputs)
        y = kernels.matmul(layer, rows,
                           lambda: _stored_matrix(layer, transposed=True))
        y = layout_lib.rows_to_outputs(layer, inputs, y)
    if layer.bias is not None:
        y = ops.add(y, layer.bias)
    if layer.activation is not None:
        y = layer.activation(y)
    return y


_SAVE_ORDER = ("bias", "quantized_kernel", "kernel_scale", "kernel_zero",
               "g_idx")


def _saved_names(layer):
    return [n for n in _SAVE_ORDER if n != "bias" or layer.bias is not None]


def save_packed(layer, store):
    """Writes the packed variables to a Keras weights store."""
    for idx, name in enumerate(_saved_names(layer)):
        value = getattr(layer, name)
        if name == "quantized_kernel" and kernels.state(layer).perm is not None:
            value = packing.pack(stored_levels(layer),
                                 policy_lib.packed_policy(layer).weight_bits)
        store[str(idx)] = value


def load_packed(layer, store):
    """Loads packed variables, checking count, shapes, dtypes and ranges.

    Raises:
        ValueError: naming the layer, the variable and what is wrong, when
            the weights file does not hold what the layer's policy implies
            (a corrupted file, or one that belongs to another config).
    """
    variables = {name: getattr(layer, name) for name in _saved_names(layer)}
    values = read_checked(layer, store, variables, [(
        "quantized_kernel", "kernel_scale", "kernel_zero", "g_idx")])
    for name, value in values.items():
        variables[name].assign(value)
    _prepare(layer, None, values["kernel_scale"], values["kernel_zero"],
             values["g_idx"])


def read_checked(layer, store, variables, packed_sets):
    """Reads `store` (saved in `variables`' order) and checks it.

    Args:
        layer: the packed layer (for the message and its policy).
        store: the Keras weights store.
        variables: `{name: variable}`, in saved order.
        packed_sets: `(levels, scale, zero, g_idx)` name tuples to check
            for value ranges.

    Returns:
        `{name: numpy value}`.

    Raises:
        ValueError: naming the layer, the variable and what is wrong, when
            the weights file does not hold what the layer's policy implies
            (a corrupted file, or one that belongs to another config).
    """
    names, policy = list(variables), policy_lib.packed_policy(layer)
    where = (f"Packed GPTQ layer {layer.path!r} ({policy.weight_bits}-bit, "
             f"group {policy.group_size})")
    fix = ("The weights file is corrupted or does not belong to this "
           "config.json: re-save or re-download the preset.")
    if len(store.keys()) != len(names):
        raise ValueError(
            f"{where} expects {len(names)} saved variables ({', '.join(names)})"
            f" but the weights file holds {len(store.keys())}. {fix}")
    values = {name: store[str(i)] for i, name in enumerate(names)}
    packed = {n for names_ in packed_sets for n in names_}
    for name, value in values.items():
        var = variables[name]
        got = (tuple(value.shape), keras.backend.standardize_dtype(value.dtype))
        if got[0] != tuple(var.shape) or (name in packed and got[1] != var.dtype):
            raise ValueError(
                f"{where}: saved variable {name!r} has shape {got[0]} and "
                f"dtype {got[1]}, but the layer needs shape "
                f"{tuple(var.shape)} and dtype {var.dtype}. {fix}")
    for _, scale, zero, g_idx in packed_sets:
        groups = values[scale].shape[-1]
        problems = [
            (not np.all((values[g_idx] >= 0) & (values[g_idx] < groups)),
             f"{g_idx!r} holds group indices outside [0, {groups})"),
            (not np.all(values[zero] < 2**policy.weight_bits),
             f"{zero!r} holds zero points above {2**policy.weight_bits - 1}"),
            (not np.all(np.isfinite(values[scale])),
             f"{scale!r} holds NaN or Inf"),
        ]
        for bad, problem in problems:
            if bad:
                raise ValueError(f"{where}: {problem}. {fix}")
    return values


def make_packed(layer, policy):
    """Gives a built float Dense/EinsumDense packed storage, in place.

    The layer takes `policy` (a `PackedGPTQPolicy`), gets zero-filled packed
    variables of its kernel's shape and drops its float kernel; the values
    come next, from `write_packed` or a weights file.

    Args:
        layer: a built, unquantized Dense or EinsumDense.
        policy: the `PackedGPTQPolicy` (bits and group size) to store.
    """
    kernel_shape = tuple(layer._kernel.shape)
    layer._tracker.unlock()
    try:
        policy_lib.set_policy(layer, policy)
        build_packed(layer, kernel_shape)
        layer._is_quantized = True
        _drop_variable(layer, "_kernel")
    finally:
        layer._tracker.lock()
    _retrack(layer)


def write_packed(layer, result, bits, group_size):
    """Turns a float Dense/EinsumDense into a packed GPTQ layer, in place.

    Args:
        layer: a built, unquantized Dense or EinsumDense.
        result: a `solver.SolverResult` for the layer's `W[out, in]`.
        bits, group_size: the settings `result` was solved with.

    Returns:
        An undo token for `restore_float`.
    """
    old_policy = policy_lib.layer_policy(layer)
    token = (old_policy, layer._kernel, (
        list(layer._trainable_variables),
        list(layer._non_trainable_variables)))
    try:
        make_packed(layer, policy_lib.PackedGPTQPolicy(
            f"gptq/{bits}/{group_size}", source_name=old_policy.name))
        layer.quantized_kernel.assign(packing.pack(result.q, bits))
        layer.kernel_scale.assign(result.scale)
        layer.kernel_zero.assign(result.zero)
        layer.g_idx.assign(result.g_idx)
        _prepare(layer, result.q, result.scale, result.zero, result.g_idx)
    except BaseException:
        restore_float(layer, token)
        raise
    return token


def restore_float(layer, token):
    """Undoes `write_packed`: the layer gets its float kernel and policy back.

    Args:
        layer: a layer passed to `write_packed`.
        token: the value `write_packed` returned for it.
    """
    old_policy, old_kernel, order = token
    layer._gptq_kernel = None
    put_back_float(layer, ("quantized_kernel", "kernel_scale", "kernel_zero",
                           "g_idx"), {"_kernel": old_kernel}, old_policy,
                   order)


def put_back_float(layer, packed, floats, policy, order):
    """Drops the `packed` variables, re-attaches the `floats`
    (`{attribute: variable}`), and restores the variable order
    `(trainable, non_trainable)` and the float `policy`."""
    trainable, non_trainable = order
    layer._tracker.unlock()
    for name in packed:
        if getattr(layer, name, None) is not None:
            _drop_variable(layer, name)
    for name, variable in floats.items():
        if getattr(layer, name, None) is not variable:
            setattr(layer, name, variable)
    # Re-tracking appends the floats last; put every variable back in place.
    layer._trainable_variables[:] = trainable
    layer._non_trainable_variables[:] = non_trainable
    policy_lib.set_policy(layer, policy)
    layer._is_quantized = False
    layer.is_gptq_calibrated = False
    layer._tracker.lock()
    _retrack(layer)


def _drop_variable(layer, name):
    """`del layer.<name>` without the `gc.collect()` Keras runs on each del.

    Keras's `Layer.__delattr__` collects garbage after untracking a variable,
    about 0.4 s a call on a 135M model: 80 s over its 210 layers.
    """
    layer._untrack_variable(getattr(layer, name))
    super(keras.layers.Layer, layer).__delattr__(name)


def _retrack(layer):
    if keras.config.backend() == "torch":
        layer._track_variables()
