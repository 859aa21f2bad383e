"""The packed-layer matmul: one seam, one fast path per backend.

A packed layer's forward pass is `rows @ W.T`, `rows` the layer input as
`[tokens, in]` (`MatrixLayout.inputs_to_rows`), `W[out, in]` the packed
matrix. `prepare` runs once, when the packed values are in place (written
or loaded); `matmul` runs in every call.

Column order (every backend). Act-order layers store groups in a
permuted column order (`g_idx` is not `i // group_size`). `prepare`
sorts the columns by group once, stably, and keeps the levels in that
order in memory: the layer then takes the contiguous-group path (a
reshape and a broadcast of scales and zero points, no gather over the
matrix), and `matmul` permutes the much smaller input instead (one gather
of `rows`). `g_idx` and the saved file keep the original order
(`packed_layer.stored_levels` undoes the sort), so the stored layout is
unchanged.

Per backend:
- torch, 4-bit, a group size the aten kernel takes (a multiple of 32,
  or per-channel): the aten int4 kernel (`torch_int4`:
  `_weight_int4pack_mm_for_cpu` on CPU, `_weight_int4pack_mm` on CUDA),
  in bfloat16 (the kernel's fast dtype: results match the float32
  reference within bfloat16 rounding), for calls of at most
  `torch_int4.MAX_TOKENS` rows (decode, small batches), on a copy of the
  levels in its own packed format (4 bits a weight) kept beside the
  packed variable. Longer calls (prefill, perplexity) take the float32
  reference path, so a model's scores do not change with the backend's
  kernel (the int4 kernel was faster there too: up to 520 rows, even at
  2048, `benchmarks/torch_int4_rows.py`; a bfloat16 prefill moved logits
  by 1e-3 and broke the float32-tolerance checks against transformers
  and GPTQModel).
- JAX on CPU, 2, 4 or 8 bits, groups that start on a byte: the native
  kernel (`cpu_kernel.cc`, an XLA FFI call compiled on first use): it
  reads the packed levels directly (a table lookup per 16 levels at small
  row counts; from `cpu_kernel.BLOCKED_FROM` rows, blocks of 32 weight
  rows dequantized into a small float buffer and multiplied by all rows),
  in float32, never building a float copy of the matrix, and reading
  act-order inputs through the permutation (no gather). Any row count
  where groups cover whole 32-bit words on an AVX-512 CPU, else at most
  `cpu_kernel.MAX_TOKENS` rows (`cpu_kernel.max_tokens`). Where it cannot
  be built (no compiler), or `KERAS_GPTQ_CPU_KERNEL=0`: the reference path.
- everywhere else (JAX above `max_tokens` rows or on GPU, TensorFlow,
  3-bit, other group sizes): the reference path:
  the packed levels are dequantized inside the call (one elementwise pass
  that XLA fuses: unpack, scale and zero point per column) and multiplied
  in float. On CPU, XLA does not fuse a dequantization into the dot (the
  dot is a library call), and the fused multiply-and-reduce formulations
  tried (levels along either axis, group-major scales) measured slower
  than this one on SmolLM2's matrices
  (`benchmarks/packed_matmul_formulations.py`). Inside a compiled loop
  XLA may hoist the dequantization out of the loop, as it does for
  Keras's own int4 layers: a float copy of the weight then lives for that
  loop's run, not in the model.
"""

import contextlib
import dataclasses

import keras
import numpy as np
from keras import ops

from keras_gptq.algorithm import grid
from keras_gptq.storage import cpu_kernel
from keras_gptq.storage import packing
from keras_gptq.storage import policy as policy_lib
from keras_gptq.storage import torch_int4

_FAST = {"enabled": True}


@dataclasses.dataclass(frozen=True)
class KernelState:
    """What `matmul` needs besides the layer's variables.

    Attributes:
        perm: int32 backend tensor, the stored column order (act-order
            layers sorted by group), or None when columns are in order.
        stored_g_idx: numpy `[in]` group of each stored column.
        contiguous: stored groups are `i // group_size`.
        int4: a `torch_int4.TorchInt4` or None.
        cpu_group: the native JAX CPU kernel applies: its group size
            (-1 for one group a row); None where it does not.
    """

    perm: object
    stored_g_idx: np.ndarray
    contiguous: bool
    int4: object = None
    cpu_group: object = None


@contextlib.contextmanager
def reference_only():
    """Within the block, packed layers use the reference path everywhere
    (tests and benchmarks compare the two)."""
    before = _FAST["enabled"]
    _FAST["enabled"] = False
    try:
        yield
    finally:
        _FAST["enabled"] = before


def disable_cpu_kernel(layer):
    """Sends a prepared layer to the reference path instead of the native
    JAX CPU kernel, for good (benchmarks compare the two in one process;
    `reference_only` covers every fast path, but only while tracing)."""
    layer._gptq_kernel = dataclasses.replace(state(layer), cpu_group=None)


def sorted_columns(g_idx, group_size):
    """The stored column order of a layer whose groups are `g_idx`.

    Returns:
        `None` when `g_idx` is already contiguous or sorting does not make
        it so (a checkpoint with uneven groups keeps the gather path);
        else the int permutation that sorts the columns by group.
    """
    g_idx = np.asarray(g_idx)
    if grid.has_contiguous_groups(g_idx, group_size):
        return None
    order = np.argsort(g_idx, kind="stable")
    if not grid.has_contiguous_groups(g_idx[order], group_size):
        return None
    return order.astype(np.int32)


def prepare(layer, levels, scale, zero, g_idx):
    """Sets up `layer` for `matmul` once its packed variables hold values.

    Sorts act-order columns in `layer.quantized_kernel` (see the module
    docstring) and builds the backend's fast-path state.

    Args:
        layer: a packed Dense/EinsumDense.
        levels: int `[out, in]` levels in the original column order
            (numpy), or None to unpack them from `layer.quantized_kernel`
            only where they are needed (sorting, torch's int4 copy): a
            loaded contiguous layer on JAX or TensorFlow never unpacks.
        scale, zero: numpy `[out, groups]`.
        g_idx: numpy `[in]`, the group of each original column.
    """
    policy = policy_lib.packed_policy(layer)
    g_idx = np.asarray(g_idx)
    perm = sorted_columns(g_idx, policy.group_size)

    def original_levels():
        if levels is not None:
            return np.asarray(levels)
        return packing.unpack(ops.convert_to_numpy(layer.quantized_kernel),
                              policy.weight_bits, len(g_idx))

    stored = None  # levels in stored column order, once unpacked
    if perm is not None:
        stored = np.take(original_levels(), perm, axis=1)
        g_idx = g_idx[perm]
        layer.quantized_kernel.assign(packing.pack(stored, policy.weight_bits))
    contiguous = grid.has_contiguous_groups(g_idx, policy.group_size)
    int4 = None
    if contiguous and keras.config.backend() == "torch":
        int4 = torch_int4.build(
            layer.quantized_kernel.value,
            original_levels() if stored is None else stored, scale, zero,
            policy)
    cpu_group = None
    if contiguous and keras.config.backend() == "jax":
        cpu_group = _cpu_group(layer.quantized_kernel.value, policy,
                               len(g_idx))
    layer._gptq_kernel = KernelState(
        perm=None if perm is None else ops.convert_to_tensor(perm, "int32"),
        stored_g_idx=g_idx, contiguous=contiguous, int4=int4,
        cpu_group=cpu_group)


def _cpu_group(device_array, policy, columns):
    """The native kernel's group size for a contiguous JAX layer (-1: one
    group a row), or None where it does not apply (GPU, 3 bits, groups
    not on a byte, the kernel unavailable)."""
    import jax
    devices = getattr(device_array, "devices", None)  # None: a tracer
    platforms = ({d.platform for d in devices()} if devices else
                 {jax.default_backend()})
    if platforms != {"cpu"}:
        return None
    size = grid.group_columns(policy.group_size, columns)
    size = -1 if size >= columns else size
    if not cpu_kernel.applies(policy.weight_bits, size, columns):
        return None
    return size if cpu_kernel.available() else None


def state(layer):
    """The layer's `KernelState` (contiguous columns if never prepared)."""
    found = getattr(layer, "_gptq_kernel", None)
    if found is None:
        columns = layer._gptq_layout.columns
        g_idx = grid.contiguous_g_idx(
            policy_lib.packed_policy(layer).group_size, columns)
        found = KernelState(None, g_idx, True)
    return found


def matmul(layer, rows, dequantize):
    """`rows @ W.T` for a packed layer.

    Args:
        layer: a prepared packed layer.
        rows: `[tokens, in]` inputs in the original column order.
        dequantize: `() -> W.T`, `[in, out]` in stored column order,
            float32 (the reference path).

    Returns:
        `[tokens, out]` in the layer's compute dtype.
    """
    kernel = state(layer)
    if kernel.cpu_group is not None and _FAST["enabled"] and _cpu_rows_fit(
            layer, kernel.cpu_group, rows.shape[0]):
        y = cpu_kernel.matmul(  # permutes act-order columns itself
            ops.cast(rows, "float32"), layer.quantized_kernel.value,
            layer.kernel_scale.value, layer.kernel_zero.value,
            policy_lib.packed_policy(layer).weight_bits, kernel.cpu_group,
            kernel.perm)
        return ops.cast(y, layer.compute_dtype)
    if kernel.perm is not None:
        rows = ops.take(rows, kernel.perm, axis=1)
    if kernel.int4 is not None and _FAST["enabled"] and (
            rows.shape[0] is not None
            and rows.shape[0] <= torch_int4.MAX_TOKENS):
        return torch_int4.matmul(kernel.int4, rows)
    return ops.matmul(rows, ops.cast(dequantize(), layer.compute_dtype))


def _cpu_rows_fit(layer, group_size, tokens):
    """Whether the native JAX CPU kernel takes a call of `tokens` rows
    (`cpu_kernel.max_tokens`; a symbolic count: no)."""
    if tokens is None:
        return False
    limit = cpu_kernel.max_tokens(
        policy_lib.packed_policy(layer).weight_bits, group_size,
        layer.quantized_kernel.shape[1])
    return limit is None or tokens <= limit


def eager_matmul(layer, inputs):
    """The layer's outputs before bias from its torch int4 kernel in raw
    torch ops (`torch_int4.layer_matmul`), or None: the caller takes
    `matmul`'s path (other backends and settings, calls of more than
    `torch_int4.MAX_TOKENS` rows, `reference_only`)."""
    kernel = state(layer)
    if kernel.int4 is None or not _FAST["enabled"] or (
            inputs.numel() // kernel.int4.shape[1] > torch_int4.MAX_TOKENS):
        return None
    return torch_int4.layer_matmul(kernel.int4, layer, inputs, kernel.perm)


def cached_bytes(layer):
    """Bytes a layer holds beside its variables (the torch int4 copy)."""
    int4 = state(layer).int4
    return 0 if int4 is None else torch_int4.nbytes(int4)
