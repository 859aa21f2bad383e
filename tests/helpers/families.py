"""Every text CausalLM family of KerasHub 0.32 as a tiny random-init model.

`FAMILIES` maps a family name to a `Family`: the KerasHub class names and
the backbone arguments of a 2-layer model with vocabulary `VOCAB` (as in
`helpers.models`) and widths of a few dozen, which builds in about a
second. Mixture-of-experts families have 4 experts, top 2. Aliases
(`Qwen2CausalLM` is `QwenCausalLM`, `SmolLMCausalLM` is `SmolLM3CausalLM`)
are listed in `ALIASES`, not built twice.

Not in the table (measured on tiny models, torch):
- Gemma3n: its blocks live in `backbone.language_model` (KerasHub's
  `get_quantization_layer_structure` finds none) and take one tuple
  `(AltUp-stacked hidden states, per-layer inputs, mask)`: the walker
  would need a per-family adapter for block inputs and outputs.
- Gemma4: quantize runs (position ids are fed), but its blocks compute
  the feed-forward with `ops.matmul(x, layer.kernel)`, bypassing the
  Dense layers' `call`, so their inputs are never seen and 6 of 14 layers
  are skipped; and `CausalLM.from_preset` of any Gemma4 preset picks
  `Gemma4AssistantCausalLM` (KerasHub's `find_subclass`), which fails.
- RWKV7: its blocks are `backbone.rwkv_layers` (not `transformer_layers`)
  and return `(x, v_first)`, where `v_first` from block 0 feeds every
  later block: the walker carries only the hidden states.
"""

import dataclasses

import keras
import keras_hub

from helpers.models import VOCAB


@dataclasses.dataclass(frozen=True)
class Family:
    """One CausalLM family.

    Attributes:
        causal_lm: the `keras_hub.models` CausalLM class name.
        backbone: the `keras_hub.models` backbone class name.
        kwargs: the tiny backbone's arguments (vocabulary added).
        moe: whether the feed-forward layers are mixtures of experts.
        vocabulary_arg: the backbone argument naming the vocabulary size.
    """

    causal_lm: str
    backbone: str
    kwargs: dict
    moe: bool = False
    vocabulary_arg: str = "vocabulary_size"


_GQA = dict(num_layers=2, num_query_heads=4, num_key_value_heads=2,
            hidden_dim=64, intermediate_dim=128)
_MHA = dict(num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128)

FAMILIES = {
    "gpt2": Family("GPT2CausalLM", "GPT2Backbone",
                   dict(_MHA, max_sequence_length=128)),
    "opt": Family("OPTCausalLM", "OPTBackbone",
                  dict(_MHA, max_sequence_length=128, dropout=0.0)),
    "bloom": Family("BloomCausalLM", "BloomBackbone", _MHA),
    "falcon": Family("FalconCausalLM", "FalconBackbone", dict(
        num_layers=2, num_attention_heads=4, hidden_dim=64,
        intermediate_dim=128)),
    "gpt_neox": Family("GPTNeoXCausalLM", "GPTNeoXBackbone",
                       dict(_MHA, max_sequence_length=128)),
    "gemma": Family("GemmaCausalLM", "GemmaBackbone", dict(
        _GQA, hidden_dim=48, intermediate_dim=96, head_dim=16)),
    # Query kernel (heads=4, hidden=48, head_dim=64): the hidden axis is
    # not the largest, which Keras 3.15's own GPTQ layout misreads.
    "gemma3": Family("Gemma3CausalLM", "Gemma3Backbone", dict(
        _GQA, hidden_dim=48, intermediate_dim=96, head_dim=64,
        image_size=16, vision_encoder=None)),
    "llama": Family("LlamaCausalLM", "LlamaBackbone", _GQA),
    "llama3": Family("Llama3CausalLM", "Llama3Backbone", _GQA),
    "mistral": Family("MistralCausalLM", "MistralBackbone", _GQA),
    "mixtral": Family("MixtralCausalLM", "MixtralBackbone", dict(
        _GQA, num_experts=4, top_k=2), moe=True),
    "phi3": Family("Phi3CausalLM", "Phi3Backbone", dict(
        _GQA, max_sequence_length=128, pretraining_sequence_length=128)),
    "qwen": Family("QwenCausalLM", "QwenBackbone", _GQA),
    "qwen3": Family("Qwen3CausalLM", "Qwen3Backbone", dict(
        _GQA, head_dim=16)),
    "qwen_moe": Family("QwenMoeCausalLM", "QwenMoeBackbone", dict(
        _GQA, moe_intermediate_dim=32, shared_expert_intermediate_dim=64,
        num_experts=4, top_k=2), moe=True),
    "qwen3_moe": Family("Qwen3MoeCausalLM", "Qwen3MoeBackbone", dict(
        _GQA, head_dim=16, moe_intermediate_dim=32, num_experts=4,
        top_k=2), moe=True),
    # One Gated DeltaNet (linear attention) layer, one full attention one.
    "qwen3_5": Family("Qwen3_5CausalLM", "Qwen3_5Backbone", dict(
        _GQA, head_dim=16, layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16)),
    "qwen3_5_moe": Family("Qwen3_5MoeCausalLM", "Qwen3_5MoeBackbone", dict(
        num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=64, head_dim=16, moe_intermediate_dim=32,
        shared_expert_intermediate_size=64, num_experts=4, top_k=2,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16), moe=True),
    "smollm3": Family("SmolLM3CausalLM", "SmolLM3Backbone", dict(
        hidden_dim=64, intermediate_dim=128, num_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attention_bias=False,
        attention_dropout=0.0, rope_layer_enabled_list=[True, False],
        layer_types=["attention", "attention"], mlp_bias=False,
        layer_norm_epsilon=1e-5, max_position_embeddings=128,
        rope_theta=10000.0, partial_rotary_factor=1.0)),
    "gpt_oss": Family("GptOssCausalLM", "GptOssBackbone", dict(
        _GQA, head_dim=16, num_experts=4, top_k=2, sliding_window=32),
        moe=True),
}

# keras_hub 0.32 names that are the same classes as a family above.
ALIASES = {"Qwen2CausalLM": "qwen", "SmolLMCausalLM": "smollm3"}


def build_family(name, **overrides):
    """A tiny random-init CausalLM of family `name`, without preprocessor,
    the same weights on every call; `overrides` replace backbone
    arguments."""
    family = FAMILIES[name]
    keras.utils.set_random_seed(0)
    backbone_cls = getattr(keras_hub.models, family.backbone)
    backbone = backbone_cls(**{family.vocabulary_arg: VOCAB},
                            **dict(family.kwargs, **overrides))
    cls = getattr(keras_hub.models, family.causal_lm)
    return cls(backbone=backbone, preprocessor=None)
