"""Hessian accumulation and layer-input capture."""

import keras
import numpy as np

from keras_gptq.algorithm import hessian
from keras_gptq.model import capture
from keras_gptq.model import layout


import pytest


@pytest.mark.parametrize("on_device", [False, True])
def test_hessian_matches_closed_form(on_device):
    X = np.random.default_rng(0).standard_normal((300, 24)).astype("float32")
    acc = hessian.HessianAccumulator(24, on_device=on_device)
    acc.add(keras.ops.convert_to_tensor(X))
    np.testing.assert_allclose(acc.result(), 2.0 / 300 * X.T @ X,
                               rtol=1e-5, atol=1e-5)
    assert acc.tokens == 300


@pytest.mark.parametrize("on_device", [False, True])
def test_streaming_equals_big_batch(on_device):
    X = np.random.default_rng(1).standard_normal((1000, 16)).astype("float32")
    big = hessian.HessianAccumulator(16, on_device=on_device)
    big.add(X)
    streamed = hessian.HessianAccumulator(16, on_device=on_device)
    for chunk in np.array_split(X, [7, 300, 301, 650]):
        streamed.add(chunk)
    np.testing.assert_allclose(streamed.result(), big.result(), rtol=1e-5,
                               atol=1e-6)


def test_recorded_inputs_reach_the_callback_and_calls_are_restored():
    layer = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 2, 3))
    x = np.random.default_rng(2).standard_normal((2, 5, 4)).astype("float32")
    layer(x)
    seen = []
    with capture.record_layer_inputs([layer], lambda l, v: seen.append(v)):
        y = layer(x)
    assert len(seen) == 1
    rows = layout.layer_layout(layer).inputs_to_rows(seen[0])
    assert tuple(rows.shape) == (10, 4)
    assert "call" not in layer.__dict__
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)),
                               keras.ops.convert_to_numpy(y))


def _backend_sees_an_accelerator():
    """Asks the backend itself, not the way `capture` finds out."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax
        return jax.default_backend() != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf
        return bool(tf.config.list_physical_devices("GPU")
                    or tf.config.list_physical_devices("TPU"))
    import torch
    return torch.cuda.is_available()


def test_host_accumulation_on_cpu_device_on_accelerator():
    # On a CPU-only machine the default must be the host path (bit-identical
    # across backends); with a GPU/TPU the device path. `on_device` forces
    # either.
    assert hessian.on_accelerator() is _backend_sees_an_accelerator()
    assert hessian.HessianAccumulator(4).on_device is (
        hessian.on_accelerator())
    assert hessian.HessianAccumulator(4, on_device=True).on_device is True
    assert hessian.HessianAccumulator(4, on_device=False).on_device is False


@pytest.mark.parametrize("on_device", [False, True])
def test_asymmetric_cross_term_matches_closed_form_when_streamed(on_device):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 12)).astype("float32")
    X_float = X + 0.1 * rng.standard_normal((500, 12)).astype("float32")
    acc = hessian.HessianAccumulator(12, on_device=on_device,
                                     asymmetric=True)
    for rows, float_rows in zip(np.array_split(X, [1, 200, 420]),
                                np.array_split(X_float, [1, 200, 420])):
        acc.add(rows, float_rows)
    np.testing.assert_allclose(acc.result(), 2.0 / 500 * X.T @ X,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acc.cross_result(),
                               2.0 / 500 * (X_float - X).T @ X,
                               rtol=1e-4, atol=1e-6)
    assert hessian.HessianAccumulator(12).cross_result() is None


def test_float_rows_must_match_the_accumulator_kind():
    X = np.ones((3, 4), "float32")
    with pytest.raises(ValueError, match="`float_rows`"):
        hessian.HessianAccumulator(4).add(X, X)
    with pytest.raises(ValueError, match="`float_rows`"):
        hessian.HessianAccumulator(4, asymmetric=True).add(X)


class _KeywordBlock(keras.layers.Layer):
    """A block the model calls with its hidden states by keyword, as
    Falcon's backbone does (`block(inputs=x, decoder_padding_mask=m)`)."""

    def call(self, inputs, scale=None):
        return inputs * scale


def test_hidden_states_passed_by_keyword_are_caught_first_and_replaced():
    block = _KeywordBlock()
    tokens = keras.Input((3,))
    model = keras.Model(tokens, block(inputs=tokens, scale=2.0))
    x = np.arange(6, dtype="float32").reshape(2, 3)
    calls = capture.catch_block_inputs(model, block, [x])
    (args, kwargs), = calls
    assert set(kwargs) == {"scale"}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(args[0]), x)
    # Running the block twice feeds its output back as the hidden states.
    (args, _), = capture.run_block(block, capture.run_block(block, calls))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(args[0]), 4 * x)


def test_model_inputs_add_positions_where_the_model_declares_them():
    # Gemma 4's backbone takes position_ids beside token ids and mask.
    names = ("token_ids", "padding_mask", "position_ids")
    inputs = {n: keras.Input((None,), dtype="int32", name=n) for n in names}
    model = keras.Model(inputs, keras.ops.add(inputs["token_ids"],
                                              inputs["position_ids"]))
    tokens = np.full((2, 4), 7, dtype="int32")
    fed = capture.model_inputs(model, tokens)
    assert sorted(fed) == sorted(names)
    np.testing.assert_array_equal(fed["position_ids"], [[0, 1, 2, 3]] * 2)
    assert "position_ids" not in capture.model_inputs(
        keras.Model({n: inputs[n] for n in names[:2]},
                    inputs["token_ids"]), tokens)


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_weighted_rows_match_closed_form(on_device, asymmetric):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 12)).astype("float32")
    F = X + 0.1 * rng.standard_normal((200, 12)).astype("float32")
    w = rng.uniform(0.5, 20.0, 200).astype("float32")
    acc = hessian.HessianAccumulator(12, on_device=on_device,
                                     asymmetric=asymmetric)
    for rows in np.array_split(np.arange(200), [50, 51, 120]):
        acc.add(X[rows], F[rows] if asymmetric else None, weights=w[rows])
    # H = 2/N sum w x x^T, N counting rows; dXXT = 2/N sum w (f - x) x^T.
    np.testing.assert_allclose(acc.result(), 2.0 / 200 * (X.T * w) @ X,
                               rtol=1e-4, atol=1e-5)
    if asymmetric:
        np.testing.assert_allclose(acc.cross_result(),
                                   2.0 / 200 * ((F - X).T * w) @ X,
                                   rtol=1e-4, atol=1e-5)
    assert acc.tokens == 200


def test_unit_weights_equal_no_weights():
    X = np.random.default_rng(4).standard_normal((64, 8)).astype("float32")
    plain, ones = (hessian.HessianAccumulator(8, on_device=False)
                   for _ in range(2))
    plain.add(X)
    ones.add(X, weights=np.ones(64))
    np.testing.assert_array_equal(plain.result(), ones.result())
