"""Calibration data: text, token arrays or files → reproducible token windows.

Every accepted form becomes a list of documents, each tokenized to a 1-D
array of ids; the documents are joined into one token stream and
`num_samples` windows of `sequence_length` tokens are cut from it at starts
drawn from `numpy.random.default_rng(seed)` (the reference's random
windows, but reproducible: Keras 3.15 draws them with `hash()`, which
changes with PYTHONHASHSEED).
"""

import os
import warnings

import numpy as np

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


def token_stream(dataset, tokenizer, max_tokens=None):
    """Tokenizes `dataset` into one stream of ids.

    Args:
        dataset: see `GPTQConfig.dataset`.
        tokenizer: callable mapping a string to ids, or None for ids.
        max_tokens: stop tokenizing documents once this many are collected.

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


def calibration_windows(dataset, tokenizer, num_samples, sequence_length,
                        seed=0, allow_repeat=False):
    """Cuts `num_samples` windows of `sequence_length` tokens from `dataset`.

    Args:
        dataset: see `GPTQConfig.dataset`.
        tokenizer: callable mapping a string to ids, or None for ids.
        num_samples: number of windows.
        sequence_length: tokens per window.
        seed: seed of the window starts.
        allow_repeat: when the data is shorter than one window, tile it
            (with a warning) instead of raising.

    Returns:
        int32 `[num_samples, sequence_length]` array.

    Raises:
        ValueError: when the data holds fewer tokens than one window and
            `allow_repeat` is False.
    """
    needed = num_samples * sequence_length
    stream = token_stream(dataset, tokenizer,
                          max_tokens=_TOKENS_HEADROOM * needed)
    if len(stream) < sequence_length:
        if not allow_repeat:
            raise ValueError(
                f"`dataset` gave {len(stream)} tokens, fewer than one window "
                f"of `sequence_length`={sequence_length}. Provide more text, "
                "lower `sequence_length`, or allow repetition explicitly."
            )
        warnings.warn(
            f"Calibration data has only {len(stream)} tokens; repeating it "
            f"to fill windows of {sequence_length}.", stacklevel=2)
        stream = np.resize(stream, sequence_length)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - sequence_length + 1,
                          size=num_samples)
    windows = np.stack([stream[s:s + sequence_length] for s in starts])
    return windows.astype(np.int32)
