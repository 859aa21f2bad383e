"""Writing a folder all or nothing: the one "write aside, then swap in".

Presets (`save_to_preset`), Hugging Face exports (`export_hf`) and the
bundled model's cache are all written into a fresh sibling folder, which
then replaces the target: an error or interruption while writing leaves
the target exactly as it was, and no half-written folder behind.
"""

import os
import shutil
import uuid


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


def _swap_in(new, path, keep_old_files):
    """Replaces the folder `path` by `new`; restores `path` on failure."""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if keep_old_files:
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


def write_folder_atomically(path, write, keep_old_files=False):
    """Calls `write(folder)` on a fresh sibling folder, then swaps it in.

    Args:
        path: the folder to create or replace.
        write: a callable that writes the folder's contents.
        keep_old_files: carry over the files of an existing `path` that
            `write` did not write (as saving into a folder in place would
            leave them); otherwise the new folder replaces it whole.

    Returns:
        The absolute (resolved) path of the folder.

    Raises:
        NotADirectoryError: `path` exists and is not a folder.
        Whatever `write` raises; `path` is then left as it was.
    """
    path = os.path.realpath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(
            f"Cannot save to {path!r}: it exists and is not a "
            "folder. Pass a folder path.")
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    new = os.path.join(parent, f".{base}.saving-{uuid.uuid4().hex[:8]}")
    os.mkdir(new)
    try:
        write(new)
        _swap_in(new, path, keep_old_files)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return path


def preset_arrays(folder):
    """`{dataset path: numpy array}` of a preset's `model.weights.h5`
    (benchmarks and tests compare two presets array for array)."""
    import h5py

    found = {}
    with h5py.File(os.path.join(folder, "model.weights.h5"), "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return found
