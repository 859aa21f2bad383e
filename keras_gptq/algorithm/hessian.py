"""The Hessian of one layer's inputs, streamed over calibration batches.

`HessianAccumulator` keeps `H = 2/N sum x x^T` in float32. Where the
backend computes on the CPU it accumulates with numpy: the same inputs then
give the same H, bit for bit, on every backend, and that matters (with
act-order a one-ulp difference in H can swap two near-tied columns and
change a few percent of a layer's integers). On an accelerator it
accumulates with `keras.ops` on the device, so activations never travel to
the host.
"""

import functools

import numpy as np
from keras import ops


@functools.lru_cache(maxsize=None)  # the backend is fixed per process
def on_accelerator():
    """True when Keras sees a GPU or TPU (then Hessians stay on device)."""
    device = getattr(ops.convert_to_tensor(np.zeros(1, "float32")),
                     "device", "cpu")
    return "cpu" not in str(device).lower()


class HessianAccumulator:
    """Streaming `H = 2/N sum_tokens w x x^T` of one layer input, in float32.

    Batches are added with `add(rows)`; the running mean is rescaled at each
    batch (as in the reference's `add_batch`) so values stay bounded. Every
    row weighs `w = 1` unless `add(rows, weights=...)` says otherwise (the
    pipeline weighs each window's first position, the attention sink). With
    `asymmetric=True`, `add(rows, float_rows)` also accumulates GPTAQ's
    `dXXT = 2/N sum (x~ - x) x^T`, where `x~` is what the layer receives in
    the float model for the same token.

    Args:
        columns: input features.
        on_device: accumulate with `keras.ops` on the backend's device
            (True) or with numpy on the host (False, identical on every
            backend). None picks the device on an accelerator, else host.
        asymmetric: also accumulate `dXXT`.
    """

    def __init__(self, columns, on_device=None, asymmetric=False):
        self.columns = columns
        self.tokens = 0
        self.on_device = on_accelerator() if on_device is None else on_device
        self._xp = ops if self.on_device else np
        self._H = self._xp.zeros((columns, columns), dtype="float32")
        self._dXXT = self._xp.zeros((columns, columns), dtype="float32") if (
            asymmetric) else None

    def _rows(self, rows):
        if isinstance(rows, np.ndarray) and not self.on_device:
            # Host rows stay on the host (no backend op: on JAX each new
            # row count would compile a new cast).
            return rows.astype(np.float32, copy=False)
        rows = ops.cast(rows, "float32")
        if not self.on_device:
            rows = np.asarray(ops.convert_to_numpy(rows))
        return rows

    def add(self, rows, float_rows=None, weights=None):
        """Adds a `[tokens, columns]` batch of inputs.

        Args:
            rows: the layer's inputs, `[tokens, columns]`.
            float_rows: when asymmetric, the float model's inputs for the
                same tokens (same shape); else None.
            weights: optional `[tokens]` weight of each row in H (and
                dXXT); None weighs every row 1. `N` counts rows, not
                weights.
        """
        if (float_rows is None) != (self._dXXT is None):
            raise ValueError(
                "`float_rows` must be given exactly when the accumulator "
                "is asymmetric.")
        rows = self._rows(rows)
        count = int(rows.shape[0])
        if count == 0:
            return
        xp, total = self._xp, self.tokens + count
        weighted = rows if weights is None else rows * self._rows(
            np.asarray(weights, np.float32).reshape(-1, 1))
        with np.errstate(invalid="ignore", over="ignore"):  # checked later
            update = xp.matmul(xp.transpose(weighted), rows)
            self._H = self._H * (self.tokens / total) + update * (2.0 / total)
            if self._dXXT is not None:
                delta = self._rows(float_rows) - rows
                cross = xp.matmul(xp.transpose(delta), weighted)
                self._dXXT = (self._dXXT * (self.tokens / total)
                              + cross * (2.0 / total))
        self.tokens = total

    def result(self):
        """Returns H as a float32 numpy array."""
        return np.asarray(ops.convert_to_numpy(self._H), dtype=np.float32)

    def cross_result(self):
        """Returns dXXT as a float32 numpy array (None unless asymmetric)."""
        if self._dXXT is None:
            return None
        return np.asarray(ops.convert_to_numpy(self._dXXT), dtype=np.float32)
