"""A tiny synthetic llama or qwen2 GGUF file, and an independent numpy
model to check the conversion against."""

import json
import os

import gguf
import keras
import numpy as np

from keras_gptq.examples import gguf as gguf_conversion

TINY = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128,
            eps=1e-5, rope_base=10000.0)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "c a", "Ġ ca", "Ġca t"]


def read_tiny_config(folder, hf_class, model_type):
    """The converted folder's config.json, after checking the class, the
    model type and the tiny model's dimensions."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == [hf_class]
    assert config["model_type"] == model_type
    assert (config["num_hidden_layers"], config["hidden_size"],
            config["num_attention_heads"], config["num_key_value_heads"],
            config["intermediate_size"]) == (
        TINY["layers"], TINY["hidden"], TINY["heads"], TINY["kv_heads"],
        TINY["intermediate"])
    return config


def gpt2_byte_chars():
    """GPT-2's printable stand-in for each byte (bytes_to_unicode)."""
    printable = (list(range(ord("!"), ord("~") + 1))
                 + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_vocabulary():
    merged = ["".join(m.split(" ")) for m in MERGES]
    return SPECIAL_TOKENS + gpt2_byte_chars() + merged


def llama_cpp_permute(weights, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2,
                            *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def random_hf_weights(seed, tied, biases=False):
    """Random Hugging Face-layout weights for the tiny llama (with q/k/v
    biases, as Qwen2 has them, if `biases`)."""
    rng = np.random.default_rng(seed)
    d, f = TINY["hidden"], TINY["intermediate"]
    kv = TINY["kv_heads"] * d // TINY["heads"]

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype("float32")

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype("float32")

    weights = {"model.embed_tokens.weight": mat(len(tiny_vocabulary()), d),
               "model.norm.weight": norm()}
    if not tied:
        weights["lm_head.weight"] = mat(len(tiny_vocabulary()), d)
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "input_layernorm.weight": norm(),
            p + "post_attention_layernorm.weight": norm(),
            p + "self_attn.q_proj.weight": mat(d, d),
            p + "self_attn.k_proj.weight": mat(kv, d),
            p + "self_attn.v_proj.weight": mat(kv, d),
            p + "self_attn.o_proj.weight": mat(d, d),
            p + "mlp.gate_proj.weight": mat(f, d),
            p + "mlp.up_proj.weight": mat(f, d),
            p + "mlp.down_proj.weight": mat(d, f),
        })
        if biases:
            weights.update({
                p + "self_attn.q_proj.bias": mat(1, d)[0],
                p + "self_attn.k_proj.bias": mat(1, kv)[0],
                p + "self_attn.v_proj.bias": mat(1, kv)[0]})
    return weights


def hf_to_gguf_tensors(hf, architecture="llama"):
    """Renames HF weights the way llama.cpp's converter does; for llama it
    also permutes q/k rows (its Qwen2Model writes them unchanged)."""
    out = {"token_embd.weight": hf["model.embed_tokens.weight"],
           "output_norm.weight": hf["model.norm.weight"]}
    if "lm_head.weight" in hf:
        out["output.weight"] = hf["lm_head.weight"]
    names = {v: k for k, v in gguf_conversion._LAYER_TENSOR_NAMES.items()}
    names.update({v: k for k, v in gguf_conversion._BIAS_TENSOR_NAMES.items()})
    permute = architecture == "llama"
    for key, value in hf.items():
        if key.startswith("model.layers."):
            _, _, i, rest = key.split(".", 3)
            if permute and rest.endswith("q_proj.weight"):
                value = llama_cpp_permute(value, TINY["heads"], TINY["heads"])
            elif permute and rest.endswith("k_proj.weight"):
                value = llama_cpp_permute(value, TINY["heads"], TINY["kv_heads"])
            out[f"blk.{i}.{names[rest]}"] = value
    return out


def write_tiny_gguf(path, hf, architecture="llama", quantize=True):
    """Writes a tiny GGUF; token_embd is Q8_0 and ffn_down Q4_1 if asked.

    `architecture="qwen2"` writes what llama.cpp writes for Qwen2: q/k rows
    not permuted, the Qwen2 pre-tokenizer, no start token added."""
    qwen2 = architecture == "qwen2"
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(TINY["layers"])
    writer.add_context_length(128)
    writer.add_embedding_length(TINY["hidden"])
    writer.add_feed_forward_length(TINY["intermediate"])
    writer.add_head_count(TINY["heads"])
    writer.add_head_count_kv(TINY["kv_heads"])
    writer.add_layer_norm_rms_eps(TINY["eps"])
    writer.add_rope_freq_base(TINY["rope_base"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if qwen2 else "smollm")
    writer.add_token_list(tiny_vocabulary())
    writer.add_token_types([3] * len(SPECIAL_TOKENS)
                           + [1] * (len(tiny_vocabulary()) - len(SPECIAL_TOKENS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0 if qwen2 else 1)
    writer.add_eos_token_id(2)
    if qwen2:
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(False)
    quantized = {"token_embd.weight": gguf.GGMLQuantizationType.Q8_0,
                 "blk.1.ffn_down.weight": gguf.GGMLQuantizationType.Q4_1}
    for name, value in hf_to_gguf_tensors(hf, architecture).items():
        if quantize and name in quantized:
            qtype = quantized[name]
            writer.add_tensor(name, gguf.quants.quantize(value, qtype),
                              raw_dtype=qtype)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf_tensors(path):
    """GGUF tensors dequantized, in GGUF (llama.cpp) layout and names."""
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        value = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(reversed(t.shape.tolist()))
        tensors[t.name] = np.asarray(value, dtype="float32").reshape(shape)
    return tensors


def numpy_llama_logits(g, token_ids, heads, kv_heads, eps, rope_base,
                       neox=False):
    """Reference llama/qwen2 forward pass on GGUF-layout weights.

    Independent of the converter: it uses llama.cpp's own conventions:
    for llama (`neox=False`) permuted q/k rows with *interleaved* RoPE
    (adjacent pairs); for qwen2 (`neox=True`) rows as stored, rotated in
    halves (NeoX RoPE), and q/k/v biases where the file has them.
    """
    x = g["token_embd.weight"][token_ids].astype("float64")
    steps, d = x.shape
    hd = d // heads
    angles = np.arange(steps)[:, None] * rope_base ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w

    def rope(v):
        pairs = ((slice(0, hd // 2), slice(hd // 2, hd)) if neox
                 else (slice(0, hd, 2), slice(1, hd, 2)))
        first, second = v[..., pairs[0]], v[..., pairs[1]]
        out = np.empty_like(v)
        out[..., pairs[0]] = first * cos - second * sin
        out[..., pairs[1]] = first * sin + second * cos
        return out

    def project(h, w, name):
        return h @ w[name + ".weight"].T + w.get(name + ".bias", 0.0)

    mask = np.triu(np.full((steps, steps), -np.inf), 1)
    layers = len({k.split(".")[1] for k in g if k.startswith("blk.")})
    for i in range(layers):
        prefix = f"blk.{i}."
        w = {k[len(prefix):]: v for k, v in g.items() if k.startswith(prefix)}
        h = rms(x, w["attn_norm.weight"])
        q = rope(project(h, w, "attn_q").reshape(steps, heads, hd))
        k = rope(project(h, w, "attn_k").reshape(steps, kv_heads, hd))
        v = project(h, w, "attn_v").reshape(steps, kv_heads, hd)
        k, v = (np.repeat(t, heads // kv_heads, axis=1) for t in (k, v))
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = np.einsum("hts,shd->thd", probs, v).reshape(steps, d)
        x = x + attended @ w["attn_output.weight"].T
        h = rms(x, w["ffn_norm.weight"])
        gate, up = h @ w["ffn_gate.weight"].T, h @ w["ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w["ffn_down.weight"].T
    head = g.get("output.weight", g["token_embd.weight"])
    return rms(x, g["output_norm.weight"]) @ head.T


def keras_logits(model, token_ids):
    ids = np.asarray(token_ids, dtype="int32")[None]
    out = model({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return keras.ops.convert_to_numpy(out)[0]
