"""Tiny random-init KerasHub models and structured token data.

The models are small enough to quantize in seconds on a CPU; the token data
comes from a fixed random Markov chain, so calibration and held-out windows
share statistics the way real text does.
"""

import keras
import keras_hub
import numpy as np

VOCAB = 256


def markov_tokens(n, seed):
    """`n` tokens of a fixed sparse Markov chain over VOCAB symbols."""
    transitions = np.random.default_rng(1234).dirichlet(
        np.full(VOCAB, 0.05), size=VOCAB)
    cumulative = np.cumsum(transitions, axis=1)
    rng = np.random.default_rng(seed)
    tokens = np.empty(n, dtype=np.int32)
    tokens[0] = 0
    draws = rng.random(n)
    for i in range(1, n):
        tokens[i] = min(np.searchsorted(cumulative[tokens[i - 1]], draws[i]),
                        VOCAB - 1)
    return tokens


def build_backbone(family):
    """A tiny random-init backbone of `family`: gpt2, llama3 or gemma3."""
    keras.utils.set_random_seed(0)
    if family == "gpt2":
        return keras_hub.models.GPT2Backbone(
            vocabulary_size=VOCAB, num_layers=2, num_heads=4, hidden_dim=64,
            intermediate_dim=128, max_sequence_length=128)
    if family == "llama3":
        return keras_hub.models.Llama3Backbone(
            vocabulary_size=VOCAB, num_layers=2, num_query_heads=4,
            num_key_value_heads=2, hidden_dim=64, intermediate_dim=128)
    if family == "gemma3":
        # Query kernel (heads=4, hidden=48, head_dim=64): the hidden axis is
        # not the largest, which Keras 3.15's own GPTQ layout misreads.
        return keras_hub.models.Gemma3Backbone(
            vocabulary_size=VOCAB, image_size=16, num_layers=2,
            num_query_heads=4, num_key_value_heads=2, hidden_dim=48,
            intermediate_dim=96, head_dim=64, vision_encoder=None)
    raise ValueError(family)


CAUSAL_LM = {
    "gpt2": "GPT2CausalLM",
    "llama3": "Llama3CausalLM",
    "gemma3": "Gemma3CausalLM",
}


def build_causal_lm(family):
    """A tiny random-init CausalLM of `family`, without preprocessor."""
    cls = getattr(keras_hub.models, CAUSAL_LM[family])
    return cls(backbone=build_backbone(family), preprocessor=None)


def logits(model, tokens):
    """Float32 numpy logits of `model` on `[batch, seq]` token ids."""
    # Imported here: helpers.models must not import keras_gptq (the
    # import-order tests build models before that import).
    from keras_gptq.model import capture
    out = model(capture.model_inputs(model, tokens))
    return np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(out, "float32")))


def save_tiny_preset(root, calibration=4000, heldout=1024):
    """Saves the tiny llama3 as `root/float` and Markov token ids as
    `root/ids.npy` (calibration) and `root/heldout.npy`; returns `root`."""
    build_causal_lm("llama3").save_to_preset(str(root / "float"))
    np.save(root / "ids.npy", markov_tokens(calibration, seed=1))
    np.save(root / "heldout.npy", markov_tokens(heldout, seed=2))
    return root


def float_kernels(blocks):
    """The float kernel variables of `blocks` that hold a value (not
    deferred, not dropped by packing)."""
    return [layer._kernel for block in blocks
            for layer in block._flatten_layers()
            if isinstance(layer, (keras.layers.Dense,
                                  keras.layers.EinsumDense))
            and getattr(layer, "_kernel", None) is not None
            and layer._kernel._value is not None]
