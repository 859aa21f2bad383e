"""`keras-gptq export-hf` and `import-hf`, run in subprocesses."""

import keras_hub
import numpy as np
import pytest

from helpers.models import logits
from helpers.models import markov_tokens
from helpers.hf import packed_model
from helpers.cli import run_cli

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
