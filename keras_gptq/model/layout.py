"""How a Dense or EinsumDense layer is one 2-D matrix `W[out, in]`.

GPTQ works on a matrix whose columns are the layer's input features. For
`Dense` that is the kernel transposed. For `EinsumDense` the input and
output axes are read from the equation: the kernel axes that also appear in
the layer's input are contracted (the `in` side), the kernel axes that
appear in the output are the `out` side. Nothing is guessed from axis sizes
(Keras 3.15 takes the largest axis as the model dimension, which misreads
Gemma's `(heads, hidden, head_dim)` query kernels).
"""

import dataclasses
import math

import keras
import numpy as np


class UnsupportedLayerError(ValueError):
    """A layer that cannot be seen as one `W[out, in]` matrix."""


@dataclasses.dataclass(frozen=True)
class MatrixLayout:
    """The map between a layer's kernel and its matrix view.

    Attributes:
        kernel_shape: the kernel's shape.
        in_axes: kernel axes contracted with the input, in kernel order.
        out_axes: the other kernel axes, in kernel order.
        input_axes: for each of `in_axes`, the axis of the layer's input
            holding it (negative when counted from the end).
    """

    kernel_shape: tuple
    in_axes: tuple
    out_axes: tuple
    input_axes: tuple

    @property
    def columns(self):
        """Input features: the matrix's second dimension."""
        return math.prod(self.kernel_shape[a] for a in self.in_axes)

    @property
    def rows(self):
        """Output features: the matrix's first dimension."""
        return math.prod(self.kernel_shape[a] for a in self.out_axes)

    def kernel_to_matrix(self, kernel):
        """Returns `W[out, in]` (numpy float32) from a kernel array."""
        kernel = np.asarray(kernel, dtype=np.float32)
        return np.transpose(kernel, self.out_axes + self.in_axes).reshape(
            self.rows, self.columns
        )

    def matrix_to_kernel(self, matrix, xp=np):
        """Returns the kernel from `W[out, in]`; `xp` is `np` or `keras.ops`."""
        shape = [self.kernel_shape[a] for a in self.out_axes + self.in_axes]
        order = self.out_axes + self.in_axes
        inverse = tuple(int(i) for i in np.argsort(order))
        return xp.transpose(xp.reshape(matrix, shape), inverse)

    def inputs_to_rows(self, x):
        """Flattens a layer input to `[tokens, in]` with `keras.ops`."""
        ndim = len(x.shape)
        source = [a % ndim for a in self.input_axes]
        target = list(range(ndim - len(source), ndim))
        x = keras.ops.moveaxis(x, source, target)
        return keras.ops.reshape(x, (-1, self.columns))

    def row_positions(self, input_shape):
        """The sequence position of each row `inputs_to_rows` makes.

        Layer inputs are `[batch, sequence, ...]`; the rows keep the order
        of the axes that are not contracted. Returns an int array with one
        position per row, or None when the input has no sequence axis (fewer
        than 3 axes, or axis 1 is contracted).
        """
        ndim = len(input_shape)
        contracted = {a % ndim for a in self.input_axes}
        if ndim < 3 or 1 in contracted:
            return None
        kept = [a for a in range(ndim) if a not in contracted]
        shape = [int(input_shape[a]) for a in kept]
        position = np.arange(shape[1]).reshape(
            [1, shape[1]] + [1] * (len(shape) - 2))
        return np.broadcast_to(position, shape).reshape(-1)


def rows_to_outputs(layer, inputs, y):
    """Inverse of `inputs_to_rows` on the output side, with `keras.ops`.

    Args:
        layer: the Dense or EinsumDense (its `_gptq_layout` is set).
        inputs: the layer input `y` was computed from.
        y: `[tokens, out]`, `out` in the kernel's order of `out_axes`.

    Returns:
        The layer's output (before bias and activation).
    """
    lay = layer._gptq_layout
    shape = keras.ops.shape(inputs)
    ndim = len(shape)
    contracted = {a % ndim for a in lay.input_axes}
    batch = [shape[a] for a in range(ndim) if a not in contracted]
    out_dims = [lay.kernel_shape[a] for a in lay.out_axes]
    y = keras.ops.reshape(y, (*batch, *out_dims))
    if not isinstance(layer, keras.layers.EinsumDense):
        return y
    x_spec, k_spec, out_spec = parse_equation(layer.equation)
    kept = "".join(c for c in x_spec if c not in
                   {k_spec[a] for a in lay.in_axes})
    source = kept + "".join(k_spec[a] for a in lay.out_axes)
    if source == out_spec:
        return y
    return keras.ops.einsum(f"{source}->{out_spec}", y)


def parse_equation(equation):
    """`(input, kernel, output)` subscripts of an einsum equation.

    Raises:
        UnsupportedLayerError: the equation is not
            `'<input>,<kernel>-><output>'`.
    """
    try:
        inputs, output = equation.split("->")
        x_spec, k_spec = inputs.split(",")
    except ValueError:
        raise UnsupportedLayerError(
            f"Cannot parse the einsum equation {equation!r}: expected "
            "'<input>,<kernel>-><output>'."
        ) from None
    return x_spec.strip(), k_spec.strip(), output.strip()


def _input_axis(x_spec, letter):
    if "..." in x_spec:
        before, after = x_spec.split("...")
        if letter in after:
            return after.index(letter) - len(after)
        return before.index(letter)
    return x_spec.index(letter)


def einsum_layout(equation, kernel_shape):
    """Builds the `MatrixLayout` of an EinsumDense from its equation.

    Args:
        equation: e.g. `"btd,dnh->btnh"`.
        kernel_shape: the kernel's shape.

    Returns:
        A `MatrixLayout`.

    Raises:
        UnsupportedLayerError: if a kernel axis is shared by input and
            output (a batched, not a linear, map) or appears in neither.
    """
    x_spec, k_spec, out_spec = parse_equation(equation)
    if "." in k_spec or len(k_spec) != len(kernel_shape):
        raise UnsupportedLayerError(
            f"Kernel spec {k_spec!r} of {equation!r} does not match the "
            f"kernel shape {tuple(kernel_shape)}."
        )
    summed = [c for c in x_spec.replace(".", "")
              if c not in k_spec and c not in out_spec]
    if summed:
        raise UnsupportedLayerError(
            f"Input axes {summed} of {equation!r} are summed away before the "
            "kernel applies: the layer is not one matrix on its input rows, "
            "so GPTQ skips it."
        )
    in_axes, out_axes = [], []
    for axis, letter in enumerate(k_spec):
        in_x, in_out = letter in x_spec, letter in out_spec
        if in_x and not in_out:
            in_axes.append(axis)
        elif in_out and not in_x:
            out_axes.append(axis)
        else:
            raise UnsupportedLayerError(
                f"Kernel axis {letter!r} of {equation!r} is "
                + ("in both the input and the output" if in_x else
                   "in neither the input nor the output")
                + ": the layer is not one linear map, so GPTQ skips it."
            )
    if not in_axes or not out_axes:
        raise UnsupportedLayerError(
            f"{equation!r} has no contracted or no output kernel axis."
        )
    input_axes = tuple(_input_axis(x_spec, k_spec[a]) for a in in_axes)
    return MatrixLayout(
        tuple(int(d) for d in kernel_shape), tuple(in_axes), tuple(out_axes),
        input_axes,
    )


def layer_layout(layer, kernel_shape=None):
    """Returns the `MatrixLayout` of a built Dense or EinsumDense layer.

    Args:
        layer: a `keras.layers.Dense` or `keras.layers.EinsumDense`.
        kernel_shape: the kernel shape, when the layer no longer holds a
            float kernel (defaults to `layer._kernel.shape`).

    Raises:
        UnsupportedLayerError: for other layer types or equations.
    """
    if kernel_shape is None:
        kernel_shape = tuple(layer._kernel.shape)
    if isinstance(layer, keras.layers.EinsumDense):
        return einsum_layout(layer.equation, kernel_shape)
    if isinstance(layer, keras.layers.Dense):
        return MatrixLayout(tuple(kernel_shape), (0,), (1,), (-1,))
    raise UnsupportedLayerError(
        f"Layer {layer.name!r} of type {type(layer).__name__} is neither "
        "Dense nor EinsumDense."
    )
