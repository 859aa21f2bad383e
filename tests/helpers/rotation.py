"""Which backend runs a test case: CI runs the suite under three backends,
and the costly per-family cases run under one of them per run, fixed by a
rotation (case index mod 3 -> jax, tensorflow, torch), so that every case
runs on some backend in every CI run. `KERAS_GPTQ_ALL_FAMILY_CELLS=1` runs
every case under the current backend.
"""

import os

import keras

BACKENDS = ("jax", "tensorflow", "torch")


def backend_of(index):
    """The backend that runs case `index` of a rotated list."""
    return BACKENDS[index % len(BACKENDS)]


def runs_here(index):
    """Whether case `index` runs under this process's backend (every case
    does when `KERAS_GPTQ_ALL_FAMILY_CELLS=1`)."""
    return (os.environ.get("KERAS_GPTQ_ALL_FAMILY_CELLS") == "1"
            or backend_of(index) == keras.config.backend())


def cases_here(names):
    """The names in `names` (in their order) that run here."""
    return [name for i, name in enumerate(names) if runs_here(i)]
