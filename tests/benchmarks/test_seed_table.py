"""The seed-table benchmark's table and chart, from synthetic rows.

The benchmark itself runs the real model for about half an hour; here only
its reporting is pinned: the percentages against float, failed rows, the
generations section and the PNG chart.
"""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location(
    "seed_table", os.path.join(HERE, "..", "..", "benchmarks", "seed_table.py"))
seed_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(seed_table)


def _row(method, ppl, mb, first, tps, quant=0.0):
    return {"method": method, "perplexity": ppl, "preset_mb": mb,
            "weights_mb": mb - 2, "first_token_s": first,
            "decode_tok_s": tps, "quant_s": quant, "peak_rss_mb": 2000.0,
            "backend": "jax", "load_avg": 1.0, "generations": [f"{method} a", f"{method} b"]}


ROWS = [_row("float", 20.0, 502.0, 0.100, 40.0),
        _row("gptq-4", 22.0, 152.0, 0.150, 30.0, quant=60.0),
        {"method": "keras-gptq-4", "error": 1}]


def test_render_gives_changes_against_float():
    args = seed_table.parse_args([])
    page = seed_table.render(ROWS, args)
    line = next(l for l in page.splitlines()
                if l.startswith("| keras_gptq GPTQ 4-bit g128 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:5] == ["22.00", "+10.0%", "152 MB", "-69.7%"]
    assert cells[7:14] == ["150", "+50.0%", "30.0", "-25.0%", "60", "2000",
                         "1.0"]
    assert "| Keras built-in GPTQ 4-bit g128 | failed (exit 1) |" in page
    assert "| float32 | float a |" in page and "| float32 | float b |" in page


def test_chart_writes_a_png(tmp_path):
    path = str(tmp_path / "chart.png")
    seed_table.chart(ROWS, path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_methods_must_include_float_and_be_known():
    with pytest.raises(SystemExit, match="must include 'float'"):
        seed_table.main(["--methods", "gptq-4"])
    with pytest.raises(SystemExit, match="unknown: \\['nope'\\]"):
        seed_table.main(["--methods", "float,nope"])


def test_another_model_gets_its_own_outputs_and_title():
    args = seed_table.parse_args(["--model", "qwen2.5-0.5b"])
    assert args.out.endswith(os.path.join("benchmarks",
                                          "seed_table_qwen2.5-0.5b"))
    assert "--model" in seed_table._shared_flags(args)
    page = seed_table.render(ROWS, args)
    assert page.startswith("# Seed table: Qwen2.5-Coder-0.5B")
    assert seed_table.parse_args([]).out.endswith(
        os.path.join("benchmarks", "seed_table"))
