"""The main job (`python -m keras_gptq.examples.demo`) end to end on a tiny GGUF.

The bundled-model loader is pointed at a tiny random llama GGUF (the same
converter path as the real SmolLM2 file); the text is the real bundled
Wikipedia split. The demo quantizes, saves, reloads in a fresh process and
prints its table and the greedy generations side by side.
"""

import tempfile

import pytest

from keras_gptq.examples import bundled
from keras_gptq.examples import demo
from helpers.gguf import random_hf_weights
from helpers.gguf import write_tiny_gguf

SMALL = ["--samples", "4", "--seq-len", "32", "--eval-windows", "1",
         "--group-size", "32"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny llama GGUF standing in for SmolLM2's."""
    tmp = tmp_path_factory.mktemp("demo")
    return write_tiny_gguf(str(tmp / "tiny.gguf"),
                           random_hf_weights(seed=0, tied=True))


@pytest.fixture
def tiny_default_model(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "default_gguf_path", lambda: tiny_gguf)
    monkeypatch.setenv("KERAS_GPTQ_CACHE", str(tmp_path / "cache"))
    # The demo's temporary folders land here (and are counted below).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_demo_prints_table_and_reloads_exactly(tiny_default_model, tmp_path,
                                               capsys):
    out = tmp_path / "preset"
    results = demo.main(SMALL + ["--out", str(out)])
    text = capsys.readouterr().out
    assert results["reload_error"] <= 1e-5
    assert (out / "config.json").is_file()
    # With --out, nothing is left behind in the temporary folder.
    assert not list(tmp_path.glob("keras_gptq_demo_*"))
    for name in ("float", "rtn", "gptq"):
        assert f"| {name} | {results[name]:.2f} |" in text
    assert "act-order + static groups + mse + asymmetric calibration" in text
    assert "true-sequential" not in text
    assert "4x32 calibration tokens" in text
    assert "of RTN's" in text or results["rtn"] <= results["float"]
    assert results["preset_mb"] < results["float_mb"]
    # Greedy continuations of the same prompts, side by side.
    assert sorted(results["generations"]) == ["float", "gptq", "rtn"]
    for i, prompt in enumerate(demo.PROMPTS):
        assert f"Greedy, 32 tokens: {prompt!r}" in text
        for name, texts in results["generations"].items():
            assert f"  {name:<5} {' '.join(texts[i].split())}" in text


@pytest.mark.one_backend
def test_demo_generation_can_be_skipped_and_checks_its_length(
        tiny_default_model, capsys):
    results = demo.main(SMALL + ["--gen-length", "0"])
    assert results["generations"] == {}
    assert "Greedy" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        demo.main(SMALL + ["--gen-length", "-1"])
    assert "--gen-length" in capsys.readouterr().err


@pytest.mark.one_backend
def test_demo_flags_reach_the_config(tiny_default_model, monkeypatch):
    seen = {}

    def fake_quantize(model, config, **kwargs):
        seen.update(config.get_config())
        raise KeyboardInterrupt  # stop after the config is built

    monkeypatch.setattr(demo.keras_gptq, "quantize", fake_quantize)
    with pytest.raises(KeyboardInterrupt):
        demo.main(SMALL + ["--no-static-groups", "--no-mse",
                           "--true-sequential", "--no-act-order",
                           "--no-asymmetric-calibration"])
    assert (seen["static_groups"], seen["mse"], seen["true_sequential"],
            seen["activation_order"], seen["asymmetric_calibration"]) == (
                False, False, True, False, False)
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        demo.main(["--best", "--eval-windows", "1"])
    assert (seen["num_samples"], seen["static_groups"], seen["mse"],
            seen["asymmetric_calibration"], seen["activation_order"]) == (
                128, True, True, True, True)
