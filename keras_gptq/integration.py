"""The `model.quantize("gptq", config=keras_gptq.GPTQConfig(...))` route.

Keras wraps each layer instance's `quantize` when the instance is created
(`Layer.__new__`), validating `config` first. Importing keras_gptq therefore
installs three small hooks, all keyed on the config's type so that every
other call (a stock `keras.quantizers.GPTQConfig` included) behaves exactly
as in Keras:

1. `keras.Model.quantize`: a `keras_gptq.GPTQConfig` goes to
   `keras_gptq.quantize` before Keras touches any layer.
2. Keras's config validation accepts a `keras_gptq.GPTQConfig`.
3. A model created *before* `import keras_gptq` still holds Keras's own
   `quantize`; if it receives a `keras_gptq.GPTQConfig`, the first layer it
   tries to convert raises a clear error (nothing has changed by then),
   instead of silently running Keras's GPTQ.
"""

import keras
from keras.src.layers import layer as keras_layer_module

from keras_gptq import pipeline
from keras_gptq.config import GPTQConfig

_TOO_EARLY = (
    "This model was created before `import keras_gptq`, so its "
    "`quantize` is Keras's own. Call `keras_gptq.quantize(model, config)`, "
    "or import keras_gptq before creating or loading the model."
)


def _route_model_quantize():
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


def _accept_config():
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


def _refuse_late_instances():
    for cls in (keras.layers.Dense, keras.layers.EinsumDense):
        original = cls._gptq_build

        def _gptq_build(self, kernel_shape, config, _orig=original):
            if isinstance(config, GPTQConfig):
                raise RuntimeError(_TOO_EARLY)
            return _orig(self, kernel_shape, config)

        cls._gptq_build = _gptq_build


def _install():
    if getattr(keras.Model, "_keras_gptq_routed", False):
        return
    _route_model_quantize()
    _accept_config()
    _refuse_late_instances()
    keras.Model._keras_gptq_routed = True


_install()
