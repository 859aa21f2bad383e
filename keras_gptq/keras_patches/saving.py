"""Presets on disk: all-or-nothing `save_to_preset`, loads that name the file.

Two patches of KerasHub entry points, for every model:

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
   with the packed layers (`storage.packed_layer.load_packed`).
"""

import functools
import json
import threading

from keras_hub.src.models.backbone import Backbone
from keras_hub.src.models.preprocessor import Preprocessor
from keras_hub.src.models.task import Task
from keras_hub.src.tokenizers.tokenizer import Tokenizer
from keras_hub.src.utils import preset_utils

from keras_gptq.utils.files import write_folder_atomically


class CorruptPresetError(ValueError):
    """A preset file that cannot be read as what its config says it is."""


_SAVING = threading.local()


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

        write_folder_atomically(preset_dir, write, keep_old_files=True)

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


def atomic_save_to_preset():
    """1: `save_to_preset` of Task, Backbone, Preprocessor and Tokenizer."""
    for cls in (Task, Backbone, Preprocessor, Tokenizer):
        cls.save_to_preset = _atomic_save(cls.save_to_preset)


def name_corrupt_files():
    """2: `load_json` and the weights load raise `CorruptPresetError`."""
    preset_utils.load_json = _named_load_json(preset_utils.load_json)
    loader = preset_utils.KerasPresetLoader
    loader._load_backbone_weights = _named_weights_load(
        loader._load_backbone_weights)
