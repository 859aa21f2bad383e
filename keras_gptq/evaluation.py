"""Evaluation: sliding-window perplexity of a causal LM on text or tokens."""

import math

import keras
import numpy as np

from keras_gptq.model import calibration
from keras_gptq.model import capture
from keras_gptq.utils import progress


def _log_softmax_nll(logits, targets):
    logits = keras.ops.cast(logits, "float32")
    logp = keras.ops.log_softmax(logits, axis=-1)
    picked = keras.ops.take_along_axis(
        logp, keras.ops.expand_dims(targets, -1), axis=-1)
    return -keras.ops.convert_to_numpy(picked)[..., 0].astype(np.float64)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def evaluate_perplexity(model, data, tokenizer=None, sequence_length=512,
                        stride=None, max_tokens=None, batch_size=4,
                        verbose=False, add_start_token="auto"):
    """Perplexity of a causal LM on `data`, with sliding windows.

    The model is fed as its own preprocessor feeds it (see
    `keras_gptq.model.calibration.Framing`): text documents are joined with
    the tokenizer's end token, and when the preprocessor puts a start
    token first, every window is that token (given, not scored) followed
    by `sequence_length - 1` tokens of the text. Windows start every
    `stride` text tokens; each scores only the tokens no earlier window
    scored, so with the default stride (the text tokens of one window)
    windows are disjoint, as in the GPTQ paper's evaluation. Without a
    start token the first token of a window has no context and is scored
    only in the first window.

    Args:
        model: a KerasHub `CausalLM` (called on `{"token_ids",
            "padding_mask"}`) or any model mapping ids to logits.
        data: text or token ids, in any form `GPTQConfig.dataset` accepts.
        tokenizer: needed when `data` holds text.
        sequence_length: tokens per window, the start token included.
        stride: distance between window starts, in text tokens (at most
            the text tokens of one window).
        max_tokens: use at most this many tokens of `data`.
        batch_size: windows per forward pass.
        verbose: show a progress bar (tqdm, on stderr).
        add_start_token: "auto" (as the model's preprocessor does), True or
            False; as `GPTQConfig.add_start_token`.

    Returns:
        The perplexity, `exp(mean negative log-likelihood)`, as a float.

    Raises:
        ValueError: for fewer tokens than one window, a `sequence_length`
            below 2, a stride outside its range (0 included), or an
            invalid `add_start_token`.
    """
    if not _is_int(sequence_length) or sequence_length < 2:
        raise ValueError(
            f"`sequence_length`={sequence_length!r} must be an int >= 2 (a "
            "window needs one token of context per scored token).")
    frame = calibration.model_framing(model, tokenizer, add_start_token)
    start = frame.start_id
    content = sequence_length - (start is not None)
    stride = content if stride is None else stride
    if not _is_int(stride) or not 0 < stride <= content:
        raise ValueError(
            f"`stride`={stride} must be in [1, {content}] (the text tokens "
            f"of a window of `sequence_length`={sequence_length}).")
    stream = calibration.token_stream(data, tokenizer, max_tokens=max_tokens,
                                      separator_id=frame.separator_id)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    if len(stream) < content:
        raise ValueError(
            f"`data` gave {len(stream)} tokens, fewer than one window of "
            f"`sequence_length`={sequence_length}.")
    starts = list(range(0, len(stream) - content + 1, stride))
    windows = np.stack([stream[s:s + content] for s in starts])
    if start is not None:
        windows = np.concatenate(
            [np.full((len(windows), 1), start), windows], axis=1)
    # Row j of a window's NLL predicts input token j + 1; the first text
    # token is input token `offset`. Score each stream position once.
    offset = int(start is not None)
    first_scored = [offset] + [offset + content - stride] * (len(starts) - 1)
    total, count = 0.0, 0
    with capture.no_grad(), progress.bar(len(windows), "perplexity",
                                         "window", verbose) as bar:
        for i in range(0, len(windows), batch_size):
            batch = windows[i:i + batch_size].astype("int32")
            inputs = capture.model_inputs(model, batch)
            logits = model(inputs, training=False)
            nll = _log_softmax_nll(logits[:, :-1], batch[:, 1:])
            for row, first in zip(nll, first_scored[i:i + batch_size]):
                part = row[max(first - 1, 0):]
                total += float(part.sum())
                count += part.size
            bar.update(len(batch))
    return math.exp(total / count)


def generate_greedy(model, prompts, max_length=48):
    """Greedy continuations of `prompts` from a KerasHub causal LM.

    The model's own `generate` runs with the greedy sampler, so a float and
    a quantized model can be compared word for word on the same prompts.
    The model's sampler is put back afterwards; nothing else changes (its
    optimizer and loss are not touched, unlike `compile(sampler=...)`).

    Args:
        model: a KerasHub `CausalLM` with a preprocessor.
        prompts: a string or a list of strings.
        max_length: prompt plus generated tokens, at most.

    Returns:
        A list of strings, one per prompt (the prompt and its continuation).

    Raises:
        TypeError: if `model` cannot generate text or `prompts` are not
            strings.
        ValueError: if `max_length` is not a positive integer.

    Example:

    ```python
    before = generate_greedy(model, ["The history of the city"])
    keras_gptq.quantize(model, config)
    after = generate_greedy(model, ["The history of the city"])
    ```
    """
    if not hasattr(model, "generate") or getattr(
            model, "preprocessor", None) is None:
        raise TypeError(
            "`model` must be a KerasHub CausalLM with a preprocessor (it "
            f"needs `generate` and a tokenizer), but received "
            f"{type(model).__name__}.")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(
            "`prompts` must be a string or a non-empty list of strings, but "
            f"received {prompts!r}.")
    if not _is_int(max_length) or max_length < 1:
        raise ValueError(
            f"`max_length` must be a positive integer, but received "
            f"{max_length!r}.")
    from keras_hub.samplers import GreedySampler

    had_sampler = "sampler" in model.__dict__
    sampler = getattr(model, "sampler", None)
    model.sampler = GreedySampler()
    model.generate_function = None
    try:
        with capture.no_grad():  # one batch: one compiled generate call
            outputs = model.generate(prompts, max_length=max_length)
        return [str(text) for text in outputs]
    finally:
        if had_sampler:
            model.sampler = sampler
        else:
            del model.sampler
        model.generate_function = None
