"""The float transformers `config.json` of a family, both ways.

Export: KerasHub's own exporter config (`hf_exporter.MODEL_CONFIGS`) where
it has one, completed with what transformers would otherwise default
differently; a small function here where it has none. Import: KerasHub's
converter (`convert_backbone_config`), with the values it assumes read
from the config instead; a small function here for Phi-3, OPT and Bloom,
which KerasHub 0.32 cannot convert from transformers. Settings a Keras backbone
or the transformers architecture cannot express are refused.
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
    """KerasHub's transformers converter module for `model_type` (not for
    Phi-3, OPT and Bloom)."""
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


def _phi3(backbone):
    if backbone.rope_scaling_type is not None:
        raise ValueError("Cannot export a Phi3Backbone with rope scaling "
                         f"({backbone.rope_scaling_type!r}) yet.")
    config = _decoder(backbone, "phi3")
    config.update(
        rope_scaling=None, max_position_embeddings=(
            backbone.max_sequence_length),
        original_max_position_embeddings=backbone.pretraining_sequence_length,
        pad_token_id=None, bos_token_id=1, eos_token_id=32000)
    return config


def _opt(backbone):
    return {
        "model_type": "opt", "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "word_embed_proj_dim": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "ffn_dim": backbone.intermediate_dim,
        "max_position_embeddings": backbone.max_sequence_length,
        "activation_function": "relu", "do_layer_norm_before": True,
        "enable_bias": True, "layer_norm_elementwise_affine": True,
        "_remove_final_layer_norm": False, "tie_word_embeddings": True,
    }


def _bloom(backbone):
    if backbone.intermediate_dim != 4 * backbone.hidden_dim:
        raise ValueError("BloomForCausalLM's MLP is 4 * hidden_dim wide; "
                         f"this BloomBackbone's is {backbone.intermediate_dim}.")
    return {
        "model_type": "bloom", "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim, "n_layer": backbone.num_layers,
        "n_head": backbone.num_heads,
        "layer_norm_epsilon": backbone.layer_norm_epsilon,
        "apply_residual_connection_post_layernorm": False,
        "pretraining_tp": 1, "slow_but_exact": False,
        "tie_word_embeddings": True,
    }


# Families KerasHub 0.32 has no transformers converter for.
_OWN = {"phi3": _phi3, "opt": _opt, "bloom": _bloom}


def _own_backbone_kwargs(model_type, config):
    """Backbone arguments of the families KerasHub has no converter for."""
    if model_type == "phi3":
        if config.get("rope_scaling"):
            raise ValueError("Phi-3 checkpoints with rope_scaling are not "
                             "supported yet.")
        return dict(
            vocabulary_size=config["vocab_size"],
            num_layers=config["num_hidden_layers"],
            hidden_dim=config["hidden_size"],
            intermediate_dim=config["intermediate_size"],
            num_query_heads=config["num_attention_heads"],
            num_key_value_heads=config.get("num_key_value_heads",
                                           config["num_attention_heads"]),
            layer_norm_epsilon=config.get("rms_norm_eps", 1e-5),
            max_sequence_length=config["max_position_embeddings"],
            pretraining_sequence_length=config.get(
                "original_max_position_embeddings",
                config["max_position_embeddings"]),
            rope_max_wavelength=config.get("rope_theta", 10000.0))
    if model_type == "bloom":
        if config.get("apply_residual_connection_post_layernorm"):
            raise ValueError("BloomBackbone adds the residual before the "
                             "layer norm.")
        hidden = config.get("hidden_size", config.get("n_embed"))
        return dict(vocabulary_size=config["vocab_size"],
                    num_layers=config["n_layer"], num_heads=config["n_head"],
                    hidden_dim=hidden, intermediate_dim=4 * hidden,
                    layer_norm_epsilon=config.get("layer_norm_epsilon",
                                                  1e-5))
    if (not config.get("do_layer_norm_before", True)
            or config.get("word_embed_proj_dim", config["hidden_size"])
            != config["hidden_size"]
            or config.get("activation_function", "relu") != "relu"):
        raise ValueError("OPTBackbone needs do_layer_norm_before, relu and "
                         "word_embed_proj_dim == hidden_size (not OPT-350m).")
    return dict(vocabulary_size=config["vocab_size"],
                num_layers=config["num_hidden_layers"],
                num_heads=config["num_attention_heads"],
                hidden_dim=config["hidden_size"],
                intermediate_dim=config["ffn_dim"], dropout=0.0,
                max_sequence_length=config["max_position_embeddings"])


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
    if family.model_type in _OWN:
        config = _OWN[family.model_type](backbone)
    elif name in hf_exporter.MODEL_CONFIGS:
        config = hf_exporter.MODEL_CONFIGS[name](backbone)
    else:
        config = _decoder(backbone, family.model_type)
    config.update(_completions(backbone, family.model_type))
    config["architectures"] = [family.architecture]
    config["torch_dtype"] = "float32"
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer",
                        None)
    for kind, attr in (("bos", "start_token_id"), ("eos", "end_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            config[f"{kind}_token_id"] = int(value)
        elif (config.get(f"{kind}_token_id") or 0) >= (
                backbone.vocabulary_size):  # GPT-2's 50256 in a tiny vocab
            config[f"{kind}_token_id"] = None
    return config


def backbone_kwargs(model_type, config):
    """Keras backbone arguments from a transformers config dict."""
    if model_type in _OWN:
        return _own_backbone_kwargs(model_type, config)
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
