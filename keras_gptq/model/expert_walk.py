"""One block's expert banks: routed tokens -> one Hessian per expert ->
GPTQ per expert matrix.

For each `experts.MoeLayer` of a block (after the block's Dense layers are
solved), two passes over the block's calibration inputs:

1. the bank's input rows are split by the router's top-k choice; each
   expert accumulates the Hessian of the tokens routed to it, and its
   `tokens` matrices (gate, up) are solved and put in place, dequantized;
2. each expert's activations on its routed tokens, computed with those
   quantized gate/up weights, give the Hessian of its `intermediate`
   (down) matrix.

Rows are counted once per routed token (unweighted, as GPTQModel does);
`WEIGHT_BY_ROUTER = True` multiplies each row by the square root of its
routing weight, so `H` weights tokens as the MoE output does. Measured in
`benchmarks/moe_weighting.py` (see `benchmarks/RESULTS.md`), weighting was
not better, so it is off. A matrix whose expert gets fewer tokens
than `GPTQConfig.min_tokens_per_input` (1.25) per input is rounded to
nearest, with a warning and a report note (`solve.starved_note`). Float
values go into the block's `swaps` so the pipeline puts them back.
"""

import dataclasses

import keras
import numpy as np

from keras_gptq import storage
from keras_gptq.algorithm import hessian
from keras_gptq.model import capture
from keras_gptq.model import experts
from keras_gptq.model import solve
from keras_gptq.utils import timing

WEIGHT_BY_ROUTER = False  # see the module docstring

@dataclasses.dataclass
class SolvedBank:
    """One solved expert bank.

    Attributes:
        bank: the expert bank layer.
        family: its `experts.ExpertFamily`.
        results: `{matrix name: [SolverResult, one per expert]}`.
        entries: its report entries, one per expert matrix.
    """

    bank: object
    family: experts.ExpertFamily
    results: dict
    entries: list

    def write(self, config):
        """Packs the bank; returns the undo token for `restore`."""
        config = config.for_layer(self.bank.path)
        return storage.write_packed_bank(
            self.bank, self.family, self.results, config.weight_bits,
            config.group_size)

    def restore(self, token):
        """Undoes `write`."""
        storage.restore_float_bank(self.bank, token)


def solve_banks(block, moes, calls, config, swaps, weighted=None):
    """Solves the expert banks `moes` of `block` on its inputs `calls`.

    Args:
        block: the transformer block.
        moes: its `experts.MoeLayer`s to quantize.
        calls: the block's `(args, kwargs)` calibration inputs.
        config: the `GPTQConfig`.
        swaps: the block's `(variable, float, quantized)` list; every
            expert variable solved here is appended (and left quantized).
        weighted: weight each routed token's row by its routing weight
            (default: `WEIGHT_BY_ROUTER`).

    Returns:
        A `SolvedBank` per MoE layer.
    """
    if weighted is None:
        weighted = WEIGHT_BY_ROUTER
    solved = []
    for moe in moes:
        results, entries = {}, []
        for sees in ("tokens", "intermediate"):
            hessians, counts = _expert_hessians(block, moe, calls, sees,
                                                weighted)
            for matrix in moe.family.matrices:
                if matrix.sees != sees:
                    continue
                results[matrix.name], new = _solve_matrix(
                    moe, matrix, hessians, counts, config, swaps)
                entries += new
        solved.append(SolvedBank(moe.bank, moe.family, results, entries))
    return solved


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(variable, "float32")))


def _solve_matrix(moe, matrix, hessians, counts, config, swaps):
    """Solves one bank variable, expert by expert; puts it in place."""
    variable = getattr(moe.bank, matrix.name)
    kernel = _numpy(variable)
    results, entries, Qs = [], [], []
    for e in range(moe.num_experts):
        W = matrix.expert_matrix(kernel, e)
        name = f"{moe.bank.path}/{matrix.name.lstrip('_')}/expert_{e}"
        note = solve.starved_note(
            f"{moe.bank.path}/{matrix.name.lstrip('_')} expert {e}",
            counts[e], W.shape[1], config, what="expert")
        result, Q, entry = solve.solve_matrix(
            name, W, hessians[e], config.for_layer(moe.bank.path),
            rtn_note=note)
        results.append(result)
        entries.append(entry)
        Qs.append(Q)
    q_kernel = matrix.bank_kernel(Qs)
    swaps.append((variable, kernel, q_kernel))
    with timing.stage("write"):
        variable.assign(q_kernel)
    return results, entries


def _columns(moe, sees):
    matrix = next(m for m in moe.family.matrices if m.sees == sees)
    shape = getattr(moe.bank, matrix.name).shape
    return int(shape[1] if matrix.layout == "e_in_out" else shape[2])


def _expert_hessians(block, moe, calls, sees, weighted):
    """Runs the block on `calls`; returns `(H per expert, routed token
    count per expert)` for the bank's `sees` input."""
    accumulators = [hessian.HessianAccumulator(_columns(moe, sees))
                    for _ in range(moe.num_experts)]
    counts = [0] * moe.num_experts

    def add(bank, x):
        chosen, weights = moe.routing(x)
        # One dense pass over all experts (the shapes the model itself
        # uses), then numpy row selection: per-expert backend ops would
        # see a new shape, hence a new compilation, for every expert.
        source = x if sees == "tokens" else experts.bank_hidden(
            moe.family, bank, x, _bank_kernels(moe))
        source = _numpy(source)
        for e in range(moe.num_experts):
            tokens, slots = np.nonzero(chosen == e)
            if tokens.size == 0:
                continue
            rows = source[tokens] if sees == "tokens" else source[e, tokens]
            if weighted:
                rows = rows * np.sqrt(weights[tokens, slots])[:, None]
            with timing.stage("hessian"):
                accumulators[e].add(rows)
            counts[e] += int(tokens.size)

    with capture.record_layer_inputs([moe.bank], add):
        capture.run_block(block, calls)
    return [a.result() for a in accumulators], counts


def _bank_kernels(moe):
    """`{name: variable}` of the bank's matrices and biases."""
    kernels = {}
    for matrix in moe.family.matrices:
        for name in (matrix.name, matrix.bias):
            if name is not None:
                kernels[name] = getattr(moe.bank, name)
    return kernels
