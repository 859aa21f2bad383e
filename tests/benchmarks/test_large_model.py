"""benchmarks/large_model.py: the random-init folder it writes is a valid
bfloat16 Hugging Face Llama folder, and its worker quantizes it."""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "benchmarks"))
import large_model  # noqa: E402

from keras_gptq.hf import load  # noqa: E402


def test_bf16_rounds_to_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3e-3], np.float32)
    bits = large_model._bf16(values)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(widened, values, rtol=2 ** -8)
    assert widened[1] == 1.0  # a tie rounds to the even bf16 value
    assert widened[2] == 1.015625


def test_the_folder_reads_back_and_quantizes(tmp_path):
    folder = str(tmp_path / "tiny")
    large_model.write_folder("tiny", folder)
    config = large_model.hf_config("tiny")
    tensors = load.Tensors(folder)
    expected = {**large_model.tensor_shapes(config, None),
                **large_model.tensor_shapes(config, 0),
                **large_model.tensor_shapes(config, 1)}
    assert set(tensors.keys()) == set(expected)
    for name, shape in expected.items():
        value = tensors.get(name)
        assert value.shape == shape and value.dtype == np.float32
        assert np.isfinite(value).all() and np.unique(value).size > 1
    args = argparse.Namespace(folder=folder, samples=2, seq_len=16,
                              group_size=32,
                              out_root=str(tmp_path / "out"),
                              result=str(tmp_path / "row.json"))
    large_model.worker(args)
    with open(tmp_path / "row.json") as f:
        row = json.load(f)
    assert row["layers"] == 2 * 7 and row["preset_mb"] > 0
    assert row["peak_rss_mb"] >= row["runtime_mb"] > 0
    assert row["stages"]["solve"] > 0
    assert sum(row["stages"].values()) <= row["seconds"]
