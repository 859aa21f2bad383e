"""Does GPTQ's per-layer gain hold on new text? Per layer type, for a saved
quantized preset of a real model.

Two measurements against the float model (both in one process):

- `--blocks 3,14,26`: for each Dense layer of those blocks, the output
  error `|X (W - Wq)^T|^2 / |X W^T|^2` of the preset's dequantized weights
  and of round-to-nearest on the same 4-bit g128 grid, with `X` the float
  model's inputs to that layer on 4 x 256 tokens of the calibration text
  (new windows, not the preset's own) and of the evaluation text. A
  layer whose Hessian saw too few tokens fits its calibration windows and
  is worse than RTN on new text.
- `--rtn-types feedforward_output_dense,...`: the float model with every
  Dense kernel replaced by the preset's dequantized weights, except the
  listed layer types, rounded to nearest instead; its perplexity on the
  first 8 x 512 tokens of the evaluation text, scored as
  `benchmarks/real_models.py` scores (with no types listed it equals the
  preset's own perplexity).

Usage:
    KERAS_BACKEND=jax python benchmarks/layer_heldout.py \\
        --model qwen2.5-1.5b --preset DIR --blocks 3,14,26
    KERAS_BACKEND=jax python benchmarks/layer_heldout.py \\
        --model qwen2.5-1.5b --preset DIR --rtn-types feedforward_output_dense
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import real_models  # noqa: E402  (benchmarks/real_models.py: the loader)


def dense_layers(block):
    """`{short name: layer}` of a block's Dense/EinsumDense layers."""
    import keras
    return {layer.path.split("/")[-1]: layer
            for layer in block._flatten_layers()
            if isinstance(layer, (keras.layers.Dense,
                                  keras.layers.EinsumDense))}


def float_matrix(layer):
    """`W[out, in]` float64 of a float layer, and its layout."""
    import keras
    from keras_gptq.model import layout as layout_lib
    lay = layout_lib.layer_layout(layer, layer.kernel.shape)
    return lay, np.asarray(lay.kernel_to_matrix(
        keras.ops.convert_to_numpy(layer.kernel)), np.float64)


def rtn_matrix(W, bits=4, group_size=128):
    """Round-to-nearest of `W` on keras_gptq's grid, dequantized."""
    from keras_gptq.algorithm import grid
    q, scale, zero, g_idx = grid.rtn_quantize(W, bits, group_size, False)
    return (q.astype(np.float64) - zero[:, g_idx]) * scale[:, g_idx]


def quantized_matrix(layer):
    """The packed layer's dequantized `W[out, in]`, original column order."""
    import keras
    from keras_gptq.storage import packed_layer
    return np.asarray(keras.ops.convert_to_numpy(
        packed_layer.dequantized_matrix(layer)), np.float64)


def windows(tokenizer, texts, count, length, offset):
    """`count` windows of `length` ids from the joined token stream."""
    ids = np.concatenate([np.asarray(tokenizer(t)) for t in texts[:400]])
    return np.stack([ids[offset + i * length:offset + (i + 1) * length]
                     for i in range(count)]).astype("int32")


def layer_errors(float_model, quant_model, blocks, tokens, bits=4,
                 group_size=128):
    """`[(block, name, inputs, rtn error, quantized error)]` on `tokens`
    (RTN on a `bits`-bit, `group_size` grid, the preset's own)."""
    import keras
    from keras_gptq.model import capture
    from keras_gptq.model import layout as layout_lib
    from keras_gptq.model import structure
    fblocks = structure.sequential_blocks(float_model)
    qblocks = structure.sequential_blocks(quant_model)
    targets = [(b, name, layer, dense_layers(qblocks[b])[name])
               for b in blocks
               for name, layer in dense_layers(fblocks[b]).items()]
    seen = {}

    def keep(layer, x):
        lay = layout_lib.layer_layout(layer, layer.kernel.shape)
        seen.setdefault(id(layer), []).append(np.asarray(
            keras.ops.convert_to_numpy(lay.inputs_to_rows(x)), np.float64))

    with capture.record_layer_inputs([t[2] for t in targets], keep):
        float_model.backbone(capture.model_inputs(float_model.backbone,
                                                  tokens))
    rows = []
    for b, name, layer, qlayer in targets:
        X = np.concatenate(seen[id(layer)])
        W = float_matrix(layer)[1]
        ref = np.sum((X @ W.T) ** 2)
        errors = [np.sum((X @ (W - M).T) ** 2) / ref
                  for M in (rtn_matrix(W, bits, group_size),
                            quantized_matrix(qlayer))]
        rows.append((b, name, W.shape[1], *errors))
    return rows


def mix_weights(float_model, quant_model, rtn_types, bits=4, group_size=128):
    """Puts the preset's dequantized weights into `float_model`'s Dense
    kernels, except `rtn_types` (name endings), rounded to nearest on a
    `bits`-bit, `group_size` grid."""
    from keras_gptq.model import structure
    for fblock, qblock in zip(structure.sequential_blocks(float_model),
                              structure.sequential_blocks(quant_model)):
        quantized = dense_layers(qblock)
        for name, layer in dense_layers(fblock).items():
            lay, W = float_matrix(layer)
            M = rtn_matrix(W, bits, group_size) if any(
                name.endswith(t) for t in rtn_types) else quantized_matrix(
                quantized[name])
            layer.kernel.assign(lay.matrix_to_kernel(M.astype(np.float32)))


def main(argv=None):
    """Prints the per-layer table or the mixed perplexity."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=real_models.MODELS, required=True)
    p.add_argument("--preset", required=True,
                   help="the quantized preset (4-bit g128) of --model")
    p.add_argument("--blocks", default="",
                   help="comma-separated block indices: per-layer table")
    p.add_argument("--rtn-types", default=None,
                   help="comma-separated layer names (may be empty): "
                   "mixed perplexity")
    p.add_argument("--eval-windows", type=int, default=8)
    args = p.parse_args(argv)
    import keras_hub

    import keras_gptq
    from keras_gptq.examples import bundled
    float_model = real_models.load(args.model)
    quant_model = keras_hub.models.CausalLM.from_preset(args.preset)
    if args.blocks:
        tokenizer = float_model.preprocessor.tokenizer
        sets = {"calibration text": windows(
                    tokenizer, bundled.calibration_texts(), 4, 256, 1000),
                "evaluation text": windows(
                    tokenizer, bundled.evaluation_texts(), 4, 256, 0)}
        print("| text | block | layer | inputs | RTN error | preset error "
              "| RTN / preset |\n|---|---|---|---|---|---|---|")
        for label, tokens in sets.items():
            for b, name, columns, rtn, quant in layer_errors(
                    float_model, quant_model,
                    [int(x) for x in args.blocks.split(",")], tokens):
                print(f"| {label} | {b} | {name} | {columns} | {rtn:.2e} | "
                      f"{quant:.2e} | {rtn / quant:.2f} |", flush=True)
    if args.rtn_types is not None:
        types = [t for t in args.rtn_types.split(",") if t]
        mix_weights(float_model, quant_model, types)
        ppl = keras_gptq.evaluate_perplexity(
            float_model, bundled.evaluation_texts(),
            float_model.preprocessor.tokenizer, sequence_length=512,
            max_tokens=512 * args.eval_windows + 1)
        print(f"perplexity with {types or 'no'} layer types rounded to "
              f"nearest, the rest from the preset: {ppl:.4f}")


if __name__ == "__main__":
    main()
