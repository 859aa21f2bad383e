"""benchmarks/preset_io.py: load, save and reload of a preset, timed."""

import os
import sys

import keras_gptq
from helpers.models import build_causal_lm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))
import preset_io  # noqa: E402


def test_measure_times_every_step_and_leaves_no_copy(tmp_path,
                                                     calibration_tokens):
    model = build_causal_lm("llama3")
    keras_gptq.quantize(model, keras_gptq.GPTQConfig(
        dataset=calibration_tokens, num_samples=8, sequence_length=32,
        group_size=16, add_start_token=False), verbose=False)
    model.save_to_preset(str(tmp_path / "gptq"))
    steps = preset_io.measure(str(tmp_path / "gptq"))
    assert set(steps) == {"load", "save", "reload"}
    assert all(seconds > 0 and mb > 100 for seconds, mb in steps.values())
    assert sorted(os.listdir(tmp_path)) == ["gptq"]
    table = preset_io.render([steps], "gptq", "jax")
    assert table.count("\n| 1 |") == 1
