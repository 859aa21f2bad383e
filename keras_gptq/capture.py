"""What the blocks and layers see: input capture and Hessian accumulation.

- `catch_block_inputs` runs the real model forward and stops at the first
  block, keeping exactly the arguments the model passes it (hidden states,
  masks, positions), as the reference's `Catcher` does.
- `record_layer_inputs` wraps the target layers of a block while it runs
  and hands each input (flattened to `[tokens, in]`) to a callback.
- `HessianAccumulator` keeps `H = 2/N sum x x^T` in float32, streaming over
  calibration batches. Where the backend computes on the CPU it accumulates
  with numpy: the same inputs then give the same H, bit for bit, on every
  backend, and that matters (with act-order a one-ulp difference in H can
  swap two near-tied columns and change a few percent of a layer's
  integers). On an accelerator it accumulates with `keras.ops` on the
  device, so activations never travel to the host.

Forward passes run eagerly and, on torch, under `torch.no_grad()`.
"""

import contextlib
import functools

import keras
import numpy as np
from keras import ops


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

    KerasHub backbones take `{"token_ids", "padding_mask"}`; other models
    take the ids themselves.
    """
    names = getattr(model, "input_names", None) or []
    if isinstance(getattr(model, "input", None), dict) or (
        "token_ids" in names
    ):
        return {
            "token_ids": token_ids,
            "padding_mask": np.ones_like(token_ids, dtype="int32"),
        }
    return token_ids


def forward_model(model):
    """Returns the sub-model whose forward pass feeds the blocks.

    For a KerasHub task (CausalLM) that is its backbone, which skips the
    language-model head; otherwise the model itself.
    """
    return getattr(model, "backbone", None) or model


def catch_block_inputs(model, block, batches, on_batch=None):
    """Runs `model` on each batch and keeps the arguments `block` receives.

    Args:
        model: the model (or backbone) to run.
        block: the first block to be quantized.
        batches: iterable of `[batch, seq]` int32 token arrays.
        on_batch: optional callable, called after each batch (progress).

    Returns:
        A list, one per batch, of `(args, kwargs)` as passed to `block`.

    Raises:
        RuntimeError: if the forward pass never reaches `block`.
    """
    caught = []

    def catcher(*args, **kwargs):
        caught.append((args, kwargs))
        raise _Caught()

    forward = forward_model(model)
    with no_grad(), _wrapped_call(block, catcher):
        for tokens in batches:
            before = len(caught)
            try:
                forward(model_inputs(forward, tokens), training=False)
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
    hidden states); the other arguments are kept as captured.
    """
    outputs = []
    with no_grad():
        for args, kwargs in calls:
            out = block(*args, **kwargs)
            if isinstance(out, (tuple, list)):
                out = out[0]
            outputs.append(((out,) + tuple(args[1:]), kwargs))
    return outputs


@contextlib.contextmanager
def record_layer_inputs(layers, callback):
    """Calls `callback(layer, x)` with each input of `layers` while active.

    Args:
        layers: the layers to watch (their `call` is wrapped on the
            instance and restored on exit).
        callback: receives the layer and its first positional input.
    """
    with contextlib.ExitStack() as stack:
        for layer in layers:
            original = layer.call

            def wrapper(x, *args, _layer=layer, _original=original, **kw):
                callback(_layer, x)
                return _original(x, *args, **kw)

            stack.enter_context(_wrapped_call(layer, wrapper))
        yield


@functools.lru_cache(maxsize=None)  # the backend is fixed per process
def on_accelerator():
    """True when Keras sees a GPU or TPU (then Hessians stay on device)."""
    device = getattr(ops.convert_to_tensor(np.zeros(1, "float32")),
                     "device", "cpu")
    return "cpu" not in str(device).lower()


class HessianAccumulator:
    """Streaming `H = 2/N sum_tokens x x^T` of one layer input, in float32.

    Batches are added with `add(rows)`; the running mean is rescaled at each
    batch (as in the reference's `add_batch`) so values stay bounded. With
    `asymmetric=True`, `add(rows, float_rows)` also accumulates GPTAQ's
    `dXXT = 2/N sum (x~ - x) x^T`, where `x~` is what the layer receives in
    the float model for the same token.

    Args:
        columns: input features.
        on_device: accumulate with `keras.ops` on the backend's device
            (True) or with numpy on the host (False, identical on every
            backend). None picks the device on an accelerator, else host.
        asymmetric: also accumulate `dXXT`.
    """

    def __init__(self, columns, on_device=None, asymmetric=False):
        self.columns = columns
        self.tokens = 0
        self.on_device = on_accelerator() if on_device is None else on_device
        self._xp = ops if self.on_device else np
        self._H = self._xp.zeros((columns, columns), dtype="float32")
        self._dXXT = self._xp.zeros((columns, columns), dtype="float32") if (
            asymmetric) else None

    def _rows(self, rows):
        rows = ops.cast(rows, "float32")
        if not self.on_device:
            rows = np.asarray(ops.convert_to_numpy(rows))
        return rows

    def add(self, rows, float_rows=None):
        """Adds a `[tokens, columns]` batch of inputs (and, when
        asymmetric, the float model's inputs for the same tokens)."""
        if (float_rows is None) != (self._dXXT is None):
            raise ValueError(
                "`float_rows` must be given exactly when the accumulator "
                "is asymmetric.")
        rows = self._rows(rows)
        count = int(rows.shape[0])
        if count == 0:
            return
        xp, total = self._xp, self.tokens + count
        with np.errstate(invalid="ignore", over="ignore"):  # checked later
            update = xp.matmul(xp.transpose(rows), rows)
            self._H = self._H * (self.tokens / total) + update * (2.0 / total)
            if self._dXXT is not None:
                delta = self._rows(float_rows) - rows
                cross = xp.matmul(xp.transpose(delta), rows)
                self._dXXT = (self._dXXT * (self.tokens / total)
                              + cross * (2.0 / total))
        self.tokens = total

    def result(self):
        """Returns H as a float32 numpy array."""
        return np.asarray(ops.convert_to_numpy(self._H), dtype=np.float32)

    def cross_result(self):
        """Returns dXXT as a float32 numpy array (None unless asymmetric)."""
        if self._dXXT is None:
            return None
        return np.asarray(ops.convert_to_numpy(self._dXXT), dtype=np.float32)
