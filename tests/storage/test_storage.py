"""Tests for keras_gptq.storage: bit packing, packed Dense/EinsumDense layers,
the undo path, and saving/reloading a model that holds packed layers."""

import dataclasses
import math
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

import keras_gptq  # noqa: F401  (installs the storage seam)
from keras_gptq import storage
from keras_gptq.algorithm import solver
from keras_gptq.model import layout
from keras_gptq.storage import kernels
from helpers.solving import solve

BITS = [2, 3, 4, 8]
WIDTHS = [1, 7, 8, 13, 129]


def random_levels(rows, columns, bits, seed=0):
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 2**bits, size=(rows, columns))
    levels[0, :] = 2**bits - 1          # every bit set somewhere
    levels[-1, ::2] = 0
    return levels


def to_numpy(x):
    return ops.convert_to_numpy(x)


# ------------------------------------------------------------------ packing

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("columns", WIDTHS)
def test_pack_unpack_identity_numpy_and_backend(bits, columns):
    levels = random_levels(5, columns, bits, seed=bits * 1000 + columns)
    packed = storage.pack(levels, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (5, storage.packed_width(columns, bits))
    unpacked = storage.unpack(packed, bits, columns)
    assert unpacked.dtype == np.int32
    np.testing.assert_array_equal(unpacked, levels)
    tensor = ops.convert_to_tensor(packed, dtype="uint8")
    on_backend = storage.unpack(tensor, bits, columns, xp=ops)
    assert ops.is_tensor(on_backend)
    np.testing.assert_array_equal(to_numpy(on_backend), levels)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("columns", WIDTHS + [16, 64, 1000])
def test_packed_width_is_bits_bytes_per_eight_values(bits, columns):
    expected = math.ceil(columns / 8) * bits
    assert storage.packed_width(columns, bits) == expected
    assert storage.pack(np.zeros((2, columns), np.int64), bits).shape == (
        2, expected)


def test_three_bit_is_three_bytes_per_eight_values():
    assert storage.packed_width(8, 3) == 3
    assert storage.packed_width(16, 3) == 6
    assert storage.packed_width(9, 3) == 6
    assert storage.pack(np.full((1, 800), 7), 3).nbytes == 300


@pytest.mark.parametrize("bits", BITS)
def test_bit_layout_low_bits_first(bits):
    # 8 levels form one little-endian integer of 8 * bits bits, level k at
    # bit offset k * bits: the on-disk format that presets rely on.
    levels = [(3 * k + 1) % (2**bits) for k in range(8)]
    word = sum(v << (bits * k) for k, v in enumerate(levels))
    expected = list(word.to_bytes(bits, "little"))
    np.testing.assert_array_equal(storage.pack(np.array([levels]), bits)[0],
                                  expected)


def test_two_and_four_bit_pack_several_levels_per_byte():
    np.testing.assert_array_equal(storage.pack([[1, 2, 3, 0]], 2), [[0x39, 0]])
    np.testing.assert_array_equal(storage.pack([[0xA, 0x5]], 4),
                                  [[0x5A, 0, 0, 0]])
    np.testing.assert_array_equal(storage.pack([[200, 7]], 8),
                                  [[200, 7, 0, 0, 0, 0, 0, 0]])


# ----------------------------------------------------- packed Dense/Einsum

LAYERS = {
    "dense": (lambda: keras.layers.Dense(12, use_bias=True), (3, 20)),
    "dense_3d_input": (lambda: keras.layers.Dense(10, activation="relu"),
                       (2, 4, 19)),
    "gpt2_qkv": (lambda: keras.layers.EinsumDense(
        "abc,cde->abde", output_shape=(None, 3, 4), bias_axes="de"),
        (2, 5, 16)),
    "llama_output": (lambda: keras.layers.EinsumDense(
        "bquh,uhm->bqm", output_shape=(None, 9)), (2, 3, 2, 8)),
    # Gemma query: kernel (heads=4, hidden=16, head_dim=24): the hidden
    # (contracted) axis is not the largest.
    "gemma_query": (lambda: keras.layers.EinsumDense(
        "btd,ndh->btnh", output_shape=(None, 4, 24)), (2, 3, 16)),
}


def build(name, seed=0):
    keras.utils.set_random_seed(seed)
    factory, x_shape = LAYERS[name]
    layer = factory()
    layer.build(x_shape)
    if getattr(layer, "bias", None) is not None:
        layer.bias.assign(np.random.default_rng(seed).normal(
            size=tuple(layer.bias.shape)).astype(np.float32))
    x = np.random.default_rng(seed + 1).normal(size=x_shape).astype(
        np.float32)
    return layer, x


def solve_for(layer, bits, group_size, seed=0, activation_order=False):
    lay = layout.layer_layout(layer)
    W = lay.kernel_to_matrix(to_numpy(layer._kernel))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4 * lay.columns, lay.columns))
    X *= rng.uniform(0.2, 3.0, size=lay.columns)  # distinct act-order
    H = 2 / len(X) * X.T @ X
    return lay, solve(W, H, bits=bits, group_size=group_size,
                                  block_size=8,
                                  activation_order=activation_order)


def reference_output(layer, x, kernel):
    if isinstance(layer, keras.layers.EinsumDense):
        y = np.einsum(layer.equation, x, kernel)
    else:
        y = x @ kernel
    if layer.bias is not None:
        y = y + to_numpy(layer.bias)
    if layer.activation is keras.activations.relu:
        y = np.maximum(y, 0)
    return y


def assert_close(actual, expected, rel=1e-5):
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    assert np.max(np.abs(actual - expected)) <= rel * scale, (
        np.max(np.abs(actual - expected)), scale)


@pytest.mark.parametrize("name,bits,group_size", [
    ("dense", 4, 8), ("dense", 8, 16), ("dense", 3, -1),
    ("dense_3d_input", 2, 4), ("gpt2_qkv", 3, -1), ("gpt2_qkv", 4, 4),
    ("llama_output", 3, 8), ("gemma_query", 3, 8), ("gemma_query", 2, -1),
    ("gemma_query", 8, 16), ("gemma_query", 4, 16),
])
def test_write_packed_output_matches_dequantized_weights(name, bits,
                                                         group_size):
    layer, x = build(name)
    lay, res = solve_for(layer, bits, group_size)
    storage.write_packed(layer, res, bits, group_size)
    assert storage.is_packed(layer)
    assert layer.quantization_mode == "gptq"
    kernel = lay.matrix_to_kernel(
        solver.dequantize(res.q, res.scale, res.zero, res.g_idx))
    assert kernel.shape == lay.kernel_shape
    assert_close(to_numpy(layer(x)), reference_output(layer, x, kernel))
    np.testing.assert_allclose(to_numpy(layer.kernel), kernel, rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("name,group_size", [
    ("dense", 8), ("dense", 6), ("dense", -1), ("gemma_query", 16),
    ("gemma_query", 4),
    ("gpt2_qkv", 5), ("llama_output", 8)])
@pytest.mark.parametrize("act_order", [False, True])
def test_contiguous_and_gathered_dequantization_agree(name, group_size,
                                                      act_order):
    # Contiguous groups dequantize by reshape + broadcast (padding a last
    # short group), act-order groups by gathering scales and zero points.
    # Both must give the solver's weights, and each layer must take the
    # path its g_idx calls for.
    layer, _ = build(name)
    lay, res = solve_for(layer, 4, group_size, activation_order=act_order)
    storage.write_packed(layer, res, 4, group_size)
    # One group (group_size -1, or as wide as the input) is contiguous
    # even under act-order.
    # Act-order columns are sorted by group once (storage.kernels), so
    # every layer here takes the contiguous path; the gathers stay for
    # groups that sorting cannot make contiguous.
    state = kernels.state(layer)
    assert state.contiguous
    assert (state.perm is None) is (
        not act_order or group_size in (-1, lay.columns))
    expected = solver.dequantize(res.q, res.scale, res.zero, res.g_idx)
    fast = to_numpy(storage.dequantized_matrix(layer))
    layer._gptq_kernel = dataclasses.replace(state, contiguous=False)
    gathered = to_numpy(storage.dequantized_matrix(layer))
    np.testing.assert_allclose(fast, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gathered, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["dense", "gemma_query"])
def test_packed_variables_hold_the_solver_arrays(name):
    bits, group_size = 3, 4
    layer, _ = build(name)
    lay, res = solve_for(layer, bits, group_size)
    storage.write_packed(layer, res, bits, group_size)
    groups = math.ceil(lay.columns / group_size)
    packed = to_numpy(layer.quantized_kernel)
    assert packed.dtype == np.uint8
    assert packed.shape == (lay.rows, storage.packed_width(lay.columns, 3))
    np.testing.assert_array_equal(
        storage.unpack(packed, bits, lay.columns), res.q)
    assert layer.kernel_scale.shape == (lay.rows, groups)
    np.testing.assert_array_equal(to_numpy(layer.kernel_scale), res.scale)
    np.testing.assert_array_equal(to_numpy(layer.kernel_zero), res.zero)
    np.testing.assert_array_equal(to_numpy(layer.g_idx), res.g_idx)
    assert not hasattr(layer, "_kernel")
    assert all(not v.trainable for v in (
        layer.quantized_kernel, layer.kernel_scale, layer.kernel_zero,
        layer.g_idx))
    policy = storage.layer_policy(layer)
    assert isinstance(policy, storage.PackedGPTQPolicy)
    assert (policy.weight_bits, policy.group_size) == (bits, group_size)
    assert policy.layout_version == storage.LAYOUT_VERSION


def test_three_bit_storage_is_smaller_than_four_bit():
    layer3, _ = build("gemma_query")
    layer4, _ = build("gemma_query")
    storage.write_packed(layer3, solve_for(layer3, 3, -1)[1], 3, -1)
    storage.write_packed(layer4, solve_for(layer4, 4, -1)[1], 4, -1)
    n3 = int(np.prod(layer3.quantized_kernel.shape))
    n4 = int(np.prod(layer4.quantized_kernel.shape))
    assert n3 * 4 == n4 * 3


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_restore_float_gives_back_exact_values_and_outputs(name):
    layer, x = build(name)
    before_values = {v.path: to_numpy(v).copy() for v in layer.weights}
    kernel_object = layer._kernel
    policy = storage.layer_policy(layer)
    y0 = to_numpy(layer(x))
    _, res = solve_for(layer, 2, -1)
    token = storage.write_packed(layer, res, 2, -1)
    assert not np.allclose(to_numpy(layer(x)), y0)
    storage.restore_float(layer, token)
    assert not storage.is_packed(layer)
    assert layer.quantization_mode is None
    assert storage.layer_policy(layer) is policy
    assert layer._kernel is kernel_object
    for attr in ("quantized_kernel", "kernel_scale", "kernel_zero", "g_idx"):
        assert not hasattr(layer, attr), attr
    after_values = {v.path: to_numpy(v) for v in layer.weights}
    assert after_values.keys() == before_values.keys()
    for path, value in before_values.items():
        np.testing.assert_array_equal(after_values[path], value)
    np.testing.assert_array_equal(to_numpy(layer(x)), y0)
    np.testing.assert_array_equal(to_numpy(layer.kernel), before_values[
        kernel_object.path])


@pytest.mark.parametrize("name", ["dense", "gpt2_qkv"])
def test_restore_float_keeps_the_weight_order(name):
    # The same variables in the same order: `model.get_weights()` /
    # `set_weights()` and anything else that relies on `layer.weights`
    # order must see the layer exactly as before the rollback.
    layer, _ = build(name)
    before = [id(v) for v in layer.weights]
    _, res = solve_for(layer, 4, -1)
    storage.restore_float(layer, storage.write_packed(layer, res, 4, -1))
    assert [id(v) for v in layer.weights] == before, [
        v.path for v in layer.weights]


def test_write_packed_undoes_itself_on_failure():
    layer, x = build("dense")
    y0 = to_numpy(layer(x))
    _, res = solve_for(layer, 4, 8)
    res.scale = res.scale[:, :1]  # wrong shape: assignment must fail
    with pytest.raises(Exception):
        storage.write_packed(layer, res, 4, 8)
    assert not storage.is_packed(layer)
    np.testing.assert_array_equal(to_numpy(layer(x)), y0)


# -------------------------------------------------------- saving/reloading

def packed_model(bits=3, group_size=8):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 16))
    dense = keras.layers.Dense(16, name="dense")
    gemma = keras.layers.EinsumDense("btd,ndh->btnh",
                                      output_shape=(None, 4, 8),
                                      name="gemma_query")
    head = keras.layers.Dense(3, name="float_head")
    h = dense(inputs)
    h = gemma(h)
    h = keras.layers.Reshape((5, 32))(h)
    model = keras.Model(inputs, head(h))
    for layer in (dense, gemma):
        _, res = solve_for(layer, bits, group_size)
        storage.write_packed(layer, res, bits, group_size)
    return model


def test_saved_model_reloads_with_identical_outputs(tmp_path):
    model = packed_model(bits=3, group_size=8)
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    y = to_numpy(model(x))
    path = str(tmp_path / "packed.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(reloaded(x)), y)
    for name in ("dense", "gemma_query"):
        layer = reloaded.get_layer(name)
        got, want = (kernels.state(l) for l in (layer, model.get_layer(name)))
        assert got.contiguous is want.contiguous
        np.testing.assert_array_equal(got.stored_g_idx, want.stored_g_idx)
        policy = layer.dtype_policy
        assert isinstance(policy, storage.PackedGPTQPolicy), type(policy)
        assert (policy.weight_bits, policy.group_size) == (3, 8)
        assert policy.layout_version == storage.LAYOUT_VERSION
        original = model.get_layer(name)
        for attr in ("quantized_kernel", "kernel_scale", "kernel_zero",
                     "g_idx"):
            np.testing.assert_array_equal(
                to_numpy(getattr(layer, attr)),
                to_numpy(getattr(original, attr)))
    assert storage.layer_policy(reloaded.get_layer("float_head")).name == (
        "float32")


def test_saved_file_stores_packed_bytes_not_floats(tmp_path):
    model = packed_model(bits=4, group_size=-1)
    path = str(tmp_path / "packed.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert config.count('"class_name": "PackedGPTQPolicy"') == 2
    assert '"layout_version": 1' in config
    assert '"mode": "gptq/4/-1"' in config


def test_policy_round_trips_through_keras_serialization():
    policy = storage.PackedGPTQPolicy("gptq/3/64", source_name="bfloat16")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(policy))
    assert isinstance(restored, storage.PackedGPTQPolicy)
    assert (restored.weight_bits, restored.group_size) == (3, 64)
    assert restored.get_config() == policy.get_config()
    assert restored.get_config()["layout_version"] == storage.LAYOUT_VERSION


@pytest.mark.parametrize("version", [0, 2])
def test_wrong_layout_version_raises_clear_error(version):
    with pytest.raises(ValueError) as excinfo:
        storage.PackedGPTQPolicy("gptq/4/128", layout_version=version)
    message = str(excinfo.value)
    assert f"layout {version}" in message
    assert f"layout {storage.LAYOUT_VERSION}" in message


def test_loading_a_future_layout_version_fails_clearly(tmp_path):
    path = tmp_path / "packed.keras"
    packed_model().save(str(path))
    tampered = tmp_path / "future.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                data = data.replace(b'"layout_version": 1',
                                    b'"layout_version": 2')
            dst.writestr(name, data)
    with pytest.raises(ValueError, match="storage layout 2"):
        keras.saving.load_model(str(tampered))
