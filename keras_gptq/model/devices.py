"""Calibration over several devices: a Keras distribution on JAX.

When `keras.distribution.set_distribution(...)` (`DataParallel`, or a
`ModelParallel` with a batch axis) is active on the JAX backend, the
walker runs `n` calibration batches at once, one per device along the
mesh's batch axis: `global_batches` concatenates `n` consecutive batches of
equal size and `place` shards the model inputs along that axis, so every
forward pass (and every block input it produces) is split over the
devices, each device running the same shapes as a one-device run.

Where Hessians accumulate on the host (the backend computes on the CPU),
they stay identical to a one-device run: `batch_parts` hands each layer
input back as its per-device shards, in batch order, and the accumulators
add them one by one, exactly the sums and rescalings of one device adding
the batches in turn. So the integers are the same as on one device, bit
for bit. On accelerators the Hessians stay on the devices: the whole
sharded input goes to the accumulator, whose `x^T x` sums each device's
part across the devices (an all-reduce), so the result equals one device's
up to summation order.

Without a distribution (or on another backend) every function here is the
identity, and the walk is unchanged.
"""

import keras
import numpy as np

from keras_gptq.algorithm import hessian


def active():
    """The active Keras distribution on JAX, or None."""
    if keras.config.backend() != "jax":
        return None
    return keras.distribution.distribution()


def batch_devices(distribution):
    """How many devices `distribution` splits the batch axis over."""
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    name = distribution.batch_dim_name
    if name is None or name not in mesh.axis_names:
        return 1
    return int(mesh.shape[list(mesh.axis_names).index(name)])


def global_batches(batches, distribution):
    """Groups `batches` into the batches the walker runs.

    Each run of `n` (`batch_devices`) consecutive batches of equal size
    becomes one batch of `n` times the rows, split one batch per device by
    `place`; what is left over (fewer than `n`, or a shorter last batch)
    stays as it is and runs on every device alike. Without a distribution
    `batches` is returned unchanged.
    """
    n = batch_devices(distribution)
    if n == 1:
        return list(batches)
    grouped, i = [], 0
    while i < len(batches):
        run = batches[i:i + n]
        if len(run) == n and len({len(b) for b in run}) == 1:
            grouped.append(np.concatenate(run))
            i += n
        else:
            grouped.append(batches[i])
            i += 1
    return grouped


def placer(distribution):
    """A function that shards a model's inputs (a dict or an array) along
    the batch axis of `distribution` when their batch is a multiple of its
    devices (else leaves them, to run on every device alike); None without
    a distribution."""
    n = batch_devices(distribution)
    if n == 1:
        return None

    def place_one(value):
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] % n:
            return value
        return keras.distribution.distribute_tensor(
            value, distribution.get_data_layout(value.shape))

    def place(inputs):
        if isinstance(inputs, dict):
            return {key: place_one(value) for key, value in inputs.items()}
        return place_one(inputs)

    return place


def batch_parts(x):
    """`x` split into its per-device shards along axis 0, in order, as
    numpy arrays.

    An array not split along axis 0 (replicated, a plain numpy array, any
    other backend's tensor) comes back alone, as `[x]`, and so does every
    input on an accelerator, where the Hessians are summed on the devices.
    """
    sharding = getattr(x, "sharding", None)
    if sharding is None or len(sharding.device_set) == 1 or (
            hessian.on_accelerator()):
        return [x]
    starts = {}
    for shard in x.addressable_shards:
        index = shard.index
        rows = index[0] if index else slice(None)
        start = rows.start or 0
        whole = all(s == slice(None) or (s.start in (None, 0) and s.stop in (
            None, dim)) for s, dim in zip(index[1:], x.shape[1:]))
        if start not in starts:
            starts[start] = (rows, shard.data if whole else None)
    if len(starts) == 1:
        return [x]
    # On the host: a shard is committed to its device, and a layer that
    # runs on the part (an expert router) has its weights on every device.
    return [np.asarray(data if data is not None else x[rows])
            for _, (rows, data) in sorted(starts.items())]


def check_model(model, distribution):
    """Raises ValueError when `model`'s weights are not laid out over
    `distribution`'s devices (it was built before the distribution was
    set)."""
    if batch_devices(distribution) == 1:
        return
    devices = len(distribution.device_mesh.devices.flatten())
    for variable in model.weights:
        sharding = getattr(variable.value, "sharding", None)
        if sharding is not None and len(sharding.device_set) != devices:
            raise ValueError(
                f"Variable {variable.path!r} lives on "
                f"{len(sharding.device_set)} device(s), but the active "
                f"distribution spans {devices}: the model was built or "
                "loaded before `keras.distribution.set_distribution(...)`."
                " Set the distribution first, then build or load the "
                "model (e.g. `from_preset`), then quantize.")
