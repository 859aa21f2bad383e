"""Which KerasHub models map to which transformers architectures, and how.

A family is data: per transformer block, each transformers linear module
and the Keras layers that make it (one layer for most, three (q, k, v) for
GPT-2's fused `attn.c_attn`), and every float tensor (embeddings, norms,
biases) with the Keras variables that hold it.

Linear modules: a Keras layer's `W[out, in]` (its `MatrixLayout`) is the
transformers `weight[out, in]` of the module (Conv1D's weight transposed):
KerasHub's converters fill `(hidden, heads, head_dim)` kernels by
transposing and reshaping that matrix, and the layout flattens the kernel
back in the same axis order. Fused modules stack their parts along `out`.

Float tensors: embeddings keep their `[vocab, hidden]` shape; every other
tensor is a vector in transformers, the Keras variables flattened and, when
several are named (GPT-2's `c_attn.bias`), concatenated in that order.
An untied `lm_head.weight` is the embedding's `reverse_embeddings`,
transposed. Names and layouts are those of KerasHub's own converters
(`keras_hub/src/utils/transformers/convert_*.py`).

Module names: a family's `modules` carry the names transformers' float
checkpoints, the hub's GPTQ checkpoints and vLLM use. GPTQModel 7.7.0
loads Mixtral's experts and Phi-3's MLP only under its own names
(transformers 5's `mlp.experts.{e}.gate_proj/up_proj/down_proj`, Phi-3's
`gate_up_proj` split in two); such a family lists them in `other_names`,
picked by `export_hf`'s `module_names` (`MODULE_NAMES`).

The float `config.json` comes from `hf/configs.py`. Most of this module is
the table itself (`FAMILIES`), one entry per family.
"""

import dataclasses
import functools

import numpy as np

from keras_gptq.hf import parts as parts_lib
from keras_gptq.model import experts as experts_lib


@dataclasses.dataclass(frozen=True)
class Expert:
    """Expert `{e}` of an expert bank's matrix, in a module table.

    Attributes:
        bank: attribute path of the bank in the block.
        matrix: the bank's matrix attribute (an `experts.ExpertMatrix`).
        half: None (every row), 0 or 1 (the first or second half of the
            rows: Qwen-MoE's fused gate/up matrix).
    """

    bank: str
    matrix: str
    half: int = None

    def part(self, block, e):
        bank = _attribute(block, self.bank)
        matrix = experts_lib.BANK_FAMILIES[type(bank)].matrix(self.matrix)
        if self.half is None:
            return parts_lib.ExpertRows(bank, matrix, e)
        rows = parts_lib.ExpertRows(bank, matrix, e).shape()[0] // 2
        return parts_lib.ExpertRows(bank, matrix, e, self.half * rows,
                                    (self.half + 1) * rows)


@dataclasses.dataclass(frozen=True)
class Interleaved:
    """Layers (or variables) fused head by head, in a module or tensor
    table: for each of the backbone's `heads` (an attribute name), that
    head's rows of each path in turn (Bloom's `query_key_value`: q, k, v
    of head 0, then of head 1, ...)."""

    paths: tuple
    heads: str = "num_heads"


# The namings of linear modules `export_hf` writes (`module_names`); the
# first is the default: transformers' (and vLLM's) names.
MODULE_NAMES = ("transformers", "gptqmodel")


def check_module_names(module_names):
    """Raises ValueError unless `module_names` is one of `MODULE_NAMES`."""
    if module_names not in MODULE_NAMES:
        raise ValueError(f"module_names must be one of {MODULE_NAMES}, "
                         f"got {module_names!r}.")


@dataclasses.dataclass(frozen=True)
class Naming:
    """Other names for a family's linear modules, in `Family.other_names`.

    Attributes:
        modules: replaces `Family.modules` (same form).
        float_modules: replaces `Family.float_modules`; None keeps them.
    """

    modules: dict
    float_modules: dict = None


@dataclasses.dataclass(frozen=True)
class Family:
    """One supported architecture, declared as data.

    Attributes:
        causal_lm: the KerasHub CausalLM class name.
        model_type: transformers `model_type`.
        architecture: transformers `architectures[0]`.
        block_prefix: the transformers name of block `i`, with `{i}`.
        modules: `{hf module name in the block: (keras layer attribute
            paths in the block, or `Expert`s, ...)}`; several are a fused
            module, their rows stacked in that order. A name with `{e}`
            is one module per expert.
        block_tensors: `{hf tensor name in the block: (keras variable
            attribute paths in the block, ...)}`.
        tensors: `{hf tensor name: (keras variable path from the
            backbone, ...)}`; a path starts with a layer name.
        tokenizer_files: the files KerasHub's converter reads to build the
            preprocessor from a folder; None: it has no converter.
        block_name: the Keras name of block `i` in the backbone.
        transposed_weights: float module weights are stored `[in, out]`
            (GPT-2's Conv1D); quantized ones never are.
        float_modules: linear modules that stay float (mixture-of-experts
            routers), declared as `modules`.
        embedding: path of the token embedding layer (its `tie_weights`
            and `reverse_embeddings` give an untied lm_head).
        leading_rows: `{hf tensor name: rows}` transformers keeps before
            the Keras rows (OPT's positions start at 2); zeros on export.
        other_names: `{module_names: Naming}`, the linear modules under
            another naming of `MODULE_NAMES`; one not listed uses
            `modules` and `float_modules` as they are.
    """

    causal_lm: str
    model_type: str
    architecture: str
    block_prefix: str
    modules: dict
    block_tensors: dict
    tensors: dict
    tokenizer_files: tuple
    block_name: str = "transformer_layer_{i}"
    transposed_weights: bool = False
    float_modules: dict = dataclasses.field(default_factory=dict)
    embedding: str = "token_embedding"
    leading_rows: dict = dataclasses.field(default_factory=dict)
    other_names: dict = dataclasses.field(default_factory=dict)

    def named(self, module_names):
        """This family with its linear modules under the naming
        `module_names` (one of `MODULE_NAMES`); the result has no
        `other_names`.

        Raises:
            ValueError: `module_names` is not one of `MODULE_NAMES`.
        """
        check_module_names(module_names)
        naming = self.other_names.get(module_names)
        if naming is None:
            return self
        return dataclasses.replace(
            self, modules=naming.modules, other_names={},
            float_modules=(self.float_modules if naming.float_modules is None
                           else naming.float_modules))

    def _blocks(self, backbone):
        for i in range(backbone.num_layers):
            yield (self.block_prefix.format(i=i),
                   backbone.get_layer(self.block_name.format(i=i)))

    def linear_modules(self, backbone, table=None):
        """`{hf module name: [parts (`hf.parts`)]}` over every block, of
        `modules` (or of `table`, e.g. `float_modules`)."""
        found = {}
        for prefix, block in self._blocks(backbone):
            for name, paths in (self.modules if table is None
                                else table).items():
                if isinstance(paths, Interleaved):
                    found[f"{prefix}.{name}"] = _interleaved_rows(
                        block, paths, getattr(backbone, paths.heads))
                    continue
                count = _experts(block, paths) if "{e}" in name else 1
                for e in range(count):
                    found[f"{prefix}.{name.format(e=e)}"] = [
                        p.part(block, e) if isinstance(p, Expert) else
                        parts_lib.LayerRows(_attribute(block, p))
                        for p in paths]
        return found

    def float_variables(self, backbone):
        """`{hf tensor name: ([keras variables], heads)}` of every float
        tensor but an untied lm_head (`lm_head`); `heads` is 1 unless the
        variables are `Interleaved`."""
        table = {name: ([_from_backbone(backbone, p) for p in paths], 1)
                 for name, paths in self.tensors.items()}
        for prefix, block in self._blocks(backbone):
            for name, paths in self.block_tensors.items():
                heads = 1
                if isinstance(paths, Interleaved):
                    paths, heads = paths.paths, getattr(backbone, paths.heads)
                table[f"{prefix}.{name}"] = (
                    [_attribute(block, p) for p in paths], heads)
        return table


    def lm_head(self, backbone):
        """The untied output embedding variable (`[hidden, vocab]`), or
        None when the model ties it to the input embedding."""
        embedding = _from_backbone(backbone, self.embedding)
        return None if getattr(embedding, "tie_weights", True) else (
            embedding.reverse_embeddings)

    def to_hf_tensor(self, name, values, heads=1):
        """One float tensor in transformers' shape, from its Keras
        variables' numpy values (see the module docstring), interleaved
        by head when `heads > 1`."""
        if not name.endswith(_EMBEDDINGS):
            return np.concatenate([np.reshape(v, (heads, -1))
                                   for v in values], axis=1).reshape(-1)
        lead = self.leading_rows.get(name, 0)
        return np.concatenate([np.zeros((lead,) + values[0].shape[1:],
                                        values[0].dtype), values[0]])

    def from_hf_tensor(self, name, tensor, shapes, heads=1):
        """Inverse of `to_hf_tensor`: the values of variables of `shapes`.

        Raises:
            ValueError: the tensor does not hold exactly those variables.
        """
        tensor = np.asarray(tensor)[self.leading_rows.get(name, 0):]
        sizes = [int(np.prod(s)) for s in shapes]
        if tensor.size != sum(sizes):
            raise ValueError(f"{name}: shape {tensor.shape} does not fit "
                             f"the Keras variables {shapes}.")
        per_head = np.split(np.reshape(tensor, (heads, -1)),
                            np.cumsum(sizes)[:-1] // heads, axis=1)
        return [np.reshape(part, shape)
                for part, shape in zip(per_head, shapes)]


def _attribute(obj, path):
    return functools.reduce(getattr, path.split("."), obj)


def _from_backbone(backbone, path):
    """A path from the backbone: a layer name, then attributes."""
    layer, _, rest = path.partition(".")
    layer = backbone.get_layer(layer)
    return _attribute(layer, rest) if rest else layer


def _interleaved_rows(block, interleaved, heads):
    """The row parts of an `Interleaved` module: head by head."""
    found = []
    for h in range(heads):
        for path in interleaved.paths:
            layer = _attribute(block, path)
            rows = parts_lib.LayerRows(layer).shape()[0] // heads
            found.append(parts_lib.LayerRows(layer, h * rows,
                                             (h + 1) * rows))
    return found


def _experts(block, paths):
    return int(_attribute(block, paths[0].bank).num_experts)


_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "wpe.weight",
               "embed_positions.weight", "word_embeddings.weight")


_ATTENTION = "_self_attention_layer."
_LLAMA_MODULES = {  # Llama, Mistral, Qwen2, Qwen3 (KerasHub layer names)
    "self_attn.q_proj": (_ATTENTION + "_query_dense",),
    "self_attn.k_proj": (_ATTENTION + "_key_dense",),
    "self_attn.v_proj": (_ATTENTION + "_value_dense",),
    "self_attn.o_proj": (_ATTENTION + "_output_dense",),
    "mlp.gate_proj": ("_feedforward_gate_dense",),
    "mlp.up_proj": ("_feedforward_intermediate_dense",),
    "mlp.down_proj": ("_feedforward_output_dense",),
}
_LLAMA_NORMS = {
    "input_layernorm.weight": ("_self_attention_layernorm.scale",),
    "post_attention_layernorm.weight": ("_feedforward_layernorm.scale",),
}
_LLAMA_TENSORS = {
    "model.embed_tokens.weight": ("token_embedding.embeddings",),
    "model.norm.weight": ("sequence_output_layernorm.scale",),
}
_QKV_BIASES = {f"self_attn.{hf}_proj.bias": (f"{_ATTENTION}_{k}_dense.bias",)
               for hf, k in (("q", "query"), ("k", "key"), ("v", "value"))}
_QK_NORMS = {
    "self_attn.q_norm.weight": (_ATTENTION + "_query_dense_layer_norm.scale",),
    "self_attn.k_norm.weight": (_ATTENTION + "_key_dense_layer_norm.scale",),
}
_GEMMA_MODULES = {  # Gemma, Gemma 3
    "self_attn.q_proj": ("attention.query_dense",),
    "self_attn.k_proj": ("attention.key_dense",),
    "self_attn.v_proj": ("attention.value_dense",),
    "self_attn.o_proj": ("attention.output_dense",),
    "mlp.gate_proj": ("gating_ffw",),
    "mlp.up_proj": ("gating_ffw_2",),
    "mlp.down_proj": ("ffw_linear",),
}
_GEMMA_TENSORS = {
    "model.embed_tokens.weight": ("token_embedding.embeddings",),
    "model.norm.weight": ("final_normalization.scale",),
}
_GPT2_ATTENTION = {
    "attn.c_attn": (_ATTENTION + "_query_dense", _ATTENTION + "_key_dense",
                    _ATTENTION + "_value_dense"),
    "attn.c_proj": (_ATTENTION + "_output_dense",),
    "mlp.c_fc": ("_feedforward_intermediate_dense",),
    "mlp.c_proj": ("_feedforward_output_dense",),
}
_PLAIN_ATTENTION = {  # Mixtral, Qwen-MoE: no underscore on q, k, v
    f"self_attn.{hf}_proj": (f"{_ATTENTION}{k}_dense",)
    for hf, k in (("q", "query"), ("k", "key"), ("v", "value"))}
_MIXTRAL_BLOCK = "_sparse_moe_block."
_MIXTRAL_BANK = _MIXTRAL_BLOCK + "expert_bank"


def _mixtral_modules(moe, names):
    """Mixtral's linear modules, its MoE block named `moe` and each
    expert's gate, up and down projections `names`."""
    return {
        **_PLAIN_ATTENTION, "self_attn.o_proj": (_ATTENTION + "output_dense",),
        **{f"{moe}.experts.{{e}}.{hf}": (
            Expert(_MIXTRAL_BANK, f"_expert_feedforward_{k}_dense"),)
           for hf, k in zip(names, ("gate", "intermediate", "output"))}}


def _mixtral_router(moe):
    return {f"{moe}.gate": (_MIXTRAL_BLOCK + "_sparse_feedforward_gate_dense",)}


_PHI3_ATTENTION = {
    "self_attn.qkv_proj": ("attention.query_dense", "attention.key_dense",
                           "attention.value_dense"),
    "self_attn.o_proj": ("attention.output_dense",),
}
_PHI3_DOWN = {"mlp.down_proj": ("feedforward_output_dense",)}
_QWEN_MOE_BANK = "mlp.expert_bank"
_QWEN_EXPERTS = {  # Qwen-MoE, Qwen3-MoE: gate and up fused in Keras
    "mlp.experts.{e}.gate_proj": (
        Expert(_QWEN_MOE_BANK, "_expert_feedforward_gate_dense", half=0),),
    "mlp.experts.{e}.up_proj": (
        Expert(_QWEN_MOE_BANK, "_expert_feedforward_gate_dense", half=1),),
    "mlp.experts.{e}.down_proj": (
        Expert(_QWEN_MOE_BANK, "_expert_feedforward_output_dense"),),
}
_QWEN_ROUTER = {"mlp.gate": ("mlp._sparse_feedforward_gate_dense",)}
_OPT_MODULES = {
    "self_attn.q_proj": (_ATTENTION + "_query_dense",),
    "self_attn.k_proj": (_ATTENTION + "_key_dense",),
    "self_attn.v_proj": (_ATTENTION + "_value_dense",),
    "self_attn.out_proj": (_ATTENTION + "_output_dense",),
    "fc1": ("_feedforward_intermediate_dense",),
    "fc2": ("_feedforward_output_dense",),
}
_BLOOM_QKV = tuple(f"{_ATTENTION}_{k}_dense" for k in ("query", "key",
                                                       "value"))
_BPE = ("vocab.json", "merges.txt")
_TOKENIZER_JSON = ("tokenizer.json",)
_SENTENCEPIECE = ("tokenizer.model",)

FAMILIES = (
    Family("Llama3CausalLM", "llama", "LlamaForCausalLM", "model.layers.{i}",
           _LLAMA_MODULES, _LLAMA_NORMS, _LLAMA_TENSORS,
           ("tokenizer.json", "tokenizer_config.json")),
    Family("GPT2CausalLM", "gpt2", "GPT2LMHeadModel", "transformer.h.{i}",
           _GPT2_ATTENTION, {
               "ln_1.weight": ("_self_attention_layer_norm.gamma",),
               "ln_1.bias": ("_self_attention_layer_norm.beta",),
               "ln_2.weight": ("_feedforward_layer_norm.gamma",),
               "ln_2.bias": ("_feedforward_layer_norm.beta",),
               **{f"{name}.bias": tuple(p + ".bias" for p in paths)
                  for name, paths in _GPT2_ATTENTION.items()},
           }, {
               "transformer.wte.weight": ("token_embedding.embeddings",),
               "transformer.wpe.weight": ("position_embedding.position_embeddings",),
               "transformer.ln_f.weight": ("layer_norm.gamma",),
               "transformer.ln_f.bias": ("layer_norm.beta",),
           }, _BPE, transposed_weights=True),
    Family("GemmaCausalLM", "gemma", "GemmaForCausalLM", "model.layers.{i}",
           _GEMMA_MODULES, {
               "input_layernorm.weight": ("pre_attention_norm.scale",),
               "post_attention_layernorm.weight": ("pre_ffw_norm.scale",),
           }, _GEMMA_TENSORS, _SENTENCEPIECE, block_name="decoder_block_{i}"),
    Family("Gemma3CausalLM", "gemma3_text", "Gemma3ForCausalLM",
           "model.layers.{i}", _GEMMA_MODULES, {
               "input_layernorm.weight": ("pre_attention_norm.scale",),
               "post_attention_layernorm.weight": (
                   "post_attention_norm.scale",),
               "pre_feedforward_layernorm.weight": ("pre_ffw_norm.scale",),
               "post_feedforward_layernorm.weight": ("post_ffw_norm.scale",),
               "self_attn.q_norm.weight": ("attention.query_norm.scale",),
               "self_attn.k_norm.weight": ("attention.key_norm.scale",),
           }, _GEMMA_TENSORS, _SENTENCEPIECE, block_name="decoder_block_{i}"),
    Family("MistralCausalLM", "mistral", "MistralForCausalLM",
           "model.layers.{i}", _LLAMA_MODULES, _LLAMA_NORMS, _LLAMA_TENSORS,
           _SENTENCEPIECE),
    Family("QwenCausalLM", "qwen2", "Qwen2ForCausalLM", "model.layers.{i}",
           _LLAMA_MODULES, {**_LLAMA_NORMS, **_QKV_BIASES}, _LLAMA_TENSORS,
           _TOKENIZER_JSON),
    Family("Qwen3CausalLM", "qwen3", "Qwen3ForCausalLM", "model.layers.{i}",
           _LLAMA_MODULES, {**_LLAMA_NORMS, **_QK_NORMS}, _LLAMA_TENSORS,
           _TOKENIZER_JSON),
    Family("MixtralCausalLM", "mixtral", "MixtralForCausalLM",
           "model.layers.{i}",
           _mixtral_modules("block_sparse_moe", ("w1", "w3", "w2")),
           _LLAMA_NORMS, _LLAMA_TENSORS, _SENTENCEPIECE,
           float_modules=_mixtral_router("block_sparse_moe"),
           other_names={"gptqmodel": Naming(
               _mixtral_modules("mlp", ("gate_proj", "up_proj", "down_proj")),
               _mixtral_router("mlp"))}),
    Family("QwenMoeCausalLM", "qwen2_moe", "Qwen2MoeForCausalLM",
           "model.layers.{i}", {
               **_PLAIN_ATTENTION,
               "self_attn.o_proj": (_ATTENTION + "_output_dense",),
               **_QWEN_EXPERTS,
               **{f"mlp.shared_expert.{hf}_proj": (
                   f"mlp.shared_expert_dense._feedforward_{k}_dense",)
                  for hf, k in (("gate", "gate"), ("up", "intermediate"),
                                ("down", "output"))},
           }, {**_LLAMA_NORMS, **{
               f"self_attn.{hf}_proj.bias": (f"{_ATTENTION}{k}_dense.bias",)
               for hf, k in (("q", "query"), ("k", "key"), ("v", "value"))}},
           _LLAMA_TENSORS, _TOKENIZER_JSON, float_modules={
               **_QWEN_ROUTER,
               "mlp.shared_expert_gate": ("mlp.shared_expert_gate_dense",)}),
    Family("Qwen3MoeCausalLM", "qwen3_moe", "Qwen3MoeForCausalLM",
           "model.layers.{i}", {
               **{k: v for k, v in _LLAMA_MODULES.items()
                  if k.startswith("self_attn")},
               **_QWEN_EXPERTS,
           }, {**_LLAMA_NORMS, **_QK_NORMS}, _LLAMA_TENSORS, _TOKENIZER_JSON,
           float_modules=_QWEN_ROUTER),
    Family("Phi3CausalLM", "phi3", "Phi3ForCausalLM", "model.layers.{i}", {
        **_PHI3_ATTENTION,
        "mlp.gate_up_proj": ("feedforward_gate_dense",
                             "feedforward_intermediate_dense"),
        **_PHI3_DOWN,
    }, {
        "input_layernorm.weight": ("pre_attention_layernorm.scale",),
        "post_attention_layernorm.weight": ("post_attention_layernorm.scale",),
    }, _LLAMA_TENSORS, None, other_names={"gptqmodel": Naming({
        **_PHI3_ATTENTION,  # q, k, v stay fused in GPTQModel too
        "mlp.gate_proj": ("feedforward_gate_dense",),
        "mlp.up_proj": ("feedforward_intermediate_dense",),
        **_PHI3_DOWN})}),
    Family("OPTCausalLM", "opt", "OPTForCausalLM", "model.decoder.layers.{i}",
           _OPT_MODULES, {
               "self_attn_layer_norm.weight": (
                   "_self_attention_layer_norm.gamma",),
               "self_attn_layer_norm.bias": ("_self_attention_layer_norm.beta",),
               "final_layer_norm.weight": ("_feedforward_layer_norm.gamma",),
               "final_layer_norm.bias": ("_feedforward_layer_norm.beta",),
               **{f"{name}.bias": (paths[0] + ".bias",)
                  for name, paths in _OPT_MODULES.items()},
           }, {
               "model.decoder.embed_tokens.weight": (
                   "embeddings.token_embedding.embeddings",),
               "model.decoder.embed_positions.weight": (
                   "embeddings.position_embedding.position_embeddings",),
               "model.decoder.final_layer_norm.weight": ("layer_norm.gamma",),
               "model.decoder.final_layer_norm.bias": ("layer_norm.beta",),
           }, None, embedding="embeddings.token_embedding",
           leading_rows={"model.decoder.embed_positions.weight": 2}),
    Family("BloomCausalLM", "bloom", "BloomForCausalLM", "transformer.h.{i}",
           {"self_attention.query_key_value": Interleaved(_BLOOM_QKV),
            "self_attention.dense": (_ATTENTION + "_output_dense",),
            "mlp.dense_h_to_4h": ("_mlp_intermediate_dense",),
            "mlp.dense_4h_to_h": ("_mlp_output_dense",)}, {
               **{f"{hf}.{w}": (f"_{k}.{v}",)
                  for hf, k in (("input_layernorm", "pre_attention_layernorm"),
                                ("post_attention_layernorm",
                                 "post_attention_layernorm"))
                  for w, v in (("weight", "gamma"), ("bias", "beta"))},
               "self_attention.query_key_value.bias": Interleaved(
                   tuple(p + ".bias" for p in _BLOOM_QKV)),
               "self_attention.dense.bias": (_ATTENTION + "_output_dense.bias",),
               "mlp.dense_h_to_4h.bias": ("_mlp_intermediate_dense.bias",),
               "mlp.dense_4h_to_h.bias": ("_mlp_output_dense.bias",),
           }, {
               "transformer.word_embeddings.weight": (
                   "token_embedding.embeddings",),
               **{f"transformer.{hf}.{w}": (f"{k}.{v}",)
                  for hf, k in (("word_embeddings_layernorm",
                                 "embedding_layernorm"),
                                ("ln_f", "final_layernorm"))
                  for w, v in (("weight", "gamma"), ("bias", "beta"))},
           }, None),
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
