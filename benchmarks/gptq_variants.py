"""GPTQ settings side by side on the default model (SmolLM2-135M).

Each variant reloads the float model, quantizes it with keras_gptq (4-bit,
32 x 256 calibration tokens from the bundled calibration text unless the
variant says otherwise) and prints the perplexity on the first 8 x 512
tokens of the bundled evaluation text, and the quantization time.

Usage: KERAS_BACKEND=jax python benchmarks/gptq_variants.py [--only N,M]
(--only: 0-based indices into VARIANTS).
"""

import argparse

import time

import keras_gptq
from keras_gptq.examples import bundled

VARIANTS = [
    ("act-order (demo default)", dict(activation_order=True)),
    ("no act-order", dict(activation_order=False)),
    ("act-order + true_sequential",
     dict(activation_order=True, true_sequential=True)),
    ("act-order, damping 0.1", dict(activation_order=True,
                                    hessian_damping=0.1)),
    ("act-order, group 64", dict(activation_order=True, group_size=64)),
    ("act-order + static groups", dict(activation_order=True,
                                       static_groups=True)),
    ("act-order + mse range search", dict(activation_order=True, mse=True)),
    ("act-order + true_sequential + mse, 128 x 256 tokens",
     dict(activation_order=True, true_sequential=True, mse=True,
          num_samples=128)),
    ("act-order, 64 x 512 tokens", dict(activation_order=True,
                                        num_samples=64, sequence_length=512)),
    ("act-order + static groups + mse", dict(
        activation_order=True, static_groups=True, mse=True)),
    ("act-order + static groups + mse + true_sequential, 128 x 256 tokens",
     dict(activation_order=True, static_groups=True, mse=True,
          true_sequential=True, num_samples=128)),
    ("act-order + static groups, 128 x 256 tokens", dict(
        activation_order=True, static_groups=True, num_samples=128)),
    ("act-order + static groups + mse + true_sequential, 256 x 256 tokens",
     dict(activation_order=True, static_groups=True, mse=True,
          true_sequential=True, num_samples=256)),
    ("act-order + static groups + mse + true_sequential, 128 x 512 tokens",
     dict(activation_order=True, static_groups=True, mse=True,
          true_sequential=True, num_samples=128, sequence_length=512)),
    ("act-order + static groups + mse + true_sequential, damping 0.1, "
     "128 x 256 tokens",
     dict(activation_order=True, static_groups=True, mse=True,
          true_sequential=True, num_samples=128, hessian_damping=0.1)),
    ("act-order + static groups + mse, 128 x 256 tokens", dict(
        activation_order=True, static_groups=True, mse=True,
        num_samples=128)),
    ("act-order + asymmetric calibration", dict(
        activation_order=True, asymmetric_calibration=True)),
    ("act-order + static groups + asymmetric calibration", dict(
        activation_order=True, static_groups=True,
        asymmetric_calibration=True)),
    ("act-order + static groups + mse + asymmetric calibration", dict(
        activation_order=True, static_groups=True, mse=True,
        asymmetric_calibration=True)),
    ("act-order + static groups + mse + true_sequential + asymmetric "
     "calibration, 128 x 256 tokens", dict(
         activation_order=True, static_groups=True, mse=True,
         true_sequential=True, asymmetric_calibration=True,
         num_samples=128)),
    ("act-order + static groups + mse + asymmetric calibration, "
     "128 x 256 tokens", dict(
         activation_order=True, static_groups=True, mse=True,
         asymmetric_calibration=True, num_samples=128)),
    ("act-order + static groups + asymmetric calibration, 128 x 256 tokens",
     dict(activation_order=True, static_groups=True,
          asymmetric_calibration=True, num_samples=128)),
    ("act-order, damping 0.001", dict(activation_order=True,
                                      hessian_damping=0.001)),
]


def main():
    """Runs every variant and prints one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None,
                        help="comma-separated indices into VARIANTS")
    args = parser.parse_args()
    chosen = range(len(VARIANTS)) if args.only is None else [
        int(i) for i in args.only.split(",")]
    evaluation = bundled.evaluation_texts()
    calibration = bundled.calibration_texts()
    for index in chosen:
        name, options = VARIANTS[index]
        model = bundled.load_default_model()
        tokenizer = model.preprocessor.tokenizer
        settings = dict(num_samples=32, sequence_length=256)
        settings.update(options)
        config = keras_gptq.GPTQConfig(
            dataset=calibration, tokenizer=tokenizer, **settings)
        start = time.perf_counter()
        keras_gptq.quantize(model, config, verbose=False)
        seconds = time.perf_counter() - start
        ppl = keras_gptq.evaluate_perplexity(
            model, evaluation, tokenizer, sequence_length=512,
            max_tokens=8 * 512 + 1)
        print(f"| {name} | {ppl:.2f} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
