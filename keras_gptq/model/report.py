"""The per-layer report of a quantization run."""

import dataclasses

import numpy as np

from keras_gptq.algorithm import grid
from keras_gptq.algorithm import solver
from keras_gptq.utils import blas

# The stages of a run, in the order the data meets them: tokenizing into
# windows; forward passes (catching the first block's inputs, running
# float/quantized blocks, GPTAQ's float passes); Hessian accumulation;
# grid fits (scale/zero); the GPTQ solve less its grid fits; the report's
# RTN-vs-GPTQ errors; putting weights in place and packing.
STAGES = ("calibration", "forward", "hessian", "grid", "solve", "report",
          "write")


@dataclasses.dataclass
class LayerReport:
    """What happened to one layer.

    Attributes:
        name: the layer's path.
        shape: `(out, in)` of its matrix view.
        bits, group_size: the grid used.
        rtn_error: relative output error of round-to-nearest on the same
            grid, `tr(dW H dW^T) / tr(W H W^T)` (what GPTQ improves on).
        gptq_error: the same for GPTQ's weights. With asymmetric
            calibration the solver targets the float model's outputs, not
            `W` on these inputs, so this can exceed `rtn_error`.
        damping: the damping fraction used (higher than configured when the
            Hessian needed it).
        seconds: solver time.
        note: why the layer was not solved by GPTQ, e.g. an expert that
            received too few calibration tokens and was rounded to
            nearest; empty otherwise.
    """

    name: str
    shape: tuple
    bits: int
    group_size: int
    rtn_error: float
    gptq_error: float
    damping: float
    seconds: float
    note: str = ""


@blas.single_threaded()
def layer_entry(name, W, Q, H, settings, result, seconds, rtn_grid=None):
    """Builds a `LayerReport`, measuring RTN's error on the same grid.

    Args:
        name: the layer's path.
        W, Q: `[out, in]` float and quantized weights.
        H: the layer's Hessian.
        settings: the `solver.SolverSettings` of the solve.
        result: the `solver.SolverResult`.
        seconds: solver time.
        rtn_grid: RTN's `(scale, zero)` from `settings.fit_grid(W)`, when
            the caller already has it.
    """
    rtn = solver.dequantize(*grid.rtn_quantize(
        W, settings.bits, settings.group_size, settings.symmetric,
        settings.mse, params=rtn_grid))
    # One float32 product for the three quadratic forms tr(D H D^T).
    D = np.stack([W, W - rtn, W - Q]).astype(np.float32)
    reference, rtn_error, gptq_error = np.einsum(
        "kij,kij->k", D @ np.asarray(H, np.float32), D).astype(np.float64)
    reference = max(reference, 1e-30)
    return LayerReport(
        name=name, shape=tuple(W.shape), bits=settings.bits,
        group_size=settings.group_size,
        rtn_error=rtn_error / reference,
        gptq_error=gptq_error / reference,
        damping=result.damping, seconds=seconds)


@dataclasses.dataclass
class QuantizationReport:
    """The report of a whole run: one `LayerReport` per quantized layer.

    Attributes:
        layers: list of `LayerReport`.
        seconds: wall time of the run (calibration included).
        calibration_tokens: tokens fed through the model.
        stages: `{stage: wall seconds}` of the run, exclusive of each
            other (see `STAGES`); `seconds` minus their sum is the rest
            (checks, bookkeeping).
    """

    layers: list
    seconds: float
    calibration_tokens: int
    stages: dict = dataclasses.field(default_factory=dict)

    def to_dicts(self):
        """Returns the layer entries as a list of plain dicts."""
        return [dataclasses.asdict(entry) for entry in self.layers]

    def stage_seconds(self):
        """Returns `{stage: seconds}` in `STAGES` order, plus `"other"`:
        the run's time outside every stage (never negative)."""
        split = {name: self.stages[name] for name in STAGES
                 if name in self.stages}
        split.update({name: value for name, value in self.stages.items()
                      if name not in split})
        split["other"] = max(self.seconds - sum(split.values()), 0.0)
        return split

    def __str__(self):
        lines = [f"{'layer':<60} {'shape':>12} {'bits':>4} {'group':>5} "
                 f"{'rtn err':>9} {'gptq err':>9} {'damp':>6} {'s':>6}"]
        for e in self.layers:
            shape = "x".join(str(d) for d in e.shape)
            lines.append(
                f"{e.name[-60:]:<60} {shape:>12} {e.bits:>4} "
                f"{e.group_size:>5} {e.rtn_error:>9.2e} {e.gptq_error:>9.2e} "
                f"{e.damping:>6.3f} {e.seconds:>6.2f}"
                + (f"  {e.note}" if e.note else ""))
        lines.append(f"{len(self.layers)} layers, {self.calibration_tokens} "
                     f"calibration tokens, {self.seconds:.1f} s")
        if self.stages:
            lines.append("stages: " + ", ".join(
                f"{name} {value:.1f} s"
                for name, value in self.stage_seconds().items()))
        return "\n".join(lines)
