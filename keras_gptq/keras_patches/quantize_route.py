"""The `model.quantize("gptq", config=keras_gptq.GPTQConfig(...))` route.

Keras wraps each layer instance's `quantize` when the instance is created
(`Layer.__new__`), validating `config` first. Two patches, both keyed on
the config's type so that every other call (a stock
`keras.quantizers.GPTQConfig` included) behaves exactly as in Keras:

1. `keras.Model.quantize`: a `keras_gptq.GPTQConfig` goes to
   `keras_gptq.quantize` before Keras touches any layer.
2. Keras's config validation accepts a `keras_gptq.GPTQConfig`.

A model created *before* `import keras_gptq` holds Keras's per-instance
wrapper around the *original* `Model.quantize` (bound at creation), so the
class patch cannot reach it: `route_model_quantize` also finds the models
that already exist (the garbage collector tracks every one) and wraps
their instance `quantize` the same way, so `model.quantize("gptq",
config=keras_gptq.GPTQConfig(...))` works whatever the import order. If a
layer is still reached with our config some other way, `packed_layers`
stops it with a clear error before anything changes.
"""

import gc

import keras
from keras.src.layers import layer as keras_layer_module

from keras_gptq.config import GPTQConfig
from keras_gptq.model import pipeline


def route_model_quantize():
    """Sends `Model.quantize(..., config=GPTQConfig)` to keras_gptq."""
    original = keras.Model.quantize

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        if isinstance(config, GPTQConfig):
            kwargs.pop("type_check", None)
            if kwargs:
                raise ValueError(
                    f"Unrecognized keyword arguments: {sorted(kwargs)}.")
            return pipeline.quantize(self, config, filters=filters)
        return original(self, mode, config=config, filters=filters, **kwargs)

    quantize.__doc__ = original.__doc__
    quantize.__wrapped__ = original
    keras.Model.quantize = quantize
    for obj in gc.get_objects():
        if isinstance(obj, keras.Model):
            route_instance_quantize(obj)


def route_instance_quantize(model):
    """Routes a `keras_gptq.GPTQConfig` given to a model created before the
    class patch (its own `quantize`, made by `Layer.__new__`, calls the
    original `Model.quantize`) to keras_gptq; other calls go on to it."""
    own = model.__dict__.get("quantize")
    if own is None or getattr(own, "_keras_gptq_routed", False):
        return

    def quantize(mode=None, config=None, filters=None, **kwargs):
        if isinstance(config, GPTQConfig):
            return keras.Model.quantize(model, mode, config=config,
                                        filters=filters, **kwargs)
        return own(mode, config=config, filters=filters, **kwargs)

    quantize.__doc__ = own.__doc__
    quantize.__wrapped__ = own
    quantize._keras_gptq_routed = True
    object.__setattr__(model, "quantize", quantize)


def accept_config():
    """Lets Keras's config validation pass a `keras_gptq.GPTQConfig`."""
    original = keras_layer_module.validate_and_resolve_config

    def validate_and_resolve_config(mode, config):
        if isinstance(config, GPTQConfig):
            if mode not in (None, "gptq"):
                raise ValueError(
                    f"`mode`={mode!r} does not match a keras_gptq.GPTQConfig;"
                    " use `model.quantize('gptq', config=config)`."
                )
            return config
        return original(mode, config)

    keras_layer_module.validate_and_resolve_config = validate_and_resolve_config
