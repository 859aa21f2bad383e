"""A llama or qwen2 GGUF file -> a Hugging Face-style float32 folder.

`convert_gguf_to_hf_folder` dequantizes every tensor to float32 (the
`gguf` package's own dequantizers), undoes llama.cpp's RoPE row
permutation of the q and k projections where llama.cpp applies one, and
writes `config.json`, `model.safetensors`, `tokenizer.json` and
`tokenizer_config.json` that KerasHub's own transformers converter loads
(`Llama3CausalLM` for llama, `QwenCausalLM` for qwen2).

What differs per architecture is one row of `_ARCHITECTURES`: the Hugging
Face class, which layer tensors may appear (qwen2 adds q/k/v biases), whether
q/k rows are permuted (llama.cpp's `LlamaModel.permute` for llama; its
`Qwen2Model` writes them unchanged, for NeoX-style RoPE) and the config
keys only that family has. The tokenizer's pre-tokenizer follows
`tokenizer.ggml.pre` (`_PRE_TOKENIZERS`).
"""

import dataclasses
import json
import os
import re

import numpy as np

from keras_gptq.examples.packages import import_or_explain

# GGUF name (after `blk.N.`) -> Hugging Face name (after `model.layers.N.`).
_LAYER_TENSOR_NAMES = {f"{gguf}.weight": f"{hf}.weight" for gguf, hf in (
    ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"))}
_GLOBAL_TENSOR_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                        "output_norm.weight": "model.norm.weight",
                        "output.weight": "lm_head.weight"}
_BIAS_TENSOR_NAMES = {f"{gguf}.bias": f"{hf}.bias" for gguf, hf in (
    ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"))}
_CONTROL_TOKEN, _USER_DEFINED_TOKEN = 3, 4  # llama.cpp token types


def _llama_config(meta):
    """Config keys only `LlamaForCausalLM` has."""
    return {"attention_bias": False, "mlp_bias": False}


def _qwen2_config(meta):
    """Config keys only `Qwen2ForCausalLM` has (no sliding window, as in
    every Qwen2.5 release; KerasHub's Qwen converter requires the keys)."""
    layers = int(meta("block_count"))
    return {"use_sliding_window": False,
            "sliding_window": int(meta("context_length", 32768)),
            "max_window_layers": layers, "attention_dropout": 0.0}


@dataclasses.dataclass(frozen=True)
class _Architecture:
    """What the conversion needs to know about one GGUF architecture."""

    hf_class: str  # `architectures[0]` of config.json
    model_type: str  # config.json `model_type` (picks KerasHub's converter)
    layer_tensors: dict  # GGUF name after `blk.N.` -> HF name after layer N
    permuted_qk: bool  # llama.cpp permuted q/k rows (interleaved RoPE)
    extra_config: object  # meta -> dict of family-specific config keys


_ARCHITECTURES = {
    "llama": _Architecture("LlamaForCausalLM", "llama", _LAYER_TENSOR_NAMES,
                           True, _llama_config),
    "qwen2": _Architecture("Qwen2ForCausalLM", "qwen2",
                           {**_LAYER_TENSOR_NAMES, **_BIAS_TENSOR_NAMES},
                           False, _qwen2_config),
}


def _field(reader, key, default=None, required=True):
    """Reads one GGUF metadata value; ValueError if required and absent."""
    field = reader.get_field(key)
    if field is None:
        if required:
            raise ValueError(f"GGUF file lacks the metadata key `{key}`.")
        return default
    return field.contents()


def _hf_config(reader, tensor_names, name):
    """Returns the `config.json` dict of architecture `name` built from GGUF
    metadata; ValueError for scaled or partial RoPE (not handled here)."""
    architecture = _ARCHITECTURES[name]

    def meta(key, default=None):
        return _field(reader, f"{name}.{key}", default, default is None)

    hidden, heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    if (meta("rope.dimension_count", hidden // heads) != hidden // heads
            or meta("rope.scaling.type", "none") != "none"
            or "rope_freqs.weight" in tensor_names):
        raise ValueError("Only plain (unscaled, full-width) RoPE is supported.")
    special_ids = {f"{kind}_token_id": _field(
        reader, f"tokenizer.ggml.{kind}_token_id", required=False)
        for kind in ("bos", "eos", "pad")}
    return {
        "architectures": [architecture.hf_class],
        "model_type": architecture.model_type,
        "vocab_size": len(_field(reader, "tokenizer.ggml.tokens")),
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "head_dim": hidden // heads, "hidden_act": "silu",
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(meta("context_length", 2048)),
        **architecture.extra_config(meta),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
        **{k: int(v) for k, v in special_ids.items() if v is not None},
    }


def _unpermute_rope_rows(weight, num_heads):
    """Undoes llama.cpp's RoPE row permutation of a q or k projection.

    llama.cpp stores `W.reshape(H, 2, d // 2, n).swapaxes(1, 2)` so each
    head's rotary pairs are adjacent (interleaved RoPE); Hugging Face keeps
    the two halves of each head apart. `weight` is `(H * d, n)` in GGUF
    order, `num_heads` (H) the query heads for q and the key/value heads for
    k. Returns the matrix with its rows in Hugging Face order.
    """
    half = weight.shape[0] // num_heads // 2
    return (weight.reshape(num_heads, half, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _hf_tensor_name(gguf_name, name):
    """Maps a GGUF tensor name to its HF name in architecture `name`;
    ValueError for a tensor that architecture does not have."""
    if gguf_name in _GLOBAL_TENSOR_NAMES:
        return _GLOBAL_TENSOR_NAMES[gguf_name]
    layer_tensors = _ARCHITECTURES[name].layer_tensors
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in layer_tensors:
        layer, hf_name = match.group(1), layer_tensors[match.group(2)]
        return f"model.layers.{layer}.{hf_name}"
    raise ValueError(f"Unexpected tensor `{gguf_name}` in a {name} GGUF file.")


def _hf_tensors(reader, config, name, gguf):
    """Returns `{hf_name: float32 array}` for architecture `name`: every
    tensor dequantized; where llama.cpp permuted q/k rows (llama), they are
    put back (q by query heads, k by key/value heads)."""
    heads = {}
    if _ARCHITECTURES[name].permuted_qk:
        heads = {"q_proj.weight": config["num_attention_heads"],
                 "k_proj.weight": config["num_key_value_heads"]}
    tensors = {}
    for tensor in reader.tensors:
        weight = np.asarray(
            gguf.quants.dequantize(tensor.data, tensor.tensor_type),
            dtype=np.float32,
        ).reshape(tuple(int(n) for n in reversed(tensor.shape)))
        hf_name = _hf_tensor_name(tensor.name, name)
        suffix = hf_name.rsplit(".", 2)[-2] + "." + hf_name.rsplit(".", 1)[-1]
        if suffix in heads:
            weight = _unpermute_rope_rows(weight, heads[suffix])
        tensors[hf_name] = np.ascontiguousarray(weight)
    return tensors


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False,
               "trim_offsets": True, "use_regex": True}
# Qwen2's split (its tokenizer.json; llama.cpp's "qwen2" pre-tokenizer):
# like Llama 3's, but digits one by one.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
                r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (normalizer, pre_tokenizer) of tokenizer.json; any
# other value gets plain GPT-2 byte-level splitting.
_PRE_TOKENIZERS = {
    "smollm": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]}),
    "qwen2": ({"type": "NFC"}, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT},
         "behavior": "Isolated", "invert": False},
        {**_BYTE_LEVEL, "use_regex": False}]}),
}


def _pre_tokenization(pre):
    """`(normalizer, pre_tokenizer)` for llama.cpp's pre-tokenizer `pre`."""
    return _PRE_TOKENIZERS.get(pre, (None, _BYTE_LEVEL))


def _hf_tokenizer_files(reader):
    """Returns `(tokenizer.json, tokenizer_config.json)` dicts built from the
    GGUF tokenizer metadata. Raises ValueError unless it is byte-level BPE
    (`tokenizer.ggml.model == "gpt2"`)."""
    def meta(key, default=None):
        return _field(reader, "tokenizer." + key, default, required=False)

    if meta("ggml.model") != "gpt2":
        raise ValueError("Only byte-level BPE tokenizers are supported, got "
                         f"tokenizer.ggml.model={meta('ggml.model')!r}.")
    tokens = list(meta("ggml.tokens"))
    added = [{"id": i, "content": tokens[i], "single_word": False,
              "lstrip": False, "rstrip": False, "normalized": False,
              "special": kind == _CONTROL_TOKEN}
             for i, kind in enumerate(meta("ggml.token_type", []))
             if kind in (_CONTROL_TOKEN, _USER_DEFINED_TOKEN)]
    normalizer, pre_tokenizer = _pre_tokenization(meta("ggml.pre"))
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added, "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer, "post_processor": _BYTE_LEVEL,
        "decoder": _BYTE_LEVEL,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": {token: i for i, token in enumerate(tokens)},
                  "merges": list(meta("ggml.merges", []))},
    }
    tokenizer_class = {"qwen2": "Qwen2Tokenizer"}.get(
        _field(reader, "general.architecture"), "GPT2Tokenizer")
    config = {"tokenizer_class": tokenizer_class, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False,
              "add_bos_token": bool(meta("ggml.add_bos_token", False))}
    for kind in ("bos", "eos", "pad", "unknown"):
        if meta(f"ggml.{kind}_token_id") is not None:
            config[f"{kind[:3]}_token"] = tokens[int(meta(f"ggml.{kind}_token_id"))]
    if meta("chat_template") is not None:
        config["chat_template"] = meta("chat_template")
    return tokenizer, config


def convert_gguf_to_hf_folder(gguf_path, out_dir):
    """Converts a llama or qwen2 GGUF file into a Hugging Face-style float32
    folder.

    Writes `config.json` (`LlamaForCausalLM` or `Qwen2ForCausalLM`),
    `model.safetensors` (every tensor dequantized to float32, q/k rows in
    Hugging Face order, qwen2's q/k/v biases, `lm_head.weight` when the file
    has its own `output.weight`), `tokenizer.json` and
    `tokenizer_config.json`; `keras_hub.models.CausalLM.from_preset` loads
    the result (`Llama3CausalLM` / `QwenCausalLM`).

    Args:
        gguf_path: a `.gguf` file whose `general.architecture` is `llama` or
            `qwen2`, with a GPT-2-style byte-level BPE tokenizer.
        out_dir: folder to write (created if missing; files overwritten).
    Returns:
        `out_dir`.
    Raises:
        ValueError: another architecture, or the file uses a feature this
            converter does not handle.
        ImportError: `gguf` or `safetensors` is missing.
    """
    gguf = import_or_explain("gguf")
    safetensors_numpy = import_or_explain("safetensors.numpy")
    reader = gguf.GGUFReader(gguf_path)
    architecture = _field(reader, "general.architecture")
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"Only {' and '.join(_ARCHITECTURES)} GGUF files can be "
            f"converted; {gguf_path} has architecture {architecture!r}.")
    config = _hf_config(reader, {t.name for t in reader.tensors}, architecture)
    tokenizer, tokenizer_config = _hf_tokenizer_files(reader)
    os.makedirs(out_dir, exist_ok=True)
    safetensors_numpy.save_file(
        _hf_tensors(reader, config, architecture, gguf),
        os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for name, content in (("config.json", config),
                          ("tokenizer.json", tokenizer),
                          ("tokenizer_config.json", tokenizer_config)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=1)
    return out_dir
