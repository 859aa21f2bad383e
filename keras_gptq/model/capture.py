"""What the blocks and layers see: input capture.

- `catch_block_inputs` runs the real model forward and stops at the first
  block, keeping exactly the arguments the model passes it (hidden states,
  masks, positions), as the reference's `Catcher` does. Hidden states
  passed by keyword (Falcon: `block(inputs=x, ...)`) are moved to the
  first positional argument, where `run_block` replaces them.
- `record_layer_inputs` wraps the target layers of a block while it runs
  and hands each input to a callback (the pipeline flattens it to
  `[tokens, in]` rows for `keras_gptq.algorithm.hessian`).

Forward passes run eagerly and, on torch, under `torch.no_grad()`; their
wall time is the run's "forward" stage (`keras_gptq.utils.timing`).
"""

import contextlib
import inspect

import keras
import numpy as np

from keras_gptq.model import devices
from keras_gptq.utils import timing


class _Caught(Exception):
    """Raised inside the first block to stop the forward pass."""


@contextlib.contextmanager
def no_grad():
    """Disables autograd on torch (a no-op on JAX and TensorFlow)."""
    if keras.config.backend() == "torch":
        import torch

        with torch.no_grad():
            yield
    else:
        yield


@contextlib.contextmanager
def _wrapped_call(layer, wrapper):
    """Temporarily replaces `layer.call` on the instance by `wrapper`."""
    had_own = "call" in layer.__dict__
    original = layer.__dict__.get("call")
    object.__setattr__(layer, "call", wrapper)
    try:
        yield
    finally:
        if had_own:
            object.__setattr__(layer, "call", original)
        else:
            object.__delattr__(layer, "call")


def model_inputs(model, token_ids):
    """Builds the inputs a model's forward pass takes for `token_ids`.

    KerasHub backbones take `{"token_ids", "padding_mask"}`, and
    `"position_ids"` (0, 1, ...) where they declare it (Gemma 4); other
    models take the ids themselves.
    """
    names = getattr(model, "input_names", None) or []
    declared = getattr(model, "input", None)
    if isinstance(declared, dict) or "token_ids" in names:
        inputs = {
            "token_ids": token_ids,
            "padding_mask": np.ones_like(token_ids, dtype="int32"),
        }
        if "position_ids" in (declared if isinstance(declared, dict)
                              else names):
            positions = np.arange(np.shape(token_ids)[-1], dtype="int32")
            inputs["position_ids"] = np.broadcast_to(
                positions, np.shape(token_ids)).copy()
        return inputs
    return token_ids


def forward_model(model):
    """Returns the sub-model whose forward pass feeds the blocks.

    For a KerasHub task (CausalLM) that is its backbone, which skips the
    language-model head; otherwise the model itself.
    """
    return getattr(model, "backbone", None) or model


def _hidden_states_first(first_parameter, args, kwargs):
    """`(args, kwargs)` with the hidden states (the block's first call
    parameter, `first_parameter`) positional, however they were passed."""
    if args or first_parameter not in kwargs:
        return tuple(args), kwargs
    kwargs = dict(kwargs)
    return (kwargs.pop(first_parameter),), kwargs


def catch_block_inputs(model, block, batches, on_batch=None, place=None):
    """Runs `model` on each batch and keeps the arguments `block` receives.

    Args:
        model: the model (or backbone) to run.
        block: the first block to be quantized.
        batches: iterable of `[batch, seq]` int32 token arrays.
        on_batch: optional callable, called after each batch (progress).
        place: optional callable mapping the model's inputs to where they
            run (`devices.placer`: sharded over a distribution's devices).

    Returns:
        A list, one per batch, of `(args, kwargs)` as passed to `block`,
        the hidden states always first in `args`.

    Raises:
        RuntimeError: if the forward pass never reaches `block`.
    """
    caught = []
    first = next(iter(inspect.signature(type(block).call.__get__(block))
                      .parameters), None)

    def catcher(*args, **kwargs):
        caught.append(_hidden_states_first(first, args, kwargs))
        raise _Caught()

    forward = forward_model(model)
    with timing.stage("forward"), no_grad(), _wrapped_call(block, catcher):
        for tokens in batches:
            before = len(caught)
            inputs = model_inputs(forward, tokens)
            try:
                forward(inputs if place is None else place(inputs),
                        training=False)
            except _Caught:
                pass
            if len(caught) == before:
                raise RuntimeError(
                    f"The forward pass of {forward.name!r} never called the "
                    f"block {block.name!r}. Check "
                    "`quantization_layer_structure['sequential_blocks']`: "
                    "its blocks must be layers the model runs."
                )
            if on_batch is not None:
                on_batch()
    return caught


def run_block(block, calls):
    """Runs `block` on captured `(args, kwargs)`; returns the new calls.

    The block's first output replaces the first positional argument (the
    hidden states, where `catch_block_inputs` puts them); the other
    arguments are kept as captured.
    """
    outputs = []
    with timing.stage("forward"), no_grad():
        for args, kwargs in calls:
            out = block(*args, **kwargs)
            if isinstance(out, (tuple, list)):
                out = out[0]
            outputs.append(((out,) + tuple(args[1:]), kwargs))
    return outputs


@contextlib.contextmanager
def record_layer_inputs(layers, callback):
    """Calls `callback(layer, x)` with each input of `layers` while active.

    An input split over several devices (`devices.batch_parts`) is handed
    over one device's part at a time, in batch order, as if each device's
    batch had run alone; layers sharing one input receive the same part
    objects.

    Args:
        layers: the layers to watch (their `call` is wrapped on the
            instance and restored on exit).
        callback: receives the layer and its first positional input.
    """
    last = [None, None]  # the latest input and its parts

    def parts(x):
        if last[0] is not x:
            last[:] = [x, devices.batch_parts(x)]
        return last[1]

    with contextlib.ExitStack() as stack:
        for layer in layers:
            original = layer.call

            def wrapper(x, *args, _layer=layer, _original=original, **kw):
                for part in parts(x):
                    callback(_layer, part)
                return _original(x, *args, **kw)

            stack.enter_context(_wrapped_call(layer, wrapper))
        yield
