"""The float transformers `config.json` of a family, both ways.

Export: KerasHub's own exporter config (`hf_exporter.MODEL_CONFIGS`) where
it has one, completed with what transformers would otherwise default
differently; a small function here where it has none. Import: KerasHub's
converter (`convert_backbone_config`), with the values it assumes read
from the config instead, and settings a Keras backbone cannot express
refused.
"""

import importlib

from keras_hub.src.utils.transformers.export import hf_exporter

_CONVERTERS = "keras_hub.src.utils.transformers.convert_"
CONVERTERS = {  # model_type: KerasHub converter module
    "llama": "llama3", "gpt2": "gpt2", "gemma": "gemma",
    "gemma3_text": "gemma3", "mistral": "mistral", "qwen2": "qwen",
    "qwen3": "qwen3", "mixtral": "mixtral", "qwen2_moe": "qwen_moe",
    "qwen3_moe": "qwen3_moe",
}


def converter(model_type):
    """KerasHub's transformers converter module for `model_type`."""
    return importlib.import_module(_CONVERTERS + CONVERTERS[model_type])


def _decoder(backbone, model_type):
    """The config of the families KerasHub has no exporter for."""
    config = {
        "model_type": model_type, "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "intermediate_size": backbone.intermediate_dim, "hidden_act": "silu",
        "rms_norm_eps": backbone.layer_norm_epsilon,
        "rope_theta": backbone.rope_max_wavelength,
        "tie_word_embeddings": bool(getattr(backbone, "tie_word_embeddings",
                                            False)),
    }
    if model_type in ("qwen3", "qwen3_moe"):
        config.update(head_dim=backbone.head_dim, attention_bias=False)
    if model_type == "mixtral":
        config.update(
            head_dim=backbone.hidden_dim // backbone.num_query_heads,
            num_local_experts=backbone.num_experts,
            num_experts_per_tok=backbone.top_k,
            sliding_window=backbone.sliding_window,
            router_jitter_noise=backbone.router_jitter_noise,
            router_aux_loss_coef=backbone.router_aux_loss_coef,
            output_router_logits=False)
    if model_type in ("qwen2_moe", "qwen3_moe"):
        config.update(
            moe_intermediate_size=backbone.moe_intermediate_dim,
            num_experts=backbone.num_experts,
            num_experts_per_tok=backbone.top_k,
            norm_topk_prob=backbone.norm_top_k_prob,
            decoder_sparse_step=1, mlp_only_layers=[],
            router_aux_loss_coef=backbone.router_aux_loss_coefficient,
            output_router_logits=False)
    if model_type == "qwen2_moe":
        config.update(shared_expert_intermediate_size=(
            backbone.shared_expert_intermediate_dim), qkv_bias=True)
    return config


def _completions(backbone, model_type):
    """Values KerasHub's exporter leaves to transformers' defaults."""
    if model_type == "gemma":
        return {"rms_norm_eps": backbone.layer_norm_epsilon,
                "hidden_activation": "gelu_pytorch_tanh"}
    if model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        window = getattr(backbone, "use_sliding_window_attention", False)
        return {"use_sliding_window": bool(window),
                "sliding_window": backbone.sliding_window_size if window
                else None}
    return {}


def _refusals(backbone, model_type):
    """Keras settings the transformers architecture cannot express."""
    if model_type in ("gemma", "gemma3_text"):
        post_norms = (backbone.use_post_ffw_norm,
                      backbone.use_post_attention_norm)
        if model_type == "gemma" and (any(post_norms) or (
                backbone.final_logit_soft_cap
                or backbone.attention_logit_soft_cap)):
            return "GemmaForCausalLM has no post norms or soft caps"
        if model_type == "gemma3_text" and not all(post_norms):
            return ("Gemma3ForCausalLM always has post-attention and "
                    "post-feed-forward norms")
    if model_type in ("qwen2_moe", "qwen3_moe") and (
            backbone.mlp_only_layers or backbone.decoder_sparse_step != 1):
        return ("every block must be a mixture of experts (mlp_only_layers "
                "empty, decoder_sparse_step 1)")
    return None


def hf_config(model, family):
    """The float transformers config of `model` (a `Family` member)."""
    backbone = model.backbone
    reason = _refusals(backbone, family.model_type)
    if reason:
        raise ValueError(f"Cannot export this {type(backbone).__name__}: "
                         f"{reason}.")
    name = type(backbone).__name__
    config = (hf_exporter.MODEL_CONFIGS[name](backbone)
              if name in hf_exporter.MODEL_CONFIGS
              else _decoder(backbone, family.model_type))
    config.update(_completions(backbone, family.model_type))
    config["architectures"] = [family.architecture]
    config["torch_dtype"] = "float32"
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer",
                        None)
    for kind, attr in (("bos", "start_token_id"), ("eos", "end_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            config[f"{kind}_token_id"] = int(value)
        elif config.get(f"{kind}_token_id", 0) >= backbone.vocabulary_size:
            del config[f"{kind}_token_id"]  # GPT-2's 50256 in a tiny vocab
    return config


def backbone_kwargs(model_type, config):
    """Keras backbone arguments from a transformers config dict."""
    kwargs = converter(model_type).convert_backbone_config(config)
    if model_type == "llama":
        heads = config["num_attention_heads"]
        if config.get("head_dim", config["hidden_size"] // heads) * heads != (
                config["hidden_size"]):
            raise ValueError("Llama3Backbone needs head_dim * heads == "
                             "hidden_size.")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise ValueError("Llama3Backbone has no attention or MLP biases.")
        kwargs["layer_norm_epsilon"] = config.get("rms_norm_eps", 1e-6)
        kwargs["tie_word_embeddings"] = config.get("tie_word_embeddings",
                                                   False)
    elif model_type == "gpt2":
        kwargs["intermediate_dim"] = (config.get("n_inner")
                                      or 4 * config["n_embd"])
        if config.get("layer_norm_epsilon", 1e-5) != 1e-5:
            raise ValueError("GPT2Backbone uses layer_norm_epsilon=1e-5.")
    elif model_type == "gemma":
        kwargs["layer_norm_epsilon"] = config.get("rms_norm_eps", 1e-6)
    elif model_type == "qwen2_moe":  # KerasHub's converter misnames it
        kwargs["use_sliding_window_attention"] = kwargs.pop(
            "use_sliding_window")
    if model_type in ("qwen2_moe", "qwen3_moe"):
        if config.get("mlp_only_layers") or config.get(
                "decoder_sparse_step", 1) != 1:
            raise ValueError("keras_gptq loads MoE checkpoints whose every "
                             "block is a mixture of experts.")
        kwargs["tie_word_embeddings"] = config.get("tie_word_embeddings",
                                                   False)
    return kwargs
