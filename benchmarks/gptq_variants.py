"""GPTQ settings side by side on the default model (SmolLM2-135M).

Each variant reloads the float model, quantizes it with keras_gptq (4-bit,
32 x 256 calibration tokens from the bundled calibration text unless the
variant says otherwise) and prints the perplexity on the first 8 x 512
tokens of the bundled evaluation text, and the quantization time.

Usage: KERAS_BACKEND=jax python benchmarks/gptq_variants.py
"""

import time

import keras_gptq
from keras_gptq import bundled

VARIANTS = [
    ("act-order (demo default)", dict(activation_order=True)),
    ("no act-order", dict(activation_order=False)),
    ("act-order + true_sequential",
     dict(activation_order=True, true_sequential=True)),
    ("act-order, damping 0.1", dict(activation_order=True,
                                    hessian_damping=0.1)),
    ("act-order, group 64", dict(activation_order=True, group_size=64)),
]


def main():
    """Runs every variant and prints one line each."""
    evaluation = bundled.evaluation_texts()
    calibration = bundled.calibration_texts()
    for name, options in VARIANTS:
        model = bundled.load_default_model()
        tokenizer = model.preprocessor.tokenizer
        config = keras_gptq.GPTQConfig(
            dataset=calibration, tokenizer=tokenizer, num_samples=32,
            sequence_length=256, **options)
        start = time.perf_counter()
        keras_gptq.quantize(model, config, verbose=False)
        seconds = time.perf_counter() - start
        ppl = keras_gptq.evaluate_perplexity(
            model, evaluation, tokenizer, sequence_length=512,
            max_tokens=8 * 512 + 1)
        print(f"| {name} | {ppl:.2f} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
