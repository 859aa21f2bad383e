"""keras_gptq: GPTQ post-training weight quantization for Keras 3 and KerasHub.

Public API:
    GPTQConfig: every setting of a run, validated.
    quantize(model, config, filters=None): quantize in place; returns a report.
    quantize_preset(preset, output_dir, config, filters=None): quantize a
        preset on disk block by block (low memory); save the result.
    evaluate_perplexity(model, data, ...): sliding-window perplexity.
    export_hf(model, folder, ...): write a Hugging Face GPTQ folder.
    load_hf_gptq(folder): load a Hugging Face GPTQ folder as a CausalLM.

Importing this package applies keras_gptq's patches of Keras and KerasHub
(all listed, with the reason for each, in `keras_gptq.keras_patches`):
`model.quantize("gptq", config=...)` with a `keras_gptq.GPTQConfig` runs
`quantize`, `from_preset` reloads keras_gptq presets, and `save_to_preset`
is all-or-nothing.
"""

from keras_gptq import keras_patches as _keras_patches
from keras_gptq.config import GPTQConfig
from keras_gptq.evaluation import evaluate_perplexity
from keras_gptq.hf.export import export_hf
from keras_gptq.hf.load import load_hf_gptq
from keras_gptq.model.low_memory import quantize_preset
from keras_gptq.model.pipeline import quantize

_keras_patches.install()

__all__ = ["GPTQConfig", "evaluate_perplexity", "export_hf", "load_hf_gptq",
           "quantize", "quantize_preset"]
__version__ = "0.1.0"
