"""The Keras side of one Hugging Face linear module, read and written as
`W[out, in]` rows.

A module is one or more parts stacked along `out`: a whole Dense or
EinsumDense layer (`LayerRows`), or rows of one expert's matrix in an
expert bank (`ExpertRows`; Qwen-MoE keeps each expert's gate and up
projections as the two halves of one fused matrix). Packed parts give
`(q, scale, zero, g_idx)`; banks are written whole, once every expert of
every matrix is known (`BankWriter`).
"""

import dataclasses
import types

import keras
import numpy as np

from keras_gptq import storage
from keras_gptq.model import experts as experts_lib
from keras_gptq.model import layout as layout_lib
from keras_gptq.storage import packed_experts
from keras_gptq.storage import policy as policy_lib


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


@dataclasses.dataclass(frozen=True)
class Packed:
    """One part's GPTQ arrays: levels `q [rows, in]`, `scale` and `zero`
    `[rows, groups]`, `g_idx [in]`, with their bits and group size."""

    bits: int
    group_size: int
    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    g_idx: np.ndarray


@dataclasses.dataclass(frozen=True)
class LayerRows:
    """A whole Dense/EinsumDense layer."""

    layer: object

    @property
    def name(self):
        return self.layer.path

    def is_packed(self):
        return storage.is_packed(self.layer)

    def shape(self):
        """`(rows, columns)` of the layer's `W[out, in]`."""
        lay = layout_lib.layer_layout(self.layer) if not self.is_packed() else (
            self.layer._gptq_layout)
        return lay.rows, lay.columns

    def read(self):
        """The layer's `Packed` arrays."""
        policy = storage.layer_policy(self.layer)
        columns = self.layer._gptq_layout.columns
        q = storage.unpack(_numpy(self.layer.quantized_kernel),
                           policy.weight_bits, columns)
        return Packed(policy.weight_bits, policy.group_size, q,
                      *(_numpy(v) for v in (self.layer.kernel_scale,
                                            self.layer.kernel_zero,
                                            self.layer.g_idx)))

    def float_matrix(self):
        """`W[out, in]` of a float layer."""
        return layout_lib.layer_layout(self.layer).kernel_to_matrix(
            _numpy(self.layer._kernel))

    def write(self, packed):
        storage.write_packed(self.layer, types.SimpleNamespace(
            q=packed.q, scale=packed.scale, zero=packed.zero,
            g_idx=packed.g_idx), packed.bits, packed.group_size)

    def write_float(self, matrix):
        lay = layout_lib.layer_layout(self.layer)
        self.layer._kernel.assign(lay.matrix_to_kernel(matrix).astype(
            self.layer._kernel.dtype))


@dataclasses.dataclass(frozen=True)
class ExpertRows:
    """Rows `[start, stop)` of expert `expert`'s matrix `matrix` (an
    `experts.ExpertMatrix`) in an expert bank; `stop=None`: every row."""

    bank: object
    matrix: object
    expert: int
    start: int = 0
    stop: int = None

    @property
    def name(self):
        return f"{self.bank.path}/{self.matrix.name}[{self.expert}]"

    def is_packed(self):
        return storage.is_packed(self.bank)

    def _full_shape(self):
        if self.is_packed():
            return self.bank._gptq_bank_dims[self.matrix.name][1:]
        experts, a, b = getattr(self.bank, self.matrix.name).shape
        return (b, a) if self.matrix.layout == "e_in_out" else (a, b)

    def _rows(self):
        rows = self._full_shape()[0]
        return slice(self.start, rows if self.stop is None else self.stop)

    def shape(self):
        rows = self._rows()
        return rows.stop - rows.start, self._full_shape()[1]

    def read(self):
        policy = policy_lib.packed_policy(self.bank)
        columns = self._full_shape()[1]
        q, scale, zero, g_idx = (
            _numpy(getattr(self.bank, n)[self.expert])
            for n in packed_experts.packed_names(self.matrix.name))
        rows = self._rows()
        return Packed(policy.weight_bits, policy.group_size,
                      storage.unpack(q, policy.weight_bits, columns)[rows],
                      scale[rows], zero[rows], g_idx)


class BankWriter:
    """Collects the experts' row pieces of each bank, then packs every bank
    at once (`storage.write_packed_bank`)."""

    def __init__(self):
        self._pieces = {}  # id(bank): (bank, {(matrix, expert): [pieces]})

    def add(self, part, packed):
        bank, pieces = self._pieces.setdefault(id(part.bank),
                                               (part.bank, {}))
        pieces.setdefault((part.matrix.name, part.expert), []).append(
            (part.start, packed))

    def write(self):
        """Packs every collected bank.

        Raises:
            ValueError: a bank misses an expert, or the pieces of one
                expert matrix differ in settings or g_idx.
        """
        for bank, pieces in self._pieces.values():
            family = experts_lib.BANK_FAMILIES[type(bank)]
            results, settings = {}, set()
            for matrix in family.matrices:
                results[matrix.name] = []
                for e in range(int(bank.num_experts)):
                    parts = sorted(pieces.get((matrix.name, e), []),
                                   key=lambda p: p[0])
                    if not parts:
                        raise ValueError(f"{bank.path}: expert {e} of "
                                         f"{matrix.name} is not quantized.")
                    results[matrix.name].append(_stack_rows(
                        f"{bank.path}/{matrix.name}[{e}]",
                        [p for _, p in parts]))
                    settings.add((parts[0][1].bits, parts[0][1].group_size))
            if len(settings) != 1:
                raise ValueError(f"{bank.path}: its experts use several "
                                 f"(bits, group_size) settings {settings}.")
            (bits, group_size), = settings
            storage.write_packed_bank(bank, family, results, bits,
                                      group_size)


def _stack_rows(name, pieces):
    first = pieces[0]
    for other in pieces[1:]:
        if (other.bits, other.group_size) != (first.bits, first.group_size) \
                or not np.array_equal(other.g_idx, first.g_idx):
            raise ValueError(
                f"{name} is one Keras matrix made of several checkpoint "
                "modules (e.g. gate_proj and up_proj), which were quantized "
                "with different settings or column orders (g_idx).")
    return types.SimpleNamespace(
        q=np.concatenate([p.q for p in pieces]),
        scale=np.concatenate([p.scale for p in pieces]),
        zero=np.concatenate([p.zero for p in pieces]), g_idx=first.g_idx)


def stack(name, parts):
    """One HF module's `Packed` arrays from its packed parts, stacked along
    `out`.

    Raises:
        ValueError: a part is not quantized, or the parts differ in bits,
            group size or g_idx.
    """
    for part in parts:
        if not part.is_packed():
            raise ValueError(
                f"Layer {part.name!r} is not quantized by keras_gptq; "
                "export_hf needs every linear module of the transformer "
                "blocks quantized (run keras_gptq.quantize without "
                "`filters`).")
    packed = [part.read() for part in parts]
    first = packed[0]
    for other in packed[1:]:
        if (other.bits, other.group_size) != (first.bits, first.group_size):
            raise ValueError(f"{name}: its fused parts have different bits "
                             "or group sizes.")
        if not np.array_equal(other.g_idx, first.g_idx):
            raise ValueError(
                f"{name} fuses {[p.name for p in parts]}, which were "
                "quantized with different column orders (g_idx), so they "
                "cannot share the one g_idx of the fused module. Quantize "
                "them with activation_order=False, or so that they share "
                "one Hessian.")
    return Packed(first.bits, first.group_size,
                  *(np.concatenate([getattr(p, k) for p in packed])
                    for k in ("q", "scale", "zero")), first.g_idx)
