"""Quantizes a tiny model on one device, then under a 4-device
`DataParallel`, in this process; saves every weight of both (`one.npz`,
`four.npz`) and how many layer inputs arrived split over devices
(`split.json`; its `stale_error` is the error that quantizing a model
built before the distribution was set gives). Run by
tests/model/test_devices.py in a fresh process with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`, JAX backend.

Usage: python -m helpers.devices_worker OUT FAMILY OPTIONS_JSON
"""

import json
import sys

DEVICES = 4


def _weights(model):
    import keras
    import numpy as np
    return {v.path: np.asarray(keras.ops.convert_to_numpy(v))
            for v in model.weights}


def main(out, family, options):
    """Runs both quantizations and writes their weights under `out`."""
    import jax
    import keras
    import keras_gptq
    import numpy as np
    from helpers.families import build_family
    from helpers.models import markov_tokens
    from keras_gptq.model import devices

    if len(jax.devices()) != DEVICES:
        raise SystemExit(f"expected {DEVICES} devices, got {jax.devices()}")
    split = {"one": 0, "four": 0}
    run = ["one"]
    original = devices.batch_parts

    def counting(x):
        parts = original(x)
        split[run[0]] += len(parts) > 1
        return parts

    devices.batch_parts = counting
    config = keras_gptq.GPTQConfig(dataset=markov_tokens(20_000, seed=1),
                                   **options)
    for name in ("one", "four"):
        run[0] = name
        if name == "four":
            stale = build_family(family)  # built before the distribution
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=jax.devices()))
            try:
                keras_gptq.quantize(stale, config, verbose=False)
            except ValueError as error:
                split["stale_error"] = str(error)
        model = build_family(family)
        np.savez(f"{out}/{name}_float.npz", **_weights(model))
        keras_gptq.quantize(model, config, verbose=False)
        np.savez(f"{out}/{name}.npz", **_weights(model))
    with open(f"{out}/split.json", "w") as f:
        json.dump(split, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
