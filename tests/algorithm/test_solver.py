"""The production solver against the float64 reference oracle."""

import itertools

import numpy as np
import pytest

from keras_gptq.algorithm import grid
from keras_gptq.algorithm import solver
from helpers.reference_gptq import find_params as reference_find_params
from helpers.reference_gptq import reference_gptq
from helpers.solving import solve


def _problem(rows, columns, seed, tokens=2048):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((columns, columns)) / np.sqrt(columns)
    X = rng.standard_normal((tokens, columns)) @ (mix + np.eye(columns))
    H = 2.0 / tokens * X.T @ X
    W = rng.standard_normal((rows, columns)) * 0.05
    return W.astype(np.float32), H


def _error(W, Q, H):
    return solver.output_error(W, Q, H)


COMBOS = list(itertools.product(
    [2, 3, 4, 8],                 # bits
    [-1, 32],                     # group_size
    [False, True],                # symmetric
    [(False, False), (True, False), (True, True)],  # act-order, static
))


@pytest.mark.parametrize("bits,group,sym,order", COMBOS)
def test_matches_reference(bits, group, sym, order):
    act, static = order
    W, H = _problem(48, 96, seed=bits * 7 + group)
    kwargs = dict(bits=bits, group_size=group, symmetric=sym,
                  activation_order=act, static_groups=static, block_size=32)
    res = solve(W, H, damping=0.01, **kwargs)
    ref = reference_gptq(W.astype(np.float64), H, damping=0.01, **kwargs)
    Q = solver.dequantize(res.q, res.scale, res.zero, res.g_idx)
    # Well-conditioned problem: float32 vs float64 rounding can flip a
    # handful of levels that sit on a rounding boundary, nothing more.
    assert np.mean(res.q == ref["q"]) >= 0.995
    np.testing.assert_array_equal(res.g_idx, ref["g_idx"])
    assert _error(W, Q, H) <= 1.01 * _error(W, ref["Q"], H)


@pytest.mark.parametrize("seed", range(6))
def test_error_within_one_percent_of_reference_on_random_problems(seed):
    W, H = _problem(64, 200, seed=100 + seed)
    kwargs = dict(bits=4, group_size=64, activation_order=seed % 2 == 0)
    res = solve(W, H, **kwargs)
    ref = reference_gptq(W.astype(np.float64), H, **kwargs)
    Q = solver.dequantize(res.q, res.scale, res.zero, res.g_idx)
    assert _error(W, Q, H) <= 1.01 * _error(W, ref["Q"], H)


def test_beats_rtn_clearly_on_correlated_inputs():
    W, H = _problem(128, 256, seed=3)
    res = solve(W, H, bits=3, group_size=64)
    Q = solver.dequantize(res.q, res.scale, res.zero, res.g_idx)
    rtn = solver.dequantize(*grid.rtn_quantize(W, 3, 64, False))
    assert _error(W, Q, H) < 0.7 * _error(W, rtn, H)


def test_hinv_is_upper_cholesky_of_damped_inverse():
    _, H = _problem(4, 64, seed=1)
    Hinv, used = solver.inverse_cholesky(H, 0.01)
    damped = H + np.eye(64) * 0.01 * np.mean(np.diag(H))
    Hinv = Hinv.astype(np.float64)  # float32 factorisation
    inverse = np.linalg.inv(damped)
    np.testing.assert_allclose(Hinv.T @ Hinv, inverse,
                               atol=1e-5 * np.abs(inverse).max())
    assert np.allclose(Hinv, np.triu(Hinv)) and used == 0.01


def test_dead_columns_are_zero_and_finite():
    W, H = _problem(16, 40, seed=5)
    H[:, [3, 17]] = 0
    H[[3, 17], :] = 0
    res = solve(W, H, bits=4, group_size=8)
    Q = solver.dequantize(res.q, res.scale, res.zero, res.g_idx)
    assert np.all(np.isfinite(Q))
    np.testing.assert_allclose(Q[:, [3, 17]], 0, atol=1e-7)


def test_indefinite_hessian_raises_damping_and_reports_it():
    W, H = _problem(8, 32, seed=6)
    H = H - np.eye(32) * 1.05 * np.linalg.eigvalsh(H).min() \
        - np.eye(32) * 0.02 * np.mean(np.diag(H))  # smallest eigenvalue < 0
    with pytest.raises(solver.NotPositiveDefiniteError, match="damping"):
        solve(W, H, group_size=8, damping=0.01, damping_step=0.0)
    res = solve(W, H, group_size=8, damping=0.01,
                            damping_step=0.01)
    assert res.damping > 0.01
    assert np.all(np.isfinite(solver.dequantize(res.q, res.scale, res.zero,
                                                res.g_idx)))


def test_singular_hessian_from_too_few_tokens_is_solved():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 64))        # rank 10 < 64 columns
    H = 2 / 10 * X.T @ X
    W = rng.standard_normal((16, 64)).astype(np.float32)
    res = solve(W, H, bits=4, group_size=16)
    assert np.all(np.isfinite(res.scale))


def test_zero_points_in_range_for_all_positive_group():
    # Keras 3.15 wraps such zero points differently per backend; ours stay
    # in [0, maxq] because the range always contains zero.
    W = np.abs(np.random.default_rng(0).standard_normal((8, 32))) + 1.0
    res = solve(W.astype(np.float32), np.eye(32), bits=4,
                            group_size=16)
    assert res.zero.min() >= 0 and res.zero.max() <= 15
    np.testing.assert_array_equal(res.zero, 0)


def test_shape_errors():
    with pytest.raises(ValueError, match="H"):
        solve(np.zeros((4, 8)), np.eye(7))
    with pytest.raises(ValueError, match="group_size"):
        solve(np.zeros((4, 8)), np.eye(8), group_size=16)


@pytest.mark.parametrize("bits,sym", [(2, False), (3, True), (4, False),
                                      (8, False)])
def test_mse_search_matches_reference_grid(bits, sym):
    # The production search evaluates candidates in float32; the reference
    # in float64. They must pick the same grid for (almost) every row, and
    # never a worse one by more than float32 rounding.
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((400, 64)) * 0.02).astype(np.float32)
    w[:, 0] *= 8.0  # outliers make shrinking worthwhile
    scale, zero = grid.find_params(w, bits, sym, mse=True)
    ref_scale, ref_zero = reference_find_params(w, bits, sym, mse=True)
    assert np.mean(np.isclose(scale, ref_scale, rtol=1e-12)) >= 0.99
    assert np.mean(zero == ref_zero) >= 0.99
    plain, _ = grid.find_params(w, bits, sym, mse=False)
    if bits <= 4:  # at 8 bits the full range is already best
        assert np.mean(scale < plain) > 0.5  # the search really shrinks

    def norm_error(s, z):
        q = grid.quantize(w, s[:, None], z[:, None], bits)
        d = grid.dequantize(q, s[:, None], z[:, None]) - w.astype(np.float64)
        return np.sum(np.abs(d) ** 2.4, axis=1)

    np.testing.assert_array_less(
        norm_error(scale, zero), norm_error(ref_scale, ref_zero) * 1.0001
        + 1e-30)


@pytest.mark.parametrize("mse", [False, True])
@pytest.mark.parametrize("group", [16, 24, -1])
def test_group_params_equal_one_fit_per_group(group, mse):
    # All groups fitted in one call (and the MSE search split over threads)
    # must give exactly what fitting each group on its own gives, the
    # shorter last group included (40 columns in groups of 24).
    rng = np.random.default_rng(group + 2)
    w = (rng.standard_normal((70, 40)) * 0.02).astype(np.float32)
    w[:, 3] *= 6.0
    scale, zero = grid.group_params(w, group, 3, False, mse)
    size = 40 if group == -1 else group
    for g, start in enumerate(range(0, 40, size)):
        s, z = grid.find_params(w[:, start:start + size], 3, False, mse)
        np.testing.assert_array_equal(scale[:, g], s)
        np.testing.assert_array_equal(zero[:, g], z)


def test_threaded_mse_search_equals_one_thread(monkeypatch):
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((301, 64)) * 0.02).astype(np.float32)
    w[:, 0] *= 8.0
    one = grid.find_params(w, 4, False, mse=True)
    monkeypatch.setattr(grid, "_MSE_THREAD_MIN_ELEMENTS", 16)
    monkeypatch.setattr(grid, "cpu_count", lambda: 3)
    three = grid.find_params(w, 4, False, mse=True)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("group,static", [(32, True), (32, False), (-1, False)])
def test_given_group_params_give_the_same_result(group, static):
    W, H = _problem(24, 96, seed=11)
    kwargs = dict(bits=4, group_size=group, activation_order=True,
                  static_groups=static, mse=True)
    params = grid.group_params(W, group, 4, False, mse=True)
    fitted = solve(W, H, **kwargs)
    given = solve(W, H, group_params=params, **kwargs)
    for name in ("q", "scale", "zero", "g_idx"):
        np.testing.assert_array_equal(getattr(given, name),
                                      getattr(fitted, name))
    q, s, z, _ = grid.rtn_quantize(W, 4, group, False, mse=True,
                                   params=params)
    ref = grid.rtn_quantize(W, 4, group, False, mse=True)
    for a, b in zip((q, s, z), ref):
        np.testing.assert_array_equal(a, b)


def test_given_group_params_are_refitted_around_dead_columns():
    # Static groups are fitted with dead columns zeroed (as the reference
    # does), so a grid fitted on the raw W must not be used there.
    W, H = _problem(24, 64, seed=12)
    H[5, :] = H[:, 5] = 0.0
    W[:, 5] = 1.0  # a large weight on a dead input
    kwargs = dict(bits=4, group_size=32, static_groups=True)
    raw = grid.group_params(W, 32, 4, False)
    given = solve(W, H, group_params=raw, **kwargs)
    fitted = solve(W, H, **kwargs)
    np.testing.assert_array_equal(given.scale, fitted.scale)
    assert not np.allclose(given.scale[:, 0], raw[0][:, 0])


def test_group_params_shape_is_checked():
    W, H = _problem(8, 64, seed=1)
    with pytest.raises(ValueError, match="group_params"):
        solve(W, H, group_size=32, static_groups=True,
                          group_params=(np.ones((8, 3)), np.zeros((8, 3))))


def _asymmetric_problem(rows, columns, seed, tokens=2048, drift=0.2):
    """Quantized-model inputs `X` and float-model inputs `X~ = X + drift`,
    as a layer deep in a quantized model sees them; returns
    `(W, H, dXXT, X, X~)`."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((columns, columns)) / np.sqrt(columns)
    X_float = rng.standard_normal((tokens, columns)) @ (mix + np.eye(columns))
    noise = rng.standard_normal((tokens, columns)) @ mix
    X = X_float + drift * noise
    H = 2.0 / tokens * X.T @ X
    dXXT = 2.0 / tokens * (X_float - X).T @ X
    W = (rng.standard_normal((rows, columns)) * 0.05).astype(np.float32)
    return W, H, dXXT, X, X_float


@pytest.mark.parametrize("bits,group,act,static", [
    (4, 32, False, False), (4, 32, True, False), (3, 32, True, True),
    (4, -1, False, False), (2, 32, True, False)])
def test_asymmetric_matches_reference(bits, group, act, static):
    W, H, dXXT, _, _ = _asymmetric_problem(40, 96, seed=bits + group)
    kwargs = dict(bits=bits, group_size=group, activation_order=act,
                  static_groups=static, block_size=32, dXXT=dXXT)
    res = solve(W, H, **kwargs)
    ref = reference_gptq(W.astype(np.float64), H, **kwargs)
    assert np.mean(res.q == ref["q"]) >= 0.995
    np.testing.assert_array_equal(res.g_idx, ref["g_idx"])


def test_asymmetric_lazy_batches_equal_column_by_column():
    """The reference with one column a block is the plain sequential
    algorithm; lazy batches of 32 must give the same levels."""
    W, H, dXXT, _, _ = _asymmetric_problem(32, 96, seed=5)
    kwargs = dict(bits=4, group_size=32, dXXT=dXXT, activation_order=True)
    one = reference_gptq(W.astype(np.float64), H, block_size=1, **kwargs)
    lazy = reference_gptq(W.astype(np.float64), H, block_size=32, **kwargs)
    np.testing.assert_array_equal(one["q"], lazy["q"])
    np.testing.assert_allclose(one["Q"], lazy["Q"])


def test_zero_asymmetry_is_plain_gptq():
    W, H = _problem(32, 64, seed=9)
    plain = solve(W, H, bits=4, group_size=32)
    asym = solve(W, H, bits=4, group_size=32,
                             dXXT=np.zeros_like(H))
    np.testing.assert_array_equal(plain.q, asym.q)
    np.testing.assert_array_equal(plain.scale, asym.scale)


@pytest.mark.parametrize("seed", range(4))
def test_asymmetric_calibration_tracks_the_float_output(seed):
    """GPTAQ's objective: `Q X` close to `W X~` (the float layer on the
    float model's inputs). It must beat plain GPTQ there clearly."""
    W, H, dXXT, X, X_float = _asymmetric_problem(64, 128, seed=20 + seed,
                                                  drift=0.5)
    target = X_float @ W.T.astype(np.float64)

    def misfit(res):
        Q = solver.dequantize(res.q, res.scale, res.zero, res.g_idx)
        return float(np.mean((X @ Q.T.astype(np.float64) - target) ** 2))

    kwargs = dict(bits=4, group_size=32, activation_order=True)
    plain = misfit(solve(W, H, **kwargs))
    asym = misfit(solve(W, H, dXXT=dXXT, **kwargs))
    full = misfit(solve(W, H, dXXT=dXXT, alpha=1.0, **kwargs))
    assert full < 0.95 * plain and asym < 0.985 * plain


def test_asymmetric_shape_is_checked():
    W, H = _problem(8, 16, seed=1)
    with pytest.raises(ValueError, match="`dXXT` must be \\[16, 16\\]"):
        solve(W, H, group_size=-1, dXXT=np.zeros((8, 8)))
