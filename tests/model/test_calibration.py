"""Tests for keras_gptq.calibration: every dataset form → token windows."""

import pathlib
import warnings

import keras
import keras_hub
import numpy as np
import pytest

from keras_gptq.model import calibration

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "GPTQ quantizes one layer at a time, using second-order information.",
    "Calibration windows are cut from a single stream of tokens.",
]


def byte_tokenizer(text):
    """Toy tokenizer: the UTF-8 bytes of the string."""
    return list(text.encode("utf-8"))


def stream_of(texts):
    return np.concatenate([np.frombuffer(t.encode(), np.uint8)
                           for t in texts]).astype(np.int64)


def assert_windows_of(windows, stream, num_samples, sequence_length):
    """Shape, dtype, and every window is a contiguous slice of `stream`."""
    assert windows.shape == (num_samples, sequence_length)
    assert windows.dtype == np.int32
    slices = {tuple(stream[s:s + sequence_length])
              for s in range(len(stream) - sequence_length + 1)}
    for window in windows:
        assert tuple(int(t) for t in window) in slices


def windows(dataset, tokenizer=None, num_samples=4, sequence_length=8,
            seed=0, **kwargs):
    return calibration.calibration_windows(
        dataset, tokenizer, num_samples, sequence_length, seed=seed, **kwargs)


# ------------------------------------------------------------ accepted forms

def test_list_of_strings_with_callable_tokenizer():
    out = windows(TEXTS, byte_tokenizer, num_samples=5, sequence_length=16)
    assert_windows_of(out, stream_of(TEXTS), 5, 16)


def test_stream_joins_documents_in_order():
    np.testing.assert_array_equal(
        calibration.token_stream(TEXTS, byte_tokenizer), stream_of(TEXTS))


def test_generator_of_strings():
    out = windows((t for t in TEXTS), byte_tokenizer, sequence_length=12)
    np.testing.assert_array_equal(
        out, windows(TEXTS, byte_tokenizer, sequence_length=12))
    assert_windows_of(out, stream_of(TEXTS), 4, 12)


def test_iterable_of_strings_is_not_fully_materialized():
    # `max_tokens` promises not to process a whole corpus; a streaming
    # dataset (e.g. a `datasets.IterableDataset`) may be endless, so the
    # iterable must only be consumed as far as the windows need.
    pulled = []

    def corpus():
        for i in range(10_000):
            pulled.append(i)
            yield "document %d with some words in it" % i

    out = windows(corpus(), byte_tokenizer, num_samples=2, sequence_length=8)
    assert out.shape == (2, 8)
    assert len(pulled) < 100, f"consumed {len(pulled)} documents"


def test_numpy_array_of_strings_is_text():
    # Keras's GPTQConfig documents "a NumPy array" as a dataset form, and
    # ours "any iterable of strings"; an array of str is both.
    texts = np.array(TEXTS)
    out = windows(texts, byte_tokenizer, sequence_length=16)
    np.testing.assert_array_equal(
        out, windows(TEXTS, byte_tokenizer, sequence_length=16))


@pytest.mark.parametrize("as_path", [str, pathlib.Path])
def test_text_file_path(tmp_path, as_path):
    path = tmp_path / "calibration.txt"
    text = "\n".join(TEXTS) + "\nnon-ASCII: h\u00e9llo \u2603\n"
    path.write_text(text, encoding="utf-8")
    out = windows(as_path(path), byte_tokenizer, num_samples=6,
                  sequence_length=20)
    assert_windows_of(out, stream_of([text]), 6, 20)


def test_one_dimensional_int_array():
    ids = np.arange(100, 160, dtype=np.int64)
    out = windows(ids, num_samples=7, sequence_length=10)
    assert_windows_of(out, ids, 7, 10)


def test_two_dimensional_int_array_rows_are_documents():
    ids = np.arange(60, dtype=np.int32).reshape(3, 20)
    out = windows(ids, num_samples=5, sequence_length=25)
    # Windows longer than a row prove the rows are joined into one stream.
    assert_windows_of(out, ids.reshape(-1), 5, 25)


def test_list_of_id_lists_ragged():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12]]
    out = windows(docs, num_samples=3, sequence_length=5)
    assert_windows_of(out, np.arange(1, 13), 3, 5)


def test_integral_floats_are_accepted_as_ids():
    ids = np.arange(30, dtype=np.float32)
    np.testing.assert_array_equal(windows(ids, sequence_length=6),
                                  windows(np.arange(30), sequence_length=6))


def test_tokenizer_returning_backend_tensor():
    def tok(text):
        return keras.ops.convert_to_tensor(byte_tokenizer(text), "int32")

    np.testing.assert_array_equal(windows(TEXTS, tok, sequence_length=16),
                                  windows(TEXTS, byte_tokenizer,
                                          sequence_length=16))


def test_tokenizer_returning_transformers_style_dict():
    def tok(text):
        return {"input_ids": [byte_tokenizer(text)],
                "attention_mask": [[1] * len(text.encode())]}

    np.testing.assert_array_equal(windows(TEXTS, tok, sequence_length=16),
                                  windows(TEXTS, byte_tokenizer,
                                          sequence_length=16))


def test_empty_and_whitespace_documents_are_skipped():
    docs = ["", TEXTS[0], "   \n\t", TEXTS[1]]
    np.testing.assert_array_equal(
        calibration.token_stream(docs, byte_tokenizer),
        stream_of(TEXTS[:2]))


def test_keras_hub_byte_tokenizer():
    tok = keras_hub.tokenizers.ByteTokenizer()  # lowercases by default
    np.testing.assert_array_equal(calibration.token_stream(TEXTS, tok),
                                  stream_of([t.lower() for t in TEXTS]))
    out = windows(TEXTS, tok, num_samples=4, sequence_length=12)
    assert_windows_of(out, stream_of([t.lower() for t in TEXTS]), 4, 12)


def test_keras_hub_byte_pair_tokenizer():
    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "\u0120": 4,
                  "ab": 5, "\u0120a": 6, "\u0120b": 7, "\u0120c": 8}
    merges = ["a b", "\u0120 a", "\u0120 b", "\u0120 c"]
    tok = keras_hub.tokenizers.BytePairTokenizer(vocabulary=vocabulary,
                                                 merges=merges)
    text = "ab a b c ab"
    np.testing.assert_array_equal(calibration.token_stream([text], tok),
                                  [5, 6, 7, 8, 4, 5])
    out = windows([text, text], tok, num_samples=3, sequence_length=4)
    assert_windows_of(out, np.array([5, 6, 7, 8, 4, 5] * 2), 3, 4)


# -------------------------------------------------------------- randomness

def test_same_seed_same_windows_other_seed_other_windows():
    ids = np.arange(10_000)
    a = windows(ids, num_samples=16, sequence_length=32, seed=3)
    b = windows(ids, num_samples=16, sequence_length=32, seed=3)
    c = windows(ids, num_samples=16, sequence_length=32, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_windows_do_not_depend_on_the_dataset_form():
    ids = np.arange(500)
    reference = windows(ids, num_samples=8, sequence_length=16, seed=7)
    for form in ([list(ids[:250]), list(ids[250:])],
                 ids.reshape(5, 100)):
        np.testing.assert_array_equal(
            windows(form, num_samples=8, sequence_length=16, seed=7),
            reference)


def test_exact_length_stream_gives_the_whole_stream():
    ids = np.arange(8)
    out = windows(ids, num_samples=3, sequence_length=8)
    np.testing.assert_array_equal(out, np.tile(ids, (3, 1)))


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("dataset", [[], (), iter([]),
                                     np.array([], dtype=np.int64)])
def test_empty_dataset(dataset):
    with pytest.raises(ValueError, match="`dataset` is empty"):
        windows(dataset, byte_tokenizer)


def test_whitespace_only_strings_are_empty():
    with pytest.raises(ValueError, match="`dataset` is empty"):
        windows(["", "   ", "\n\t "], byte_tokenizer)


def test_too_short_for_one_window_states_found_and_needed():
    with pytest.raises(ValueError) as excinfo:
        windows([[1, 2, 3, 4, 5]], sequence_length=9)
    message = str(excinfo.value)
    assert "5 tokens" in message
    assert "`sequence_length`=9" in message


def test_allow_repeat_tiles_and_warns():
    with pytest.warns(UserWarning, match="only 5 tokens"):
        out = windows([[1, 2, 3, 4, 5]], num_samples=2, sequence_length=12,
                      allow_repeat=True)
    np.testing.assert_array_equal(
        out, np.tile([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], (2, 1)))


def test_no_warning_when_data_is_long_enough():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        windows(np.arange(50), allow_repeat=True)


def test_strings_without_tokenizer():
    with pytest.raises(ValueError, match="`tokenizer` is None"):
        windows(TEXTS, None)


@pytest.mark.parametrize("garbage,error,match", [
    (lambda s: ["a", "b", "c"], TypeError, "integer token ids"),
    (lambda s: "abc", TypeError, "integer token ids"),
    (lambda s: np.zeros((2, 5), np.int32), ValueError, r"shape \(2, 5\)"),
    (lambda s: np.array([0.5, 1.5, 2.0]), TypeError, "float"),
    (lambda s: None, TypeError, "integer token ids"),
])
def test_tokenizer_returning_garbage(garbage, error, match):
    with pytest.raises(error, match=match) as excinfo:
        windows(TEXTS, garbage)
    assert "`tokenizer`" in str(excinfo.value)


def test_tokenizer_returning_ragged_lists_names_the_tokenizer():
    # A batch-style ragged answer is as malformed as a 2-D one; the error
    # must say the tokenizer is at fault, not leak numpy's message.
    with pytest.raises((TypeError, ValueError)) as excinfo:
        windows(TEXTS, lambda s: [[1, 2], [3]])
    assert "`tokenizer`" in str(excinfo.value)


def test_tokenizer_batch_of_one_is_accepted():
    tok = lambda s: np.array([byte_tokenizer(s)])  # noqa: E731
    np.testing.assert_array_equal(
        calibration.token_stream(TEXTS, tok), stream_of(TEXTS))


def test_non_existent_path_string():
    with pytest.raises(ValueError) as excinfo:
        windows("/no/such/dir/calibration.txt", byte_tokenizer)
    message = str(excinfo.value)
    assert "not an existing file" in message
    assert "/no/such/dir/calibration.txt" in message


def test_raw_text_string_hints_at_a_list():
    with pytest.raises(ValueError, match=r"list of strings"):
        windows("just some raw text, not a path", byte_tokenizer)


@pytest.mark.parametrize("dataset", [5, 3.5, object()])
def test_unsupported_type(dataset):
    with pytest.raises(TypeError) as excinfo:
        windows(dataset, byte_tokenizer)
    assert type(dataset).__name__ in str(excinfo.value)


def test_three_dimensional_array_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        windows(np.zeros((2, 3, 4), np.int32))


def test_non_integer_ids_in_list_are_rejected():
    with pytest.raises(TypeError, match="`dataset` item 1"):
        windows([[1, 2, 3], [0.5, 1.5]])


# ------------------------------------------------- framing: as the model is fed

class SpecialTokenizer:
    """A byte tokenizer with KerasHub-style special token ids."""

    def __init__(self, start=None, end=None):
        self.start_token_id, self.end_token_id = start, end

    def __call__(self, text):
        return byte_tokenizer(text)


class FakeModel:
    """Just what `model_framing` reads: a preprocessor, or none."""

    def __init__(self, preprocessor=None):
        self.preprocessor = preprocessor


class FakePreprocessor:
    def __init__(self, tokenizer, add_start_token):
        self.tokenizer, self.add_start_token = tokenizer, add_start_token


def test_windows_begin_with_the_start_token():
    frame = calibration.Framing(start_id=300)
    ids = np.arange(1000)
    out = windows(ids, num_samples=6, sequence_length=9, framing=frame)
    assert out.shape == (6, 9)
    assert (out[:, 0] == 300).all()
    # The rest is a contiguous slice of the stream.
    assert_windows_of(out[:, 1:], ids, 6, 8)


def test_text_documents_are_joined_with_the_end_token():
    out = calibration.token_stream(TEXTS[:2], byte_tokenizer, separator_id=2)
    expected = np.concatenate([stream_of(TEXTS[:1]), [2],
                               stream_of(TEXTS[1:2])])
    np.testing.assert_array_equal(out, expected)
    # Token-id documents are the user's own: joined as given.
    np.testing.assert_array_equal(
        calibration.token_stream([[5, 6], [7]], None, separator_id=2),
        [5, 6, 7])


@pytest.mark.parametrize("adds,setting,expected", [
    (True, "auto", 1), (False, "auto", None), (True, False, None),
    (False, True, 1)])
def test_framing_follows_the_preprocessor(adds, setting, expected):
    tok = SpecialTokenizer(start=1, end=2)
    model = FakeModel(FakePreprocessor(tok, adds))
    frame = calibration.model_framing(model, None, setting)
    assert frame == calibration.Framing(start_id=expected, separator_id=2)


def test_framing_without_a_start_token_in_the_tokenizer():
    # Qwen's tokenizer has no start token: KerasHub's packer adds none.
    model = FakeModel(FakePreprocessor(SpecialTokenizer(end=2), True))
    assert calibration.model_framing(model).start_id is None
    with pytest.raises(ValueError, match="`add_start_token`=True"):
        calibration.model_framing(model, None, True)


def test_framing_reads_the_task_default_without_a_preprocessor():
    # A task built without a preprocessor: the class default decides.
    gemma = keras_hub.models.Gemma3CausalLM.__new__(
        keras_hub.models.Gemma3CausalLM)
    object.__setattr__(gemma, "preprocessor", None)
    tok = SpecialTokenizer(start=1, end=2)
    assert calibration.model_framing(gemma, tok).start_id == 1
    with pytest.warns(UserWarning, match="no tokenizer is known"):
        assert calibration.model_framing(gemma).start_id is None


def test_transformers_style_special_ids():
    class HFTokenizer:
        bos_token_id, eos_token_id = 7, 8

    model = FakeModel(FakePreprocessor(None, True))
    assert calibration.model_framing(model, HFTokenizer()) == (
        calibration.Framing(7, 8))


@pytest.mark.parametrize("value", ["on", 1, None, "Auto"])
def test_bad_add_start_token(value):
    with pytest.raises(ValueError, match="`add_start_token` must be"):
        calibration.model_framing(FakeModel(), None, value)


# ------------------------------------------------------ windows given as rows

def test_rows_of_sequence_length_are_used_as_given():
    rows = np.arange(40, dtype=np.int64).reshape(5, 8) % 7
    out = windows(rows, num_samples=3, sequence_length=8,
                  framing=calibration.Framing(start_id=99, separator_id=98))
    np.testing.assert_array_equal(out, rows[:3])  # no start token added
    assert out.dtype == np.int32


def test_fewer_given_rows_than_samples_warns_and_uses_all():
    rows = np.arange(16).reshape(2, 8)
    with pytest.warns(UserWarning, match="fewer than `num_samples`=4"):
        out = windows(rows, num_samples=4, sequence_length=8)
    np.testing.assert_array_equal(out, rows)
