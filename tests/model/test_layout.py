"""Tests for keras_gptq.layout: the `W[out, in]` view of Dense/EinsumDense.

The central check: the matrix view is the layer's true linear map, i.e.
`einsum(x, kernel)` equals `inputs_to_rows(x) @ W.T`, computed with
`keras.ops` on the current backend.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_gptq.model import layout
from keras_gptq.model.layout import UnsupportedLayerError

# (equation, input shape, layer output_shape, kernel shape,
#  expected in_axes, expected out_axes)
EINSUM_CASES = {
    "gpt2_qkv": ("abc,cde->abde", (2, 3, 8), (None, 4, 5), (8, 4, 5),
                 (0,), (1, 2)),
    "gpt2_attention_output": ("abcd,cde->abe", (2, 3, 4, 5), (None, 6),
                              (4, 5, 6), (0, 1), (2,)),
    "llama_query": ("bqm,muh->bquh", (2, 3, 8), (None, 2, 4), (8, 2, 4),
                    (0,), (1, 2)),
    "llama_attention_output": ("bquh,uhm->bqm", (2, 3, 2, 4), (None, 8),
                               (2, 4, 8), (0, 1), (2,)),
    # Gemma: kernel (heads, hidden, head_dim) with hidden NOT the largest
    # axis (6 < 10): the contracted axis is the middle one.
    "gemma_query": ("btd,ndh->btnh", (2, 3, 6), (None, 4, 10), (4, 6, 10),
                    (1,), (0, 2)),
    "ellipsis": ("...b,bc->...c", (2, 3, 7), (5,), (7, 5), (0,), (1,)),
    "ellipsis_leading": ("...ab,bc->...ac", (2, 3, 4, 7), (4, 5), (7, 5),
                         (0,), (1,)),
    # Contracted axes in a different order in the input than in the kernel.
    "permuted_contraction": ("bhqd,dhm->bqm", (2, 3, 4, 5), (None, 6),
                             (5, 3, 6), (0, 1), (2,)),
    # Output axes in a different order than in the kernel.
    "permuted_output": ("btd,dhn->btnh", (2, 3, 6), (None, 4, 5),
                        (6, 5, 4), (0,), (1, 2)),
}


def build_einsum(equation, input_shape, output_shape):
    keras.utils.set_random_seed(0)
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape)
    layer.build(input_shape)
    return layer


def kernel_of(layer):
    return ops.convert_to_numpy(layer._kernel)


def rows_matmul(lay, x, W):
    """`inputs_to_rows(x) @ W.T` with keras.ops, as numpy."""
    rows = lay.inputs_to_rows(ops.convert_to_tensor(x))
    assert tuple(rows.shape)[1] == lay.columns
    return ops.convert_to_numpy(
        ops.matmul(rows, ops.transpose(ops.convert_to_tensor(W))))


def kernel_order_output(equation, lay):
    """`equation` with the kernel's output letters in kernel order."""
    x_spec, k_spec = equation.split("->")[0].split(",")
    out_spec = equation.split("->")[1]
    kernel_out = "".join(k_spec[a] for a in lay.out_axes)
    batch = out_spec
    for letter in kernel_out:
        batch = batch.replace(letter, "")
    return f"{x_spec},{k_spec}->{batch}{kernel_out}"


@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
def test_einsum_axes_are_read_from_the_equation(case):
    equation, x_shape, out_shape, k_shape, in_axes, out_axes = (
        EINSUM_CASES[case])
    layer = build_einsum(equation, x_shape, out_shape)
    assert tuple(layer._kernel.shape) == k_shape
    lay = layout.layer_layout(layer)
    assert lay.in_axes == in_axes
    assert lay.out_axes == out_axes
    assert lay.kernel_shape == k_shape
    assert lay.columns == int(np.prod([k_shape[a] for a in in_axes]))
    assert lay.rows == int(np.prod([k_shape[a] for a in out_axes]))


@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
def test_einsum_kernel_matrix_round_trip(case):
    equation, x_shape, out_shape, k_shape, _, _ = EINSUM_CASES[case]
    layer = build_einsum(equation, x_shape, out_shape)
    lay = layout.layer_layout(layer)
    kernel = kernel_of(layer)
    W = lay.kernel_to_matrix(kernel)
    assert W.shape == (lay.rows, lay.columns)
    assert W.dtype == np.float32
    np.testing.assert_array_equal(lay.matrix_to_kernel(W), kernel)
    back = lay.matrix_to_kernel(ops.convert_to_tensor(W), xp=ops)
    np.testing.assert_array_equal(ops.convert_to_numpy(back), kernel)
    # Every kernel entry appears exactly once in the matrix.
    np.testing.assert_array_equal(np.sort(W.ravel()), np.sort(kernel.ravel()))


@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
def test_einsum_matrix_view_is_the_layer_map(case):
    equation, x_shape, out_shape, _, _, _ = EINSUM_CASES[case]
    layer = build_einsum(equation, x_shape, out_shape)
    lay = layout.layer_layout(layer)
    rng = np.random.default_rng(1)
    x = rng.normal(size=x_shape).astype(np.float32)
    kernel = kernel_of(layer)
    W = lay.kernel_to_matrix(kernel)
    via_rows = rows_matmul(lay, x, W)
    # The layer itself (keras.ops.einsum on this backend) ...
    y_layer = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(y_layer, np.einsum(equation, x, kernel),
                               rtol=1e-5, atol=1e-5)
    # ... equals the matrix view, once the output axes are in kernel order.
    y_kernel_order = np.einsum(kernel_order_output(equation, lay), x, kernel)
    assert via_rows.shape == (y_kernel_order.size // lay.rows, lay.rows)
    np.testing.assert_allclose(via_rows,
                               y_kernel_order.reshape(-1, lay.rows),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["gpt2_qkv", "gemma_query",
                                  "llama_attention_output"])
def test_einsum_matrix_view_direct_reshape(case):
    # For equations whose output letters follow kernel order, the rows'
    # product reshapes straight to the layer output.
    equation, x_shape, out_shape, _, _, _ = EINSUM_CASES[case]
    layer = build_einsum(equation, x_shape, out_shape)
    lay = layout.layer_layout(layer)
    x = np.random.default_rng(2).normal(size=x_shape).astype(np.float32)
    y = ops.convert_to_numpy(layer(x))
    W = lay.kernel_to_matrix(kernel_of(layer))
    np.testing.assert_allclose(rows_matmul(lay, x, W).reshape(y.shape), y,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape", [(4, 9), (2, 3, 9), (2, 2, 2, 9)])
def test_dense_matrix_is_kernel_transposed(x_shape):
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(5, use_bias=False)
    layer.build(x_shape)
    lay = layout.layer_layout(layer)
    assert (lay.in_axes, lay.out_axes, lay.input_axes) == ((0,), (1,), (-1,))
    kernel = kernel_of(layer)
    W = lay.kernel_to_matrix(kernel)
    np.testing.assert_array_equal(W, kernel.T)
    np.testing.assert_array_equal(lay.matrix_to_kernel(W), kernel)
    x = np.random.default_rng(3).normal(size=x_shape).astype(np.float32)
    y = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(rows_matmul(lay, x, W).reshape(y.shape), y,
                               rtol=1e-5, atol=1e-5)


def test_layer_layout_uses_given_kernel_shape():
    layer = build_einsum("btd,ndh->btnh", (2, 3, 6), (None, 4, 10))
    lay = layout.layer_layout(layer, kernel_shape=(4, 6, 10))
    assert lay == layout.layer_layout(layer)


def test_inputs_to_rows_on_backend_tensor_keeps_tokens_together():
    lay = layout.einsum_layout("bhqd,dhm->bqm", (5, 3, 6))
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    rows = ops.convert_to_numpy(lay.inputs_to_rows(ops.convert_to_tensor(x)))
    # One row per (b, q) token, its features ordered as the kernel's (d, h).
    expected = np.transpose(x, (0, 2, 3, 1)).reshape(8, 15)
    np.testing.assert_array_equal(rows, expected)


# ------------------------------------------------------------ unsupported

@pytest.mark.parametrize("equation,kernel_shape", [
    ("abc,bcd->abd", (3, 4, 5)),     # b: in input, kernel and output
    ("ab,bc->abc", (4, 5)),           # b shared by input and output
    ("btd,bdh->bth", (2, 6, 5)),      # batched matmul over b
    ("ab,bcd->ac", (4, 5, 6)),        # d in neither input nor output
])
def test_shared_or_dangling_kernel_axis_is_unsupported(equation,
                                                        kernel_shape):
    with pytest.raises(UnsupportedLayerError) as excinfo:
        layout.einsum_layout(equation, kernel_shape)
    assert equation in str(excinfo.value)


@pytest.mark.parametrize("equation,kernel_shape", [
    ("ab->b", (4,)),                  # no kernel operand
    ("ab,bc,cd->ad", (4, 5)),         # three operands
    ("ab,bc", (4, 5)),                # no output
    ("ab,bcd->acd", (4, 5)),          # spec longer than the kernel
    ("ab,b...->a...", (4, 5)),        # ellipsis in the kernel
])
def test_malformed_equations_are_unsupported(equation, kernel_shape):
    with pytest.raises(UnsupportedLayerError):
        layout.einsum_layout(equation, kernel_shape)


def test_unsupported_error_is_a_value_error():
    assert issubclass(UnsupportedLayerError, ValueError)


def test_shared_axis_einsum_layer_is_unsupported():
    layer = keras.layers.EinsumDense("abc,bcd->abd", output_shape=(3, 5))
    layer.build((2, 3, 4))
    with pytest.raises(UnsupportedLayerError, match="both"):
        layout.layer_layout(layer)


@pytest.mark.parametrize("layer,shape", [
    (keras.layers.Conv1D(4, 3), (2, 8, 5)),
    (keras.layers.Embedding(10, 4), (2, 3)),
])
def test_other_layer_types_are_unsupported(layer, shape):
    layer.build(shape)
    weights = layer.embeddings if hasattr(layer, "embeddings") else (
        layer.kernel)
    kernel_shape = tuple(weights.shape)
    with pytest.raises(UnsupportedLayerError, match=type(layer).__name__):
        layout.layer_layout(layer, kernel_shape=kernel_shape)


def test_input_axis_summed_out_is_not_silently_misread():
    # "abc,cd->ad" is a valid EinsumDense (Keras builds and runs it): the
    # input axis b is in neither the kernel nor the output, so the layer
    # sums x over b before the kernel.  Per output row the true input
    # feature is sum_b x[a, b, :], not each x[a, b, :]; a Hessian built from
    # `inputs_to_rows` would describe the wrong inputs.  The layout must
    # either refuse the equation or describe the true linear map.
    equation, x_shape, kernel_shape = "abc,cd->ad", (2, 3, 4), (4, 5)
    layer = keras.layers.EinsumDense(equation, output_shape=(5,))
    layer.build(x_shape)
    try:
        lay = layout.layer_layout(layer)
    except UnsupportedLayerError:
        return
    x = np.random.default_rng(4).normal(size=x_shape).astype(np.float32)
    y = ops.convert_to_numpy(layer(x))
    W = lay.kernel_to_matrix(kernel_of(layer))
    via_rows = rows_matmul(lay, x, W)
    assert via_rows.shape == (y.size // lay.rows, lay.rows), (
        f"{len(via_rows)} rows for {y.size // lay.rows} output tokens")
    np.testing.assert_allclose(via_rows.reshape(y.shape), y, rtol=1e-5,
                               atol=1e-5)


# ------------------------------------------------------------ row positions

@pytest.mark.parametrize("equation,kernel_shape,x_shape", [
    ("btd,ndh->btnh", (4, 6, 10), (2, 3, 6)),          # Gemma query
    ("bquh,uhm->bqm", (2, 4, 8), (2, 3, 2, 4)),        # Llama attn output
    ("abc,cde->abde", (8, 4, 5), (2, 3, 8)),           # GPT-2 qkv
    ("btnh,hd->btnd", (4, 5), (2, 3, 7, 4)),           # per-head, kept n
])
def test_row_positions_follow_inputs_to_rows(equation, kernel_shape, x_shape):
    lay = layout.einsum_layout(equation, kernel_shape)
    # Tag every input entry with its sequence position (axis 1); the rows
    # must carry that tag in every column.
    x = np.broadcast_to(
        np.arange(x_shape[1], dtype="float32").reshape(
            [1, x_shape[1]] + [1] * (len(x_shape) - 2)), x_shape)
    rows = ops.convert_to_numpy(lay.inputs_to_rows(ops.convert_to_tensor(x)))
    positions = lay.row_positions(x_shape)
    assert positions.shape == (rows.shape[0],)
    np.testing.assert_array_equal(rows, np.broadcast_to(
        positions[:, None].astype("float32"), rows.shape))


def test_dense_row_positions_and_inputs_without_a_sequence_axis():
    lay = layout.layer_layout(keras.layers.Dense(3), kernel_shape=(5, 3))
    np.testing.assert_array_equal(lay.row_positions((2, 4, 5)),
                                  [0, 1, 2, 3, 0, 1, 2, 3])
    assert lay.row_positions((6, 5)) is None  # [tokens, in]: no positions
    # Axis 1 contracted: no sequence axis to read.
    assert layout.einsum_layout("bhqd,dhm->bqm", (5, 3, 6)).row_positions(
        (2, 3, 4, 5)) is None
