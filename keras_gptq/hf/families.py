"""Which KerasHub models map to which transformers architectures, and how.

A family names, per transformer block, each transformers linear module and
the Keras layers that make it: one layer for most, three (q, k, v) for
GPT-2's fused `attn.c_attn`. A Keras layer's `W[out, in]` (its
`MatrixLayout`) is already the transformers `weight[out, in]` of the module
(Conv1D's weight transposed): KerasHub's own converters fill `(hidden,
heads, head_dim)` kernels by transposing and reshaping that matrix, and the
layout flattens the kernel back in the same axis order. Fused modules
stack their parts along `out`.

Everything else (embeddings, norms, lm_head, biases, the float config and
the tokenizer) goes through KerasHub's own transformers converters and
exporters, so names and layouts agree with theirs by construction.
"""

import dataclasses
import functools
import importlib

from keras_hub.src.utils.transformers.export import hf_exporter


@dataclasses.dataclass(frozen=True)
class Family:
    """One supported architecture, declared as data.

    Attributes:
        causal_lm: the KerasHub CausalLM class name.
        model_type: transformers `model_type`.
        architecture: transformers `architectures[0]`.
        converter: KerasHub module converting the HF folder (config/weights).
        block_prefix: the transformers name of block `i`, with `{i}`.
        modules: `{hf module name in the block: (keras layer attribute
            paths in the block, ...)}`; several paths are a fused module,
            their rows stacked in that order.
    """

    causal_lm: str
    model_type: str
    architecture: str
    converter: str
    block_prefix: str
    modules: dict

    def linear_modules(self, backbone):
        """`{hf module name: [keras layers]}` over every block."""
        table = {}
        for i in range(backbone.num_layers):
            block = backbone.get_layer(f"transformer_layer_{i}")
            prefix = self.block_prefix.format(i=i)
            for name, paths in self.modules.items():
                table[f"{prefix}.{name}"] = [
                    functools.reduce(getattr, path.split("."), block)
                    for path in paths]
        return table


_ATTENTION = "_self_attention_layer."
FAMILIES = (
    Family("Llama3CausalLM", "llama", "LlamaForCausalLM",
           "keras_hub.src.utils.transformers.convert_llama3",
           "model.layers.{i}", {
               "self_attn.q_proj": (_ATTENTION + "_query_dense",),
               "self_attn.k_proj": (_ATTENTION + "_key_dense",),
               "self_attn.v_proj": (_ATTENTION + "_value_dense",),
               "self_attn.o_proj": (_ATTENTION + "_output_dense",),
               "mlp.gate_proj": ("_feedforward_gate_dense",),
               "mlp.up_proj": ("_feedforward_intermediate_dense",),
               "mlp.down_proj": ("_feedforward_output_dense",),
           }),
    Family("GPT2CausalLM", "gpt2", "GPT2LMHeadModel",
           "keras_hub.src.utils.transformers.convert_gpt2",
           "transformer.h.{i}", {
               "attn.c_attn": (_ATTENTION + "_query_dense",
                               _ATTENTION + "_key_dense",
                               _ATTENTION + "_value_dense"),
               "attn.c_proj": (_ATTENTION + "_output_dense",),
               "mlp.c_fc": ("_feedforward_intermediate_dense",),
               "mlp.c_proj": ("_feedforward_output_dense",),
           }),
)


def supported():
    """A sentence listing the supported models, for error messages."""
    return ", ".join(f"{f.causal_lm} ({f.architecture})" for f in FAMILIES)


def family_of_model(model):
    """Returns the `Family` of a KerasHub CausalLM; ValueError otherwise."""
    for family in FAMILIES:
        if type(model).__name__ == family.causal_lm:
            return family
    raise ValueError(
        f"Cannot export {type(model).__name__} to the Hugging Face GPTQ "
        f"format; supported: {supported()}.")


def family_of_config(config):
    """Returns the `Family` of a transformers `config.json` dict."""
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type == family.model_type:
            return family
    raise ValueError(
        f"Cannot load model_type {model_type!r} "
        f"({config.get('architectures')}); supported: {supported()}.")


def hf_config(model, family):
    """The float transformers config of `model` (KerasHub's exporter),
    completed where it assumes a stock checkpoint."""
    backbone = model.backbone
    config = hf_exporter.MODEL_CONFIGS[type(backbone).__name__](backbone)
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


def float_tensors(model):
    """`{hf name: Keras tensor}` of every tensor, from KerasHub's exporter
    (quantized layers give their dequantized kernels here)."""
    backbone = model.backbone
    weights = hf_exporter.MODEL_EXPORTERS[type(backbone).__name__](
        backbone, include_lm_head=True)
    if getattr(backbone, "tie_word_embeddings", True):
        weights.pop("lm_head.weight", None)  # transformers ties it
    return weights


def converter(family):
    """KerasHub's transformers converter module for `family`."""
    return importlib.import_module(family.converter)


def backbone_kwargs(family, config):
    """Keras backbone arguments from a transformers config dict.

    KerasHub's converter assumes a few stock values; these are read from
    the config instead, and settings it cannot express are refused.
    """
    kwargs = converter(family).convert_backbone_config(config)
    if family.model_type == "llama":
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
    else:
        kwargs["intermediate_dim"] = (config.get("n_inner")
                                      or 4 * config["n_embd"])
        if config.get("layer_norm_epsilon", 1e-5) != 1e-5:
            raise ValueError("GPT2Backbone uses layer_norm_epsilon=1e-5.")
    return kwargs
