"""Tests for keras_gptq.storage.kernels: every matmul path of a packed layer
equals the dequantized float reference (each backend runs its own paths),
act-order layers are sorted once and keep the saved layout."""

import types
import zipfile

import h5py
import keras
import numpy as np
import pytest
from keras import ops

from keras_gptq import storage
from keras_gptq.algorithm import grid
from keras_gptq.algorithm import solver
from keras_gptq.model import layout
from keras_gptq.storage import cpu_kernel
from keras_gptq.storage import kernels
from keras_gptq.storage import torch_int4

BACKEND = keras.config.backend()

LAYERS = {
    "dense": (lambda: keras.layers.Dense(40, use_bias=True), (2, 3, 96)),
    # Gemma query: the contracted axis is not the kernel's last.
    "gemma_query": (lambda: keras.layers.EinsumDense(
        "btd,ndh->btnh", output_shape=(None, 4, 8)), (2, 3, 64)),
    # Llama attention output: two contracted axes, one output axis.
    "llama_output": (lambda: keras.layers.EinsumDense(
        "bquh,uhm->bqm", output_shape=(None, 24), bias_axes="m"),
        (2, 3, 4, 16)),
    # Outputs in another axis order than `kept + out` (torch's eager
    # int4 call leaves these to the generic path).
    "permuted_output": (lambda: keras.layers.EinsumDense(
        "btd,dnh->bnth", output_shape=(4, None, 8)), (2, 3, 64)),
    # An odd input width (a half-filled last byte at 4 bits).
    "dense_odd": (lambda: keras.layers.Dense(24), (2, 3, 95)),
    # SmolLM2's width: 576 = 4.5 groups of 128 (a short last group).
    "dense_576": (lambda: keras.layers.Dense(20), (1, 3, 576)),
}


def packed(name, bits, group_size, act_order, seed=0):
    """A packed layer with random levels, scales and zero points, its
    float kernel (the reference) and an input."""
    keras.utils.set_random_seed(seed)
    factory, x_shape = LAYERS[name]
    layer = factory()
    layer.build(x_shape)
    lay = layout.layer_layout(layer)
    rng = np.random.default_rng(seed)
    groups = grid.num_groups(group_size, lay.columns)
    g_idx = grid.contiguous_g_idx(group_size, lay.columns)
    if act_order:
        g_idx = g_idx[rng.permutation(lay.columns)]
    result = types.SimpleNamespace(
        q=rng.integers(0, 2**bits, (lay.rows, lay.columns)),
        scale=rng.uniform(0.01, 0.1, (lay.rows, groups)).astype(np.float32),
        zero=rng.integers(0, 2**bits, (lay.rows, groups)).astype(np.uint8),
        g_idx=g_idx.astype(np.int32))
    storage.write_packed(layer, result, bits, group_size)
    kernel = lay.matrix_to_kernel(solver.dequantize(
        result.q, result.scale, result.zero, result.g_idx))
    x = rng.normal(size=x_shape).astype(np.float32)
    return layer, result, kernel, x


def reference(layer, x, kernel):
    if isinstance(layer, keras.layers.EinsumDense):
        y = np.einsum(layer.equation, x, kernel)
    else:
        y = x @ kernel
    if layer.bias is not None:
        y = y + ops.convert_to_numpy(layer.bias)
    return y


def assert_close(actual, expected, rel):
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(actual - expected)))
    assert error <= rel * scale, (error, scale)


def uses_int4(layer):
    return kernels.state(layer).int4 is not None


def uses_cpu_kernel(layer):
    return kernels.state(layer).cpu_group is not None


def cpu_kernel_expected(bits):
    """The JAX CPU kernel must be in use: jax on CPU with a C++ compiler
    (a build that fails there fails the tests instead of falling back)."""
    if BACKEND != "jax" or bits == 3 or not cpu_kernel.enabled():
        return False
    import jax
    return jax.default_backend() == "cpu" and cpu_kernel._compiler() is not None


CASES = [(name, bits, group_size, act_order)
         for name in LAYERS for bits in (2, 3, 4, 8)
         for group_size in (32, 128, -1) for act_order in (False, True)]


@pytest.mark.parametrize("name,bits,group_size,act_order", CASES)
def test_every_path_equals_the_dequantized_reference(name, bits, group_size,
                                                     act_order):
    layer, _, kernel, x = packed(name, bits, group_size, act_order)
    expected = reference(layer, x, kernel)
    with kernels.reference_only():
        assert_close(ops.convert_to_numpy(layer(x)), expected, 1e-5)
    # The default path: the backend's fast kernel where it applies
    # (bfloat16 activations: bfloat16 rounding), else the reference.
    rel = 2e-2 if uses_int4(layer) else 1e-5
    assert_close(ops.convert_to_numpy(layer(x)), expected, rel)
    assert uses_cpu_kernel(layer) is cpu_kernel_expected(bits)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.kernel), kernel,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("group_size", [32, 48, -1])
def test_act_order_columns_are_sorted_once(group_size):
    layer, result, _, _ = packed("dense", 3, group_size, act_order=True)
    state = kernels.state(layer)
    assert state.contiguous
    if group_size == -1:  # one group: already in order
        assert state.perm is None
        return
    perm = ops.convert_to_numpy(state.perm)
    np.testing.assert_array_equal(perm, np.argsort(result.g_idx,
                                                   kind="stable"))
    # Memory holds the sorted levels; g_idx and stored_levels the original.
    held = storage.unpack(ops.convert_to_numpy(layer.quantized_kernel), 3,
                          96)
    np.testing.assert_array_equal(held, result.q[:, perm])
    np.testing.assert_array_equal(storage.stored_levels(layer), result.q)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.g_idx),
                                  result.g_idx)


def test_uneven_groups_keep_the_gather_path():
    # A checkpoint whose groups are not `group_size` wide cannot be sorted
    # into contiguous groups: it keeps the original order and the gathers.
    layer = keras.layers.Dense(8)
    layer.build((2, 64))
    g_idx = np.repeat([0, 1], [40, 24]).astype(np.int32)
    rng = np.random.default_rng(0)
    result = types.SimpleNamespace(
        q=rng.integers(0, 16, (8, 64)), g_idx=g_idx,
        scale=rng.uniform(0.01, 0.1, (8, 2)).astype(np.float32),
        zero=rng.integers(0, 16, (8, 2)).astype(np.uint8))
    storage.write_packed(layer, result, 4, 32)
    state = kernels.state(layer)
    assert state.perm is None and not state.contiguous
    x = rng.normal(size=(3, 64)).astype(np.float32)
    W = solver.dequantize(result.q, result.scale, result.zero, g_idx)
    assert_close(ops.convert_to_numpy(layer(x)), x @ W.T, 1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="inspects XLA's optimized "
                    "HLO (jax); the torch/tf paths have no compiled loop")
@pytest.mark.parametrize("act_order", [False, True])
def test_a_decode_loop_reads_the_weight_without_a_float_transpose(act_order):
    # In a compiled decode loop XLA hoists the dequantization (loop
    # invariant) out of the loop. What stays in the loop must read that
    # float matrix as the dot wants it: a transpose left in the loop
    # copied the whole float matrix at every step (decode 0.87x float32
    # on SmolLM2; 1.1x without it, benchmarks/RESULTS.md).
    import jax
    import re

    layer, _, kernel, x = packed("dense", 4, 32, act_order)
    rows = x.reshape(-1, 96)[:1]
    values = [v.value for v in layer.trainable_variables]
    others = [v.value for v in layer.non_trainable_variables]

    def loop(values, others, x):
        def body(i, x):
            y, _ = layer.stateless_call(values, others, x)
            return x + ops.sum(y) * 0.0
        return jax.lax.fori_loop(0, 4, body, x)

    with kernels.reference_only():  # the native kernel has no float W
        hlo = jax.jit(loop).lower(values, others, rows).compile().as_text()
    bodies = re.findall(r"body=(%[\w.\-]+)", hlo)
    assert bodies
    called = set(bodies)
    # Every computation the while body reaches (fusions included).
    text = {m.group(1): m.group(2) for m in re.finditer(
        r"^(%[\w.\-]+) [^\n]*\{\n(.*?)^\}", hlo, re.M | re.S)}
    frontier = list(called)
    while frontier:
        for name in re.findall(r"(?:calls|to_apply|body|condition)="
                               r"(%[\w.\-]+)", text.get(frontier.pop(), "")):
            if name not in called:
                called.add(name)
                frontier.append(name)
    inside = "\n".join(text.get(name, "") for name in called)
    float_matrix = r"f32\[(40,96|96,40)\]\S* (transpose|copy)\("
    assert not re.search(float_matrix, inside), inside
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(rows)), rows @ kernel, rtol=1e-5,
        atol=1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX CPU kernel")
class TestJaxCpuKernel:

    def test_the_compiled_call_is_the_kernel(self):
        import jax
        if not cpu_kernel_expected(4):
            pytest.skip("no C++ compiler or not on CPU")
        layer, _, kernel, x = packed("dense", 4, 32, act_order=True)
        rows = x.reshape(-1, 96)
        values = [v.value for v in layer.trainable_variables]
        others = [v.value for v in layer.non_trainable_variables]
        def call(v, o, x):
            return layer.stateless_call(v, o, x)[0]

        hlo = jax.jit(call).lower(values, others, rows).as_text()
        assert "keras_gptq_matmul4" in hlo
        with kernels.reference_only():  # traced anew: a fresh function
            hlo = jax.jit(lambda *a: call(*a)).lower(values, others,
                                                     rows).as_text()
        assert "keras_gptq_matmul" not in hlo
        assert_close(ops.convert_to_numpy(jax.jit(call)(values, others,
                                                        rows)),
                     rows @ kernel, 1e-5)

    @pytest.mark.parametrize("tokens",
                             [1, 2, 3, 5, 15, 16, 17, 65, 130, 520])
    @pytest.mark.parametrize("bits,group_size,act_order", [
        (2, 32, False), (2, 128, True), (2, -1, False),
        (4, 32, True), (4, 128, False), (4, 128, True), (4, -1, False),
        (8, 32, False), (8, 128, True), (8, -1, False)])
    def test_every_row_count_equals_the_reference(self, tokens, bits,
                                                  group_size, act_order):
        # Row counts on both sides of the kernel's thresholds (the lookup
        # tiles of 1, 2 and 4 rows, `BLOCKED_FROM`, blocks of 32 weight
        # rows, `MAX_TOKENS`, panels from 512 rows) on SmolLM2's width (a
        # short last group).
        if not cpu_kernel_expected(bits):
            pytest.skip("no C++ compiler or not on CPU")
        layer, _, kernel, _ = packed("dense_576", bits, group_size,
                                     act_order)
        x = np.random.default_rng(tokens).normal(
            size=(tokens, 576)).astype(np.float32)
        assert uses_cpu_kernel(layer)
        assert cpu_kernel.max_tokens(  # every group here is whole words
            bits, kernels.state(layer).cpu_group,
            layer.quantized_kernel.shape[1]) is None
        assert_close(ops.convert_to_numpy(layer(x)), x @ kernel, 1e-5)

    def test_prefill_takes_every_cpu_by_default(self, monkeypatch):
        import os
        monkeypatch.delenv("KERAS_GPTQ_CPU_KERNEL_THREADS", raising=False)
        assert cpu_kernel.threads(cpu_kernel.BLOCKED_FROM - 1) == 1
        assert cpu_kernel.threads(cpu_kernel.BLOCKED_FROM) == os.cpu_count()
        monkeypatch.setenv("KERAS_GPTQ_CPU_KERNEL_THREADS", "3")
        assert cpu_kernel.threads(1) == 3

    @pytest.mark.parametrize("tokens", [1, 40])
    def test_two_threads_share_the_rows(self, monkeypatch, tokens):
        import jax.numpy as jnp
        if not cpu_kernel_expected(4):
            pytest.skip("no C++ compiler or not on CPU")
        monkeypatch.setenv("KERAS_GPTQ_CPU_KERNEL_THREADS", "2")
        rng = np.random.default_rng(0)
        levels = rng.integers(0, 16, (520, 576))  # 2 chunks at 32 rows
        scale = rng.uniform(0.01, 0.1, (520, 5)).astype(np.float32)
        zero = rng.integers(0, 16, (520, 5)).astype(np.uint8)
        x = rng.normal(size=(tokens, 576)).astype(np.float32)
        y = cpu_kernel.matmul(jnp.asarray(x), storage.pack(levels, 4),
                              scale, zero, 4, 128)
        weights = solver.dequantize(levels, scale, zero,
                                    grid.contiguous_g_idx(128, 576))
        assert_close(np.asarray(y), x @ weights.T, 1e-5)

    def test_long_inputs_take_the_reference_path(self):
        # Groups of 2 bytes (2-bit g8) are not whole 32-bit words: no
        # blocked path, so calls above `MAX_TOKENS` rows take the reference.
        import jax
        layer, _, kernel, _ = packed("dense", 2, 8, act_order=False)
        assert uses_cpu_kernel(layer)
        assert cpu_kernel.max_tokens(2, 8, 24) == cpu_kernel.MAX_TOKENS
        x = np.random.default_rng(1).normal(
            size=(cpu_kernel.MAX_TOKENS + 1, 96)).astype(np.float32)
        values = [v.value for v in layer.trainable_variables]
        others = [v.value for v in layer.non_trainable_variables]
        call = jax.jit(lambda v, o, x: layer.stateless_call(v, o, x)[0])
        assert "keras_gptq_matmul" not in call.lower(values, others,
                                                     x).as_text()
        assert_close(ops.convert_to_numpy(layer(x)), x @ kernel, 1e-5)

    def test_a_failed_build_falls_back_with_one_warning(self, monkeypatch,
                                                        tmp_path, caplog):
        monkeypatch.setenv("KERAS_GPTQ_CACHE", str(tmp_path))
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        with caplog.at_level("WARNING", logger="keras_gptq"):
            assert cpu_kernel._load() is None
        assert len(caplog.records) == 1
        assert "reference path" in caplog.records[0].getMessage()
        monkeypatch.setattr(cpu_kernel, "available", lambda: False)
        layer, _, kernel, x = packed("dense", 4, 32, act_order=True)
        assert not uses_cpu_kernel(layer)
        assert_close(ops.convert_to_numpy(layer(x)), x @ kernel, 1e-5)

    def test_a_compile_error_falls_back(self, monkeypatch, tmp_path):
        monkeypatch.setenv("KERAS_GPTQ_CACHE", str(tmp_path))
        monkeypatch.setattr(cpu_kernel, "FLAGS", ("-no-such-flag",))
        assert cpu_kernel._load() is None
        assert not list(tmp_path.iterdir())  # no partial library left

    def test_disable_cpu_kernel_sends_the_layer_to_the_reference(self):
        layer, _, kernel, x = packed("dense", 4, 32, act_order=True)
        kernels.disable_cpu_kernel(layer)
        assert not uses_cpu_kernel(layer)
        assert_close(ops.convert_to_numpy(layer(x)), x @ kernel, 1e-5)

    def test_the_environment_turns_it_off(self, monkeypatch):
        monkeypatch.setenv("KERAS_GPTQ_CPU_KERNEL", "0")
        layer, _, _, _ = packed("dense", 4, 32, act_order=False)
        assert not uses_cpu_kernel(layer)


def model_of(layer, x_shape):
    inputs = keras.Input(x_shape[1:], batch_size=x_shape[0])
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize("act_order", [False, True])
def test_saved_file_holds_the_original_column_order(tmp_path, act_order):
    # The saved layout is the one older keras_gptq versions wrote and
    # read (layout version 1): levels in g_idx's order.
    layer, result, kernel, x = packed("dense", 4, 32, act_order)
    model = model_of(layer, x.shape)
    path = str(tmp_path / "model.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", tmp_path)
    with h5py.File(tmp_path / "model.weights.h5") as weights:
        found = []
        weights.visititems(lambda n, v: found.append(v[()]) if (
            isinstance(v, h5py.Dataset) and v.dtype == np.uint8
            and v.shape == (40, 48)) else None)
    assert len(found) == 1
    np.testing.assert_array_equal(found[0], storage.pack(result.q, 4))
    reloaded = keras.saving.load_model(path)
    with kernels.reference_only():
        assert_close(ops.convert_to_numpy(reloaded(x)),
                     reference(layer, x, kernel), 1e-5)
    assert (kernels.state(reloaded.layers[-1]).perm is None) is (
        not act_order)


@pytest.mark.skipif(BACKEND != "torch", reason="the aten int4 kernels")
class TestTorchInt4:

    @pytest.mark.parametrize("group_size,kernel_group", [
        (32, 32), (64, 64), (96, 32), (-1, 32)])
    def test_kernel_group_divides_ours(self, group_size, kernel_group):
        layer, _, _, _ = packed("dense", 4, group_size, act_order=False)
        assert kernels.state(layer).int4.group_size == kernel_group

    @pytest.mark.parametrize("bits,group_size", [(3, 32), (8, 32), (4, 16)])
    def test_other_settings_take_the_reference_path(self, bits, group_size):
        layer, _, _, _ = packed("dense", bits, group_size, act_order=False)
        assert not uses_int4(layer)

    def test_long_inputs_take_the_float32_path(self):
        """The kernel computes in bfloat16: decode-sized calls take it,
        longer calls (prefill, perplexity) keep float32 accuracy."""
        layer, _, kernel, _ = packed("dense", 4, 32, act_order=True)
        rng = np.random.default_rng(1)
        for rows, exact in ((torch_int4.MAX_TOKENS, False),
                            (torch_int4.MAX_TOKENS + 1, True), (300, True)):
            x = rng.normal(size=(rows, 96)).astype(np.float32)
            expected = reference(layer, x, kernel)
            got = ops.convert_to_numpy(layer(x))
            assert_close(got, expected, 1e-5 if exact else 2e-2)
            gap = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
            assert bool(gap < 1e-5) == exact, (rows, gap)  # bf16: the kernel

    def test_int4_copy_is_four_bits_a_weight(self):
        layer, _, _, _ = packed("dense", 4, 32, act_order=False)
        weight = kernels.state(layer).int4.weight
        # 40 rows are padded to 48: the CPU kernel packs 16 rows a block.
        assert weight.numel() * weight.element_size() == 48 * 96 // 2

    def test_cached_bytes_count_the_kernel_copy(self):
        layer, _, _, _ = packed("dense_576", 4, 128, act_order=True)
        int4 = kernels.state(layer).int4
        height, width = int4.padded
        # 4 bits a weight of the padded matrix, bfloat16 scale pairs.
        copy = height * width // 2 + int4.scales_and_zeros.numel() * 2
        assert kernels.cached_bytes(layer) == copy

    def test_load_into_a_prepared_layer(self, tmp_path):
        layer, result, kernel, x = packed("dense", 4, 32, act_order=True)
        model = model_of(layer, x.shape)
        path = str(tmp_path / "model.weights.h5")
        model.save_weights(path)
        model.load_weights(path)  # a second prepare of the same layer
        np.testing.assert_array_equal(storage.stored_levels(layer),
                                      result.q)
        assert_close(ops.convert_to_numpy(layer(x)),
                     reference(layer, x, kernel), 2e-2)

    @pytest.mark.parametrize("act_order", [False, True])
    def test_a_torch_saved_model_loads_on_jax(self, tmp_path, act_order):
        # The file holds the levels in g_idx's order for every backend.
        import os
        import subprocess
        import sys
        layer, result, kernel, x = packed("dense_576", 4, 128, act_order)
        path = tmp_path / "model.keras"
        model_of(layer, x.shape).save(path)
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "expected.npy", reference(layer, x, kernel))
        script = (
            "import sys, keras, numpy as np, keras_gptq\n"
            "from keras_gptq import storage\n"
            "d = sys.argv[1]\n"
            "m = keras.saving.load_model(d + '/model.keras')\n"
            "np.save(d + '/levels.npy', storage.stored_levels(m.layers[-1]))\n"
            "np.save(d + '/y.npy', keras.ops.convert_to_numpy(\n"
            "    m(np.load(d + '/x.npy'))))\n")
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                              env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        np.testing.assert_array_equal(np.load(tmp_path / "levels.npy"),
                                      result.q)
        assert_close(np.load(tmp_path / "y.npy"),
                     np.load(tmp_path / "expected.npy"), 1e-5)


def pack_transformer(model, bits, group_size, act_order):
    """Packs every Dense/EinsumDense of the transformer blocks with random
    levels (act-order: a permuted g_idx per layer)."""
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if not isinstance(layer, (keras.layers.Dense,
                                  keras.layers.EinsumDense)) or (
                "transformer_layer" not in layer.path):
            continue
        lay = layout.layer_layout(layer)
        groups = grid.num_groups(group_size, lay.columns)
        g_idx = grid.contiguous_g_idx(group_size, lay.columns)
        if act_order:
            g_idx = g_idx[rng.permutation(lay.columns)]
        storage.write_packed(layer, types.SimpleNamespace(
            q=rng.integers(0, 2**bits, (lay.rows, lay.columns)),
            scale=rng.uniform(0.002, 0.02, (lay.rows, groups)).astype(
                np.float32),
            zero=np.full((lay.rows, groups), 2**(bits - 1), np.uint8),
            g_idx=g_idx.astype(np.int32)), bits, group_size)


@pytest.mark.parametrize("bits,act_order", [(4, False), (4, True),
                                            (3, True)])
def test_generate_runs_and_logits_match_the_reference(bits, act_order):
    from helpers.models import build_causal_lm
    from helpers.models import logits
    model = build_causal_lm("llama3")
    pack_transformer(model, bits, 32, act_order)
    if BACKEND == "torch" and bits == 4:  # the aten int4 kernel runs
        assert all(uses_int4(layer) for layer in model._flatten_layers()
                   if storage.is_packed(layer))
    tokens = np.random.default_rng(0).integers(1, 100, (2, 12))
    with kernels.reference_only():
        expected = logits(model, tokens)
    rel = 2e-2 if BACKEND == "torch" and bits == 4 else 1e-4
    assert_close(logits(model, tokens), expected, rel)
    ids = np.zeros((2, 16), "int32")
    ids[:, :5] = tokens[:, :5]
    mask = np.zeros((2, 16), bool)
    mask[:, :5] = True
    out = model.generate({"token_ids": ids, "padding_mask": mask},
                         stop_token_ids=None)
    out_ids = ops.convert_to_numpy(out["token_ids"])
    assert out_ids.shape == (2, 16)
    np.testing.assert_array_equal(out_ids[:, :5], ids[:, :5])
