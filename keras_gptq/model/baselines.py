"""Round-to-nearest baselines on the same grid as GPTQ, for comparison.

They round what `quantize` quantizes: the blocks' Dense/EinsumDense layers
(router gates left float) and every expert of their expert banks.
"""

import keras

from keras_gptq import storage
from keras_gptq.algorithm import grid
from keras_gptq.algorithm import solver
from keras_gptq.model import layout as layout_lib
from keras_gptq.model import structure


def _rtn_layers(model, bits, group_size, symmetric, mse=False):
    """Yields `(layer, layout, float_kernel, rtn_levels)` for every target
    layer of the model's blocks; `rtn_levels` is `grid.rtn_quantize`'s."""
    for block in structure.sequential_blocks(model):
        for layer in structure.target_layers(block):
            lay = layout_lib.layer_layout(layer)
            kernel = keras.ops.convert_to_numpy(layer._kernel)
            yield layer, lay, kernel, grid.rtn_quantize(
                lay.kernel_to_matrix(kernel), bits, group_size, symmetric, mse)


def _rtn_banks(model, bits, group_size, symmetric, mse=False):
    """Yields `(moe, {name: (variable, float_kernel, [levels per expert])})`
    for every expert bank of the model's blocks."""
    for block in structure.sequential_blocks(model):
        for moe in structure.target_banks(block):
            matrices = {}
            for matrix in moe.family.matrices:
                variable = getattr(moe.bank, matrix.name)
                kernel = keras.ops.convert_to_numpy(
                    keras.ops.cast(variable, "float32"))
                matrices[matrix.name] = (variable, kernel, [
                    grid.rtn_quantize(matrix.expert_matrix(kernel, e), bits,
                                      group_size, symmetric, mse)
                    for e in range(moe.num_experts)])
            yield moe, matrices


def rtn_in_place(model, bits, group_size, symmetric=False, mse=False):
    """Round-to-nearest baseline: puts RTN-rounded float weights in place.

    Every Dense/EinsumDense layer of the model's blocks (as
    `model.get_quantization_layer_structure("gptq")` lists them) gets the
    weights plain rounding on the same grid would give; the layers stay
    float, so the baseline runs and evaluates like the original model.

    Args:
        model: a built model with a block structure (a KerasHub CausalLM).
        bits, group_size, symmetric: the grid, as in `GPTQConfig`.
        mse: fit each group's range by the MSE shrink search (as
            `GPTQConfig(mse=True)`), a stronger baseline than min/max.

    Returns:
        `[(variable, float_value)]`: `restore_kernels` of it undoes the call.
    """
    originals = []
    for layer, lay, kernel, levels in _rtn_layers(model, bits, group_size,
                                                  symmetric, mse):
        originals.append((layer._kernel, kernel))
        layer._kernel.assign(lay.matrix_to_kernel(solver.dequantize(*levels)))
    for moe, matrices in _rtn_banks(model, bits, group_size, symmetric, mse):
        for name, (variable, kernel, levels) in matrices.items():
            originals.append((variable, kernel))
            variable.assign(moe.family.matrix(name).bank_kernel(
                [solver.dequantize(*q) for q in levels]))
    return originals


def restore_kernels(originals):
    """Puts back the float values `rtn_in_place` returned."""
    for variable, kernel in originals:
        variable.assign(kernel)


def rtn_packed(model, bits, group_size, symmetric=False, mse=False):
    """Round-to-nearest baseline stored exactly as GPTQ results are.

    Like `rtn_in_place`, but each layer gets packed storage (the format
    `quantize` writes), so the baseline's size, memory and speed can be
    measured beside GPTQ's. All or nothing: on any error every layer is
    put back.

    Args:
        model: a built model with a block structure (a KerasHub CausalLM).
        bits, group_size, symmetric: the grid, as in `GPTQConfig`.
        mse: as for `rtn_in_place`.
    """
    written = []
    try:
        for layer, _, _, levels in _rtn_layers(model, bits, group_size,
                                               symmetric, mse):
            result = solver.SolverResult(*levels, damping=0.0)
            written.append((storage.restore_float, layer, storage.write_packed(
                layer, result, bits, group_size)))
        for moe, matrices in list(_rtn_banks(model, bits, group_size,
                                             symmetric, mse)):
            results = {name: [solver.SolverResult(*q, damping=0.0)
                              for q in levels]
                       for name, (_, _, levels) in matrices.items()}
            written.append((storage.restore_float_bank, moe.bank,
                            storage.write_packed_bank(
                                moe.bank, moe.family, results, bits,
                                group_size)))
    except BaseException:
        for restore, layer, token in reversed(written):
            restore(layer, token)
        raise
    structure.reset_compiled_functions(model)
