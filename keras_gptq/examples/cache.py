"""The cache of converted example models: one folder per model, converted
once, swapped in whole.

Each folder lives in `$KERAS_GPTQ_CACHE` (default `~/.cache/keras_gptq`)
and holds a marker file describing its source; a folder whose marker does
not match (another source, an older conversion) is rebuilt. Folders are
built aside and swapped in (`utils.files.write_folder_atomically`), so an
interrupted conversion never leaves a broken cache.
"""

import json
import os

from keras_gptq.utils.files import write_folder_atomically

CACHE_ENV = "KERAS_GPTQ_CACHE"
MARKER_FILE = "keras_gptq_conversion.json"
HF_FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json")


def cache_root(cache_dir=None):
    """`cache_dir`, else `$KERAS_GPTQ_CACHE`, else `~/.cache/keras_gptq`."""
    return os.path.abspath(cache_dir or os.environ.get(CACHE_ENV) or
                           os.path.join(os.path.expanduser("~"), ".cache",
                                        "keras_gptq"))


def _is_current(folder, marker):
    """True when `folder` is a complete conversion matching `marker`."""
    try:
        with open(os.path.join(folder, MARKER_FILE), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return False
    return found == marker and all(
        os.path.isfile(os.path.join(folder, name)) for name in HF_FOLDER_FILES)


def cached_folder(name, marker, convert, cache_dir=None):
    """Returns `<cache root>/<name>`, calling `convert(folder)` to build it
    first unless it already holds a conversion matching `marker`.

    Args:
        name: the folder's name inside the cache root.
        marker: a JSON-serializable dict describing the source and the
            conversion version; stored beside the files.
        convert: a callable writing the Hugging Face-style files into the
            folder it is given.
        cache_dir: the cache root; see `cache_root`.
    Returns:
        The path of the folder.
    """
    folder = os.path.join(cache_root(cache_dir), name)
    if _is_current(folder, marker):
        return folder

    def write(building):
        convert(building)
        with open(os.path.join(building, MARKER_FILE), "w") as f:
            json.dump(marker, f)

    try:
        write_folder_atomically(folder, write)
    except OSError:
        if not _is_current(folder, marker):  # else: lost a race, fine
            raise
    return folder
