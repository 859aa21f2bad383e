"""`write_folder_atomically`: the one write-aside-then-swap of presets, HF
exports and the model cache."""

import os

import pytest

from keras_gptq.utils import files


def _write(**contents):
    def write(folder):
        for name, text in contents.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
    return write


def test_creates_a_new_folder(tmp_path):
    path = files.write_folder_atomically(tmp_path / "new" / "out",
                                         _write(a="1"))
    assert path == os.path.realpath(tmp_path / "new" / "out")
    assert (tmp_path / "new" / "out" / "a").read_text() == "1"
    assert os.listdir(tmp_path / "new") == ["out"]


@pytest.mark.parametrize("keep", [False, True])
def test_replaces_a_folder_keeping_old_files_only_when_asked(tmp_path, keep):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    (target / "mine").write_text("kept?")
    files.write_folder_atomically(target, _write(a="new"), keep_old_files=keep)
    assert (target / "a").read_text() == "new"
    assert (target / "mine").exists() is keep
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_the_old_folder(tmp_path, failure):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")

    def write(folder):
        _write(a="half")(folder)
        raise failure("injected")

    with pytest.raises(failure):
        files.write_folder_atomically(target, write)
    assert (target / "a").read_text() == "old"
    assert os.listdir(tmp_path) == ["out"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    renames, real_rename = [], os.rename

    def rename(src, dst):
        renames.append(src)
        if len(renames) == 2:  # old aside done; moving the new one in fails
            raise OSError("injected")
        return real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        files.write_folder_atomically(target, _write(a="new"))
    monkeypatch.undo()
    assert (target / "a").read_text() == "old"
    assert os.listdir(tmp_path) == ["out"]


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        files.write_folder_atomically(tmp_path / "file", _write(a="1"))
    assert (tmp_path / "file").read_text() == "x"
