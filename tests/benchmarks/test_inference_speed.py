"""The inference-speed benchmark's flags and table, from synthetic rows
(the benchmark itself runs SmolLM2 for tens of minutes)."""

import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location(
    "inference_speed",
    os.path.join(HERE, "..", "..", "benchmarks", "inference_speed.py"))
inference_speed = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(inference_speed)


def test_defaults_are_modest_and_full_gives_the_issue_sizes():
    args = inference_speed.parse_args([])
    assert (args.prefill_length, args.new_tokens, args.batches) == (
        64, 16, [1, 8])
    args = inference_speed.parse_args(["--full"])
    assert (args.prefill_length, args.new_tokens) == (256, 32)


def test_table_gives_each_row_as_a_ratio_to_float():
    rows = [{"method": "float", "backend": "jax", "weights MB": 500.0,
             "first token s": 0.2, "decode b1 tok/s": 20.0},
            {"method": "packed", "backend": "jax", "weights MB": 160.0,
             "first token s": 0.3, "decode b1 tok/s": 30.0}]
    table = inference_speed.render(rows, None).splitlines()
    assert table[0] == ("| method | weights MB | first token s | "
                        "decode b1 tok/s |")
    assert table[2] == "| float | 500.0 | 0.200 | 20.0 |"
    assert table[3] == ("| packed | 160.0 (0.32x) | 0.300 (1.50x) | "
                        "30.0 (1.50x) |")


def test_interleaved_times_the_methods_in_alternation(monkeypatch):
    import types

    import numpy as np

    from keras_gptq.examples import bundled

    class Preprocessor:
        def generate_preprocess(self, text):
            return {"token_ids": np.array([5, 6, 7, 0]),
                    "padding_mask": np.array([1, 1, 1, 0])}

    made = []

    def load():
        made.append(types.SimpleNamespace(preprocessor=Preprocessor()))
        return made[-1]

    calls = []
    # Timed rounds (float, packed, float, packed) of each planned call:
    # prefill, first token, first token + 2 new tokens.
    seconds = iter([3.0, 1.0, 2.0, 4.0, 1.0, 1.0, 1.5, 1.0,
                    2.0, 1.5, 3.0, 1.6])

    def timed(model, prompt, batch, total, repeats, compile_first=True):
        calls.append(([m is model for m in made].index(True), total, repeats))
        return float("inf") if repeats == 0 else next(seconds)

    monkeypatch.setattr(bundled, "load_default_model", load)
    monkeypatch.setattr(inference_speed, "_apply", lambda m, model, a: None)
    monkeypatch.setattr(inference_speed, "_weights_mb", lambda model: 1.0)
    monkeypatch.setattr(inference_speed._worker, "time_generate", timed)
    args = inference_speed.parse_args(
        ["--batches", "1", "--prefill-length", "4", "--new-tokens", "2",
         "--repeats", "2", "--interleaved"])
    rows = inference_speed.interleaved(["float", "packed"], args)
    # Three planned calls (prefill, first token, longer), each: both models
    # compile, then two rounds alternate float, packed, float, packed.
    assert [c[0] for c in calls[:6]] == [0, 1, 0, 1, 0, 1]
    assert [c[2] for c in calls[:6]] == [0, 0, 1, 1, 1, 1]
    assert [r["method"] for r in rows] == ["float", "packed"]
    # Best of the rounds for each model.
    float_row, packed_row = rows
    assert float_row["prefill 1x4 tok/s"] == 4 / 2.0
    assert packed_row["prefill 1x4 tok/s"] == 4 / 1.0
    assert float_row["first token s"] == packed_row["first token s"] == 1.0
    assert float_row["decode b1 tok/s"] == 2 / (2.0 - 1.0)
    assert packed_row["decode b1 tok/s"] == 2 / (1.5 - 1.0)


def test_no_kernel_rows_apply_the_method_then_turn_the_kernel_off(
        monkeypatch):
    import types

    from keras_gptq import storage
    from keras_gptq.model import baselines
    from keras_gptq.storage import kernels

    applied, disabled = [], []
    packed = types.SimpleNamespace(g_idx=None)
    model = types.SimpleNamespace(_flatten_layers=lambda: [packed, object()])
    monkeypatch.setattr(baselines, "rtn_packed",
                        lambda m, bits, group: applied.append((bits, group)))
    monkeypatch.setattr(storage, "is_packed", lambda layer: layer is packed)
    monkeypatch.setattr(kernels, "disable_cpu_kernel", disabled.append)
    inference_speed._apply("packed-no-kernel", model,
                           inference_speed.parse_args([]))
    assert applied == [(4, 128)]
    assert disabled == [packed]
