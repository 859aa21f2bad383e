"""Tests for keras_gptq.config.GPTQConfig: validation, serialization, and
drop-in compatibility with `keras.quantizers.GPTQConfig`."""

import inspect
import json

import keras
import numpy as np
import pytest

import keras_gptq
from keras_gptq import GPTQConfig

DATA = ["some calibration text"]


def make(**kwargs):
    kwargs.setdefault("dataset", DATA)
    return GPTQConfig(**kwargs)


def assert_names(excinfo, name, value):
    """The message names the argument (in backticks) and the value's repr."""
    message = str(excinfo.value)
    assert f"`{name}" in message, message
    assert repr(value) in message, message


# ---------------------------------------------------------------- validation

INT_ARGS = ["weight_bits", "num_samples", "sequence_length", "group_size",
            "block_size", "calibration_batch_size", "seed"]
BOOL_ARGS = ["per_channel", "symmetric", "activation_order", "static_groups",
             "true_sequential", "mse", "asymmetric_calibration",
             "quantize_router"]
FRACTION_ARGS = ["hessian_damping", "damping_auto_increase"]


@pytest.mark.parametrize("value", ["on", "AUTO", 1, 0, None, "true"])
def test_add_start_token_is_auto_true_or_false(value):
    with pytest.raises(ValueError) as excinfo:
        make(add_start_token=value)
    assert_names(excinfo, "add_start_token", value)
    assert "'auto'" in str(excinfo.value)
    for good in ("auto", True, False):
        assert make(add_start_token=good).add_start_token == good


@pytest.mark.parametrize("value", [0, -1.0, 1e5, float("nan"), float("inf")])
def test_sink_weight_must_be_positive_and_finite(value):
    with pytest.raises(ValueError) as excinfo:
        make(sink_weight=value)
    assert_names(excinfo, "sink_weight", value)
    assert "Use 1" in str(excinfo.value)


@pytest.mark.parametrize("value", ["10", None, True, [10]])
def test_sink_weight_must_be_a_number(value):
    with pytest.raises(TypeError) as excinfo:
        make(sink_weight=value)
    assert_names(excinfo, "sink_weight", value)


def test_sink_weight_accepts_ints_and_numpy_floats():
    assert make(sink_weight=1).sink_weight == 1.0
    assert type(make(sink_weight=np.float32(2.5)).sink_weight) is float


@pytest.mark.parametrize("name", INT_ARGS)
@pytest.mark.parametrize("value", [4.0, "4", None, True, [4]])
def test_integer_arguments_reject_non_integers(name, value):
    with pytest.raises(TypeError) as excinfo:
        make(**{name: value})
    assert_names(excinfo, name, value)


@pytest.mark.parametrize("name,value", [
    ("weight_bits", 1), ("weight_bits", 5), ("weight_bits", 16),
    ("weight_bits", 0), ("weight_bits", -4),
    ("group_size", 0), ("group_size", -2), ("group_size", -128),
    ("num_samples", 0), ("num_samples", -1),
    ("sequence_length", 1), ("sequence_length", 0), ("sequence_length", -5),
    ("block_size", 0), ("block_size", -1),
    ("calibration_batch_size", 0), ("calibration_batch_size", -3),
    ("seed", -1),
])
def test_integer_arguments_reject_out_of_range(name, value):
    with pytest.raises(ValueError) as excinfo:
        make(**{name: value})
    assert_names(excinfo, name, value)


def test_weight_bits_message_lists_supported_values():
    with pytest.raises(ValueError, match=r"\[2, 3, 4, 8\]"):
        make(weight_bits=6)


@pytest.mark.parametrize("name,value", [
    ("weight_bits", 2), ("weight_bits", 3), ("weight_bits", 4),
    ("weight_bits", 8), ("group_size", -1), ("group_size", 1),
    ("group_size", 128), ("num_samples", 1), ("sequence_length", 2),
    ("block_size", 1), ("calibration_batch_size", 1), ("seed", 0),
    ("seed", 2**40),
])
def test_integer_arguments_accept_boundaries(name, value):
    assert getattr(make(**{name: value}), name) == value


@pytest.mark.parametrize("name", INT_ARGS)
def test_numpy_integers_are_accepted_and_stored_as_python_int(name):
    value = {"weight_bits": 3, "group_size": 64, "sequence_length": 16}.get(
        name, 7)
    config = make(**{name: np.int64(value)})
    assert getattr(config, name) == value
    assert type(getattr(config, name)) is int
    json.dumps(config.get_config())


@pytest.mark.parametrize("name", BOOL_ARGS)
@pytest.mark.parametrize("value", [1, 0, "True", "false", None,
                                   np.bool_(True)])
def test_boolean_arguments_reject_non_bools(name, value):
    with pytest.raises(TypeError) as excinfo:
        make(**{name: value})
    assert_names(excinfo, name, value)


@pytest.mark.parametrize("name", BOOL_ARGS)
def test_boolean_arguments_accept_bools(name):
    assert getattr(make(**{name: True}), name) is True
    assert getattr(make(**{name: False}), name) is False


@pytest.mark.parametrize("name", FRACTION_ARGS)
@pytest.mark.parametrize("value", [-0.01, 1.01, 2, -1, float("inf"),
                                   float("nan")])
def test_fractions_reject_values_outside_unit_interval(name, value):
    with pytest.raises(ValueError) as excinfo:
        make(**{name: value})
    assert_names(excinfo, name, value)


@pytest.mark.parametrize("name", FRACTION_ARGS)
@pytest.mark.parametrize("value", ["0.01", None, True, [0.01]])
def test_fractions_reject_non_numbers(name, value):
    with pytest.raises(TypeError) as excinfo:
        make(**{name: value})
    assert_names(excinfo, name, value)


@pytest.mark.parametrize("name", FRACTION_ARGS)
@pytest.mark.parametrize("value", [0, 0.0, 0.05, 1, 1.0, np.float32(0.25)])
def test_fractions_accept_unit_interval_as_float(name, value):
    config = make(**{name: value})
    assert getattr(config, name) == pytest.approx(float(value))
    assert type(getattr(config, name)) is float


def test_dataset_none_is_rejected():
    with pytest.raises(ValueError, match="`dataset` is required"):
        GPTQConfig(dataset=None)
    with pytest.raises(ValueError, match="`dataset` is required"):
        GPTQConfig(None, None)


@pytest.mark.parametrize("structure", [
    [keras.layers.Dense(2)],                 # a list, not a dict
    "sequential_blocks",                     # a string
    {"blocks": [keras.layers.Dense(2)]},     # missing key
    {"pre_block_layers": []},                # missing key
])
def test_structure_must_be_dict_with_sequential_blocks(structure):
    with pytest.raises(ValueError) as excinfo:
        make(quantization_layer_structure=structure)
    message = str(excinfo.value)
    assert "`quantization_layer_structure`" in message
    assert "sequential_blocks" in message
    assert repr(structure) in message


@pytest.mark.parametrize("blocks", [[], (), None, "block", 3])
def test_structure_blocks_must_be_a_non_empty_list(blocks):
    structure = {"sequential_blocks": blocks}
    with pytest.raises(ValueError) as excinfo:
        make(quantization_layer_structure=structure)
    message = str(excinfo.value)
    assert "quantization_layer_structure['sequential_blocks']" in message
    assert repr(blocks) in message


def test_structure_blocks_must_be_layers():
    # Layer names instead of layers are a natural mistake; the config claims
    # to validate every argument at construction, so it must not accept a
    # list that the pipeline can only fail on later.
    structure = {"sequential_blocks": ["transformer_layer_0",
                                       "transformer_layer_1"]}
    with pytest.raises((TypeError, ValueError)) as excinfo:
        make(quantization_layer_structure=structure)
    assert "quantization_layer_structure" in str(excinfo.value)
    assert "transformer_layer_0" in str(excinfo.value)


def test_valid_structure_is_kept():
    blocks = [keras.layers.Dense(2), keras.layers.Dense(2)]
    structure = {"pre_block_layers": [keras.layers.Embedding(4, 2)],
                 "sequential_blocks": blocks}
    config = make(quantization_layer_structure=structure)
    assert config.quantization_layer_structure is structure
    assert make(quantization_layer_structure={
        "sequential_blocks": tuple(blocks)}).quantization_layer_structure


def test_defaults():
    config = GPTQConfig(DATA)
    assert config.tokenizer is None
    assert (config.weight_bits, config.num_samples, config.sequence_length,
            config.group_size, config.block_size,
            config.calibration_batch_size, config.seed) == (
                4, 128, 512, 128, 128, 8, 0)
    assert config.hessian_damping == 0.01
    assert config.sink_weight == keras_gptq.config.SINK_WEIGHT_DEFAULT
    assert config.damping_auto_increase == 0.01
    assert config.per_channel is True
    assert not any([config.symmetric, config.activation_order,
                    config.static_groups, config.true_sequential,
                    config.mse, config.asymmetric_calibration,
                    config.quantize_router])
    assert config.quantization_layer_structure is None
    assert config.mode == "gptq"


# --------------------------------------------------------- serialization

NON_DEFAULT = dict(
    weight_bits=3, num_samples=17, per_channel=False, sequence_length=33,
    hessian_damping=0.05, group_size=-1, symmetric=True,
    activation_order=True, static_groups=True, true_sequential=True,
    mse=True, block_size=32, calibration_batch_size=2,
    damping_auto_increase=0.0, seed=9, asymmetric_calibration=True,
    add_start_token=False,
    quantize_router=True, sink_weight=2.5,
)


def test_get_config_is_json_and_drops_calibration_objects():
    structure = {"sequential_blocks": [keras.layers.Dense(2)]}
    tokenizer = lambda s: list(s.encode())  # noqa: E731
    config = GPTQConfig(DATA, tokenizer,
                        quantization_layer_structure=structure,
                        **NON_DEFAULT)
    cfg = config.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["dataset"] is None and cfg["tokenizer"] is None
    assert cfg["quantization_layer_structure"] is None
    for key, value in NON_DEFAULT.items():
        assert cfg[key] == value, key


def test_from_config_round_trip():
    config = GPTQConfig(DATA, **NON_DEFAULT)
    tokenizer = lambda s: [1, 2]  # noqa: E731
    rebuilt = GPTQConfig.from_config(config.get_config(), dataset=DATA,
                                     tokenizer=tokenizer)
    assert rebuilt.get_config() == config.get_config()
    assert rebuilt.dataset is DATA
    assert rebuilt.tokenizer is tokenizer
    assert repr(rebuilt) == repr(config)
    # Without calibration objects it still rebuilds (dataset is checked when
    # a quantization runs).
    bare = GPTQConfig.from_config(config.get_config())
    assert bare.get_config() == config.get_config()


def test_from_config_revalidates():
    cfg = GPTQConfig(DATA).get_config()
    cfg["weight_bits"] = 5
    with pytest.raises(ValueError, match="weight_bits"):
        GPTQConfig.from_config(cfg, dataset=DATA)


def test_keras_serialization_round_trip():
    config = GPTQConfig(DATA, **NON_DEFAULT)
    serialized = keras.saving.serialize_keras_object(config)
    json.dumps(serialized)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, GPTQConfig)
    assert restored.get_config() == config.get_config()


def test_dtype_policy_string():
    assert make().dtype_policy_string() == "gptq/4/128"
    assert make(weight_bits=3, group_size=-1).dtype_policy_string() == (
        "gptq/3/-1")
    assert make(weight_bits=8, group_size=32).dtype_policy_string() == (
        "gptq/8/32")
    policy = keras.dtype_policies.GPTQDTypePolicy(
        make(weight_bits=2, group_size=64).dtype_policy_string(), "float32")
    assert (policy.weight_bits, policy.group_size) == (2, 64)


# ------------------------------------------- keras.quantizers.GPTQConfig

KERAS_KWARGS = dict(
    weight_bits=3, num_samples=16, per_channel=False, sequence_length=64,
    hessian_damping=0.02, group_size=32, symmetric=True,
    activation_order=True, quantization_layer_structure=None,
)


def test_signature_covers_keras_gptq_config():
    ours = inspect.signature(GPTQConfig.__init__).parameters
    theirs = inspect.signature(
        keras.quantizers.GPTQConfig.__init__).parameters
    for name, param in theirs.items():
        assert name in ours, name
        assert ours[name].kind == param.kind, name
        if param.default is not inspect.Parameter.empty:
            assert ours[name].default == param.default, name


@pytest.mark.parametrize("kwargs", [{}, KERAS_KWARGS,
                                    dict(KERAS_KWARGS, group_size=-1,
                                         weight_bits=8, per_channel=True)])
def test_keras_style_code_constructs_the_same_config(kwargs):
    tokenizer = lambda s: list(s.encode())  # noqa: E731
    theirs = keras.quantizers.GPTQConfig(DATA, tokenizer, **kwargs)
    ours = GPTQConfig(DATA, tokenizer, **kwargs)
    ours_kw = GPTQConfig(dataset=DATA, tokenizer=tokenizer, **kwargs)
    for config in (ours, ours_kw):
        assert config.dataset is DATA and config.tokenizer is tokenizer
        assert config.mode == theirs.mode
        assert config.dtype_policy_string() == theirs.dtype_policy_string()
        for key, value in theirs.get_config().items():
            assert config.get_config()[key] == value, key


def test_from_config_accepts_keras_gptq_config_output():
    theirs = keras.quantizers.GPTQConfig(DATA, None, **KERAS_KWARGS)
    ours = GPTQConfig.from_config(theirs.get_config(), dataset=DATA)
    for key, value in theirs.get_config().items():
        if key not in ("dataset", "tokenizer"):
            assert getattr(ours, key) == value, key


# ------------------------------------------------------------- version

def test_get_config_records_the_version():
    assert make().get_config()["version"] == keras_gptq.config.CONFIG_VERSION


@pytest.mark.parametrize("version", [99, "1"])
def test_from_config_refuses_an_unknown_version(version):
    cfg = dict(make().get_config(), version=version)
    with pytest.raises(ValueError, match="version"):
        GPTQConfig.from_config(cfg, dataset=DATA)


def test_each_argument_has_one_validator():
    # Every argument but the calibration objects goes through the table.
    names = set(inspect.signature(GPTQConfig).parameters) - {
        "dataset", "tokenizer"}
    assert names == set(keras_gptq.config._VALIDATORS)
