"""Every change keras_gptq makes to Keras and KerasHub, in one place.

`import keras_gptq` calls `install()`, which applies the patches below
once, in this order. Each replaces the listed attributes with a wrapper
that changes behaviour only for keras_gptq's own objects (a
`keras_gptq.GPTQConfig`, a layer with a `PackedGPTQPolicy`, a preset that
holds such layers) or only where stock KerasHub would lose a user's work;
everything else reaches the original.

| # | target | pinned | why |
|---|---|---|---|
| 1 | `keras.Model.quantize` (and the per-instance `quantize` of models that exist at import) | keras 3.15.1 | `model.quantize("gptq", config=keras_gptq.GPTQConfig)` runs keras_gptq's pipeline, whatever the import order |
| 2 | `keras.src.layers.layer.validate_and_resolve_config` | keras 3.15.1 | Keras's per-layer config check accepts a `keras_gptq.GPTQConfig` |
| 3 | `Dense`, `EinsumDense`: `_gptq_build`, `_gptq_call`, `save_own_variables`, `load_own_variables`, `kernel` | keras 3.15.1 | packed storage for `PackedGPTQPolicy` layers; a clear error when a model made before the import gets our config |
| 4 | `KerasPresetLoader.load_backbone` | keras-hub 0.32.0 | `Backbone.from_preset` drops the saved dtype-policy map, so packed layers would rebuild as float |
| 5 | `LlamaBackbone.get_config` | keras-hub 0.32.0 | omits `tie_word_embeddings`: a tied model (SmolLM2) reloads untied |
| 6 | `Llama3Tokenizer.get_config`, `.from_config` | keras-hub 0.32.0 | omit non-default special tokens: SmolLM2's tokenizer cannot be rebuilt |
| 7 | `save_to_preset` of `Task`, `Backbone`, `Preprocessor`, `Tokenizer` | keras-hub 0.32.0 | a failed save must not destroy the existing preset (write aside, swap in) |
| 8 | `preset_utils.load_json`, `KerasPresetLoader._load_backbone_weights` | keras-hub 0.32.0 | a corrupt file gets `CorruptPresetError` naming the file, not a bare h5py/JSON error |
| 9 | expert banks (`MixtralMoeExperts`, `QwenMoeExperts`, `Qwen3MoeExperts`, `Qwen3_5MoeExperts`, `GptOssExperts`): `build`, `_gptq_call`, `save_own_variables`, `load_own_variables` | keras-hub 0.32.0 | packed storage for `PackedGPTQPolicy` expert banks, which Keras cannot build, call, save or load quantized; Mixtral/QwenMoe/Qwen3Moe MoE blocks (`__init__`) get a fixed name, so saved path-keyed policies find them in any process |
| 10 | `SmolLM3Attention.build` | keras-hub 0.32.0 | builds `o_proj` outside its name scope: every layer's `o_proj` has the path `"o_proj"`, so a quantized model's dtype-policy map cannot be saved |
| 11 | `KerasPresetLoader._load_backbone_weights` | keras-hub 0.32.0 | a backbone that does not pass its `dtype` down (SmolLM3) rebuilds its packed layers as float: they get packed storage before the weights load |
| 12 | `keras.src.saving.saving_lib._walk_saveable`, `.get_attr_skipset` | keras 3.15.1 | the saving walk reads every layer attribute looking for sublayers; a packed layer's `kernel` dequantizes its whole matrix, on every save and load |

The pinned versions are the ones `pyproject.toml` allows
(`keras>=3.15.1,<3.16`, `keras-hub>=0.32,<0.33`); a new Keras or KerasHub
release means reading each target again.
"""

import dataclasses

import keras

from keras_gptq.keras_patches import expert_layers
from keras_gptq.keras_patches import packed_layers
from keras_gptq.keras_patches import presets
from keras_gptq.keras_patches import quantize_route
from keras_gptq.keras_patches import saving

KERAS_PIN = "3.15.1"
KERAS_HUB_PIN = "0.32.0"


@dataclasses.dataclass(frozen=True)
class Patch:
    """One row of the table: what is replaced, against which version, why.

    Attributes:
        targets: the replaced attributes, as importable dotted names.
        pinned: the library version the patch was written against.
        reason: what goes wrong without it.
        install: the function that applies it.
    """

    targets: tuple
    pinned: str
    reason: str
    install: object


_KERAS = f"keras {KERAS_PIN}"
_HUB = f"keras-hub {KERAS_HUB_PIN}"
_LAYER_HOOKS = ("_gptq_build", "_gptq_call", "save_own_variables",
                "load_own_variables", "kernel")
_PRESET_LOADER = "keras_hub.src.utils.preset_utils.KerasPresetLoader"

PATCHES = (
    Patch(("keras.Model.quantize",), _KERAS,
          "route a keras_gptq.GPTQConfig to keras_gptq.quantize, also on "
          "models created before the import",
          quantize_route.route_model_quantize),
    Patch(("keras.src.layers.layer.validate_and_resolve_config",), _KERAS,
          "accept a keras_gptq.GPTQConfig", quantize_route.accept_config),
    Patch(tuple(f"keras.layers.{cls.__name__}.{hook}"
                for cls in packed_layers.CLASSES for hook in _LAYER_HOOKS),
          _KERAS, "packed storage; refuse our config on pre-import models",
          packed_layers.install),
    Patch((f"{_PRESET_LOADER}.load_backbone",), _HUB,
          "keep a saved keras_gptq dtype-policy map",
          presets.keep_saved_policy_map),
    Patch(("keras_hub.src.models.llama.llama_backbone.LlamaBackbone"
           ".get_config",), _HUB, "save tie_word_embeddings",
          presets.save_tied_embeddings),
    Patch(tuple("keras_hub.src.models.llama3.llama3_tokenizer"
                f".Llama3Tokenizer.{name}" for name in (
                    "get_config", "from_config")), _HUB,
          "save non-default special tokens",
          presets.save_llama3_special_tokens),
    Patch(tuple(f"keras_hub.src.{module}.save_to_preset" for module in (
        "models.task.Task", "models.backbone.Backbone",
        "models.preprocessor.Preprocessor", "tokenizers.tokenizer.Tokenizer")),
          _HUB, "all-or-nothing save_to_preset",
          saving.atomic_save_to_preset),
    Patch(("keras_hub.src.utils.preset_utils.load_json",
           f"{_PRESET_LOADER}._load_backbone_weights"), _HUB,
          "CorruptPresetError naming the file", saving.name_corrupt_files),
    Patch(expert_layers.targets(), _HUB,
          "packed storage for quantized expert banks",
          expert_layers.install),
    Patch(("keras_hub.src.models.smollm3.smollm3_layers.SmolLM3Attention"
           ".build",), _HUB, "unique o_proj paths",
          presets.scope_smollm3_o_proj),
    Patch((f"{_PRESET_LOADER}._load_backbone_weights",), _HUB,
          "pack layers the saved policy map names, before loading",
          presets.pack_layers_before_loading),
    Patch(tuple(f"keras.src.saving.saving_lib.{name}" for name in (
        "_walk_saveable", "get_attr_skipset")), _KERAS,
          "saves and loads never dequantize a packed kernel",
          packed_layers.skip_packed_kernels),
)

_MARKER = "_keras_gptq_patches"  # on keras.Model: survives a reload of us


def install():
    """Applies every patch of `PATCHES` once, in order (idempotent).

    Returns:
        The installed `Patch`es.
    """
    if getattr(keras.Model, _MARKER, None) is None:
        for patch in PATCHES:
            patch.install()
        setattr(keras.Model, _MARKER, PATCHES)
    return getattr(keras.Model, _MARKER)
