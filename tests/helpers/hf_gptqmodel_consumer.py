"""Loads `export_hf` folders with GPTQModel (its CPU torch kernel) and runs
them on token ids (run in the transformers venv, `$KERAS_GPTQ_HF_PYTHON`,
by `tests/hf/test_hf_consumers.py`).

Usage: python hf_gptqmodel_consumer.py OUT FOLDER [FOLDER ...]: each FOLDER
holds an exported GPTQ checkpoint and `tokens.npy` (`[batch, seq]` ids).
Writes `FOLDER/logits.npy` (float32), or `FOLDER/error.txt` (the exception
type and message) when GPTQModel refuses the folder, and `OUT` (JSON: the
versions of gptqmodel, transformers and torch).

GPTQModel insists on a tokenizer; a folder without one (the tiny test
models have none) gets a word-level tokenizer over the vocabulary first.
Only token ids are fed, so the tokenizer never touches the numbers.
GPTQModel's torch kernel loads float16 only: the model runs in float32
after loading, with the float (unquantized) tensors read again at float32.
"""

import json
import os
import sys
from importlib import metadata

import numpy as np
import torch


def ensure_tokenizer(folder):
    """Writes a word-level tokenizer over `config.json`'s vocabulary into
    `folder` unless it has a `tokenizer.json`."""
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return
    from tokenizers import Tokenizer
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        vocab = json.load(f)["vocab_size"]
    words = Tokenizer(models.WordLevel(
        {f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    # Named pad/eos tokens inside the vocabulary: otherwise GPTQModel's
    # tokenizer wrapper adds a pad token past the embedding table.
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0",
                            pad_token="t0", bos_token="t1",
                            eos_token="t1").save_pretrained(folder)


def restore_float_tensors(model, folder):
    """Puts the folder's float tensors (every one outside a quantized
    module) back into `model` at float32: GPTQModel loads them as float16,
    which can flip a mixture-of-experts router's near-tie; the quantized
    modules stay as GPTQModel's kernel holds them."""
    from safetensors.torch import load_file
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    quantized = {k[:-len(".qweight")] for k in tensors
                 if k.endswith(".qweight")}
    floats = {k: v.float() for k, v in tensors.items()
              if k.rsplit(".", 1)[0] not in quantized}
    unexpected = model.load_state_dict(floats, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"float tensors GPTQModel's model lacks: {unexpected}")


def run(folder):
    """GPTQModel's logits of `folder` on its `tokens.npy`."""
    from gptqmodel import BACKEND
    from gptqmodel import GPTQModel
    ensure_tokenizer(folder)
    # Its torch kernel loads float16/bfloat16 only; run it in float32 after.
    loaded = GPTQModel.load(folder, device="cpu", backend=BACKEND.TORCH,
                            dtype=torch.float16)
    loaded.model.float()
    restore_float_tensors(loaded.model, folder)
    tokens = torch.tensor(np.load(os.path.join(folder, "tokens.npy"))).long()
    with torch.no_grad():
        return loaded.model(tokens).logits.float().numpy()


def main(out, folders):
    with open(out, "w") as f:
        json.dump({name: metadata.version(name) for name in
                   ("gptqmodel", "transformers", "torch")}, f)
    for folder in folders:
        try:
            np.save(os.path.join(folder, "logits.npy"), run(folder))
        except Exception as error:  # noqa: BLE001  (reported to the test)
            with open(os.path.join(folder, "error.txt"), "w") as f:
                f.write(f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
