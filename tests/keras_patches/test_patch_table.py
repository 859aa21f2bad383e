"""The table of Keras/KerasHub patches is the truth: every listed target is
replaced by `import keras_gptq`, and nothing else keras_gptq imports
changes those libraries' module attributes."""

import importlib
import json
import subprocess
import sys

import keras
import keras_hub

from keras_gptq import keras_patches

_PROBE = r"""
import importlib, inspect, json, sys
import keras, keras_hub

def resolve(dotted):
    # The raw attribute (a class's own or inherited descriptor, a module's
    # function), without binding.
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = inspect.getattr_static(obj, name)
        return obj
    raise ImportError(dotted)

targets = json.loads(sys.argv[1])
before = {t: resolve(t) for t in targets}
import keras_gptq
after = {t: resolve(t) for t in targets}
print(json.dumps([t for t in targets if after[t] is before[t]]))
"""


def _targets():
    return [t for patch in keras_patches.PATCHES for t in patch.targets]


def test_import_replaces_every_listed_target():
    # A fresh process: resolve each target, import keras_gptq, resolve
    # again. A listed target that stays the same object is a stale row.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(_targets())],
        capture_output=True, text=True, check=True, timeout=300)
    unchanged = json.loads(out.stdout.strip().splitlines()[-1])
    assert unchanged == []


def test_every_row_names_a_version_and_a_reason():
    # One PATCHES entry per row of the module docstring's table, in order.
    rows = [line for line in keras_patches.__doc__.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == [
        str(i) for i in range(1, len(keras_patches.PATCHES) + 1)]
    for patch in keras_patches.PATCHES:
        assert patch.targets and patch.reason and callable(patch.install)
        assert patch.pinned in (f"keras {keras_patches.KERAS_PIN}",
                                f"keras-hub {keras_patches.KERAS_HUB_PIN}")


def _minor(version):
    return version.split(".")[:2]


def test_pins_match_the_installed_minor_versions():
    # pyproject.toml allows patch releases of the pinned minor versions.
    assert _minor(keras.version()) == _minor(keras_patches.KERAS_PIN)
    assert _minor(keras_hub.__version__) == _minor(
        keras_patches.KERAS_HUB_PIN)


def test_install_is_idempotent():
    before = keras.Model.quantize
    assert keras_patches.install() == keras_patches.PATCHES
    importlib.reload(keras_patches)
    keras_patches.install()
    assert keras.Model.quantize is before
