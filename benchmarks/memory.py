"""Peak memory (RSS) of quantizing the default model (SmolLM2-135M).

Loads the float model, quantizes it with the demo's settings (4-bit, group
128, act-order, 32 x 256 calibration tokens from the bundled text) while a
thread samples the process's RSS every 20 ms, and prints:

- RSS after importing Keras and keras_gptq (the runtime), after loading the
  model, and at its peak during quantization, with the RSS at the end of
  each block;
- the float model's size (its variables' bytes) and the calibration
  activations (`samples x seq_len x hidden` float32: the block inputs carried
  from block to block);
- the target: the runtime, plus 2x the float model, plus the activations.

Usage: KERAS_BACKEND=jax python benchmarks/memory.py [--samples 32]
       [--seq-len 256]
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402

import keras_gptq  # noqa: E402
from keras_gptq.examples import bundled  # noqa: E402
from keras_gptq.model import capture  # noqa: E402
from keras_gptq.model import pipeline  # noqa: E402

MB = 2**20


def _rss():
    return psutil.Process().memory_info().rss


def _per_block_rss():
    """Records the RSS after each block is solved during quantization."""
    seen, original = [], pipeline._solve_block

    def solve_block(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(_rss())
        return out

    pipeline._solve_block = solve_block
    return seen


def main():
    """Measures and prints the numbers described in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    runtime = _rss()
    model = bundled.load_default_model()
    loaded = _rss()
    float_bytes = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize
                      for v in model.weights)
    hidden = model.backbone.hidden_dim
    activations = args.samples * args.seq_len * hidden * 4
    config = keras_gptq.GPTQConfig(
        dataset=bundled.calibration_texts(),
        tokenizer=model.preprocessor.tokenizer, weight_bits=4,
        group_size=128, activation_order=True, num_samples=args.samples,
        sequence_length=args.seq_len)
    # Running the model once (one calibration-sized batch, no gradients)
    # is what any use of it costs: XLA executables, eager-op caches,
    # allocator pools, activations. Quantization's own cost is above that.
    batch = np.ones((config.calibration_batch_size, args.seq_len), "int32")
    with capture.no_grad():
        model(capture.model_inputs(model, batch))
    ran = _rss()
    blocks = _per_block_rss() if hasattr(pipeline, "_solve_block") else []
    sampler = _worker.PeakSampler()
    sampler.start()
    start = time.perf_counter()
    keras_gptq.quantize(model, config, verbose=False)
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    target = runtime + 2 * float_bytes + activations
    print(f"runtime RSS (imports)          {runtime / MB:8.0f} MB")
    print(f"RSS after loading the model    {loaded / MB:8.0f} MB")
    print(f"RSS after one float forward    {ran / MB:8.0f} MB "
          f"(batch {config.calibration_batch_size}x{args.seq_len})")
    print(f"float model (variables)        {float_bytes / MB:8.0f} MB")
    print(f"calibration activations        {activations / MB:8.0f} MB "
          f"({args.samples}x{args.seq_len}x{hidden} float32)")
    print(f"peak RSS during quantization   {peak / MB:8.0f} MB "
          f"({seconds:.0f} s)")
    print(f"target: runtime + 2x model + activations = {target / MB:.0f} MB"
          f" -> {'met' if peak <= target else 'NOT met'}")
    print(f"peak above runtime: {(peak - runtime) / MB:.0f} MB = "
          f"{(peak - runtime) / float_bytes:.2f}x the float model")
    ran_target = ran + float_bytes + activations
    print(f"quantization's own cost: peak - after one forward = "
          f"{(peak - ran) / MB:.0f} MB (one float model + activations = "
          f"{(float_bytes + activations) / MB:.0f} MB -> "
          f"{'within' if peak <= ran_target else 'above'})")
    print("RSS after each block (MB):",
          " ".join(f"{b / MB:.0f}" for b in blocks))


if __name__ == "__main__":
    main()
