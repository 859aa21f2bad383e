"""Bit packing: integer levels <-> bytes, the one packer of every format.

Levels of `bits` bits are written as one little-endian bit stream: level
`j` of a row occupies stream bits `[bits * j, bits * (j + 1))`, and byte
`k` holds stream bits `[8 k, 8 k + 8)`. So 8 levels fill `bits` bytes
(2- and 4-bit levels never cross a byte; 3-bit levels straddle bytes;
8-bit levels are bytes).

Both stored layouts are this stream:
- keras_gptq's packed layers keep the bytes, uint8 `[out, ceil(in / 8) *
  bits]` (rows padded to a multiple of 8 levels);
- the Hugging Face GPTQ format reads the same bytes as little-endian int32
  words (32 levels in `bits` words): `pack_words` / `unpack_words`.
"""

import math

import numpy as np
from keras import ops

WORD_LEVELS = 32  # levels per `bits` int32 words in the HF GPTQ format


def packed_width(columns, bits):
    """Bytes per row for `columns` levels of `bits` bits."""
    return math.ceil(columns / 8) * bits


def pack(levels, bits):
    """Packs integer levels along the last axis.

    Args:
        levels: `[rows, columns]` integers in `[0, 2**bits - 1]`.
        bits: 2, 3, 4 or 8.

    Returns:
        uint8 `[rows, packed_width(columns, bits)]`.
    """
    levels = np.asarray(levels)
    rows, columns = levels.shape
    padded = math.ceil(columns / 8) * 8
    # 2/4/8-bit levels never cross a byte: OR them in bytes. A 3-bit run of
    # 8 levels is 24 bits: build it in 32-bit words, then split the bytes.
    # (Narrow integers: 0.23 s -> 0.03 s for a 1536 x 8960 4-bit matrix.)
    narrow = np.uint8 if 8 % bits == 0 else np.uint32
    padded_levels = np.zeros((rows, padded), dtype=narrow)
    padded_levels[:, :columns] = levels
    if 8 % bits == 0:
        per_byte = 8 // bits
        parts = padded_levels.reshape(rows, -1, per_byte)
        out = parts[..., 0].copy()
        for i in range(1, per_byte):
            out |= parts[..., i] << np.uint8(bits * i)
        return out
    parts = padded_levels.reshape(rows, -1, 8)
    words = parts[..., 0].copy()
    for i in range(1, 8):
        words |= parts[..., i] << np.uint32(bits * i)
    out = np.empty((rows, padded // 8, bits), dtype=np.uint8)
    for b in range(bits):
        out[..., b] = words >> np.uint32(8 * b)  # the low byte survives
    return out.reshape(rows, -1)


def unpack(packed, bits, columns, xp=np):
    """Inverse of `pack`; `xp` is `np` or `keras.ops` (backend tensors).

    Args:
        packed: uint8 `[rows, packed_width(columns, bits)]`.
        bits: 2, 3, 4 or 8.
        columns: the number of levels per row to return.

    Returns:
        int32 `[rows, columns]` levels.
    """
    cast = (lambda t: xp.cast(t, "int32")) if xp is ops else (
        lambda t: t.astype(np.int32))
    if bits == 8:
        return cast(packed)[:, :columns]
    rows = packed.shape[0]
    if 8 % bits == 0:  # 2 and 4 bits: whole levels per byte, low bits first
        mask = (1 << bits) - 1
        if xp is ops:
            parts = [ops.bitwise_and(ops.right_shift(packed, bits * i), mask)
                     for i in range(8 // bits)]
        else:
            parts = [(packed >> (bits * i)) & mask for i in range(8 // bits)]
        levels = xp.reshape(xp.stack(parts, axis=-1), (rows, -1))
        return cast(levels[:, :columns])
    groups = xp.reshape(cast(packed), (rows, -1, bits))
    mask = (1 << bits) - 1
    values = []
    for k in range(8):
        byte, offset = divmod(bits * k, 8)
        v = xp.right_shift(groups[:, :, byte], offset) if xp is ops else (
            groups[:, :, byte] >> offset)
        if offset + bits > 8:
            nxt = groups[:, :, byte + 1]
            v = xp.bitwise_or(v, xp.left_shift(nxt, 8 - offset)) if (
                xp is ops) else (v | (nxt << (8 - offset)))
        values.append(xp.bitwise_and(v, mask) if xp is ops else v & mask)
    levels = xp.reshape(xp.stack(values, axis=-1), (rows, -1))
    return levels[:, :columns]


def pack_words(levels, bits, axis=0):
    """Packs levels along `axis` into int32 words, 32 levels per `bits` words.

    The words are `pack`'s bytes read as little-endian int32 (the Hugging
    Face GPTQ format's `qweight` and `qzeros`).

    Args:
        levels: integers in `[0, 2**bits - 1]`; `levels.shape[axis]` must be
            a multiple of 32.
        bits: 2, 3, 4 or 8.
        axis: the axis to pack along.

    Returns:
        int32 array whose `axis` has `levels.shape[axis] * bits / 32` words.

    Raises:
        ValueError: the axis is not a multiple of 32, or a value does not
            fit in `bits` bits.
    """
    values = np.moveaxis(np.asarray(levels, dtype=np.int64), axis, -1)
    count = values.shape[-1]
    if count % WORD_LEVELS:
        raise ValueError(
            f"The GPTQ format packs 32 values at a time; an axis of {count} "
            "is not a multiple of 32.")
    if values.size and (values.max() >= (1 << bits) or values.min() < 0):
        raise ValueError(
            f"A value {int(values.max())} does not fit in {bits} bits.")
    rows = pack(values.reshape(-1, count), bits)
    words = np.ascontiguousarray(rows).view("<u4").astype(np.uint32)
    words = words.view(np.int32).reshape(*values.shape[:-1], -1)
    return np.ascontiguousarray(np.moveaxis(words, -1, axis))


def unpack_words(words, bits, axis=0):
    """Inverse of `pack_words`: int32 words -> int32 levels along `axis`.

    Raises:
        ValueError: the axis is not a whole number of `bits`-word blocks.
    """
    stream = np.moveaxis(np.asarray(words).astype(np.int32), axis, -1)
    count = stream.shape[-1]
    if count % bits:
        raise ValueError(
            f"{count} packed words are not a whole number of {bits}-word "
            "blocks.")
    rows = np.ascontiguousarray(stream.reshape(-1, count)).view(
        np.uint32).astype("<u4").view(np.uint8)
    levels = unpack(rows, bits, count * WORD_LEVELS // bits)
    levels = levels.reshape(*stream.shape[:-1], -1)
    return np.ascontiguousarray(np.moveaxis(levels, -1, axis))
