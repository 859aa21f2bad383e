"""`keras-gptq export-hf` and `import-hf`, run in subprocesses (the
`--module-names` flag in process)."""

import keras_hub
import numpy as np
import pytest

from helpers.models import logits
from helpers.models import markov_tokens
from helpers.hf import packed_model
from helpers.hf import read_folder
from helpers.cli import run_cli
from keras_gptq.cli import common
from keras_gptq.cli import main

TOKENS = markov_tokens(64, seed=5).reshape(2, 32)


@pytest.mark.slow  # four subprocesses, each importing Keras and TensorFlow
def test_export_then_import_gives_the_same_model(tmp_path):
    model = packed_model("llama3", bits=4, group_size=32, sym=True)
    model.save_to_preset(str(tmp_path / "preset"))
    proc = run_cli("export-hf", str(tmp_path / "preset"), "--out",
                   str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    assert "Wrote the Hugging Face GPTQ checkpoint" in proc.stdout
    proc = run_cli("import-hf", str(tmp_path / "hf"), "--out",
                   str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stderr
    again = keras_hub.models.CausalLM.from_preset(str(tmp_path / "again"))
    np.testing.assert_array_equal(logits(again, TOKENS), logits(model, TOKENS))

    proc = run_cli("import-hf", str(tmp_path / "hf"), "--out",
                   str(tmp_path / "again"))
    assert proc.returncode == 1 and "--overwrite" in proc.stderr


@pytest.mark.one_backend
def test_usage_and_missing_folder_errors(tmp_path):
    proc = run_cli("export-hf", str(tmp_path), "--out", str(tmp_path / "x"),
                   "--format", "v3")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = run_cli("import-hf", str(tmp_path / "nowhere"), "--out",
                   str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "keras-gptq: error: no such folder" in proc.stderr


@pytest.mark.one_backend
def test_module_names_flag_reaches_export_hf(tmp_path, monkeypatch):
    """In process: `--module-names gptqmodel` writes GPTQModel's names."""
    monkeypatch.setattr(common, "load_model",
                        lambda preset: packed_model("phi3", 4, 32, sym=True))
    for names, module in (("transformers", "gate_up_proj"),
                          ("gptqmodel", "gate_proj")):
        out = tmp_path / names
        assert main.main(["export-hf", "p", "--out", str(out),
                          "--module-names", names]) == 0
        assert f"model.layers.0.mlp.{module}.qweight" in read_folder(out)[1]
    with pytest.raises(SystemExit):  # argparse: invalid choice, exit 2
        main.build_parser().parse_args(["export-hf", "p", "--out", "x",
                                        "--module-names", "vllm"])
