"""One named matrix, solved: checks, GPTQ (or RTN for a matrix that saw too
few calibration tokens), the damping warning and the report entry.

The walker (`pipeline` for Dense/EinsumDense layers, `expert_walk` for
expert banks) hands over `W[out, in]` and its Hessian; the math itself is
`keras_gptq.algorithm.solver.solve_gptq`.
"""

import math
import time
import warnings

import numpy as np

from keras_gptq.algorithm import grid
from keras_gptq.algorithm import solver
from keras_gptq.model import report as report_lib
from keras_gptq.utils import timing


def solver_settings(config):
    """The `solver.SolverSettings` a `GPTQConfig` asks for."""
    return solver.SolverSettings(
        bits=config.weight_bits, group_size=config.group_size,
        symmetric=config.symmetric, activation_order=config.activation_order,
        static_groups=config.static_groups, block_size=config.block_size,
        damping=config.hessian_damping, mse=config.mse,
        damping_step=config.damping_auto_increase)


def check_matrix(name, W, H, config):
    """Raises ValueError naming `name` when `W` or `H` cannot be solved."""
    if not np.all(np.isfinite(W)):
        raise ValueError(
            f"Layer {name!r} has NaN or Inf weights: the float model "
            "is broken before quantization. Check the checkpoint it was "
            "loaded from (and its dtype: float16 overflows easily).")
    if not np.all(np.isfinite(H)):
        raise ValueError(
            f"The calibration activations reaching {name!r} contain "
            "NaN or Inf: check the model in float32 on this data first."
        )
    columns = W.shape[1]
    if config.group_size != -1 and config.group_size > columns:
        raise ValueError(
            f"`group_size`={config.group_size} is larger than the "
            f"{columns} input features of layer {name!r}. Use "
            f"group_size<={columns}, -1, or `filters` to skip the layer."
        )


def min_tokens(columns, per_input):
    """Calibration tokens below which a matrix with `columns` inputs is
    rounded to nearest (`GPTQConfig.min_tokens_per_input` per input)."""
    return math.ceil(per_input * columns)


def starved_note(name, tokens, columns, config, what="layer", stacklevel=5):
    """None when `tokens` are enough for GPTQ on `columns` inputs; else
    warns (naming `name` and the fix) and returns the report note.

    With fewer tokens than inputs the Hessian is singular and GPTQ fits
    the calibration tokens at the expense of new text (`benchmarks/
    expert_tokens.py`: GPTQ's held-out error is 1.2-1.8x RTN's below one
    token per input, 1.06x at 1, 0.89x at 1.25, 0.74x at 2), so such a
    matrix is rounded to nearest instead.
    """
    need = min_tokens(columns, config.min_tokens_per_input)
    if tokens >= need:
        return None
    fix = ("More calibration windows (`num_samples`) route more tokens to "
           "every expert." if what == "expert" else
           f"Use at least {need} calibration tokens (`num_samples` x "
           "`sequence_length`).")
    warnings.warn(
        f"{what.capitalize()} {name!r} received {tokens} calibration "
        f"tokens, fewer than the {need} its {columns} inputs need for GPTQ "
        f"({config.min_tokens_per_input:g} per input): it is rounded to "
        f"nearest instead. {fix} `min_tokens_per_input=0` solves it with "
        "GPTQ anyway.", stacklevel=stacklevel)
    return f"rtn: {tokens} tokens < {need}"


def solve_matrix(name, W, H, config, dXXT=None, rtn_note=None):
    """Quantizes `W[out, in]` with GPTQ on `H`, or plain RTN.

    Args:
        name: the report name (a layer path, or a bank path and expert).
        W: float32 `[out, in]`.
        H: its `[in, in]` Hessian.
        config: the `GPTQConfig`.
        dXXT: GPTAQ's cross term, or None.
        rtn_note: when given, round to nearest instead (a starved expert)
            and record this note in the report entry.

    Returns:
        `(result, Q, entry)`: the `solver.SolverResult`, the dequantized
        `Q[out, in]` and the `report.LayerReport`.
    """
    check_matrix(name, W, H, config)
    settings = solver_settings(config)
    start = time.perf_counter()
    # RTN's grid: the report's baseline and, with static groups, the
    # solver's grid too (fitted once: with mse it is the costly part).
    with timing.stage("grid"):
        rtn_grid = settings.fit_grid(W)
    with timing.stage("solve"):
        if rtn_note is None:
            result = solver.solve_gptq(W, H, settings, dXXT=dXXT,
                                       group_params=rtn_grid)
        else:
            result = solver.SolverResult(*grid.rtn_quantize(
                W, settings.bits, settings.group_size, settings.symmetric,
                settings.mse, params=rtn_grid), damping=0.0)
    seconds = time.perf_counter() - start
    Q = solver.dequantize(result.q, result.scale, result.zero, result.g_idx)
    if result.damping > config.hessian_damping:
        warnings.warn(
            f"Hessian of {name!r} was not positive definite; damping "
            f"raised from {config.hessian_damping:g} to {result.damping:g}.",
            stacklevel=4)
    with timing.stage("report"):
        entry = report_lib.layer_entry(name, W, Q, H, settings, result,
                                       seconds, rtn_grid=rtn_grid)
    entry.note = rtn_note or ""
    return result, Q, entry
