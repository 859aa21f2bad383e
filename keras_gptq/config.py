"""`GPTQConfig`: every knob of a keras_gptq run, validated at construction.

The first arguments mirror `keras.quantizers.GPTQConfig` one for one (same
names, same meaning, same defaults), so code written for Keras's own GPTQ
mode runs unchanged; the rest are the reference implementation's knobs that
Keras does not expose.
"""

import dataclasses
import numbers
import typing

import keras

from keras_gptq import layer_settings

SUPPORTED_BITS = (2, 3, 4, 8)  # every bit width keras_gptq packs and exports
# Weight of each calibration window's first position (the attention sink)
# in the Hessians; measured in benchmarks/sink_weight.py.
SINK_WEIGHT_DEFAULT = 10.0
CONFIG_VERSION = 1  # `get_config()["version"]`; bump when the meaning changes


def _check_int(name, value, minimum=None, allowed=None, fix=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer, but received {value!r} "
            f"(type {type(value).__name__}). {fix}".rstrip()
        )
    if allowed is not None and value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {list(allowed)}, but received "
            f"{value!r}. {fix}".rstrip()
        )
    if minimum is not None and value < minimum:
        raise ValueError(
            f"`{name}` must be >= {minimum}, but received {value!r}. "
            f"{fix}".rstrip()
        )
    return int(value)


def _check_group_size(name, value):
    value = _check_int(name, value, minimum=-1)
    if value == 0:
        raise ValueError(
            f"`{name}` must be -1 (one group per output channel) or a "
            "positive integer such as 128, but received 0."
        )
    return value


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be True or False, but received {value!r} "
            f"(type {type(value).__name__})."
        )
    return value


def _check_fraction(name, value, low=0.0, high=1.0, fix=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a number, but received {value!r} "
            f"(type {type(value).__name__})."
        )
    if not low <= float(value) <= high:
        raise ValueError(
            f"`{name}` must be between {low} and {high}, but received "
            f"{value!r}. {fix}".rstrip()
        )
    return float(value)


def _check_structure(name, structure):
    if structure is None:
        return None
    if not isinstance(structure, dict) or "sequential_blocks" not in structure:
        raise ValueError(
            "`quantization_layer_structure` must be a dict with the key "
            "'sequential_blocks' (a list of the model's transformer blocks, "
            "in order) and optionally 'pre_block_layers', but received "
            f"{structure!r}. Example: {{'pre_block_layers': "
            "[backbone.token_embedding], 'sequential_blocks': "
            "backbone.transformer_layers}."
        )
    for key in ("sequential_blocks", "pre_block_layers"):
        layers = structure.get(key, [])
        if not isinstance(layers, (list, tuple)) or (
            key == "sequential_blocks" and not layers
        ) or not all(isinstance(l, keras.layers.Layer) for l in layers):
            raise ValueError(
                f"`quantization_layer_structure[{key!r}]` must be a "
                + ("non-empty " if key == "sequential_blocks" else "")
                + f"list of Keras layers (the model's own objects, not "
                f"names), but received {layers!r}."
            )
    return structure


def check_add_start_token(name, value):
    """Validates an `add_start_token` setting: "auto", True or False."""
    if not (isinstance(value, bool) or (isinstance(value, str)
                                        and value == "auto")):
        raise ValueError(
            f"`{name}` must be 'auto' (start windows as the model's "
            "preprocessor starts a sequence), True or False, but received "
            f"{value!r}.")
    return value


def _check_weight(name, value):
    """A positive finite float (an int is accepted and converted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, but received "
                        f"{value!r}.")
    if not 0 < value <= 1e4:  # NaN fails too
        raise ValueError(
            f"`{name}` must be in (0, 10000], but received {value!r}. Use 1 "
            "to weigh every position alike (the GPTQ reference).")
    return float(value)


def _int(**limits):
    """An integer validator with these `_check_int` limits."""
    return lambda name, value: _check_int(name, value, **limits)


def _fraction(**limits):
    """A number validator with these `_check_fraction` limits."""
    return lambda name, value: _check_fraction(name, value, **limits)


# One validator per argument, in signature order: `check(name, value)`
# returns the value to store (Python int/float/bool) or raises.
_VALIDATORS = {
    "weight_bits": _int(allowed=SUPPORTED_BITS),
    "num_samples": _int(
        minimum=1, fix="Use at least one calibration window (128 is "
        "typical)."),
    "per_channel": _check_bool,
    "sequence_length": _int(
        minimum=2, fix="Windows need at least 2 tokens (512 is typical)."),
    "hessian_damping": _fraction(fix="Typical values are 0.01 to 0.1."),
    "group_size": _check_group_size,
    "symmetric": _check_bool,
    "activation_order": _check_bool,
    "quantization_layer_structure": _check_structure,
    "static_groups": _check_bool,
    "true_sequential": _check_bool,
    "mse": _check_bool,
    "block_size": _int(minimum=1, fix="128 is the reference's value."),
    "calibration_batch_size": _int(
        minimum=1, fix="Lower it if calibration runs out of memory."),
    "damping_auto_increase": _fraction(
        fix="Use 0 to disable the retry, or a step such as 0.01."),
    "seed": _int(minimum=0),
    "asymmetric_calibration": _check_bool,
    "add_start_token": check_add_start_token,
    "quantize_router": _check_bool,
    "sink_weight": _check_weight,
    "min_tokens_per_input": _fraction(
        high=1000.0, fix="1.25 is the measured default; 0 solves every "
        "layer with GPTQ however few tokens it saw."),
    "overrides": lambda name, value: layer_settings.check(
        name, value, _VALIDATORS),
}
# Calibration-time objects: not serialized (stored as None, as Keras does).
_NOT_SERIALIZED = ("dataset", "tokenizer", "quantization_layer_structure")


@keras.saving.register_keras_serializable(package="keras_gptq")
@dataclasses.dataclass(eq=False, repr=False)
class GPTQConfig:
    """Configuration of a keras_gptq GPTQ run.

    Pass it to `keras_gptq.quantize(model, config)` or, equivalently, to
    `model.quantize("gptq", config=config)` once `keras_gptq` is imported.

    Args:
        dataset: calibration data: a list of strings, any iterable of strings
            (e.g. a `datasets` column), the path of a UTF-8 text file, or
            integer token ids (a 1-D or 2-D array, or a list of id lists).
        tokenizer: a KerasHub tokenizer or any callable mapping a string to
            token ids. Required when `dataset` holds text.
        weight_bits: bits per weight: 2, 3, 4 or 8.
        num_samples: number of calibration windows.
        per_channel: accepted for compatibility with
            `keras.quantizers.GPTQConfig`; it has no effect there either
            (`group_size=-1` selects per-channel quantization).
        sequence_length: tokens per calibration window.
        hessian_damping: damping added to the Hessian diagonal, as a fraction
            of its mean diagonal (the reference's `percdamp`).
        group_size: input columns sharing one scale and zero point; -1 for
            one scale per output channel.
        symmetric: symmetric grid (zero point fixed at the middle).
        activation_order: quantize columns in order of decreasing Hessian
            diagonal ("act-order", `desc_act`).
        quantization_layer_structure: optional dict with
            'sequential_blocks' (and optionally 'pre_block_layers'); by
            default the model's `get_quantization_layer_structure("gptq")`.
        static_groups: with act-order, compute every group's scale and zero
            from the original weights before the solve, so groups stay
            contiguous in the stored layout.
        true_sequential: inside a block, quantize layers group by group in
            execution order, recapturing inputs after each group.
        mse: search shrunken ranges for the grid that minimises the
            weights' quantization error (reference `--mse`).
        block_size: columns per lazy batch update of the solver.
        calibration_batch_size: windows per forward pass during calibration.
        damping_auto_increase: step by which damping is raised while the
            damped Hessian is not positive definite (0 disables the retry:
            the run stops with an error instead).
        seed: seed for choosing the calibration windows.
        asymmetric_calibration: GPTAQ ("GPTQv2", Li et al., ICML 2025):
            fit each quantized layer, fed by the already-quantized blocks,
            to the float layer's output *in the float model*, so the
            solver also corrects error accumulated in earlier blocks. Runs
            the float model alongside (about twice the forward passes,
            twice the activations kept).
        add_start_token: how calibration windows begin. "auto" (default):
            as the model's preprocessor begins a sequence at inference,
            with its start token when it adds one (Gemma's `<bos>`,
            GPT-2's `<|endoftext|>`; none for Qwen or SmolLM2). True:
            always put the tokenizer's start token first; False: never.
            Text documents are joined with the tokenizer's end token
            either way; a 2-D token array of `sequence_length` columns is
            used row for row, as given.
        sink_weight: weight of each calibration window's first position
            in the Hessians (every other position weighs 1). The first
            position is the attention sink: every later token attends to
            it, so an error in its activations reaches the whole sequence.
            1 weighs all positions alike, as the GPTQ reference does; the
            default, SINK_WEIGHT_DEFAULT, was measured on two real models
            (README, "Calibration"). Mixture-of-experts experts see routed
            tokens without positions and weigh them alike.
        min_tokens_per_input: a layer (or mixture-of-experts expert) whose
            Hessian saw fewer calibration tokens than this many per input
            feature is rounded to nearest instead, with a warning and a
            report note. With fewer tokens than inputs the Hessian is
            singular and GPTQ fits the calibration tokens at the expense
            of new text: measured on Qwen2.5-1.5B's `down_proj` (8960
            inputs, 8192 tokens), GPTQ's held-out output error was 1.4-1.5x
            round-to-nearest's (README, "Calibration"). 0 solves every
            layer with GPTQ.
        quantize_router: also quantize mixture-of-experts router gates
            (the Dense layers that score the experts, and Qwen-MoE's shared
            expert gate). Off by default: they are tiny, and a rounding
            error there changes which experts a token reaches.
        overrides: per-layer settings, `{regex: {"weight_bits": 8,
            "group_size": 64, ...} or None}`: the first regex found in a
            layer's path sets its `weight_bits`, `group_size`,
            `symmetric`, `activation_order`, `hessian_damping`, `mse` or
            `static_groups`, or skips it (None). GPTQModel's `dynamic`
            spelling is accepted (`layer_settings.py`).

    Raises:
        TypeError, ValueError: for any argument outside its domain; the
            message names the argument, the value received and the fix.
            Each argument has one validator, in `_VALIDATORS`.

    Example:

    ```python
    config = keras_gptq.GPTQConfig(dataset=texts, tokenizer=tok,
                                   weight_bits=4, group_size=128)
    model.quantize("gptq", config=config)
    ```
    """

    dataset: typing.Any
    tokenizer: typing.Any = None
    _: dataclasses.KW_ONLY
    weight_bits: int = 4
    num_samples: int = 128
    per_channel: bool = True
    sequence_length: int = 512
    hessian_damping: float = 0.01
    group_size: int = 128
    symmetric: bool = False
    activation_order: bool = False
    quantization_layer_structure: dict = None
    static_groups: bool = False
    true_sequential: bool = False
    mse: bool = False
    block_size: int = 128
    calibration_batch_size: int = 8
    damping_auto_increase: float = 0.01
    seed: int = 0
    asymmetric_calibration: bool = False
    add_start_token: typing.Any = "auto"
    quantize_router: bool = False
    sink_weight: float = SINK_WEIGHT_DEFAULT
    min_tokens_per_input: float = 1.25
    overrides: dict = None

    version: typing.ClassVar[int] = CONFIG_VERSION

    def __post_init__(self):
        for name, check in _VALIDATORS.items():
            setattr(self, name, check(name, getattr(self, name)))
        if self.dataset is None:
            raise ValueError(
                "`dataset` is required: pass a list of strings, a text file "
                "path, or integer token ids for calibration."
            )

    @property
    def mode(self):
        """The quantization mode this config applies: always `"gptq"`."""
        return "gptq"

    def for_layer(self, path):
        """The config of the layer (or expert bank) at `path`, with its
        `overrides` applied; None when they skip it."""
        settings = layer_settings.lookup(self.overrides, path)
        if settings is None:
            return None
        return dataclasses.replace(self, overrides=None, **settings) if (
            settings) else self

    def dtype_policy_string(self):
        """Returns the Keras dtype-policy mode string, e.g. `"gptq/4/128"`."""
        return f"gptq/{self.weight_bits}/{self.group_size}"

    def get_config(self):
        """Returns the arguments as a JSON-friendly dict, with `version`.

        `dataset`, `tokenizer` and `quantization_layer_structure` are
        calibration-time objects and are stored as `None`, as Keras does.
        """
        config = {f.name: None if f.name in _NOT_SERIALIZED else getattr(
            self, f.name) for f in dataclasses.fields(self)}
        config["version"] = self.version
        return config

    @classmethod
    def from_config(cls, config, dataset=None, tokenizer=None):
        """Rebuilds a config from `get_config()` output.

        Args:
            config: dict from `get_config()`.
            dataset, tokenizer: calibration objects to attach (not
                serialized); `dataset` is required to run a quantization.

        Returns:
            A `GPTQConfig`.

        Raises:
            ValueError: the config was written by a newer keras_gptq
                (`version` above this one's), or holds invalid values.
        """
        config = dict(config)
        version = config.pop("version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ValueError(
                f"This GPTQConfig has `version`={version!r}, but this "
                f"keras_gptq reads versions up to {CONFIG_VERSION}. Upgrade "
                "keras_gptq.")
        config["dataset"] = dataset if dataset is not None else config.get(
            "dataset"
        )
        config["tokenizer"] = tokenizer if tokenizer is not None else (
            config.get("tokenizer")
        )
        if config["dataset"] is None:
            config["dataset"] = []  # placeholder: validated when used
        return cls(**config)

    def __repr__(self):
        items = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self) if f.name not in _NOT_SERIALIZED
        )
        return f"GPTQConfig({items})"
