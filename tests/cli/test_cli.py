"""End-to-end tests of the `keras-gptq` command on a tiny Llama 3 preset.

The commands run in subprocesses (`python -m keras_gptq.cli`) on the
backend of the test run; help and the backend switch are checked in process.
"""

import math
import os
import re

import pytest

import keras_gptq.config

from helpers.cli import run_cli
from keras_gptq.utils.files import preset_arrays
from helpers.models import save_tiny_preset
from keras_gptq.cli import common
from keras_gptq.cli import inspect_preset
from keras_gptq.cli import main as cli

# A finished tqdm bar: "layers: 100%|####| 14/14 [00:01<00:00, ...]".
FINISHED_BAR = r"{what}: 100%\|[^|\r\n]*\| (\d+)/\1 \[\d\d:\d\d<\d\d:\d\d"
ANY_BAR = r"\| \d+/\d+ \[\d\d:\d\d<"
FLAGS = {
    "quantize": ["--out", "--bits", "--group-size", "--act-order",
                 "--static-groups", "--mse", "--true-sequential",
                 "--asymmetric-calibration",
                 "--symmetric", "--damping", "--samples", "--seq-len",
                 "--dataset", "--backend", "--seed", "--quiet", "--debug",
                 "--start-token", "--sink-weight", "--min-tokens-per-input",
                 "--low-memory"],
    "eval": ["--dataset", "--seq-len", "--max-tokens", "--backend",
             "--quiet", "--debug", "--start-token"],
    "inspect": ["--backend", "--debug"],
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a tiny float preset (`float/`) and token ids."""
    return save_tiny_preset(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def quantized(workdir):
    """`keras-gptq quantize` run once (verbose); returns (process, folder)."""
    out = workdir / "gptq"
    proc = run_cli("quantize", str(workdir / "float"), "--out", str(out),
                   "--dataset", str(workdir / "ids.npy"), "--samples", "4",
                   "--seq-len", "32", "--group-size", "32")
    return proc, out


def test_quantize_prints_report_progress_and_saves(quantized):
    proc, out = quantized
    assert proc.returncode == 0, proc.stderr
    for what in ("calibration", "blocks", "layers"):
        assert re.search(FINISHED_BAR.format(what=what), proc.stderr), what
    assert "transformer_layer_0/self_attention/query" in proc.stdout
    assert "14 layers, 128 calibration tokens" in proc.stdout
    assert (out / "config.json").is_file()
    assert (out / "model.weights.h5").is_file()


def test_inspect_lists_packed_layers(quantized):
    _, out = quantized
    proc = run_cli("inspect", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [l.split() for l in proc.stdout.splitlines()
            if l.split() and re.fullmatch(r"\d+x\d+", l.split()[1])]
    assert len(rows) == 14
    names = [row[0] for row in rows]
    assert not any(part.startswith("_") for n in names for part in n.split("/"))
    assert "llama_transformer_decoder/self_attention_layer/query_dense" in names
    assert names.index("llama_transformer_decoder/feedforward_output_dense") < (
        names.index("llama_transformer_decoder_1/feedforward_gate_dense"))
    for _, shape, bits, group, packed, floats in rows:
        out_dim, in_dim = map(int, shape.split("x"))
        assert (bits, group) == ("4", "32")
        assert int(floats) == out_dim * in_dim * 4
        assert int(packed) < int(floats) / 4
    assert "14 packed layers" in proc.stdout
    assert "preset size:" in proc.stdout


def test_eval_quiet_prints_perplexity_only(quantized, workdir):
    _, out = quantized
    proc = run_cli("eval", str(out), "--dataset",
                   str(workdir / "heldout.npy"), "--seq-len", "32",
                   "--max-tokens", "512", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not re.search(ANY_BAR, proc.stdout + proc.stderr)
    match = re.search(r"perplexity: ([0-9.]+)", proc.stdout)
    assert match and math.isfinite(float(match.group(1)))
    assert 1.0 < float(match.group(1)) < 1e4


def test_eval_on_another_backend_reexecutes_and_shows_progress(quantized,
                                                              workdir):
    import keras
    other = next(b for b in common.BACKENDS if b != keras.config.backend())
    _, out = quantized
    proc = run_cli("eval", str(out), "--dataset",
                   str(workdir / "heldout.npy"), "--seq-len", "32",
                   "--max-tokens", "256", "--backend", other)
    assert proc.returncode == 0, proc.stderr
    assert f"(backend {other})" in proc.stdout
    assert re.search(FINISHED_BAR.format(what="perplexity"), proc.stderr)


def test_quantize_quiet_has_no_progress_or_report(workdir):
    out = workdir / "gptq8"
    proc = run_cli("quantize", str(workdir / "float"), "--out", str(out),
                   "--dataset", str(workdir / "ids.npy"), "--samples", "2",
                   "--seq-len", "16", "--bits", "8", "--group-size", "-1",
                   "--act-order", "--symmetric", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not re.search(ANY_BAR, proc.stdout + proc.stderr)
    assert "gptq err" not in proc.stdout
    assert (out / "model.weights.h5").is_file()
    policies, _ = inspect_preset.read_policies(str(out / "config.json"))
    assert len(policies) == 14
    assert set(policies.values()) == {(8, -1)}


@pytest.mark.one_backend
def test_missing_preset_exits_1_without_traceback(tmp_path):
    proc = run_cli("eval", str(tmp_path / "nope"), "--dataset", "bundled")
    assert proc.returncode == 1
    assert "keras-gptq: error: no such preset folder" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.one_backend
def test_usage_error_exits_2():
    proc = run_cli("quantize", "some_folder", "--bits", "5")
    assert proc.returncode == 2
    assert "--out" in proc.stderr and "--bits" in proc.stderr


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_documents_every_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS[command]:
        assert flag in text, flag
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, action.dest


def test_library_error_exits_1(workdir, capsys):
    code = cli.main(["quantize", str(workdir / "float"), "--out",
                     str(workdir / "unused"), "--dataset",
                     str(workdir / "ids.npy"), "--samples", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-gptq: error: `num_samples` must be >= 1")
    assert not (workdir / "unused").exists()


def test_low_memory_flag_writes_the_same_preset(quantized, workdir):
    import numpy as np
    _, in_memory = quantized
    out = workdir / "gptq_low_memory"
    assert cli.main(["quantize", str(workdir / "float"), "--out", str(out),
                     "--low-memory", "--dataset", str(workdir / "ids.npy"),
                     "--samples", "4", "--seq-len", "32", "--group-size",
                     "32", "--quiet"]) == 0
    arrays = [preset_arrays(in_memory), preset_arrays(out)]
    assert arrays[0].keys() == arrays[1].keys()
    assert all(np.array_equal(arrays[0][k], arrays[1][k]) for k in arrays[0])


@pytest.mark.one_backend
def test_low_memory_reads_the_named_models_hf_folders(tmp_path,
                                                      monkeypatch):
    from keras_gptq.cli import quantize as quantize_cli
    from keras_gptq.examples import bundled
    from keras_gptq.examples import qwen
    monkeypatch.setattr(bundled, "default_model_folder", lambda: "/smol")
    monkeypatch.setattr(qwen, "qwen2_5_folder", lambda size: f"/q{size}")
    assert quantize_cli.low_memory_source("default") == "/smol"
    assert quantize_cli.low_memory_source("qwen2.5-1.5b") == "/q1.5b"
    assert quantize_cli.low_memory_source(str(tmp_path)) == str(tmp_path)
    with pytest.raises(common.CLIError, match="no such preset folder"):
        quantize_cli.low_memory_source(str(tmp_path / "absent"))


def test_inspect_float_preset_is_an_error(workdir, capsys):
    assert cli.main(["inspect", str(workdir / "float")]) == 1
    assert "no keras_gptq packed layers" in capsys.readouterr().err


def test_interrupt_exits_130(workdir, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "load_model", interrupted)
    assert cli.main(["eval", str(workdir / "float")]) == 130


def test_backend_switch_reexecutes(monkeypatch):
    import keras
    other = next(b for b in common.BACKENDS if b != keras.config.backend())
    calls = []
    monkeypatch.delenv(cli.REEXEC_MARKER, raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    cli.select_backend(other, ["inspect", "x", "--backend", other])
    (path, argv, env), = calls
    assert argv[1:] == ["-m", "keras_gptq.cli", "inspect", "x",
                        "--backend", other]
    assert env["KERAS_BACKEND"] == other
    monkeypatch.setenv(cli.REEXEC_MARKER, "1")
    with pytest.raises(common.CLIError):
        cli.select_backend(other, [])
    cli.select_backend(keras.config.backend(), [])  # no-op


@pytest.mark.parametrize("flags,expected", [
    ([], dict(static_groups=False, mse=False, true_sequential=False,
              activation_order=False, asymmetric_calibration=False,
              sink_weight=keras_gptq.config.SINK_WEIGHT_DEFAULT,
              min_tokens_per_input=1.25)),
    (["--act-order", "--static-groups", "--mse", "--true-sequential",
      "--asymmetric-calibration", "--sink-weight", "1",
      "--min-tokens-per-input", "0"],
     dict(static_groups=True, mse=True, true_sequential=True,
          activation_order=True, asymmetric_calibration=True,
          sink_weight=1.0, min_tokens_per_input=0.0)),
])
def test_quality_flags_reach_the_config(workdir, monkeypatch, flags,
                                        expected):
    import keras_gptq
    seen = {}

    def capture(model, config, **kwargs):
        seen.update(config.get_config())
        raise KeyboardInterrupt  # stop before any work or saving

    monkeypatch.setattr(keras_gptq, "quantize", capture)
    code = cli.main(["quantize", str(workdir / "float"), "--out",
                     str(workdir / "unused"), "--dataset",
                     str(workdir / "ids.npy"), *flags])
    assert code == 130
    assert {k: seen[k] for k in expected} == expected
    assert not (workdir / "unused").exists()


@pytest.mark.parametrize("value,expected", [
    ("auto", "auto"), ("on", True), ("off", False)])
def test_start_token_flag_reaches_config_and_evaluation(
        workdir, monkeypatch, value, expected):
    import keras_gptq
    seen = []

    def stop(*args, **kwargs):
        config = args[1] if len(args) > 1 else None
        seen.append(kwargs.get("add_start_token", getattr(
            config, "add_start_token", None)))
        raise KeyboardInterrupt

    monkeypatch.setattr(keras_gptq, "quantize", stop)
    monkeypatch.setattr(keras_gptq, "evaluate_perplexity", stop)
    flag = ["--start-token", value]
    assert cli.main(["quantize", str(workdir / "float"), "--out",
                     str(workdir / "unused"), "--dataset",
                     str(workdir / "ids.npy"), *flag]) == 130
    assert cli.main(["eval", str(workdir / "float"), "--dataset",
                     str(workdir / "ids.npy"), *flag]) == 130
    assert seen == [expected, expected]


def test_cli_and_demo_share_the_gptq_flags():
    import argparse

    from keras_gptq.examples import demo

    def options(parser):
        return {o for a in parser._actions for o in a.option_strings}

    reference = argparse.ArgumentParser()
    common.add_gptq_arguments(reference)
    gptq = options(reference) - {"-h", "--help"}
    quantize = next(a for a in cli.build_parser()._subparsers._actions
                    if a.choices).choices["quantize"]
    assert gptq <= options(quantize)
    assert gptq <= options(demo.build_parser())
    # Same flags, the demo's own defaults: act-order, static groups, mse
    # and GPTAQ on, 32 windows; every switch can be turned off.
    args = demo.parse_args([])
    assert (args.activation_order, args.static_groups, args.mse,
            args.asymmetric_calibration, args.true_sequential,
            args.samples) == (True, True, True, True, False, 32)
    off = demo.parse_args(["--no-act-order", "--no-mse",
                           "--start-token", "off"])
    assert not off.activation_order and not off.mse
    assert common.start_token_setting(off) is False


@pytest.mark.parametrize("flags,expected", [
    (["--act-order", "--no-act-order"], False),
    (["--no-act-order", "--act-order"], True)])
def test_every_switch_has_a_no_form(flags, expected):
    args = cli.build_parser().parse_args(
        ["quantize", "x", "--out", "y", *flags])
    assert args.activation_order is expected


@pytest.mark.parametrize("name,size", [("qwen2.5-0.5b", "0.5b"),
                                       ("qwen2.5-1.5b", "1.5b")])
def test_qwen_names_load_the_pypi_qwen_models(name, size, monkeypatch):
    from keras_gptq.examples import qwen
    monkeypatch.setattr(qwen, "load_qwen2_5", lambda s: f"model {s}")
    assert common.load_model(name) == f"model {size}"
