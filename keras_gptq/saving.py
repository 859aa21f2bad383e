"""Presets on disk: all-or-nothing `save_to_preset`, loads that name the file.

Importing keras_gptq wraps two KerasHub entry points, for every model:

1. `save_to_preset` of `Task`, `Backbone`, `Preprocessor` and `Tokenizer`
   writes into a fresh sibling folder, then swaps it in (the old folder is
   renamed aside, the new one renamed in, the old one deleted; if the swap
   fails the old one is renamed back). An exception or KeyboardInterrupt
   while writing leaves an existing preset untouched. Files of the old folder
   that the save does not write (e.g. tokenizer assets when only a backbone
   is saved) are carried over, so the folder ends as a plain KerasHub save
   would leave it.
2. Loading a preset's config or weights fails with `CorruptPresetError`
   naming the file and the problem (a truncated `model.weights.h5`, a packed
   variable of the wrong shape or dtype, a missing variable, unreadable
   JSON) instead of a bare h5py or JSON error. The per-layer checks live
   with the packed layers (`storage._packed_load`).
"""

import functools
import json
import os
import shutil
import threading
import uuid

from keras_hub.src.models.backbone import Backbone
from keras_hub.src.models.preprocessor import Preprocessor
from keras_hub.src.models.task import Task
from keras_hub.src.tokenizers.tokenizer import Tokenizer
from keras_hub.src.utils import preset_utils


class CorruptPresetError(ValueError):
    """A preset file that cannot be read as what its config says it is."""


_SAVING = threading.local()


def _carry_over(old, new):
    """Links (or copies) into `new` each file of `old` that `new` lacks."""
    for root, _, files in os.walk(old):
        target_root = os.path.join(new, os.path.relpath(root, old))
        for name in files:
            target = os.path.join(target_root, name)
            if os.path.lexists(target):
                continue
            os.makedirs(target_root, exist_ok=True)
            try:
                os.link(os.path.join(root, name), target)
            except OSError:
                shutil.copy2(os.path.join(root, name), target)


def _swap_in(new, path):
    """Replaces the folder `path` by `new`; restores `path` on failure."""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    _carry_over(path, new)
    shutil.copymode(path, new)
    aside = f"{new}.old"
    os.rename(path, aside)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_folder_atomically(path, write):
    """Calls `write(folder)` on a fresh sibling folder, then swaps it in.

    Args:
        path: the folder to create or replace.
        write: a callable that writes the folder's contents.

    Raises:
        NotADirectoryError: `path` exists and is not a folder.
        Whatever `write` raises; `path` is then left as it was.
    """
    path = os.path.realpath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(
            f"Cannot save a preset to {path!r}: it exists and is not a "
            "folder. Pass a folder path.")
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    new = os.path.join(parent, f".{base}.saving-{uuid.uuid4().hex[:8]}")
    os.mkdir(new)
    try:
        write(new)
        _swap_in(new, path)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _atomic_save(method):
    @functools.wraps(method)
    def save_to_preset(self, preset_dir, *args, **kwargs):
        if getattr(_SAVING, "active", False):  # a Task saving its parts
            return method(self, preset_dir, *args, **kwargs)

        def write(folder):
            _SAVING.active = True
            try:
                method(self, folder, *args, **kwargs)
            finally:
                _SAVING.active = False

        write_folder_atomically(os.fspath(preset_dir), write)

    save_to_preset._keras_gptq_atomic = True
    return save_to_preset


def _named_load_json(original):
    @functools.wraps(original)
    def load_json(preset, config_file=preset_utils.CONFIG_FILE):
        try:
            return original(preset, config_file)
        except json.JSONDecodeError as e:
            raise CorruptPresetError(
                f"{config_file} of preset {preset!r} is not valid JSON "
                f"({e}); the file is truncated or corrupted. Re-save or "
                "re-download the preset.") from e
    return load_json


def _named_weights_load(original):
    @functools.wraps(original)
    def _load_backbone_weights(self, backbone):
        try:
            return original(self, backbone)
        except (OSError, ValueError) as e:
            if isinstance(e, (FileNotFoundError, CorruptPresetError)):
                raise
            raise CorruptPresetError(
                f"Could not load the weights of preset {self.preset!r} from "
                f"{preset_utils.MODEL_WEIGHTS_FILE}: {e}"
                + ("\nThe file is truncated or is not an HDF5 file: re-save "
                   "or re-download the preset." if isinstance(e, OSError)
                   else "")) from e
    return _load_backbone_weights


def _install():
    if getattr(preset_utils, "_keras_gptq_saving", False):
        return
    for cls in (Task, Backbone, Preprocessor, Tokenizer):
        cls.save_to_preset = _atomic_save(cls.save_to_preset)
    preset_utils.load_json = _named_load_json(preset_utils.load_json)
    loader = preset_utils.KerasPresetLoader
    loader._load_backbone_weights = _named_weights_load(
        loader._load_backbone_weights)
    preset_utils._keras_gptq_saving = True


_install()
