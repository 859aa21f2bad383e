"""The peer comparison's reporting and argument checks (no models run).

The benchmark itself quantizes a real model twice (keras_gptq and
llm-compressor in its own venv); here only its table and its refusal of
unknown rows or a missing peer interpreter are pinned.
"""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location(
    "peer_compare",
    os.path.join(HERE, "..", "..", "benchmarks", "peer_compare.py"))
peer_compare = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(peer_compare)


def _row(method, ppl, quant=0.0):
    return {"method": method, "perplexity": ppl, "quant_s": quant,
            "peak_rss_mb": 1000.0, "load_avg": 1.0}


def test_table_scores_recovery_against_float_and_rtn():
    args = peer_compare.parse_args(["--group-size", "64"])
    rows = {"float": _row("float", 10.0), "rtn": _row("rtn", 14.0),
            "keras_gptq": _row("keras_gptq", 11.0, 50.0),
            "llm-compressor": {"method": "llm-compressor", "error": 1}}
    page = peer_compare.render(rows, args)
    assert "| keras_gptq | 11.000 | 75% | 50 |" in page
    assert "| llm-compressor | failed (1) |" in page
    assert "4-bit g64" in page


def test_unknown_rows_and_missing_peer_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown: \\['nope'\\]"):
        peer_compare.main(["--rows", "float,nope"])
    with pytest.raises(SystemExit, match="does not exist"):
        peer_compare.main(["--rows", "llm-compressor",
                           "--peer-python", str(tmp_path / "none")])


def test_matched_settings_follow_llm_compressor_actorder():
    weight = peer_compare._gptq_settings(peer_compare.parse_args([]))
    assert weight["activation_order"] and weight["static_groups"]
    assert weight["hessian_damping"] == 0.01 and not weight["symmetric"]
    none = peer_compare._gptq_settings(
        peer_compare.parse_args(["--actorder", "none"]))
    assert not none["activation_order"] and not none["static_groups"]
    best = peer_compare._gptq_settings(peer_compare.parse_args([]), True)
    assert best["asymmetric_calibration"] and best["mse"]
