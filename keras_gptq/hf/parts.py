"""The Keras side of one Hugging Face linear module, read and written as
`W[out, in]` rows.

A module is one or more parts stacked along `out`: rows of a Dense or
EinsumDense layer (`LayerRows`; Bloom's fused query_key_value takes each
head's rows of q, k and v in turn), or rows of one expert's matrix in an
expert bank (`ExpertRows`; Qwen-MoE keeps each expert's gate and up
projections as the two halves of one fused matrix). Packed parts give
`(q, scale, zero, g_idx)`; layers and banks are written whole, once all
their rows are known (`Writer`).
"""

import dataclasses
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
    """Rows `[start, stop)` of a Dense/EinsumDense layer's `W[out, in]`;
    `stop=None`: every row."""

    layer: object
    start: int = 0
    stop: int = None

    @property
    def name(self):
        return self.layer.path

    def is_packed(self):
        return storage.is_packed(self.layer)

    def _layout(self):
        return (self.layer._gptq_layout if self.is_packed()
                else layout_lib.layer_layout(self.layer))

    def _rows(self):
        rows = self._layout().rows
        return slice(self.start, rows if self.stop is None else self.stop)

    def shape(self):
        """`(rows, columns)` of this part."""
        rows = self._rows()
        return rows.stop - rows.start, self._layout().columns

    def read(self):
        """The part's `Packed` arrays."""
        policy = storage.layer_policy(self.layer)
        q = storage.stored_levels(self.layer)  # g_idx's column order
        scale, zero, g_idx = (_numpy(v) for v in (
            self.layer.kernel_scale, self.layer.kernel_zero,
            self.layer.g_idx))
        rows = self._rows()
        return Packed(policy.weight_bits, policy.group_size, q[rows],
                      scale[rows], zero[rows], g_idx)

    def float_matrix(self):
        """The part's rows of a float layer's `W[out, in]`."""
        return self._layout().kernel_to_matrix(
            _numpy(self.layer._kernel))[self._rows()]

    def write_float(self, rows):
        """Writes the part's rows of a float layer's `W[out, in]`."""
        lay = self._layout()
        matrix = lay.kernel_to_matrix(_numpy(self.layer._kernel))
        matrix[self._rows()] = rows
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

    def float_matrix(self):
        """The part's rows of a float bank's expert matrix `W[out, in]`."""
        kernel = _numpy(getattr(self.bank, self.matrix.name))
        return self.matrix.expert_matrix(kernel, self.expert)[self._rows()]

    def write_float(self, rows):
        """Writes the part's rows of a float bank's expert matrix."""
        variable = getattr(self.bank, self.matrix.name)
        kernel = _numpy(variable).copy()
        W = self.matrix.expert_matrix(kernel, self.expert)
        W[self._rows()] = rows
        kernel[self.expert] = W.T if self.matrix.layout == "e_in_out" else W
        variable.assign(kernel.astype(variable.dtype))

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


class Writer:
    """Collects the packed row pieces of each layer and expert bank, then
    writes every one whole (`storage.write_packed`,
    `storage.write_packed_bank`)."""

    def __init__(self):
        self._pieces = {}  # id(target): (target, {key: [(start, Packed)]})

    def add(self, part, packed):
        """Keeps `packed`, the arrays of `part`'s rows."""
        if isinstance(part, ExpertRows):
            target, key = part.bank, (part.matrix.name, part.expert)
        else:
            target, key = part.layer, None
        _, pieces = self._pieces.setdefault(id(target), (target, {}))
        pieces.setdefault(key, []).append((part.start, packed))

    def write(self):
        """Packs every collected layer and bank.

        Raises:
            ValueError: a bank misses an expert, or the pieces of one
                matrix differ in settings or g_idx.
        """
        for target, pieces in self._pieces.values():
            if None in pieces:
                packed = _stack_rows(target.path, pieces[None])
                storage.write_packed(target, packed, packed.bits,
                                     packed.group_size)
            else:
                _write_bank(target, pieces)


def _write_bank(bank, pieces):
    family = experts_lib.BANK_FAMILIES[type(bank)]
    results = {}
    for matrix in family.matrices:
        results[matrix.name] = []
        for e in range(int(bank.num_experts)):
            if (matrix.name, e) not in pieces:
                raise ValueError(f"{bank.path}: expert {e} of "
                                 f"{matrix.name} is not quantized.")
            results[matrix.name].append(_stack_rows(
                f"{bank.path}/{matrix.name}[{e}]", pieces[(matrix.name, e)]))
    settings = {(r.bits, r.group_size) for rs in results.values() for r in rs}
    if len(settings) != 1:
        raise ValueError(f"{bank.path}: its experts use several "
                         f"(bits, group_size) settings {settings}.")
    (bits, group_size), = settings
    storage.write_packed_bank(bank, family, results, bits, group_size)


def _stack_rows(name, pieces):
    """One matrix's `Packed` from its `(start row, Packed)` pieces."""
    pieces = [p for _, p in sorted(pieces, key=lambda piece: piece[0])]
    first = pieces[0]
    for other in pieces[1:]:
        if (other.bits, other.group_size) != (first.bits, first.group_size) \
                or not np.array_equal(other.g_idx, first.g_idx):
            raise ValueError(
                f"{name} is one Keras matrix made of several checkpoint "
                "modules (e.g. gate_proj and up_proj), which were quantized "
                "with different settings or column orders (g_idx).")
    return Packed(first.bits, first.group_size,
                  *(np.concatenate([getattr(p, k) for p in pieces])
                    for k in ("q", "scale", "zero")), first.g_idx)


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
                "blocks quantized: it does not write float modules into a "
                "GPTQ checkpoint (GPTQModel's `dynamic` '-:' entries) yet. "
                "Quantize without `filters` or skipping `overrides`.")
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
