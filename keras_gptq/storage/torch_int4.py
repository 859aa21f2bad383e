"""torch's aten int4 kernels for packed 4-bit layers (`kernels`' torch path).

`_weight_int4pack_mm_for_cpu` on CPU, `_weight_int4pack_mm` on CUDA: both
read the levels in their own packed format (still 4 bits a weight, built
by `_convert_weight_to_int4pack[_for_cpu]`), with bfloat16 activations and
a bfloat16 `(scale, offset)` pair per kernel group: `W = (q - 8) * s + m`.
Ours is `(q - z) * s`, so `m = (8 - z) * s`; the kernel's group size is
the largest of 256, 128, 64, 32 that divides ours (our scales repeat).

The kernel's copy is kept beside the packed Keras variable (which saving,
loading, `layer.kernel` and the reference path read): on SmolLM2 4-bit
g128, 222 MB of weights in memory against 164 MB without it. Emptying the variable's storage (torch
`untyped_storage().resize_(0)`) was tried and dropped: reads of the
emptied variable (`model.get_weights()`, `keras.ops.convert_to_numpy`)
return freed memory and torch ops on it crash.

Measured on SmolLM2's shapes (`benchmarks/torch_int4_rows.py`), the
kernel is 2x to 300x faster than the reference path (dequantize, then a
float32 matmul) from 1 to 520 rows and about even at 2048; it takes calls
of up to `MAX_TOKENS` rows only, because it computes in bfloat16.
"""

import dataclasses

import numpy as np

from keras_gptq.algorithm import grid

GROUPS = (256, 128, 64, 32)  # group sizes the aten kernels take
# Calls of up to this many rows take the kernel (decode, small batches);
# longer ones the float32 reference path: the kernel computes in bfloat16,
# and prefill/perplexity logits must keep float32 tolerance.
MAX_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class TorchInt4:
    """The levels in the aten int4 kernels' packed format.

    Attributes:
        weight: the int4-packed levels (torch tensor, 4 bits a weight).
        scales_and_zeros: bfloat16 `[kernel groups, out, 2]`.
        group_size: the kernel's group size.
        shape: `(out, in)`, the layer's levels.
        padded: `(out, in)` as the kernel holds them (rows padded to 16,
            columns to `group_size`; to 128 on CUDA).
        cuda: the weight lives on a CUDA device.
    """

    weight: object
    scales_and_zeros: object
    group_size: int
    shape: tuple
    padded: tuple
    cuda: bool


def kernel_group(group_size, columns):
    """The aten kernel's group size for ours, or None when none fits: the
    largest that divides our groups (their scales repeat); per-channel
    rows take the largest that divides the row, else the smallest (the
    row is padded)."""
    size = grid.group_columns(group_size, columns)
    for candidate in GROUPS:
        if size % candidate == 0:
            return candidate
    return GROUPS[-1] if group_size == -1 else None


def build(device_tensor, levels, scale, zero, policy):
    """A `TorchInt4` for 4-bit levels, or None where the kernels do not
    apply (other bits, group sizes, shapes).

    Args:
        device_tensor: a torch tensor on the device the weight goes to.
        levels: int `[out, in]` levels (numpy), stored column order.
        scale, zero: numpy `[out, groups]`.
        policy: the layer's `PackedGPTQPolicy`.
    """
    import torch

    rows, columns = levels.shape
    group = kernel_group(policy.group_size, columns)
    if policy.weight_bits != 4 or group is None:
        return None
    cuda = device_tensor.device.type == "cuda"
    width = -(-columns // group) * group
    if cuda:
        width = -(-width // 128) * 128  # innerKTiles=8 needs K % 128 == 0
    height = -(-rows // 16) * 16  # the CPU kernel packs 16 rows at a time
    padded = np.full((height, width), 8, np.int32)
    padded[:rows, :columns] = levels
    size = grid.group_columns(policy.group_size, columns)
    ours = np.minimum(np.arange(0, width, group) // size, scale.shape[1] - 1)
    s = np.zeros((height, len(ours)), np.float32)
    s[:rows] = np.asarray(scale, np.float32)[:, ours]
    m = np.zeros_like(s)
    m[:rows] = (8.0 - np.asarray(zero, np.float32)[:, ours]) * s[:rows]
    pairs = np.stack([s.T, m.T], axis=-1)
    scales_and_zeros = torch.from_numpy(np.ascontiguousarray(pairs)).to(
        device=device_tensor.device, dtype=torch.bfloat16)
    try:
        weight = _convert(padded, device_tensor.device)
    except RuntimeError:  # a shape this torch build's kernel refuses
        return None
    return TorchInt4(weight, scales_and_zeros, group, (rows, columns),
                     (height, width), cuda)


def _convert(padded, device):
    """The kernel's packed format of int32 levels `padded` `[out, in]`."""
    import torch
    if device.type == "cuda":
        nibbles = torch.from_numpy(
            (padded[:, ::2] << 4 | padded[:, 1::2]).astype(np.uint8))
        return torch.ops.aten._convert_weight_to_int4pack(
            nibbles.to(device), 8)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        torch.from_numpy(np.ascontiguousarray(padded)), 1)


def matmul(int4, rows):
    """`rows @ W.T` through the aten kernel: `rows` `[tokens, in]` (any
    float dtype; bfloat16 inside), returns `[tokens, out]` in its dtype."""
    import torch

    x = rows.to(torch.bfloat16)
    if int4.padded[1] > x.shape[1]:
        x = torch.nn.functional.pad(x, (0, int4.padded[1] - x.shape[1]))
    op = (torch.ops.aten._weight_int4pack_mm if int4.cuda else
          torch.ops.aten._weight_int4pack_mm_for_cpu)
    y = op(x, int4.weight, int4.group_size, int4.scales_and_zeros)
    return y[:, :int4.shape[0]].to(rows.dtype)


def layer_matmul(int4, layer, inputs, perm):
    """A packed layer's `inputs -> outputs` (before bias) in raw torch ops.

    The same as `layout.inputs_to_rows`, `kernels.matmul` and
    `layout.rows_to_outputs`, without `keras.ops`: in eager torch each
    `keras.ops` call costs tens of microseconds, more than the kernel on
    a decode step (SmolLM2, one token: 0.19 ms a layer in those calls,
    0.07 ms in the kernel). Returns None where the outputs need an axis
    permutation (an EinsumDense whose output is not `kept + out` axes):
    the caller takes the generic path.

    Args:
        int4: the layer's `TorchInt4`.
        layer: the packed Dense/EinsumDense (`_gptq_layout` set).
        inputs: the layer input, a torch tensor in its compute dtype.
        perm: int torch tensor, the stored column order, or None.
    """
    plan = _plan(layer, inputs.ndim)
    if plan is None:
        return None
    source, target, out_dims = plan
    x = inputs if source == target else inputs.movedim(source, target)
    rows = x.reshape(-1, int4.shape[1])
    if perm is not None:
        rows = rows.index_select(1, perm)
    y = matmul(int4, rows)
    batch = [inputs.shape[a] for a in range(inputs.ndim) if a not in source]
    return y.reshape(*batch, *out_dims)


def _plan(layer, ndim):
    """`(source, target, out_dims)` for `layer_matmul`, cached on the
    layer per input rank; None where the outputs need a permutation."""
    import keras

    from keras_gptq.model import layout as layout_lib
    plans = layer.__dict__.setdefault("_gptq_torch_plans", {})
    if ndim not in plans:
        lay = layer._gptq_layout
        source = tuple(a % ndim for a in lay.input_axes)
        plan = (source, tuple(range(ndim - len(source), ndim)),
                tuple(lay.kernel_shape[a] for a in lay.out_axes))
        if isinstance(layer, keras.layers.EinsumDense):
            x_spec, k_spec, out_spec = layout_lib.parse_equation(
                layer.equation)
            kept = "".join(c for c in x_spec if c not in
                           {k_spec[a] for a in lay.in_axes})
            if kept + "".join(k_spec[a] for a in lay.out_axes) != out_spec:
                plan = None
        plans[ndim] = plan
    return plans[ndim]


def nbytes(int4):
    """Bytes of the kernel's weight and scales."""
    return sum(t.numel() * t.element_size()
               for t in (int4.weight, int4.scales_and_zeros))
