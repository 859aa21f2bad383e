"""An independent reader of the Hugging Face GPTQ format, for the tests.

Written from the format description (AutoGPTQ's `QuantLinear.pack`, GPTQModel's
v1/v2 zero-point rule), not from keras_gptq's code: plain Python integers
for the bit stream, no shared helper.

- `qweight[w, o]`: 32 consecutive input rows of column `o` form one
  little-endian stream of `32 * bits` bits across `bits` int32 words; the
  level of row `32 * b + j` is stream bits `[bits * j, bits * (j + 1))`.
- `qzeros[g, w]`: the same along the output axis.
- v1 (`checkpoint_format="gptq"`): true zero = stored zero + 1.
- `W[o, i] = scales[g_idx[i], o] * (level[i, o] - zero[g_idx[i], o])`.
- `dynamic` (GPTQModel): `{"+:regex": {"bits": ...}, "-:regex": {}}`, the
  first regex that `re.match`es the module name decides.
"""

import re

import numpy as np


def stream_values(words, bits):
    """Unpacks a 1-D int32 sequence (a multiple of `bits` words)."""
    words = [int(w) & 0xFFFFFFFF for w in words]
    values = []
    for start in range(0, len(words), bits):
        stream = sum(w << (32 * k) for k, w in enumerate(
            words[start:start + bits]))
        values += [(stream >> (bits * j)) & ((1 << bits) - 1)
                   for j in range(32)]
    return values


def stream_words(values, bits):
    """Packs a 1-D sequence of levels (a multiple of 32) into int32 words."""
    words = []
    for start in range(0, len(values), 32):
        stream = sum(int(v) << (bits * j) for j, v in enumerate(
            values[start:start + 32]))
        for k in range(bits):
            word = (stream >> (32 * k)) & 0xFFFFFFFF
            words.append(word - (1 << 32) if word >= 1 << 31 else word)
    return words


def dequantize(qweight, qzeros, scales, g_idx, bits, checkpoint_format):
    """Returns the float64 `weight[out, in]` of one GPTQ module."""
    qweight, qzeros = np.asarray(qweight), np.asarray(qzeros)
    levels = np.array([stream_values(qweight[:, o], bits)
                       for o in range(qweight.shape[1])])  # [out, in]
    zeros = np.array([stream_values(qzeros[g], bits)
                      for g in range(qzeros.shape[0])])  # [groups, out]
    if checkpoint_format == "gptq":
        zeros = zeros + 1
    g = np.asarray(g_idx, dtype=np.int64)
    scales = np.asarray(scales, dtype=np.float64)
    return scales[g].T * (levels - zeros[g].T)


def module_bits(quantization_config, name):
    """The bits of module `name` under the config's `dynamic`."""
    for pattern, settings in (quantization_config.get("dynamic")
                              or {}).items():
        if re.match(pattern[2:] if pattern[:2] in ("+:", "-:") else pattern,
                    name):
            return settings.get("bits", quantization_config["bits"])
    return quantization_config["bits"]
