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
