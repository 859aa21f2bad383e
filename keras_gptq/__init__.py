"""keras_gptq: GPTQ post-training weight quantization for Keras 3 and KerasHub.

Public API:
    GPTQConfig: every setting of a run, validated.
    quantize(model, config, filters=None): quantize in place; returns a report.
    evaluate_perplexity(model, data, ...): sliding-window perplexity.
    export_hf(model, folder, ...): write a Hugging Face GPTQ folder.
    load_hf_gptq(folder): load a Hugging Face GPTQ folder as a CausalLM.

Importing this package also routes `model.quantize("gptq", config=...)` with
a `keras_gptq.GPTQConfig` to `quantize`, registers the storage that lets
`from_preset` reload keras_gptq presets (see `keras_gptq.storage`), and makes
`save_to_preset` all-or-nothing (see `keras_gptq.saving`).
"""

from keras_gptq import integration as _integration  # noqa: F401
from keras_gptq import presets as _presets  # noqa: F401
from keras_gptq import saving as _saving  # noqa: F401
from keras_gptq import storage as _storage  # noqa: F401
from keras_gptq.config import GPTQConfig
from keras_gptq.evaluation import evaluate_perplexity
from keras_gptq.hf_export import export_hf
from keras_gptq.hf_import import load_hf_gptq
from keras_gptq.pipeline import quantize

__all__ = ["GPTQConfig", "evaluate_perplexity", "export_hf", "load_hf_gptq",
           "quantize"]
__version__ = "0.1.0"
