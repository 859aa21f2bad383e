"""KerasHub 0.32 preset fixes that keras_gptq presets need to reload.

Five narrow fixes; each changes behaviour only where stock KerasHub would
fail to reload a saved preset:

1. `Backbone.from_preset` overwrites the saved `DTypePolicyMap` with
   `dtype=None`, so quantized layers are rebuilt as float and their weights
   fail to load. For presets holding keras_gptq layers the saved map is kept
   (as `CausalLM.from_preset` already does).
2. `LlamaBackbone.get_config` omits `tie_word_embeddings`, so a preset of a
   tied model (SmolLM2, Llama 3.2 1B/3B) reloads untied and fails. The flag
   is saved when it is True.
3. `Llama3Tokenizer.get_config` omits its special tokens, so a tokenizer
   whose vocabulary lacks Llama 3's defaults (SmolLM2's) cannot be rebuilt.
   They are saved when they differ from the defaults.
4. `SmolLM3Attention` builds its `o_proj` in `__init__`, outside its own
   name scope, so every layer's `o_proj` has the path `"o_proj"`: the
   dtype-policy map of a quantized model cannot hold them all
   (`ValueError: o_proj already exist in the DTypePolicyMap`). Its path is
   set under the attention layer when that layer is built.
5. Some backbones (SmolLM3) do not pass their `dtype` down to their
   layers, so a saved dtype-policy map never reaches them and packed layers
   rebuild as float. Before a preset's weights load, every Dense or
   EinsumDense that the saved map marks as keras_gptq-packed but that was
   built float gets its packed storage.
"""

import keras
from keras_hub.src.models.llama.llama_backbone import LlamaBackbone
from keras_hub.src.models.llama3.llama3_tokenizer import Llama3Tokenizer
from keras_hub.src.models.smollm3.smollm3_layers import SmolLM3Attention
from keras_hub.src.utils import preset_utils

from keras_gptq import storage

_LLAMA3_DEFAULTS = ("<|begin_of_text|>", "<|end_of_text|>",
                    {"<|start_header_id|>", "<|end_header_id|>"})


def holds_packed_layers(saved_dtype):
    """True when a serialized backbone dtype maps layers to keras_gptq."""
    if not isinstance(saved_dtype, dict):
        return False
    policies = saved_dtype.get("config", {}).get("policy_map", {})
    return any(
        isinstance(p, dict)
        and str(p.get("registered_name", "")).startswith("keras_gptq>")
        for p in policies.values()
    )


def keep_saved_policy_map():
    """1: `Backbone.from_preset` keeps a saved keras_gptq policy map."""
    loader = preset_utils.KerasPresetLoader
    original = loader.load_backbone

    def load_backbone(self, cls, load_weights, **kwargs):
        saved = self.config.get("config", {}).get("dtype")
        if kwargs.get("dtype") is None and holds_packed_layers(saved):
            kwargs["dtype"] = saved
        return original(self, cls, load_weights, **kwargs)

    loader.load_backbone = load_backbone


def save_tied_embeddings():
    """2: `LlamaBackbone.get_config` records `tie_word_embeddings`."""
    original = LlamaBackbone.get_config

    def get_config(self):
        config = original(self)
        if getattr(self, "tie_word_embeddings", False):
            config.setdefault("tie_word_embeddings", True)
        return config

    LlamaBackbone.get_config = get_config


def save_llama3_special_tokens():
    """3: `Llama3Tokenizer` configs keep non-default special tokens."""
    original_get_config = Llama3Tokenizer.get_config
    original_from_config = Llama3Tokenizer.from_config.__func__

    def get_config(self):
        config = original_get_config(self)
        misc = {getattr(self, a) for a in getattr(
            self, "_special_token_attrs", []) if a.startswith("special_token_")}
        bos, eos = getattr(self, "start_token", None), getattr(
            self, "end_token", None)
        if (bos, eos, misc) != _LLAMA3_DEFAULTS and bos and eos:
            config.update(bos_token=bos, eos_token=eos,
                          misc_special_tokens=sorted(misc))
        return config

    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("misc_special_tokens"), list):
            config["misc_special_tokens"] = set(config["misc_special_tokens"])
        return original_from_config(cls, config)

    Llama3Tokenizer.get_config = get_config
    Llama3Tokenizer.from_config = classmethod(from_config)


def scope_smollm3_o_proj():
    """4: SmolLM3's `o_proj` gets a path under its attention layer."""
    original = SmolLM3Attention.build

    def build(self, input_shape):
        original(self, input_shape)
        o_proj = self.o_proj
        if o_proj.path == o_proj.name and self.path:
            o_proj._path = f"{self.path}/{o_proj.name}"

    SmolLM3Attention.build = build


def packed_layers_missing_policy(backbone):
    """`[(layer, policy)]`: Dense/EinsumDense layers of `backbone` that its
    dtype-policy map marks as packed but that were built float."""
    policy_map = getattr(backbone, "_dtype_policy", None)
    if not isinstance(policy_map, keras.dtype_policies.DTypePolicyMap):
        return []
    saved = {path: policy for path, policy in policy_map.items()
             if isinstance(policy, storage.PackedGPTQPolicy)}
    return [(layer, saved[layer.path]) for layer in backbone._flatten_layers()
            if isinstance(layer, (keras.layers.Dense,
                                  keras.layers.EinsumDense))
            and layer.built and layer.path in saved
            and not storage.is_packed(layer)]


def pack_layers_before_loading():
    """5: layers the saved policy map marks as packed are packed before
    the preset's weights load, even where the backbone did not pass its
    `dtype` down to them."""
    loader = preset_utils.KerasPresetLoader
    original = loader._load_backbone_weights

    def _load_backbone_weights(self, backbone):
        for layer, policy in packed_layers_missing_policy(backbone):
            storage.make_packed(layer, policy)
        return original(self, backbone)

    loader._load_backbone_weights = _load_backbone_weights
