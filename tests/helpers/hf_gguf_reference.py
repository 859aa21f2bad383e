"""Transformers' own GGUF loader as an independent reference (own venv).

Run with a Python that has torch, transformers and gguf (not keras_gptq's
venv): it loads `<folder>/<gguf_file>` with
`AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)` and
`AutoTokenizer.from_pretrained(folder, gguf_file=...)`, then writes
`<out>.npz` with, for each text of the JSON list in `<texts>`: its token
ids (`ids_<i>`) and, for the first `--logit-texts` texts, the float32
logits on those ids (`logits_<i>`).

Usage: python hf_gguf_reference.py FOLDER GGUF_FILE TEXTS_JSON OUT_NPZ
       [--logit-texts N]
"""

import argparse
import json
import os
import sys

# This folder holds a `gguf.py` of its own: keep it off the import path.
sys.path[:] = [p for p in sys.path
               if os.path.abspath(p or ".") != os.path.dirname(
                   os.path.abspath(__file__))]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    for name in ("folder", "gguf_file", "texts", "out"):
        p.add_argument(name)
    p.add_argument("--logit-texts", type=int, default=3)
    args = p.parse_args()
    with open(args.texts, encoding="utf-8") as f:
        texts = json.load(f)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        args.folder, gguf_file=args.gguf_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.folder, gguf_file=args.gguf_file, dtype=torch.float32)
    model.eval()
    arrays = {"transformers_version": np.array(transformers.__version__)}
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        arrays[f"ids_{i}"] = np.asarray(ids, dtype=np.int64)
        if i < args.logit_texts:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0]
            arrays[f"logits_{i}"] = logits.float().numpy()
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
