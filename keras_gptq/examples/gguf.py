"""A llama GGUF file -> a Hugging Face-style float32 folder KerasHub loads.

`convert_gguf_to_hf_folder` dequantizes every tensor to float32 (the
`gguf` package's own dequantizers), undoes llama.cpp's RoPE row
permutation of the q and k projections, and writes `config.json`,
`model.safetensors`, `tokenizer.json` and `tokenizer_config.json`.
"""

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
_CONTROL_TOKEN, _USER_DEFINED_TOKEN = 3, 4  # llama.cpp token types


def _field(reader, key, default=None, required=True):
    """Reads one GGUF metadata value; ValueError if required and absent."""
    field = reader.get_field(key)
    if field is None:
        if required:
            raise ValueError(f"GGUF file lacks the metadata key `{key}`.")
        return default
    return field.contents()


def _hf_config(reader, tensor_names):
    """Returns a `LlamaForCausalLM` `config.json` dict built from GGUF
    metadata; ValueError for scaled or partial RoPE (not handled here)."""
    def meta(key, default=None):
        return _field(reader, "llama." + key, default, default is None)

    hidden, heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    if (meta("rope.dimension_count", hidden // heads) != hidden // heads
            or meta("rope.scaling.type", "none") != "none"
            or "rope_freqs.weight" in tensor_names):
        raise ValueError("Only plain (unscaled, full-width) RoPE is supported.")
    special_ids = {f"{kind}_token_id": _field(
        reader, f"tokenizer.ggml.{kind}_token_id", required=False)
        for kind in ("bos", "eos", "pad")}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
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
        "attention_bias": False, "mlp_bias": False,
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


def _hf_tensor_name(gguf_name):
    """Maps a GGUF tensor name to its HF Llama name; ValueError if unknown."""
    if gguf_name in _GLOBAL_TENSOR_NAMES:
        return _GLOBAL_TENSOR_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in _LAYER_TENSOR_NAMES:
        layer, name = match.group(1), _LAYER_TENSOR_NAMES[match.group(2)]
        return f"model.layers.{layer}.{name}"
    raise ValueError(f"Unexpected tensor `{gguf_name}` in a llama GGUF file.")


def _hf_tensors(reader, config, gguf):
    """Returns `{hf_name: float32 array}`: every tensor dequantized, q/k rows
    un-permuted (q by query heads, k by key/value heads)."""
    tensors = {}
    for tensor in reader.tensors:
        weight = np.asarray(
            gguf.quants.dequantize(tensor.data, tensor.tensor_type),
            dtype=np.float32,
        ).reshape(tuple(int(n) for n in reversed(tensor.shape)))
        name = _hf_tensor_name(tensor.name)
        if name.endswith("q_proj.weight"):
            weight = _unpermute_rope_rows(weight, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weight = _unpermute_rope_rows(weight, config["num_key_value_heads"])
        tensors[name] = np.ascontiguousarray(weight)
    return tensors


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
    byte_level = {"type": "ByteLevel", "add_prefix_space": False,
                  "trim_offsets": True, "use_regex": True}
    pre_tokenizer = byte_level
    if meta("ggml.pre") == "smollm":  # llama.cpp: digits split one by one
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre_tokenizer, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": {token: i for i, token in enumerate(tokens)},
                  "merges": list(meta("ggml.merges", []))},
    }
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
              "clean_up_tokenization_spaces": False,
              "add_bos_token": bool(meta("ggml.add_bos_token", False))}
    for kind in ("bos", "eos", "pad", "unknown"):
        if meta(f"ggml.{kind}_token_id") is not None:
            config[f"{kind[:3]}_token"] = tokens[int(meta(f"ggml.{kind}_token_id"))]
    if meta("chat_template") is not None:
        config["chat_template"] = meta("chat_template")
    return tokenizer, config


def convert_gguf_to_hf_folder(gguf_path, out_dir):
    """Converts a llama GGUF file into a Hugging Face-style float32 folder.

    Writes `config.json`, `model.safetensors` (every tensor dequantized to
    float32, q/k rows back in Hugging Face order), `tokenizer.json` and
    `tokenizer_config.json`; `keras_hub.models.Llama3CausalLM.from_preset`
    loads the result.

    Args:
        gguf_path: a `.gguf` file with `general.architecture == "llama"` and
            a GPT-2-style byte-level BPE tokenizer.
        out_dir: folder to write (created if missing; files overwritten).
    Returns:
        `out_dir`.
    Raises:
        ValueError: the architecture is not llama, or the file uses a
            feature this converter does not handle.
        ImportError: `gguf` or `safetensors` is missing.
    """
    gguf = import_or_explain("gguf")
    safetensors_numpy = import_or_explain("safetensors.numpy")
    reader = gguf.GGUFReader(gguf_path)
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(f"Only llama GGUF files can be converted; "
                         f"{gguf_path} has architecture {architecture!r}.")
    config = _hf_config(reader, {t.name for t in reader.tensors})
    tokenizer, tokenizer_config = _hf_tokenizer_files(reader)
    os.makedirs(out_dir, exist_ok=True)
    safetensors_numpy.save_file(_hf_tensors(reader, config, gguf),
                                os.path.join(out_dir, "model.safetensors"),
                                metadata={"format": "pt"})
    for name, content in (("config.json", config),
                          ("tokenizer.json", tokenizer),
                          ("tokenizer_config.json", tokenizer_config)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=1)
    return out_dir
