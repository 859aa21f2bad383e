"""The Colab notebook: generated from the `.py` guide, and it runs.

- fast: `guides/ipynb/<guide>.ipynb` is what `guides/tutobooks.py` writes
  from the current guide (regenerate with `python guides/tutobooks.py`);
- slow: the notebook runs top to bottom in a real Jupyter kernel
  (`nbclient`, the current Python, `KERAS_GPTQ_GUIDE_QUICK=1`), offline:
  its `install` cell is left out, everything else runs on the bundled
  default model (the guide's quick sizes: 8x128 calibration tokens, 2x256
  evaluation tokens, 24-token generations); it quantizes, generates before
  and after, saves and reloads the preset. nbclient, nbformat and
  ipykernel come with the `test` extra. This is the guide's end-to-end
  test: the notebook is the guide's code (checked by the fast test), so
  the `.py` is not run a second time as a script.
"""

import importlib.util
import json
import os
import pathlib
import re
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GUIDE = ROOT / "guides" / "quantize_smollm2_with_gptq.py"
sys.path.insert(0, str(ROOT / "guides"))
import tutobooks  # noqa: E402


def test_the_notebook_is_generated_from_the_guide():
    notebook = tutobooks.target(GUIDE)
    assert notebook.read_text(encoding="utf-8") == tutobooks.notebook_text(
        GUIDE.read_text(encoding="utf-8")), (
        "guides/ipynb is stale: run `python guides/tutobooks.py`")
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    assert cells[0]["source"][0].startswith("# Quantizing SmolLM2")
    install = [c for c in cells if "install" in c["metadata"].get("tags", [])]
    assert len(install) == 1 and "".join(install[0]["source"]).startswith(
        "!pip install")


@pytest.mark.slow
def test_the_notebook_runs_in_a_jupyter_kernel(tmp_path, monkeypatch):
    for package in ("nbclient", "nbformat", "ipykernel"):
        assert importlib.util.find_spec(package) is not None, (
            f"{package} is missing: pip install -e '.[test]'")
    if keras.config.backend() != "jax":
        pytest.skip("the notebook's default backend is jax")
    import nbclient
    import nbformat

    notebook = nbformat.read(tutobooks.target(GUIDE), as_version=4)
    notebook.cells = [c for c in notebook.cells
                      if "install" not in c.metadata.get("tags", [])]
    monkeypatch.setenv("KERAS_GPTQ_GUIDE_QUICK", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(
            os.pathsep) if p]))
    from ipykernel.kernelspec import install as install_kernel
    kernels = tmp_path / "kernels"
    install_kernel(prefix=str(kernels), kernel_name="keras-gptq-test")
    monkeypatch.setenv("JUPYTER_PATH", str(kernels / "share" / "jupyter"))
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="keras-gptq-test",
        resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "".join(output.get("text", "") for cell in notebook.cells
                   if cell.cell_type == "code" for output in cell.outputs)
    assert "reloaded preset generates the same text: True" in text
    ppl = re.search(r"float ([\d.]+) -> GPTQ 4-bit ([\d.]+)", text)
    assert ppl, text[-3000:]
    float_ppl, gptq_ppl = map(float, ppl.groups())
    assert float_ppl < gptq_ppl < 2 * float_ppl
    for prompt in ("The capital of France is",
                   "Photosynthesis is the process by which"):
        assert text.count(prompt) >= 3  # header, float and gptq lines
