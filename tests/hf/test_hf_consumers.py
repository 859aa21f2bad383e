"""Real consumers read what `export_hf` writes (skipped when not installed).

GPTQModel (its CPU torch kernel) loads the GPTQ folder itself. It is not
a keras_gptq dependency; see README ("Hugging Face GPTQ interchange") for
the versions this was run with. transformers' float models of every family
on the spec-dequantized weights: `test_hf_families.py`.
"""

import numpy as np
import pytest

import keras_gptq
from helpers.models import logits
from helpers.models import markov_tokens
from helpers.hf import packed_model

TOKENS = markov_tokens(64, seed=5).reshape(2, 32)
CASES = [  # family, bits, group_size, sym, act_order, checkpoint_format
    ("llama3", 4, 32, True, True, "gptq"),
    ("llama3", 3, 32, False, True, "gptq_v2"),
    ("llama3", 2, -1, False, False, "gptq_v2"),
    ("gpt2", 4, 32, True, True, "gptq"),
    ("gpt2", 8, -1, False, True, "gptq_v2"),
]


@pytest.mark.parametrize("family,bits,group_size,sym,act_order,fmt", CASES)
def test_gptqmodel_loads_the_export(tmp_path, family, bits, group_size, sym,
                                    act_order, fmt):
    pytest.importorskip("gptqmodel", reason="GPTQModel is not installed")
    import torch
    from gptqmodel import BACKEND
    from gptqmodel import GPTQModel

    model = packed_model(family, bits, group_size, sym, act_order)
    keras_gptq.export_hf(model, tmp_path / "hf", checkpoint_format=fmt)
    # Its torch kernel loads float16/bfloat16 only; run it in float32 after.
    loaded = GPTQModel.load(str(tmp_path / "hf"), device="cpu",
                            backend=BACKEND.TORCH, dtype=torch.float16)
    loaded.model.float()
    with torch.no_grad():
        got = loaded.model(torch.tensor(TOKENS).long()).logits.numpy()
    want = logits(model, TOKENS)
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())
