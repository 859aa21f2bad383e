"""GPTQ on one 2-D matrix: a pure function of `(W, H, settings)`.

Follows `fasterquant` of the reference (IST-DASLab/gptq) step by step:
dead columns, damping as a fraction of the mean diagonal, the upper Cholesky
factor of `H^-1`, lazy batch updates of `block_size` columns, groups,
act-order with or without static groups. Names follow the paper: `W` is
`[out, in]` (rows are output channels), `H` is `[in, in]`.

With `dXXT` (asymmetric calibration, GPTAQ / "GPTQv2", Li et al., ICML
2025) the solver matches the quantized layer's output on the quantized
model's inputs `X` to the float layer's output on the float model's inputs
`X~`, instead of to the float layer on `X`: each quantized column also
moves the later columns by `w P[i, :]` with
`P = alpha triu(dXXT Hinv^T, 1) Hinv` and `dXXT = 2/N (X~ - X)^T X`.
Unlike the GPTAQ authors' code, the lazy batch update applies `P` to the
columns as they were when quantized (what the column-by-column algorithm
does), not to their quantized values, so any `block_size` gives the same
result.

Implementation notes:
- The factorisation runs in float32 (LAPACK; float64 when float32 is not
  enough), the grid in float64, the column loop in float32.
- `Hinv = J chol(J H J)^-1 J` (`J` reverses the order) is exactly the upper
  Cholesky factor of `H^-1` that the reference gets from three
  factorisations, at the cost of one Cholesky and one triangular inverse.
- The column loop works on `W` transposed, so each column is a contiguous
  row and each rank-1 update writes contiguous memory.
- BLAS and LAPACK run on one thread (`keras_gptq.utils.blas`): on a
  busy machine OpenBLAS's threads spin-wait on each other, and one thread
  makes the integers independent of the core count.
- This module knows nothing of layers, backends or models. Group grids
  fitted inside the column loop count as the run's "grid" stage
  (`keras_gptq.utils.timing`; a no-op outside a timed run).
"""

import dataclasses

import numpy as np
import scipy.linalg

from keras_gptq.algorithm import grid
from keras_gptq.utils import blas
from keras_gptq.utils import timing


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    """The damped Hessian is not positive definite at any allowed damping."""


@dataclasses.dataclass
class SolverResult:
    """Output of `solve_gptq`.

    Attributes:
        q: uint8 `[out, in]` integer levels, in the original column order.
        scale: float32 `[out, groups]` scales.
        zero: uint8 `[out, groups]` zero points.
        g_idx: int32 `[in]` group of each input column.
        damping: the damping fraction actually used (raised above the
            requested one when the Hessian needed it).
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    g_idx: np.ndarray
    damping: float


def dequantize(q, scale, zero, g_idx):
    """Rebuilds float weights `[out, in]` from a `SolverResult`'s arrays."""
    g_idx = np.asarray(g_idx, dtype=np.int64)
    zero = np.asarray(zero, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    return grid.dequantize(
        np.asarray(q, dtype=np.float32), scale[:, g_idx], zero[:, g_idx]
    ).astype(np.float32)


def output_error(W, Q, H):
    """Returns `tr((W - Q) H (W - Q)^T)`, the layer's output error.

    With `H = 2/N X^T X` this is twice the mean squared error of the layer's
    outputs over the calibration tokens.
    """
    delta = np.asarray(W, np.float64) - np.asarray(Q, np.float64)
    return float(np.sum((delta @ np.asarray(H, np.float64)) * delta))


def _reversed_inverse_factor(reversed_damped):
    """`J chol(J H J)^-1 J` via LAPACK in the array's precision, or None."""
    lapack = scipy.linalg.lapack
    potrf, trtri = (lapack.spotrf, lapack.strtri) if (
        reversed_damped.dtype == np.float32) else (lapack.dpotrf,
                                                   lapack.dtrtri)
    lower, info = potrf(reversed_damped, lower=1, clean=1, overwrite_a=1)
    if info != 0 or not np.all(np.isfinite(lower)):
        return None
    inv, info = trtri(lower, lower=1, overwrite_c=1)
    if info != 0 or not np.all(np.isfinite(inv)):
        return None
    return np.ascontiguousarray(inv[::-1, ::-1], dtype=np.float32)


def inverse_cholesky(H, damping, damping_step=0.0, max_damping=1.0):
    """Returns the upper Cholesky factor of `(H + damp I)^-1` and the damping.

    Args:
        H: `[n, n]` symmetric positive semi-definite matrix.
        damping: fraction of `mean(diag(H))` added to the diagonal.
        damping_step: when the damped matrix is not positive definite, add
            this to `damping` and retry, up to `max_damping`; 0 disables.
        max_damping: the largest damping fraction tried.

    Returns:
        `(Hinv, damping_used)`: float32 upper-triangular `[n, n]` with
        `Hinv^T Hinv = (H + damp I)^-1`, and the damping fraction used. The
        factorisation runs in float32 (as the reference does on GPU) and
        falls back to float64 when float32 loses positive definiteness.

    Raises:
        NotPositiveDefiniteError: when no damping up to `max_damping` works.
    """
    H = np.asarray(H, dtype=np.float64)
    n = H.shape[0]
    mean_diag = float(np.mean(np.diag(H)))
    reversed_H = H[::-1, ::-1]
    while True:
        damped = reversed_H + np.eye(n) * (damping * mean_diag)
        for dtype in (np.float32, np.float64):  # float64 only if needed
            factor = _reversed_inverse_factor(damped.astype(dtype))
            if factor is not None:
                return factor, damping
        if damping_step <= 0 or damping + damping_step > max_damping + 1e-12:
            raise NotPositiveDefiniteError(
                f"The Hessian is not positive definite even with damping "
                f"{damping:g} (fraction of its mean diagonal). Raise "
                "`hessian_damping`, enable `damping_auto_increase`, or use "
                "more (and more varied) calibration data."
            )
        damping = round(damping + damping_step, 10)


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """How `solve_gptq` quantizes one matrix (no data, only choices).

    Attributes:
        bits: 2, 3, 4 or 8.
        group_size: input columns per scale/zero group; -1 for one per row.
        symmetric: symmetric grid.
        activation_order: process columns by decreasing `diag(H)`.
        static_groups: with groups, compute all group parameters up front
            from the original weights.
        block_size: columns per lazy batch update.
        damping: fraction of `mean(diag(H))` added to the diagonal.
        damping_step: raise damping by this step while `H` is not positive
            definite (0: raise `NotPositiveDefiniteError` at once).
        mse: MSE search over shrunken ranges for each grid.
        alpha: weight of the asymmetric (GPTAQ) term (GPTAQ's 0.25).
    """

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    activation_order: bool = False
    static_groups: bool = False
    block_size: int = 128
    damping: float = 0.01
    damping_step: float = 0.0
    mse: bool = False
    alpha: float = 0.25

    def fit_grid(self, W):
        """RTN's `(scale, zero)` of `W` on this grid (`grid.group_params`)."""
        return grid.group_params(W, self.group_size, self.bits,
                                 self.symmetric, self.mse)


def _check_inputs(W, H, dXXT, group_params, group_size):
    """Raises ValueError for shapes that do not fit `W[out, in]`."""
    rows, columns = W.shape
    if H.shape != (columns, columns):
        raise ValueError(
            f"`H` must be [{columns}, {columns}] to match `W` {W.shape}, "
            f"but has shape {H.shape}."
        )
    if dXXT is not None and np.shape(dXXT) != (columns, columns):
        raise ValueError(
            f"`dXXT` must be [{columns}, {columns}] to match `W` {W.shape}, "
            f"but has shape {np.shape(dXXT)}."
        )
    if group_size != -1 and group_size > columns:
        raise ValueError(
            f"`group_size`={group_size} is larger than the {columns} input "
            "columns of this matrix. Use a smaller group_size or -1."
        )
    n_groups = grid.num_groups(group_size, columns)
    if group_params and np.shape(group_params[0]) != (rows, n_groups):
        raise ValueError(
            f"`group_params` must hold [{rows}, {n_groups}] scales "
            f"and zero points for `W` {W.shape} with group_size={group_size}.")


def _static_grid(W, H, dXXT, settings, group_params):
    """Zeroes dead columns (in place) and fits the grid fixed up front.

    As the reference: a per-row grid (`group_size=-1`) is fitted before
    dead columns are zeroed, static groups after (so a given RTN grid is
    used only when no column is dead). Returns `(scale, zero)`, or None
    when groups are fitted during the solve.
    """
    dead = np.diag(H) == 0
    if group_params is not None:
        group_params = tuple(np.asarray(p, np.float64) for p in group_params)
    if settings.group_size != -1 and dead.any():
        group_params = None  # refitted below with the dead columns zeroed
    static = None
    if settings.group_size == -1:
        static = group_params or settings.fit_grid(W)
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if dXXT is not None:
        dXXT[:, dead] = 0.0
    if settings.static_groups and settings.group_size != -1:
        static = group_params or settings.fit_grid(W)
    return static


@blas.single_threaded()
def solve_gptq(W, H, settings=SolverSettings(), *, dXXT=None,
               group_params=None):
    """Quantizes `W` with GPTQ, using the Hessian `H` of its inputs.

    Args:
        W: `[out, in]` float weights (rows are output channels).
        H: `[in, in]` Hessian `2/N sum x x^T` of the layer's inputs.
        settings: a `SolverSettings` (bits, groups, act-order, damping...).
        dXXT: optional `[in, in]` `2/N (X~ - X)^T X`, float-model inputs
            `X~` minus quantized-model inputs `X` (asymmetric calibration,
            see the module docstring); None for plain GPTQ.
        group_params: optional `(scale, zero)` from
            `settings.fit_grid(W)`, the grid of plain RTN, which a caller
            that also measures RTN already has. Used as the static grid
            (`static_groups` or `group_size=-1`) instead of fitting it
            again, unless `H` has dead columns (static groups are then
            fitted with those columns zeroed, as the reference does).

    Returns:
        A `SolverResult`.

    Raises:
        NotPositiveDefiniteError: see `inverse_cholesky`.
        ValueError: if shapes disagree or `group_size` exceeds the columns.

    Example:

    ```python
    res = solve_gptq(W, H, SolverSettings(bits=4, group_size=128))
    Q = dequantize(res.q, res.scale, res.zero, res.g_idx)
    ```
    """
    W = np.array(W, dtype=np.float32)
    H = np.array(H, dtype=np.float64)
    if dXXT is not None:
        dXXT = np.array(dXXT, dtype=np.float64)
    _check_inputs(W, H, dXXT, group_params, settings.group_size)
    columns = W.shape[1]
    static = _static_grid(W, H, dXXT, settings, group_params)
    perm = np.arange(columns)
    if settings.activation_order:
        perm = np.argsort(-np.diag(H), kind="stable")
        # np.take, not fancy indexing: the same values, 2x faster on
        # an 8960-column Hessian.
        W = np.take(W, perm, axis=1)
        H = np.take(np.take(H, perm, axis=0), perm, axis=1)
        if dXXT is not None:
            dXXT = np.take(np.take(dXXT, perm, axis=0), perm, axis=1)
    Hinv, damping = inverse_cholesky(H, settings.damping,
                                     settings.damping_step)
    P = None
    if dXXT is not None:
        P = _gptaq_term(dXXT, Hinv, settings.alpha, settings.block_size)
    natural_g_idx = grid.contiguous_g_idx(settings.group_size, columns)
    Qt, scale, zero = _quantize_columns(
        W, Hinv, P, static, natural_g_idx[perm] if static else natural_g_idx,
        settings)
    invperm = np.argsort(perm)
    q = np.take(Qt.T, invperm, axis=1)
    g_idx = natural_g_idx if static else natural_g_idx[invperm]
    return SolverResult(
        q=np.ascontiguousarray(q).astype(np.uint8),
        scale=scale.astype(np.float32),
        zero=zero.astype(np.uint8),
        g_idx=g_idx.astype(np.int32),
        damping=float(damping),
    )


def _gptaq_term(dXXT, Hinv, alpha, block_size):
    """GPTAQ's `P = alpha triu(dXXT Hinv^T, 1) Hinv`, float64 into float32.

    `Hinv` is upper triangular, so row block `[a, b)` of both products
    only needs columns and inner indices from `a` on (the terms left out
    are exact zeros): a third of the two dense products' work, one
    `block_size` of rows at a time. Only the order in which float64
    partial sums are added changes.
    """
    Hinv = Hinv.astype(np.float64)
    columns = Hinv.shape[0]
    P = np.zeros((columns, columns), dtype=np.float32)
    for a in range(0, columns, block_size):
        b = min(a + block_size, columns)
        T = dXXT[a:b, a:] @ Hinv[a:, a:].T  # dXXT Hinv^T, rows a:b, cols a:
        T[:, :b - a] = np.triu(T[:, :b - a], 1)
        P[a:b, a:] = alpha * T @ Hinv[a:, a:]
    return P


def _quantize_columns(W, Hinv, P, static, col_group, settings):
    """The reference's column loop with lazy batch updates.

    Args:
        W: `[out, in]` float32, columns in solve order.
        Hinv: upper Cholesky factor of the damped `H^-1`, same order.
        P: GPTAQ's `[in, in]` term, or None.
        static: `(scale, zero)` fixed up front, or None to fit each group
            when its first column comes up.
        col_group: the group of each column, in solve order.
        settings: the `SolverSettings`.

    Returns:
        `(Qt, scale, zero)`: float `[in, out]` levels in solve order, and
        `[out, groups]` float64 scales and zero points.
    """
    bits, symmetric, mse = settings.bits, settings.symmetric, settings.mse
    rows, columns = W.shape
    size = grid.group_columns(settings.group_size, columns)
    Wt = np.ascontiguousarray(W.T)  # [in, out]: column i of W is row i.
    Qt = np.empty((columns, rows), dtype=np.float32)
    if static is None:
        n_groups = grid.num_groups(settings.group_size, columns)
        scale = np.empty((rows, n_groups))
        zero = np.empty((rows, n_groups))
    else:
        scale, zero = static
    block_size = settings.block_size
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = Wt[i1:i2].copy()
        Err1 = np.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if P is not None:
            Wpre1 = np.empty_like(W1)  # each column as it was quantized
            P1 = P[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col_group[col]
            if static is None and col % size == 0:
                # As the reference: parameters from W as of this block's
                # start (earlier blocks' updates applied, this block's not).
                with timing.stage("grid"):
                    s, z = grid.find_params(Wt[col:col + size].T, bits,
                                            symmetric, mse)
                scale[:, g], zero[:, g] = s, z
            w = W1[i]
            q = grid.quantize(w, scale[:, g], zero[:, g], bits)
            Qt[col] = q
            err = (w - grid.dequantize(q, scale[:, g], zero[:, g])) / (
                Hinv1[i, i]
            )
            W1[i + 1:] -= Hinv1[i, i + 1:, None] * err.astype(np.float32)
            if P is not None:
                W1[i + 1:] += P1[i, i + 1:, None] * w
                Wpre1[i] = w
            Err1[i] = err
        Wt[i2:] -= Hinv[i1:i2, i2:].T @ Err1
        if P is not None:
            Wt[i2:] += P[i1:i2, i2:].T @ Wpre1
    return Qt, scale, zero
