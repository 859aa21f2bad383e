"""`benchmarks/same_results.py`: the before/after check of a refactor must
find a one-bit difference, and none where there is none."""

import importlib.util
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location(
    "same_results", os.path.join(HERE, "..", "..", "benchmarks",
                                 "same_results.py"))
same_results = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(same_results)


def test_compare_finds_exactly_the_differing_arrays(tmp_path, capsys):
    a = {"q": np.arange(6, dtype=np.uint8), "s": np.ones(3, np.float32)}
    np.savez(tmp_path / "a.npz", **a)
    np.savez(tmp_path / "same.npz", **a)
    flipped = dict(a, s=np.nextafter(a["s"], 2, dtype=np.float32))
    np.savez(tmp_path / "b.npz", **flipped)
    np.savez(tmp_path / "dtype.npz", **dict(a, q=a["q"].astype(np.int32)))
    assert same_results.main(["compare", str(tmp_path / "a.npz"),
                              str(tmp_path / "same.npz")]) == 0
    assert same_results.main(["compare", str(tmp_path / "a.npz"),
                              str(tmp_path / "b.npz")]) == 1
    assert "1 differ: ['s']" in capsys.readouterr().out
    assert same_results.compare(tmp_path / "a.npz",
                                tmp_path / "dtype.npz") == 1


def test_solver_record_is_reproducible(tmp_path):
    # One combination (act-order, GPTAQ, a given grid) is enough to pin
    # that a record is deterministic and complete.
    assert len(same_results.ALL_SETTINGS) == 512
    one = [(4, 16, False, True, False, False, True, True)]
    for name in ("one.npz", "two.npz"):
        same_results.record_solver(str(tmp_path / name), one)
    assert same_results.compare(str(tmp_path / "one.npz"),
                                str(tmp_path / "two.npz")) == 0
    with np.load(tmp_path / "one.npz") as data:
        solver = [f for f in data.files if not f.startswith("hf_")]
        packing = [f for f in data.files if f.startswith("hf_")]
    assert len(solver) == 2 * 5  # two problems, five outputs each
    assert len(packing) == 4 * 3 * 2  # bits x shapes x (words, levels)
