"""Shared fixtures: structured token data (see `helpers.models`).

Importing keras_gptq here installs its patches before any test builds a
model.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

import keras_gptq  # noqa: E402,F401  (installs the routes before models exist)
from helpers.models import markov_tokens  # noqa: E402

# `@pytest.mark.one_backend` tests do the same work whatever this process's
# backend (CLI usage errors, what a subprocess imports, the text split):
# CI runs the suite under three backends, and these run under this one.
ONE_BACKEND = "jax"


def pytest_collection_modifyitems(config, items):
    """Deselects `one_backend` tests unless the backend is `ONE_BACKEND`."""
    if keras.config.backend() == ONE_BACKEND:
        return
    drop = [item for item in items if item.get_closest_marker("one_backend")]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in drop]


@pytest.fixture(scope="session")
def calibration_tokens():
    """A 1-D token stream for calibration."""
    return markov_tokens(40_000, seed=1)


@pytest.fixture(scope="session")
def heldout_tokens():
    """`[8, 64]` held-out windows, disjoint from the calibration stream."""
    return markov_tokens(8 * 64, seed=2).reshape(8, 64)
