"""`evaluate_perplexity` against a perplexity computed by hand.

The reference below scores tokens with a numpy float64 log-softmax over the
model's own logits and keeps its own record of which stream positions were
scored, so each token counts once whatever the stride.
"""

import math

import numpy as np
import pytest

import keras

import keras_gptq
from keras_gptq import evaluation
from helpers.models import build_causal_lm, logits, markov_tokens

SEQ = 32


@pytest.fixture(scope="module")
def model():
    return build_causal_lm("llama3")


@pytest.fixture(scope="module")
def stream():
    return markov_tokens(203, seed=7)


def _log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def reference_perplexity(model, stream, sequence_length, stride,
                         start_id=None):
    """Sliding windows; each stream position scored once, by the first
    window that holds it with at least one token of context. With
    `start_id`, windows are `[start] + stream[s:s + sequence_length - 1]`:
    the start token is given, never scored."""
    offset = int(start_id is not None)
    content = sequence_length - offset
    starts = range(0, len(stream) - content + 1, stride)
    windows = np.stack([np.concatenate([np.full(offset, start_id or 0),
                                        stream[s:s + content]])
                        for s in starts])
    logp = _log_softmax(logits(model, windows.astype("int32")))
    nll, scored = [], np.zeros(len(stream), dtype=int)
    for start, window, window_logp in zip(starts, windows, logp):
        for t in range(1, sequence_length):  # window index t, logits at t-1
            position = start + t - offset
            if scored[position]:
                continue
            scored[position] = 1
            nll.append(-window_logp[t - 1, window[t]])
    assert scored.max() == 1
    return math.exp(np.mean(nll)), len(nll)


def test_disjoint_windows_match_hand_computation(model, stream):
    expected, count = reference_perplexity(model, stream, SEQ, SEQ)
    got = keras_gptq.evaluate_perplexity(model, stream, sequence_length=SEQ)
    assert count == 6 * (SEQ - 1)  # 203 tokens: 6 full windows, tail dropped
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got == keras_gptq.evaluate_perplexity(
        model, stream, sequence_length=SEQ, stride=SEQ)


@pytest.mark.parametrize("stride", [1, 7, SEQ // 2, SEQ - 1])
def test_sliding_window_scores_each_token_once(model, stream, stride):
    expected, count = reference_perplexity(model, stream, SEQ, stride)
    last_start = (len(stream) - SEQ) // stride * stride
    assert count == last_start + SEQ - 1  # every position up to the last window
    got = keras_gptq.evaluate_perplexity(
        model, stream, sequence_length=SEQ, stride=stride, batch_size=8)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_smaller_stride_uses_more_context(model, stream):
    disjoint = keras_gptq.evaluate_perplexity(model, stream, sequence_length=SEQ)
    sliding = keras_gptq.evaluate_perplexity(
        model, stream, sequence_length=SEQ, stride=8)
    assert sliding != disjoint


def _byte_tokenizer(text):
    return [b for b in text.encode("utf-8")]


def test_text_with_tokenizer_equals_token_ids(model):
    texts = ["The quick brown fox jumps over the lazy dog. " * 3,
             "   ", "Pack my box with five dozen liquor jugs! " * 3]
    ids = np.concatenate([_byte_tokenizer(t) for t in texts if t.strip()])
    from_text = keras_gptq.evaluate_perplexity(
        model, texts, _byte_tokenizer, sequence_length=SEQ)
    from_ids = keras_gptq.evaluate_perplexity(model, ids, sequence_length=SEQ)
    expected, _ = reference_perplexity(model, ids, SEQ, SEQ)
    assert from_text == from_ids
    np.testing.assert_allclose(from_text, expected, rtol=1e-5)


def test_token_id_forms_agree(model, stream):
    as_array = keras_gptq.evaluate_perplexity(model, stream, sequence_length=SEQ)
    as_list = keras_gptq.evaluate_perplexity(
        model, [stream[:100], stream[100:]], sequence_length=SEQ)
    assert as_array == as_list


@pytest.mark.parametrize("max_tokens", [SEQ, 2 * SEQ + 5, 150])
def test_max_tokens_is_honoured(model, stream, max_tokens):
    got = keras_gptq.evaluate_perplexity(
        model, stream, sequence_length=SEQ, max_tokens=max_tokens)
    expected, _ = reference_perplexity(model, stream[:max_tokens], SEQ, SEQ)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Only the first `max_tokens` count: changing later tokens changes nothing.
    changed = stream.copy()
    changed[max_tokens:] = (changed[max_tokens:] + 1) % 256
    assert got == keras_gptq.evaluate_perplexity(
        model, changed, sequence_length=SEQ, max_tokens=max_tokens)


def test_max_tokens_stops_tokenizing_early(model):
    calls = []

    def tokenizer(text):
        calls.append(text)
        return _byte_tokenizer(text)

    texts = ["x" * 40 for _ in range(10)]
    keras_gptq.evaluate_perplexity(model, texts, tokenizer,
                                   sequence_length=SEQ, max_tokens=SEQ)
    assert len(calls) == 1


@pytest.mark.parametrize("stride", [None, 11])
def test_batch_size_does_not_change_result(model, stream, stride):
    results = [keras_gptq.evaluate_perplexity(
        model, stream, sequence_length=SEQ, stride=stride, batch_size=b)
        for b in (1, 3, 4, 64)]
    np.testing.assert_allclose(results, results[0], rtol=1e-6)


def test_too_few_tokens_names_sequence_length(model, stream):
    with pytest.raises(ValueError, match="sequence_length"):
        keras_gptq.evaluate_perplexity(model, stream[:SEQ - 1],
                                       sequence_length=SEQ)
    with pytest.raises(ValueError, match="sequence_length"):
        keras_gptq.evaluate_perplexity(model, stream, sequence_length=SEQ,
                                       max_tokens=SEQ - 1)


@pytest.mark.parametrize("stride", [0, -1, SEQ + 1, 2.5])
def test_bad_stride_names_stride(model, stream, stride):
    with pytest.raises(ValueError, match="stride"):
        keras_gptq.evaluate_perplexity(model, stream, sequence_length=SEQ,
                                       stride=stride)


@pytest.mark.parametrize("sequence_length", [0, 1, 8.0])
def test_bad_sequence_length_names_it(model, stream, sequence_length):
    with pytest.raises(ValueError, match="sequence_length"):
        keras_gptq.evaluate_perplexity(model, stream,
                                       sequence_length=sequence_length)


class SpecialIds:
    """A stand-in tokenizer that only names special tokens (data are ids)."""

    def __init__(self, start=None, end=None):
        self.start_token_id, self.end_token_id = start, end


@pytest.mark.parametrize("stride", [None, 10])
def test_start_token_is_given_not_scored(model, stream, stride):
    expected, count = reference_perplexity(
        model, stream, SEQ, stride or SEQ - 1, start_id=3)
    got = keras_gptq.evaluate_perplexity(
        model, stream, SpecialIds(start=3), sequence_length=SEQ,
        stride=stride, add_start_token=True)
    if stride is None:  # 203 tokens: 6 windows of 31 text tokens, all scored
        assert count == 6 * (SEQ - 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    plain = keras_gptq.evaluate_perplexity(model, stream, SpecialIds(start=3),
                                           sequence_length=SEQ,
                                           add_start_token=False)
    assert plain != pytest.approx(got, rel=1e-6)  # the start token counts


def test_auto_follows_the_preprocessor(model, stream):
    # The tiny llama3 has no preprocessor: "auto" reads the default of its
    # task's preprocessor class (Llama3CausalLMPreprocessor: start token on).
    auto = keras_gptq.evaluate_perplexity(model, stream, SpecialIds(start=3),
                                          sequence_length=SEQ)
    on = keras_gptq.evaluate_perplexity(model, stream, SpecialIds(start=3),
                                        sequence_length=SEQ,
                                        add_start_token=True)
    assert auto == on


def test_start_token_on_without_one_is_an_error(model, stream):
    with pytest.raises(ValueError, match="`add_start_token`=True"):
        keras_gptq.evaluate_perplexity(model, stream, SpecialIds(),
                                       sequence_length=SEQ,
                                       add_start_token=True)
    with pytest.raises(ValueError, match="`add_start_token` must be"):
        keras_gptq.evaluate_perplexity(model, stream, sequence_length=SEQ,
                                       add_start_token="yes")


def test_text_without_tokenizer_names_tokenizer(model):
    with pytest.raises(ValueError, match="tokenizer"):
        keras_gptq.evaluate_perplexity(model, ["some text"],
                                       sequence_length=SEQ)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A tiny random llama with a real tokenizer (from a tiny GGUF)."""
    from keras_gptq.examples import bundled
    from helpers.gguf import random_hf_weights, write_tiny_gguf
    tmp = tmp_path_factory.mktemp("gen")
    gguf = write_tiny_gguf(str(tmp / "tiny.gguf"),
                           random_hf_weights(seed=1, tied=True))
    folder = str(tmp / "hf")
    bundled.convert_gguf_to_hf_folder(gguf, folder)
    return bundled.load_llama_folder(folder)


def _greedy_by_hand(model, prompt, max_length):
    """Independent greedy decoding: full forward passes, argmax of the
    last position, stop at the end token; KerasHub's own pre/postprocess."""
    pre = model.preprocessor
    x = pre.generate_preprocess([prompt], sequence_length=max_length)
    ids = np.array(keras.ops.convert_to_numpy(x["token_ids"]))
    mask = np.array(keras.ops.convert_to_numpy(x["padding_mask"]))
    end = pre.tokenizer.end_token_id
    for t in range(int(mask[0].sum()), max_length):
        # One fixed shape (no recompiling per length): causal attention
        # keeps position t-1 blind to the placeholders after it.
        out = model({"token_ids": ids.astype("int32"),
                     "padding_mask": np.ones_like(ids, "int32")})
        ids[0, t] = int(np.argmax(keras.ops.convert_to_numpy(out)[0, t - 1]))
        mask[0, t] = True
        if ids[0, t] == end:
            break
    text = pre.generate_postprocess({"token_ids": ids, "padding_mask": mask})
    return str(np.asarray(keras.ops.convert_to_numpy(text)).reshape(-1)[0]
               if not isinstance(text, (str, list)) else
               (text[0] if isinstance(text, list) else text))


def test_generate_greedy_is_argmax_decoding_and_keeps_the_sampler(
        text_model):
    sampler = text_model.sampler
    optimizer = text_model.optimizer
    prompts = ["The city", "Photosynthesis"]
    # The tiny tokenizer spends about one token per character: 40 tokens
    # leave room to generate after each prompt.
    got = evaluation.generate_greedy(text_model, prompts, max_length=40)
    assert got == [_greedy_by_hand(text_model, p, 40) for p in prompts]
    assert all(g.startswith(p) and len(g) > len(p)
               for g, p in zip(got, prompts)), got
    assert text_model.sampler is sampler
    assert text_model.optimizer is optimizer
    assert evaluation.generate_greedy(text_model, prompts[0], 40) == got[:1]


def test_generate_greedy_errors(text_model, model):
    with pytest.raises(TypeError, match="preprocessor"):
        evaluation.generate_greedy(model, ["x"])
    with pytest.raises(TypeError, match="prompts"):
        evaluation.generate_greedy(text_model, [1, 2])
    with pytest.raises(TypeError, match="prompts"):
        evaluation.generate_greedy(text_model, [])
    with pytest.raises(ValueError, match="max_length"):
        evaluation.generate_greedy(text_model, "x", max_length=0)
