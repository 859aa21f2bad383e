"""The block-by-block driver: calibration → capture → Hessian → solve → store.

`quantize(model, config)` walks the blocks in order. For each block it
captures its target layers' inputs, accumulates their Hessians, solves each
layer, puts the dequantized weights in place, and runs the *quantized* block
to produce the next block's inputs, then puts the block's float weights
back. With asymmetric calibration (GPTAQ) the float model's block inputs
travel beside the quantized ones, so each layer's solve can pair what it
receives in the float model with what it receives in the quantized one.
Only when every block is done are the layers converted to packed
storage; if anything fails or is interrupted on the way, every weight is put
back and the model is left as it was.

The walk (`run_walk`) takes its blocks from a block source: the model in
memory (`InMemoryBlocks`), or a preset on disk, one block loaded at a time
and packed at once (`keras_gptq.model.low_memory`).
"""

import contextlib
import dataclasses
import os
import time
import warnings

import keras
import numpy as np

from keras_gptq import storage
from keras_gptq.algorithm import grid as grid_lib
from keras_gptq.algorithm import hessian
from keras_gptq.algorithm import solver
from keras_gptq.config import GPTQConfig
from keras_gptq.model import calibration
from keras_gptq.model import capture
from keras_gptq.model import devices
from keras_gptq.model import expert_walk
from keras_gptq.model import layout as layout_lib
from keras_gptq.model import report as report_lib
from keras_gptq.model import solve
from keras_gptq.model import structure

solver_settings = solve.solver_settings  # the public name it always had
from keras_gptq.utils import blas
from keras_gptq.utils import memory
from keras_gptq.utils import progress
from keras_gptq.utils import timing


def quantize(model, config, filters=None, verbose=True):
    """Quantizes a model's Dense/EinsumDense layers in place with GPTQ.

    Args:
        model: a built Keras model (typically a KerasHub `CausalLM`).
        config: a `keras_gptq.GPTQConfig`.
        filters: None, a regex string, a list of regex strings (matched
            against each layer's name and path), or a callable
            `layer -> bool` selecting the layers to quantize.
        verbose: show progress bars (calibration, blocks, layers) with
            elapsed time and ETA on stderr.

    Returns:
        A `QuantizationReport` (also kept as `model.gptq_report`).

    Raises:
        TypeError, ValueError: for bad arguments (see the README's
            Troubleshooting section). On any error or interruption the
            model is left exactly as it was.
    """
    check_arguments(config, filters)
    check_model(model, config)
    devices.check_model(model, devices.active())
    plan = structure.plan_walk(model, config, filters)
    if plan is None:
        warnings.warn("No Dense/EinsumDense layer matched `filters`; the "
                      "model is unchanged.", stacklevel=2)
        return report_lib.QuantizationReport([], 0.0, 0)
    return run_walk(model, config, plan, verbose, InMemoryBlocks())


def check_arguments(config, filters):
    """Raises TypeError or ValueError for a bad `config` or `filters`."""
    if not isinstance(config, GPTQConfig):
        raise TypeError(
            "`config` must be a keras_gptq.GPTQConfig, but received "
            f"{type(config).__name__}."
        )
    structure.check_filters(filters)


class InMemoryBlocks:
    """Where the walk finds the blocks of a model held in memory (see
    `run_walk`): nothing to load; every solved layer is packed once the
    whole walk is done, all or nothing."""

    def load(self, block):
        """Readies `block` for solving (in memory: nothing to do)."""

    def done(self, block, solved):
        """Returns what the walk keeps of `block`'s solved items: all."""
        return solved

    def finish(self, solved, config):
        """Packs every solved item; on failure unpacks those packed."""
        _write_all(solved, config)


def run_walk(model, config, plan, verbose, source):
    """Calibrates, walks `plan`'s blocks and stores the results.

    Args:
        model: the model (a KerasHub `CausalLM`, or its backbone).
        config: the `GPTQConfig`.
        plan: its `structure.WalkPlan` (`structure.plan_walk`).
        verbose: show progress bars.
        source: where the blocks come from, an object with
            `load(block)` (called before the block is solved: its weights
            must then be in place), `done(block, solved)` (called after;
            returns the items to keep, each with `entries`) and
            `finish(kept, config)` (called once every block is done):
            `InMemoryBlocks`, or `low_memory.PresetBlocks`, which loads
            each block from a preset on disk and packs it at once.

    Returns:
        The `QuantizationReport` (also kept as `model.gptq_report`).
    """
    distribution = devices.active()
    with timing.record() as timer:
        start = time.perf_counter()
        with timing.stage("calibration"):
            windows = calibration.calibration_windows(
                config.dataset, config.tokenizer, config.num_samples,
                config.sequence_length, seed=config.seed,
                framing=calibration.model_framing(model, config.tokenizer,
                                                  config.add_start_token))
        step = config.calibration_batch_size
        batches = devices.global_batches(
            [windows[i:i + step] for i in range(0, len(windows), step)],
            distribution)
        solved = _walk(model, plan, batches, config, verbose,
                       devices.placer(distribution), source)
        with timing.stage("write"):
            source.finish(solved, config)
            structure.reset_compiled_functions(model)
        seconds = time.perf_counter() - start
    report = report_lib.QuantizationReport(
        [entry for item in solved for entry in item.entries],
        seconds, int(windows.size), stages=dict(timer.seconds))
    model.gptq_report = report
    return report


def _write_all(solved, config):
    """Packs every solved item; on failure unpacks those already packed."""
    written = []
    try:
        for item in solved:
            written.append((item, item.write(config)))
    except BaseException:
        for item, token in reversed(written):
            item.restore(token)
        raise


@dataclasses.dataclass
class BlockInputs:
    """What a block receives, one `(args, kwargs)` call per batch.

    Attributes:
        calls: its inputs in the model being quantized.
        float_calls: its inputs in the float model, for the same windows
            (asymmetric calibration, GPTAQ), else None.
    """

    calls: list
    float_calls: list = None


@dataclasses.dataclass
class SolvedLayer:
    """One solved layer: its solver result and its report entry."""

    layer: object
    result: solver.SolverResult
    entry: report_lib.LayerReport

    @property
    def entries(self):
        """Its report entries (one)."""
        return [self.entry]

    def write(self, config):
        """Packs the layer; returns the undo token for `restore`."""
        config = config.for_layer(self.layer.path)
        return storage.write_packed(self.layer, self.result,
                                    config.weight_bits, config.group_size)

    def restore(self, token):
        """Undoes `write`."""
        storage.restore_float(self.layer, token)


def check_model(model, config):
    """Raises ValueError unless `model` is built and takes windows of
    `config.sequence_length` tokens."""
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built. Build it (e.g. call it on a "
            "batch of token ids, or load it with `from_preset`) before "
            "quantizing."
        )
    backbone = capture.forward_model(model)
    limit = getattr(backbone, "max_sequence_length", None)
    if isinstance(limit, int) and config.sequence_length > limit:
        raise ValueError(
            f"`sequence_length`={config.sequence_length} exceeds the model's "
            f"maximum of {limit} tokens. Use `sequence_length<={limit}`."
        )


def _walk(model, plan, batches, config, verbose, place, source):
    """Solves every block of `plan` in order; returns what `source` keeps
    of the `SolvedLayer`s (and `expert_walk.SolvedBank`s). `place` puts
    the model inputs on the devices (`devices.placer`), None leaves them
    to the backend; `source` loads each block before it is solved (see
    `run_walk`).

    Only the block being solved holds its dequantized weights (so that the
    next block's inputs come from the quantized block); its float kernels
    are put back before the next block, and on any failure, so the model
    is unchanged when this returns or raises.
    """
    blocks = plan.blocks
    source.load(blocks[0])
    with progress.bar(len(batches), "calibration", "batch", verbose) as bar:
        calls = capture.catch_block_inputs(model, blocks[0], batches,
                                           on_batch=bar.update, place=place)
    # Asymmetric calibration carries the float model's block inputs too.
    inputs = BlockInputs(calls, calls if config.asymmetric_calibration
                         else None)
    solved = []
    total = sum(len(plan.layers[id(b)]) for b in blocks)
    with progress.bar(len(blocks), "blocks", "block", verbose) as block_bar, \
            progress.bar(total, "layers", "layer", verbose, 1) as layer_bar:
        for block in blocks:
            source.load(block)
            block_solved, inputs = _solve_block(
                block, (plan.layers[id(block)], plan.banks[id(block)]),
                inputs, config, layer_bar)
            solved += source.done(block, block_solved)
            memory.release_freed_memory()  # this block's Hessians, inputs
            block_bar.update()
    return solved


def _solve_block(block, targets, inputs, config, bar):
    """Solves one block's layers, then its expert banks.

    `targets` is `(layers, banks)`: Dense/EinsumDense layers and
    `experts.MoeLayer`s. Returns `(solved, next_inputs)`: the block's
    `SolvedLayer`s and `SolvedBank`s and the next block's `BlockInputs`.
    With asymmetric calibration the next block's float inputs come from the
    first Hessian pass, which runs the float block anyway. The block's
    float weights are put back on return.
    """
    layers, banks = targets
    groups = _probe_groups(block, layers, inputs.calls[0]) if layers else []
    passes = [[g] for g in groups] if config.true_sequential else (
        [groups] if groups else [])
    swaps = []  # (variable, float value, quantized value), solved so far
    solved, next_float_calls = [], None
    try:
        for sub in passes:
            float_path = None if inputs.float_calls is None else (
                inputs.float_calls, list(swaps))
            hessians, float_outputs = _hessians(block, sub, inputs.calls,
                                                float_path,
                                                config.sink_weight)
            if next_float_calls is None:
                next_float_calls = float_outputs
            jobs = [(layer, *hessians[group[0]]) for group in sub
                    for layer in group]
            for (layer, *_), (kernel, q_kernel, result, entry) in zip(
                    jobs, _solve_layers(jobs, config, bar)):
                swaps.append((layer._kernel, kernel, q_kernel))
                with timing.stage("write"):
                    layer._kernel.assign(q_kernel)
                solved.append(SolvedLayer(layer, result, entry))
            del hessians
        solved += expert_walk.solve_banks(block, banks, inputs.calls, config,
                                          swaps)
        if inputs.float_calls is not None and next_float_calls is None:
            # A block without target layers: no Hessian pass ran.
            with _float_kernels(swaps):
                next_float_calls = capture.run_block(block,
                                                     inputs.float_calls)
        next_inputs = BlockInputs(capture.run_block(block, inputs.calls),
                                  next_float_calls)
        return solved, next_inputs
    finally:
        with timing.stage("write"):
            for variable, kernel, _ in swaps:
                variable.assign(kernel)


def _probe_groups(block, layers, call):
    """Orders `layers` by first call and groups those sharing one input."""
    seen, keys, keep = [], {}, []

    def note(layer, x):
        if layer in keys:
            return
        keep.append(x)
        lay = layout_lib.layer_layout(layer)
        keys[layer] = (id(x), lay.input_axes, lay.columns)
        seen.append(layer)

    with capture.record_layer_inputs(layers, note):
        capture.run_block(block, [call])
    missing = [l.path for l in layers if l not in keys]
    if missing:
        warnings.warn(f"Never called during calibration, skipped: {missing}",
                      stacklevel=3)
    groups = []
    for layer in seen:
        if groups and keys[groups[-1][0]] == keys[layer]:
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups


def _hessians(block, groups, calls, float_path=None, sink_weight=1.0):
    """One pass over the calls; one Hessian per group of shared inputs.

    Each window's first position (the attention sink) weighs `sink_weight`
    in the Hessians, every other position 1.

    Returns `({first layer of group: (H, dXXT, tokens)}, float_outputs)`;
    `tokens` counts the rows H saw; `dXXT`
    and `float_outputs` are None unless `float_path` is given:
    `(float_calls, swaps)`, the block's inputs in the float model and
    `(variable, float value, quantized value)` for the block's already-solved
    layers. Then each batch first runs through the float block (float
    kernels swapped in) to record what each layer receives in the float
    model, and the accumulators pair it with the same tokens' inputs in the
    quantized model (GPTAQ's asymmetric calibration). `float_outputs` are
    that float block's outputs: the next block's float inputs.
    """
    owners = {g[0]: hessian.HessianAccumulator(
        layout_lib.layer_layout(g[0]).columns,
        asymmetric=float_path is not None) for g in groups}
    float_rows = {layer: [] for layer in owners}

    def rows(layer, x):
        return layout_lib.layer_layout(layer).inputs_to_rows(x)

    def weights(layer, x):
        if sink_weight == 1.0:
            return None
        positions = layout_lib.layer_layout(layer).row_positions(x.shape)
        return None if positions is None else np.where(
            positions == 0, np.float32(sink_weight), np.float32(1.0))

    def keep_float(layer, x):
        with timing.stage("hessian"):
            float_rows[layer].append(rows(layer, x))

    def add(layer, x):
        with timing.stage("hessian"):
            if float_path is None:
                owners[layer].add(rows(layer, x), weights=weights(layer, x))
            else:
                owners[layer].add(rows(layer, x), float_rows[layer].pop(0),
                                  weights=weights(layer, x))

    float_calls, swaps = float_path or (None, ())
    float_outputs = None if float_calls is None else []
    for index, call in enumerate(calls):
        if float_calls is not None:
            with _float_kernels(swaps), \
                    capture.record_layer_inputs(list(owners), keep_float):
                float_outputs += capture.run_block(block,
                                                   [float_calls[index]])
        with capture.record_layer_inputs(list(owners), add):
            capture.run_block(block, [call])
    with timing.stage("hessian"):
        hessians = {g[0]: (owners[g[0]].result(),
                           owners[g[0]].cross_result(),
                           owners[g[0]].tokens) for g in groups}
    return hessians, float_outputs


@contextlib.contextmanager
def _float_kernels(swaps):
    """Puts each `(variable, float value, quantized value)`'s float value
    in place; the quantized one goes back on exit."""
    try:
        with timing.stage("write"):
            for variable, kernel, _ in swaps:
                variable.assign(kernel)
        yield
    finally:
        with timing.stage("write"):
            for variable, _, q_kernel in swaps:
                variable.assign(q_kernel)


def solve_threads(jobs):
    """Threads that solve a block's layers at once: `KERAS_GPTQ_SOLVE_THREADS`
    if set, else as many as the process may use cores (at most 4, and no
    more than `jobs`). Each layer's solve is independent and its BLAS runs
    on one thread, so the integers do not depend on this number."""
    value = os.environ.get("KERAS_GPTQ_SOLVE_THREADS")
    if value is not None:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError("KERAS_GPTQ_SOLVE_THREADS must be a positive "
                             f"integer, got {value!r}.") from None
        if threads < 1:
            raise ValueError("KERAS_GPTQ_SOLVE_THREADS must be a positive "
                             f"integer, got {value!r}.")
    else:
        threads = min(4, grid_lib.cpu_count())
    return max(1, min(threads, jobs))


def _solve_layers(jobs, config, bar):
    """Solves `jobs`, `(layer, H, dXXT, tokens)` each, on `solve_threads`
    threads (a layer whose H saw too few tokens is rounded to nearest:
    `solve.starved_note`);
    returns `(float kernel, quantized kernel, result, report entry)`
    tuples in order. A layer's float kernel is read by the thread that
    solves it, so at most `solve_threads` float copies are alive."""

    def one(job):
        layer, H, dXXT, tokens = job
        lay = layout_lib.layer_layout(layer)
        settings = config.for_layer(layer.path)
        note = solve.starved_note(layer.path, tokens, lay.columns, settings,
                                  stacklevel=2)
        kernel = keras.ops.convert_to_numpy(
            keras.ops.cast(layer._kernel, "float32"))
        result, Q, entry = solve.solve_matrix(
            layer.path, lay.kernel_to_matrix(kernel), H, settings, dXXT,
            rtn_note=note)
        bar.set_postfix_str(layer.path, refresh=False)
        bar.update()
        return kernel, lay.matrix_to_kernel(Q), result, entry

    # One BLAS thread per solve, held here for every thread's whole run
    # (the solver's own limit nests inside it).
    with blas.single_threaded():
        return timing.parallel_map(one, jobs, solve_threads(len(jobs)))
