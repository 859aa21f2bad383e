"""Test oracle: the reference GPTQ algorithm in plain float64 numpy.

An independent re-implementation of IST-DASLab/gptq (`gptq.py`,
`GPTQ.fasterquant`; `quant.py`, `Quantizer.find_params` and `quantize`),
written to be read side by side with the reference, not to be fast. The
production solver (`keras_gptq.solver`) is checked against it; nothing here
imports `keras_gptq`.

Conventions, as in the reference:
    W  `[out, in]`: rows are output channels, columns are input features.
    H  `[in, in]`: the layer Hessian `2/N * X^T X`.
    The quantizer is per output channel (`perchannel=True`, as in every
    reference model script); a "group" is a run of input columns sharing one
    scale and zero point per row.

Reference details that are easy to miss, all reproduced on purpose:
    * Per-channel mode (`group_size=-1`) fits the grid to W BEFORE dead
      columns are zeroed (`find_params` runs before the dead-column step).
    * Static groups are fitted AFTER dead columns are zeroed, from the
      unpermuted W, one per natural run of `group_size` input columns.
    * Dynamic groups (the default) are fitted when the column index reaches a
      group boundary, from `W[:, c:c + group_size]`: the matrix holding the
      lazy updates of all finished blocks but not the in-block updates of
      the current block. When `block_size` divides `group_size` every
      boundary is a block start, so the fit sees fully updated weights.
    * Act-order sorts by descending diag(H) after the dead-column fix;
      ties keep the natural order (a stable sort; torch's is unspecified).
"""

import numpy as np

# Reference MSE grid search (quant.py `configure` defaults).
MSE_NORM = 2.4
MSE_GRID = 100
MSE_MAX_SHRINK = 0.8


def find_params(x, bits, symmetric, mse=False):
    """Fits one grid per row of `x`, as `Quantizer.find_params(x, weight=True)`.

    Args:
        x: `[rows, cols]` float array (a whole W or one group of columns).
        bits: grid bits; levels are `0 .. 2**bits - 1`.
        symmetric: zero point fixed at `(maxq + 1) / 2`.
        mse: also try the ranges `p * [xmin, xmax]`, `p = 1, 0.99, ..., 0.21`,
            keeping per row the one with the least `sum |x - Q(x)|**2.4`.

    Returns:
        `(scale, zero)`: float64 `[rows]` arrays; `zero` holds integers.

    Example:
        >>> find_params(np.array([[-1.0, 2.0]]), bits=2, symmetric=False)
        (array([1.]), array([1.]))
    """
    x = np.asarray(x, dtype=np.float64)
    maxq = 2**bits - 1
    # The range always contains zero.
    xmin = np.minimum(x.min(axis=1), 0.0)
    xmax = np.maximum(x.max(axis=1), 0.0)
    if symmetric:
        xmax = np.maximum(np.abs(xmin), xmax)
        negative = xmin < 0
        xmin[negative] = -xmax[negative]
    all_zero = (xmin == 0) & (xmax == 0)
    xmin[all_zero] = -1.0
    xmax[all_zero] = +1.0

    scale = (xmax - xmin) / maxq
    if symmetric:
        zero = np.full_like(scale, (maxq + 1) / 2)
    else:
        zero = np.round(-xmin / scale)

    if mse:
        best = np.full(x.shape[0], np.inf)
        for i in range(int(MSE_MAX_SHRINK * MSE_GRID)):
            p = 1 - i / MSE_GRID
            xmin1 = p * xmin
            xmax1 = p * xmax
            scale1 = (xmax1 - xmin1) / maxq
            zero1 = np.round(-xmin1 / scale1) if not symmetric else zero
            q = quantize(x, scale1[:, None], zero1[:, None], maxq)
            Q = dequantize(q, scale1[:, None], zero1[:, None])
            err = np.sum(np.abs(Q - x) ** MSE_NORM, axis=1)
            better = err < best
            best[better] = err[better]
            scale[better] = scale1[better]
            zero[better] = zero1[better]
    return scale, zero


def quantize(x, scale, zero, maxq):
    """Integer levels `clamp(round(x / scale) + zero, 0, maxq)` (float64).

    Rounding is half to even, as `torch.round`.
    """
    return np.clip(np.round(x / scale) + zero, 0, maxq)


def dequantize(q, scale, zero):
    """Weights on the grid: `scale * (q - zero)`."""
    return scale * (q - zero)


def upper_cholesky_of_inverse(H):
    """Returns U, upper triangular, with `U^T U = inverse(H)`.

    The reference's three steps: `L = cholesky(H)`; `cholesky_inverse(L)`,
    i.e. `inverse(H) = L^-T L^-1`; then `cholesky(inverse(H), upper=True)`.
    """
    L = np.linalg.cholesky(H)
    L_inv = np.linalg.solve(L, np.eye(H.shape[0]))
    H_inv = L_inv.T @ L_inv
    return np.linalg.cholesky(H_inv).T


def reference_gptq(W, H, bits=4, group_size=128, symmetric=False, activation_order=False,
                   static_groups=False, block_size=128, damping=0.01, mse=False,
                   dXXT=None, alpha=0.25):
    """GPTQ on one matrix, following `GPTQ.fasterquant` line by line.

    Args:
        W: `[out, in]` float array (rows = output channels).
        H: `[in, in]` Hessian `2/N * X^T X`; not modified.
        bits: grid bits.
        group_size: input columns per group, or -1 for one grid per row.
        symmetric, mse: grid options, see `find_params`.
        activation_order: quantize columns in order of descending diag(H).
        static_groups: fit every group up front from the original W; with
            act-order each column keeps the group of its original index.
        block_size: columns per lazy batch update (`blocksize`).
        damping: fraction of mean(diag(H)) added to the diagonal (`percdamp`).
        dXXT: GPTAQ's `2/N (X~ - X)^T X` (float minus quantized inputs, times
            quantized inputs), or None. Follows `GPTAQ.fasterquant` of
            Intelligent-Computing-Lab-Yale/GPTAQ, except that the lazy
            update across blocks uses each column as it was when quantized
            (the column-by-column algorithm), not its quantized value.
        alpha: GPTAQ's weight of the asymmetric term.

    Returns:
        dict with `q` int64 `[out, in]` levels in `[0, 2**bits - 1]`;
        `scale` float64 and `zero` int64 `[out, n_groups]`; `g_idx` int64
        `[in]`, the group of each original column; `Q` float64 `[out, in]`
        `= (q - zero[:, g_idx]) * scale[:, g_idx]`; `perm` (quantization
        order of the original columns) and `damp` (absolute value added).

    Example:
        >>> res = reference_gptq(W, 2 / len(X) * X.T @ X, bits=4, group_size=128)
    """
    W = np.array(W, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    rows, columns = W.shape
    maxq = 2**bits - 1

    # The quantizer is first fitted to the whole W (per-channel mode uses it).
    scale, zero = find_params(W, bits, symmetric, mse)

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if dXXT is not None:
        dXXT = np.array(dXXT, dtype=np.float64)
        dXXT[:, dead] = 0

    groups = []
    if static_groups and group_size != -1:
        for i in range(0, columns, group_size):
            groups.append(find_params(W[:, i:i + group_size], bits, symmetric, mse))

    perm = np.arange(columns)
    if activation_order:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
        if dXXT is not None:
            dXXT = dXXT[perm][:, perm]
    invperm = np.argsort(perm)

    damp = damping * np.mean(np.diag(H))
    H[np.arange(columns), np.arange(columns)] += damp
    Hinv = upper_cholesky_of_inverse(H)
    P = np.zeros_like(H)
    if dXXT is not None:
        P = alpha * np.triu(dXXT @ Hinv.T, 1) @ Hinv

    Q = np.zeros_like(W)
    q = np.zeros_like(W)
    fitted = []  # dynamic groups in the order they are fitted
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        count = i2 - i1

        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Wq1 = np.zeros_like(W1)  # each column as it was when quantized
        Hinv1 = Hinv[i1:i2, i1:i2]
        P1 = P[i1:i2, i1:i2]

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]

            if group_size != -1:
                if not static_groups:
                    if (i1 + i) % group_size == 0:
                        scale, zero = find_params(
                            W[:, (i1 + i):(i1 + i + group_size)], bits, symmetric, mse)
                        fitted.append((scale, zero))
                else:
                    scale, zero = groups[perm[i1 + i] // group_size]

            q[:, i1 + i] = quantize(w, scale, zero, maxq)
            Q1[:, i] = dequantize(q[:, i1 + i], scale, zero)

            err1 = (w - Q1[:, i]) / d
            Wq1[:, i] = w
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:]) - np.outer(Wq1[:, i], P1[i, i:])
            Err1[:, i] = err1

        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:] - Wq1 @ P[i1:i2, i2:]

    if group_size == -1:
        params, g_idx = [(scale, zero)], np.zeros(columns, dtype=np.int64)
    elif static_groups:
        params, g_idx = groups, np.arange(columns) // group_size
    else:
        params, g_idx = fitted, (np.arange(columns) // group_size)[invperm]

    return {
        "q": q[:, invperm].astype(np.int64),
        "scale": np.stack([s for s, _ in params], axis=1),
        "zero": np.stack([z for _, z in params], axis=1).astype(np.int64),
        "g_idx": g_idx.astype(np.int64),
        "Q": Q[:, invperm],
        "perm": perm,
        "damp": float(damp),
    }


def reference_rtn(W, bits=4, group_size=128, symmetric=False, mse=False):
    """Round-to-nearest on the same grid: each natural group fitted to W.

    Args:
        W: `[out, in]` float array.
        bits, symmetric, mse: as for `find_params`.
        group_size: input columns per group, or -1 for one grid per row.

    Returns:
        dict with `q`, `scale`, `zero`, `g_idx`, `Q` as `reference_gptq`.
    """
    W = np.asarray(W, dtype=np.float64)
    columns = W.shape[1]
    size = columns if group_size == -1 else group_size
    g_idx = np.arange(columns) // size
    params = [find_params(W[:, i:i + size], bits, symmetric, mse)
              for i in range(0, columns, size)]
    scale = np.stack([s for s, _ in params], axis=1)
    zero = np.stack([z for _, z in params], axis=1)
    q = quantize(W, scale[:, g_idx], zero[:, g_idx], 2**bits - 1)
    return {
        "q": q.astype(np.int64),
        "scale": scale,
        "zero": zero.astype(np.int64),
        "g_idx": g_idx.astype(np.int64),
        "Q": dequantize(q, scale[:, g_idx], zero[:, g_idx]),
    }


def output_error(W, Q, H):
    """The layer's output error `tr((W - Q) H (W - Q)^T)`, in float64.

    With `H = 2/N X^T X` this is `2/N ||X W^T - X Q^T||_F^2`.
    """
    D = np.asarray(W, dtype=np.float64) - np.asarray(Q, dtype=np.float64)
    return float(np.sum((D @ np.asarray(H, dtype=np.float64)) * D))
