"""Calibration data: text, token arrays or files → reproducible token windows.

Windows look like what the model sees at inference (`Framing`):

- Every accepted form becomes a list of documents, each tokenized to a 1-D
  array of ids. Text documents are joined with the tokenizer's end token
  between them (how GPT-2, Llama, Qwen and Gemma pretraining packs
  documents, and how KerasHub's preprocessor ends a training sequence);
  token-id documents are joined as given.
- `num_samples` windows are cut from that stream at starts drawn from
  `numpy.random.default_rng(seed)` (the reference's random windows, but
  reproducible: Keras 3.15 draws them with `hash()`, which changes with
  PYTHONHASHSEED).
- When the model's preprocessor puts a start token first (KerasHub's
  `add_start_token`, e.g. Gemma's `<bos>`, GPT-2's `<|endoftext|>`), every
  window begins with it followed by `sequence_length - 1` stream tokens:
  activations at that position are unlike any other, and layers fitted
  without them are fitted to inputs the model never gets.
- A 2-D integer array whose rows are exactly `sequence_length` long is
  taken as finished windows and used row for row, as given.
"""

import dataclasses
import inspect
import os
import warnings

import numpy as np

from keras_gptq.config import check_add_start_token

# Tokenize at most this many times the tokens the windows need: enough
# variety for the random windows (a low bound such as 4x draws every window
# from a corpus's first few documents) without tokenizing an endless stream.
_TOKENS_HEADROOM = 64


def _as_documents(dataset):
    """Returns an iterable of documents: strings or 1-D integer arrays.

    Iterables are consumed lazily, so a streaming dataset is read only as
    far as the windows need.
    """
    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        if not os.path.isfile(path):
            raise ValueError(
                f"`dataset` is the string {path[:80]!r}, which is not an "
                "existing file. Pass a text file path, or a list of strings "
                "(e.g. `[text]`) for raw text."
            )
        with open(path, encoding="utf-8") as f:
            return [f.read()]
    if hasattr(dataset, "shape") and hasattr(dataset, "dtype"):
        array = np.asarray(dataset)
        if array.dtype.kind in "US":  # a numpy array of strings is text
            return [str(t) for t in array.reshape(-1)]
        if array.ndim not in (1, 2):
            raise ValueError(
                "`dataset` token arrays must be 1-D (one stream) or 2-D "
                f"(one row per document), but received shape {array.shape}."
            )
        return list(np.atleast_2d(array))
    try:
        return iter(dataset)
    except TypeError:
        raise TypeError(
            "`dataset` must be a list or iterable of strings, a text file "
            "path, or integer token ids, but received "
            f"{type(dataset).__name__}."
        ) from None


def _check_ids(ids, source):
    try:
        array = np.asarray(ids)
    except ValueError:
        raise ValueError(
            f"{source} must give a 1-D sequence of ids for one document, but "
            f"gave a ragged nested sequence ({type(ids).__name__})."
        ) from None
    if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
        if array.size and np.issubdtype(array.dtype, np.floating) and (
            np.all(np.mod(array, 1) == 0)
        ):
            array = array.astype(np.int64)
        else:
            raise TypeError(
                f"{source} must give integer token ids, but gave "
                f"{type(ids).__name__} with dtype {array.dtype}. A tokenizer "
                "must map one string to a 1-D sequence of ids."
            )
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise ValueError(
            f"{source} must give a 1-D sequence of ids for one document, "
            f"but gave shape {array.shape}."
        )
    return array.astype(np.int64)


def _tokenize(text, tokenizer):
    if tokenizer is None:
        raise ValueError(
            "`dataset` holds text but `tokenizer` is None. Pass the model's "
            "tokenizer, e.g. `tokenizer=model.preprocessor.tokenizer`, or "
            "pass token ids instead of text."
        )
    ids = tokenizer(text)
    if isinstance(ids, dict) and "input_ids" in ids:  # transformers-style
        ids = ids["input_ids"]
    if hasattr(ids, "numpy") and not isinstance(ids, np.ndarray):
        ids = ids.numpy() if callable(ids.numpy) else ids
    return _check_ids(ids, "`tokenizer`")


def token_stream(dataset, tokenizer, max_tokens=None, separator_id=None):
    """Tokenizes `dataset` into one stream of ids.

    Args:
        dataset: see `GPTQConfig.dataset`.
        tokenizer: callable mapping a string to ids, or None for ids.
        max_tokens: stop tokenizing documents once this many are collected.
        separator_id: id put between two text documents (the tokenizer's
            end token, see `Framing`), or None to join them directly.

    Returns:
        int64 1-D array.

    Raises:
        ValueError, TypeError: for empty or malformed data.
    """
    pieces, total = [], 0
    for i, doc in enumerate(_as_documents(dataset)):
        if isinstance(doc, str):
            if not doc.strip():
                continue
            ids = _tokenize(doc, tokenizer)
            if separator_id is not None and pieces:
                ids = np.concatenate([[separator_id], ids])
        else:
            ids = _check_ids(doc, f"`dataset` item {i}")
        pieces.append(ids)
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if total == 0:
        raise ValueError(
            "`dataset` is empty: no text or token ids were found. Pass a "
            "non-empty list of strings, a text file, or token ids."
        )
    return np.concatenate(pieces)


@dataclasses.dataclass(frozen=True)
class Framing:
    """How the model begins a sequence and how documents are joined.

    Attributes:
        start_id: token put first in every window (the model's start
            token), or None when the model is fed without one.
        separator_id: token put between two text documents (the
            tokenizer's end token), or None.
    """

    start_id: int = None
    separator_id: int = None


def _special_id(tokenizer, *names):
    for name in names:
        value = getattr(tokenizer, name, None)
        if isinstance(value, (int, np.integer)) and not isinstance(
                value, bool):
            return int(value)
    return None


def _adds_start_token(model):
    """Whether the model's preprocessor puts a start token first: its
    `add_start_token`, else the default of its task's preprocessor class;
    None when neither says."""
    preprocessor = getattr(model, "preprocessor", None)
    if hasattr(preprocessor, "add_start_token"):
        return bool(preprocessor.add_start_token)
    cls = getattr(type(model), "preprocessor_cls", None)
    if cls is None:
        return None
    default = inspect.signature(cls.__init__).parameters.get(
        "add_start_token")
    if default is None or default.default is inspect.Parameter.empty:
        return None
    return bool(default.default)


def model_framing(model, tokenizer=None, add_start_token="auto"):
    """The `Framing` that feeds `model` as its own preprocessor does.

    Args:
        model: the model (a KerasHub `CausalLM`: its `preprocessor` says
            whether a start token comes first; without one, the default of
            its preprocessor class).
        tokenizer: the tokenizer of the calibration text; its
            `start_token_id`/`end_token_id` (KerasHub) or
            `bos_token_id`/`eos_token_id` (transformers) are used, else the
            model's preprocessor's tokenizer's.
        add_start_token: "auto" (what the preprocessor does), True (always;
            the tokenizer must have a start token) or False (never).

    Returns:
        A `Framing`.

    Raises:
        ValueError: `add_start_token` is invalid, or True while no
            tokenizer names a start token.
    """
    check_add_start_token("add_start_token", add_start_token)
    preprocessor = getattr(model, "preprocessor", None)
    sources = [t for t in (tokenizer, getattr(preprocessor, "tokenizer",
                                              None)) if t is not None]
    start = next((i for i in (_special_id(
        t, "start_token_id", "bos_token_id") for t in sources)
        if i is not None), None)
    end = next((i for i in (_special_id(
        t, "end_token_id", "eos_token_id") for t in sources)
        if i is not None), None)
    if add_start_token is True and start is None:
        raise ValueError(
            "`add_start_token`=True, but neither `tokenizer` nor the model's "
            "preprocessor has a start token (`start_token_id`). Use "
            "`add_start_token='auto'` (the model's own choice) or False.")
    if add_start_token == "auto":
        add_start_token = bool(_adds_start_token(model))
        if add_start_token and not sources:
            warnings.warn(
                f"{type(model).__name__}'s preprocessor begins sequences "
                "with a start token, but no tokenizer is known to name it, "
                "so windows begin without one. Pass "
                "`tokenizer=` (the model's), or `add_start_token=False` to "
                "silence this.", stacklevel=3)
    return Framing(start if add_start_token else None, end)


def _given_windows(dataset, sequence_length):
    """The rows of a 2-D integer array of `sequence_length` columns (the
    user's own windows, used as given), else None."""
    if not (hasattr(dataset, "shape") and hasattr(dataset, "dtype")):
        return None
    array = np.asarray(dataset)
    if array.ndim != 2 or array.shape[1] != sequence_length or (
            array.dtype.kind not in "iu"):
        return None
    return array.astype(np.int32)


def calibration_windows(dataset, tokenizer, num_samples, sequence_length,
                        seed=0, allow_repeat=False, framing=Framing()):
    """`num_samples` windows of `sequence_length` tokens from `dataset`.

    A 2-D integer array with `sequence_length` columns is taken as windows
    already made: its first `num_samples` rows are used as given (all of
    them, with a warning, when it has fewer). Any other data is tokenized
    into one stream (see `token_stream`) and cut at random starts; with
    `framing.start_id`, each window is that token followed by
    `sequence_length - 1` stream tokens.

    Args:
        dataset: see `GPTQConfig.dataset`.
        tokenizer: callable mapping a string to ids, or None for ids.
        num_samples: number of windows.
        sequence_length: tokens per window.
        seed: seed of the window starts.
        allow_repeat: when the data is shorter than one window, tile it
            (with a warning) instead of raising.
        framing: a `Framing` (start token, document separator).

    Returns:
        int32 `[num_samples, sequence_length]` array (fewer rows only for
        given windows).

    Raises:
        ValueError: when the data holds fewer tokens than one window and
            `allow_repeat` is False.
    """
    given = _given_windows(dataset, sequence_length)
    if given is not None:
        if len(given) < num_samples:
            warnings.warn(
                f"`dataset` holds {len(given)} windows of {sequence_length} "
                f"tokens, fewer than `num_samples`={num_samples}; using all "
                f"{len(given)} as given.", stacklevel=2)
        return given[:num_samples]
    content = sequence_length - (framing.start_id is not None)
    needed = num_samples * content
    stream = token_stream(dataset, tokenizer,
                          max_tokens=_TOKENS_HEADROOM * needed,
                          separator_id=framing.separator_id)
    if len(stream) < content:
        if not allow_repeat:
            raise ValueError(
                f"`dataset` gave {len(stream)} tokens, fewer than one window "
                f"of `sequence_length`={sequence_length}. Provide more text, "
                "lower `sequence_length`, or allow repetition explicitly."
            )
        warnings.warn(
            f"Calibration data has only {len(stream)} tokens; repeating it "
            f"to fill windows of {sequence_length}.", stacklevel=2)
        stream = np.resize(stream, content)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - content + 1, size=num_samples)
    windows = np.stack([stream[s:s + content] for s in starts])
    if framing.start_id is not None:
        windows = np.concatenate(
            [np.full((num_samples, 1), framing.start_id), windows], axis=1)
    return windows.astype(np.int32)
