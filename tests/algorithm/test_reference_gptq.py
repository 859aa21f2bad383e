"""Sanity tests of the float64 GPTQ oracle in `reference_gptq.py`.

The oracle judges the production solver, so it is itself pinned here by
properties that do not come from reading its own code: GPTQ beats
round-to-nearest on correlated inputs, equals it when inputs are
uncorrelated, equals a naive Optimal Brain Quantizer that re-inverts the
Hessian after every column, does not depend on the lazy block size, and
keeps every weight on its group's grid.
"""

import numpy as np
import pytest

from helpers.reference_gptq import find_params
from helpers.reference_gptq import output_error
from helpers.reference_gptq import reference_gptq
from helpers.reference_gptq import reference_rtn


def correlated_problem(seed, out, inn, tokens=2048):
    """Returns `(W, H)`: Gaussian W and `H = 2/N X^T X` of mixed inputs.

    X is white noise times a fixed mixing matrix (a random rotation with
    singular values from 3 down to 0.1, plus a shared component), so the
    inputs are strongly correlated while H stays well conditioned
    (condition number about 1e3 to 1e4).
    """
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((inn, inn)))
    mixing = (U * np.geomspace(3.0, 0.1, inn)) @ U.T + 0.3 / np.sqrt(inn)
    X = rng.standard_normal((tokens, inn)) @ mixing
    W = rng.standard_normal((out, inn))
    return W, 2.0 / tokens * X.T @ X


def assert_on_grid(res, bits, columns):
    """Checks levels, zero points, g_idx and `Q` of a result dict agree."""
    q, scale, zero, g_idx = res["q"], res["scale"], res["zero"], res["g_idx"]
    maxq = 2**bits - 1
    assert q.dtype == np.int64 and zero.dtype == np.int64 and g_idx.dtype == np.int64
    assert q.min() >= 0 and q.max() <= maxq
    assert zero.min() >= 0 and zero.max() <= maxq
    assert np.all(scale > 0)
    assert g_idx.shape == (columns,)
    assert g_idx.min() >= 0 and g_idx.max() == scale.shape[1] - 1
    np.testing.assert_array_equal(res["Q"], (q - zero[:, g_idx]) * scale[:, g_idx])


def naive_obq(W, H, bits, group_size, damping=0.01):
    """GPTQ without any of its shortcuts, for cross-checking.

    Columns go in natural order; after each one, the remaining weights get
    the Optimal Brain Surgeon update computed from a freshly inverted
    Hessian of the remaining columns: `w_F -= (w_j - q_j) / [H_F^-1]_jj *
    [H_F^-1]_j,F`. Groups are fitted from the fully updated weights.
    """
    W = np.array(W, dtype=np.float64)
    columns = W.shape[1]
    H = H + damping * np.mean(np.diag(H)) * np.eye(columns)
    maxq = 2**bits - 1
    scale, zero = find_params(W, bits, symmetric=False)
    Q = np.zeros_like(W)
    for j in range(columns):
        if group_size != -1 and j % group_size == 0:
            scale, zero = find_params(W[:, j:j + group_size], bits, symmetric=False)
        Q[:, j] = scale * (np.clip(np.round(W[:, j] / scale) + zero, 0, maxq) - zero)
        remaining_inv = np.linalg.inv(H[j:, j:])
        W[:, j:] -= np.outer((W[:, j] - Q[:, j]) / remaining_inv[0, 0], remaining_inv[0])
    return Q


@pytest.mark.parametrize(
    "bits, group_size, symmetric, activation_order, static_groups",
    [
        (4, 128, False, False, False),
        (4, -1, False, False, False),
        (4, 128, True, True, False),
        (3, 64, False, True, True),
        (2, 32, False, False, False),
        (8, 128, False, False, True),
    ],
)
def test_gptq_beats_rtn_on_correlated_inputs(
    bits, group_size, symmetric, activation_order, static_groups
):
    """On correlated inputs GPTQ's output error is well below RTN's."""
    W, H = correlated_problem(bits * 100 + group_size, out=64, inn=256)
    res = reference_gptq(W, H, bits, group_size, symmetric, activation_order, static_groups)
    rtn = reference_rtn(W, bits, group_size, symmetric)
    ratio = output_error(W, res["Q"], H) / output_error(W, rtn["Q"], H)
    assert ratio < 0.6, ratio
    assert_on_grid(res, bits, 256)


def test_uncorrelated_inputs_give_rtn():
    """With a diagonal H no error is propagated, so GPTQ equals RTN."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((24, 300))
    H = np.diag(rng.uniform(0.5, 2.0, 300))
    for group_size in (128, -1):
        for symmetric in (False, True):
            res = reference_gptq(W, H, 4, group_size, symmetric)
            rtn = reference_rtn(W, 4, group_size, symmetric)
            for key in ("q", "scale", "zero", "g_idx", "Q"):
                np.testing.assert_array_equal(res[key], rtn[key])
    res = reference_gptq(W, H, 4, 64, activation_order=True, static_groups=True)
    np.testing.assert_array_equal(res["Q"], reference_rtn(W, 4, 64)["Q"])


@pytest.mark.parametrize("group_size, block_size", [(-1, 5), (-1, 1), (12, 4), (12, 12)])
def test_matches_naive_optimal_brain_quantizer(group_size, block_size):
    """Cholesky rows plus lazy batches reproduce the per-column OBS update."""
    W, H = correlated_problem(7, out=9, inn=36, tokens=500)
    res = reference_gptq(W, H, bits=3, group_size=group_size, block_size=block_size)
    np.testing.assert_allclose(res["Q"], naive_obq(W, H, 3, group_size), rtol=0, atol=1e-9)


@pytest.mark.parametrize("group_size", [-1, 32])
@pytest.mark.parametrize("activation_order", [False, True])
def test_block_size_does_not_change_result(group_size, activation_order):
    """Lazy batching is exact when each group boundary is a block start."""
    W, H = correlated_problem(3, out=16, inn=96)
    results = [
        reference_gptq(W, H, 4, group_size, activation_order=activation_order, block_size=b)["Q"]
        for b in (1, 8, 32)
    ]
    for Q in results[1:]:
        np.testing.assert_allclose(Q, results[0], rtol=0, atol=1e-10)


def test_activation_order_groups_follow_quantization_order():
    """Dynamic act-order groups are runs of the permuted order."""
    W, H = correlated_problem(5, out=8, inn=100)
    res = reference_gptq(W, H, 4, group_size=32, activation_order=True)
    perm = res["perm"]
    np.testing.assert_array_equal(perm, np.argsort(-np.diag(H), kind="stable"))
    assert not np.array_equal(perm, np.arange(100))
    np.testing.assert_array_equal(res["g_idx"][perm], np.arange(100) // 32)
    assert res["scale"].shape == (8, 4)
    assert_on_grid(res, 4, 100)


def test_static_groups_with_activation_order():
    """Static groups are RTN's groups of the original W, in natural order."""
    W, H = correlated_problem(6, out=8, inn=100)
    res = reference_gptq(W, H, 4, group_size=32, activation_order=True, static_groups=True)
    rtn = reference_rtn(W, 4, group_size=32)
    np.testing.assert_array_equal(res["g_idx"], np.arange(100) // 32)
    np.testing.assert_array_equal(res["scale"], rtn["scale"])
    np.testing.assert_array_equal(res["zero"], rtn["zero"])
    assert not np.array_equal(res["Q"], rtn["Q"])
    assert_on_grid(res, 4, 100)


@pytest.mark.parametrize("static_groups", [False, True])
@pytest.mark.parametrize("group_size", [-1, 16])
def test_dead_columns_give_zero_weights(group_size, static_groups):
    """Inputs that are always zero have their weights quantized to zero."""
    W, H = correlated_problem(8, out=10, inn=40)
    dead = [0, 7, 39]
    H[dead, :] = 0
    H[:, dead] = 0
    for activation_order in (False, True):
        res = reference_gptq(W, H, 4, group_size, activation_order=activation_order,
                             static_groups=static_groups, block_size=16)
        np.testing.assert_array_equal(res["Q"][:, dead], 0)
        fixed_diag = np.where(np.diag(H) == 0, 1.0, np.diag(H))
        assert res["damp"] == pytest.approx(0.01 * np.mean(fixed_diag), rel=1e-12)
        g = res["g_idx"][dead]
        np.testing.assert_array_equal(res["q"][:, dead], res["zero"][:, g])
        assert np.all(np.isfinite(res["Q"]))
        assert_on_grid(res, 4, 40)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 1), (2, 2)])
@pytest.mark.parametrize("group_size", [128, -1, 1])
def test_tiny_shapes(shape, group_size):
    """Single rows, single columns and groups larger than the matrix work."""
    W, H = correlated_problem(9, out=shape[0], inn=shape[1], tokens=64)
    res = reference_gptq(W, H, 4, group_size, activation_order=True)
    assert res["Q"].shape == shape
    assert_on_grid(res, 4, shape[1])


@pytest.mark.parametrize("block_size", [128, 48, 7])
def test_width_not_divisible_by_group_size(block_size):
    """A last, shorter group gets its own parameters."""
    W, H = correlated_problem(10, out=12, inn=200)
    res = reference_gptq(W, H, 4, group_size=128, block_size=block_size)
    assert res["scale"].shape == (12, 2)
    np.testing.assert_array_equal(np.bincount(res["g_idx"]), [128, 72])
    assert_on_grid(res, 4, 200)


def test_symmetric_zero_point_and_damping():
    """Symmetric grids sit at zero point 2**(bits-1); damp is 1% of mean diag."""
    W, H = correlated_problem(11, out=8, inn=64)
    res = reference_gptq(W, H, 3, group_size=16, symmetric=True, damping=0.01)
    np.testing.assert_array_equal(res["zero"], 4)
    assert res["damp"] == pytest.approx(0.01 * np.mean(np.diag(H)))
    assert_on_grid(res, 3, 64)


def test_grid_contains_zero_and_all_zero_rows():
    """An all-positive row still has zero on its grid; a zero row gets [-1, 1]."""
    W = np.array([[0.5, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    res = reference_rtn(W, bits=2, group_size=-1)
    np.testing.assert_allclose(res["scale"][:, 0], [1.0, 2.0 / 3.0])
    np.testing.assert_array_equal(res["zero"][:, 0], [0, 2])
    np.testing.assert_array_equal(res["Q"][1], 0)
    gptq = reference_gptq(W, np.eye(4), bits=2, group_size=-1)
    np.testing.assert_array_equal(gptq["Q"], res["Q"])


def test_mse_search_never_hurts_its_own_norm():
    """The MSE range search lowers (or keeps) `sum |w - Q(w)|**2.4` per row."""
    W, H = correlated_problem(12, out=32, inn=128)
    W[:, 5] *= 8.0  # an outlier column makes shrinking worthwhile
    plain = reference_rtn(W, 3, group_size=64)
    searched = reference_rtn(W, 3, group_size=64, mse=True)
    norm = lambda Q: np.sum(np.abs(W - Q) ** 2.4, axis=1)
    assert np.all(norm(searched["Q"]) <= norm(plain["Q"]) + 1e-12)
    assert np.any(searched["scale"] < plain["scale"])
    res = reference_gptq(W, H, 3, group_size=64, mse=True)
    assert_on_grid(res, 3, 128)
    rtn_error = output_error(W, searched["Q"], H)
    assert output_error(W, res["Q"], H) < rtn_error


def test_mse_search_picks_best_shrink_factor():
    """Each row's grid is the best of the ranges p * [xmin, xmax], p = 1 .. 0.21."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((6, 40)) * rng.uniform(0.5, 3.0, (6, 1))
    x[:, 0] *= 6.0
    scale, zero = find_params(x, bits=3, symmetric=False, mse=True)
    for row, (s, z) in zip(x, zip(scale, zero)):
        xmin, xmax = min(row.min(), 0.0), max(row.max(), 0.0)
        candidates = []
        for p in 1.0 - np.arange(80) / 100.0:
            cs = (p * xmax - p * xmin) / 7
            cz = np.round(-p * xmin / cs)
            Q = cs * (np.clip(np.round(row / cs) + cz, 0, 7) - cz)
            candidates.append((np.sum(np.abs(row - Q) ** 2.4), cs, cz))
        best = min(candidates, key=lambda c: c[0])
        assert (s, z) == pytest.approx(best[1:], rel=1e-12)
        assert s < (xmax - xmin) / 7
