"""`keras_gptq.utils.blas`: one BLAS thread inside, the old count after."""

import numpy as np
import pytest
import threadpoolctl

from keras_gptq.algorithm import solver
from keras_gptq.utils import blas

pytestmark = pytest.mark.one_backend  # numpy/scipy only: no backend involved


def blas_threads():
    """Thread counts of every loaded BLAS library."""
    return [info["num_threads"]
            for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"]


def test_single_threaded_limits_and_restores():
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        with blas.single_threaded():
            assert set(blas_threads()) == {1}
            with blas.single_threaded():  # nests
                assert set(blas_threads()) == {1}
            assert set(blas_threads()) == {1}
        assert blas_threads() == before


def test_solver_result_independent_of_blas_threads():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 256)) @ (
        np.eye(256) + rng.standard_normal((256, 256)) / 16)
    H = (2.0 / 512) * X.T @ X
    W = 0.02 * rng.standard_normal((64, 256))
    settings = solver.SolverSettings(group_size=64, activation_order=True)
    results = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            results.append(solver.solve_gptq(W, H, settings))
            assert set(blas_threads()) == {threads}  # restored after
    np.testing.assert_array_equal(results[0].q, results[1].q)
    np.testing.assert_array_equal(results[0].scale, results[1].scale)
