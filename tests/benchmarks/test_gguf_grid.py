"""benchmarks/gguf_grid.py: counting the levels of each run of 32."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "benchmarks"))
import gguf_grid  # noqa: E402

pytestmark = pytest.mark.one_backend


def test_distinct_values_per_run_of_32():
    rng = np.random.default_rng(0)
    # Each run of 32 holds 16 levels of its own scale and float offset,
    # as a dequantized 4-bit GGUF block does.
    levels = rng.integers(0, 16, (8, 64))
    levels[:, 0], levels[:, 32] = 0, 15
    scale = rng.uniform(0.01, 0.02, (8, 2)).repeat(32, axis=1)
    offset = rng.uniform(-0.1, 0, (8, 2)).repeat(32, axis=1)
    top, mean = gguf_grid.distinct_per_run(levels * scale + offset)
    assert top <= 16 and 2 <= mean <= 16
    top, _ = gguf_grid.distinct_per_run(rng.standard_normal((8, 64)))
    assert top == 32
    assert gguf_grid.distinct_per_run(levels * 1.0, limit=3)[0] <= 16
