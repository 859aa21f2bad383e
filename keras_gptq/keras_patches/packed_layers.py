"""Dense and EinsumDense: packed storage, and no Keras GPTQ for our config.

Keras gives Dense and EinsumDense GPTQ hooks (`_gptq_build`, `_gptq_call`)
beside their variable I/O (`save_own_variables`, `load_own_variables`) and
the `kernel` property. Each is wrapped once here:

- a layer whose dtype policy is a `PackedGPTQPolicy` uses keras_gptq's
  packed storage (`keras_gptq.storage.packed_layer`) for all five;
- `_gptq_build` given a `keras_gptq.GPTQConfig` means Keras's own
  per-instance `quantize` is running on a model created before
  `import keras_gptq`: it raises a clear error before any layer changes,
  instead of silently running Keras's GPTQ;
- every other layer (float, or quantized by Keras's own GPTQ) keeps
  Keras's behaviour.

Keras's saving walk (`saving_lib._walk_saveable`, used by every save and
load of weights) reads every attribute of every layer to find sublayers,
`kernel` included: on a packed layer that read dequantizes the whole
matrix (a float copy per layer, on every save and every load; 2 GB
transient on Qwen2.5-1.5B). `skip_packed_kernels` makes the walk skip
`kernel` on packed layers only; it is a computed float view, never a
sublayer, so the walk finds the same children.
"""

import threading

import keras
from keras.src.saving import saving_lib

from keras_gptq.config import GPTQConfig
from keras_gptq.storage import packed_layer
from keras_gptq.storage.policy import is_packed

CLASSES = (keras.layers.Dense, keras.layers.EinsumDense)

TOO_EARLY = (
    "This model was created before `import keras_gptq`, so its "
    "`quantize` is Keras's own. Call `keras_gptq.quantize(model, config)`, "
    "or import keras_gptq before creating or loading the model."
)


def _wrap(cls):
    build, call = cls._gptq_build, cls._gptq_call
    save, load = cls.save_own_variables, cls.load_own_variables
    kernel = cls.kernel

    def _gptq_build(self, kernel_shape, config, _orig=build):
        if is_packed(self):
            return packed_layer.build_packed(self, tuple(kernel_shape))
        if isinstance(config, GPTQConfig):
            raise RuntimeError(TOO_EARLY)
        return _orig(self, kernel_shape, config)

    def _gptq_call(self, inputs, training=False, _orig=call):
        if is_packed(self):
            return packed_layer.packed_call(self, inputs)
        return _orig(self, inputs, training=training)

    def save_own_variables(self, store, _orig=save):
        if is_packed(self) and self.built:
            return packed_layer.save_packed(self, store)
        return _orig(self, store)

    def load_own_variables(self, store, _orig=load):
        if is_packed(self) and self.built:
            return packed_layer.load_packed(self, store)
        return _orig(self, store)

    def _kernel_getter(self, _orig=kernel.fget):
        if is_packed(self) and self.built:
            return packed_layer.dequantized_kernel(self)
        return _orig(self)

    cls._gptq_build = _gptq_build
    cls._gptq_call = _gptq_call
    cls.save_own_variables = save_own_variables
    cls.load_own_variables = load_own_variables
    cls.kernel = property(_kernel_getter, kernel.fset, kernel.fdel,
                          kernel.__doc__)


def install():
    """Wraps the five hooks of Dense and EinsumDense (see the docstring)."""
    for cls in CLASSES:
        _wrap(cls)


_WALK = threading.local()  # set while the walk reads a packed layer's skipset
_END = object()


def _walk_without_kernel(walk):
    def _walk_saveable(saveable):
        if not (isinstance(saveable, CLASSES) and is_packed(saveable)):
            yield from walk(saveable)
            return
        children = walk(saveable)
        # The walk asks for its skipset once, before its first child.
        _WALK.packed = True
        try:
            first = next(children, _END)
        finally:
            _WALK.packed = False
        if first is not _END:
            yield first
            yield from children
    return _walk_saveable


def _skipset_with_kernel(skipset):
    def get_attr_skipset(obj_type):
        skip = skipset(obj_type)
        if getattr(_WALK, "packed", False):
            return set(skip) | {"kernel"}  # a copy: Keras may cache `skip`
        return skip
    return get_attr_skipset


def skip_packed_kernels():
    """Keras's saving walk skips the dequantizing `kernel` of packed layers."""
    saving_lib._walk_saveable = _walk_without_kernel(
        saving_lib._walk_saveable)
    saving_lib.get_attr_skipset = _skipset_with_kernel(
        saving_lib.get_attr_skipset)
