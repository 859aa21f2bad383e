"""Runs transformers' float model of a folder on token ids (run in the
transformers venv, `$KERAS_GPTQ_HF_PYTHON`, by `tests/hf`).

Usage: python hf_float_reference.py FOLDER [FOLDER ...]: each FOLDER holds
a float transformers checkpoint and `tokens.npy` (`[batch, seq]` ids); the
float32 logits are written to `FOLDER/logits.npy`.
"""

import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main(folders):
    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32).eval()
        tokens = torch.tensor(np.load(f"{folder}/tokens.npy")).long()
        with torch.no_grad():
            logits = model(tokens).logits.numpy()
        np.save(f"{folder}/logits.npy", logits)


if __name__ == "__main__":
    main(sys.argv[1:])
