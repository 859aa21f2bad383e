"""Whether the aten int4 kernel pays at every row count on torch CPU.

Seven SmolLM2-shaped packed layers (one transformer block: query, key,
value, output 576 wide; gate, up 576 -> 1536; down 1536 -> 576; 4-bit
g128, random levels), called on `[rows, in]` float32 inputs at several
row counts, three ways, in alternation, median microseconds for the
whole block:

- `float`: the float32 kernels, one `ops.matmul` each;
- `int4`: `kernels.matmul`'s aten int4 path (bfloat16 inside);
- `reference`: the reference path (dequantize the packed levels, float32
  matmul).

Usage:

    KERAS_BACKEND=torch python benchmarks/torch_int4_rows.py
        [--rows 1,8,32,65,128,256,520,2048] [--calls 20]
"""

import argparse
import os
import time
import types

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

SHAPES = {"query": (576, 576), "key": (576, 192), "value": (576, 192),
          "output": (576, 576), "gate": (576, 1536), "up": (576, 1536),
          "down": (1536, 576)}


def _block():
    """Packed layers of SmolLM2's block shapes and their float kernels."""
    import keras
    from keras_gptq import storage
    from keras_gptq.algorithm import grid
    from keras_gptq.algorithm import solver
    rng = np.random.default_rng(0)
    layers = []
    for columns, rows in SHAPES.values():
        layer = keras.layers.Dense(rows, use_bias=False)
        layer.build((1, columns))
        groups = grid.num_groups(128, columns)
        result = types.SimpleNamespace(
            q=rng.integers(0, 16, (rows, columns)),
            scale=rng.uniform(0.01, 0.1, (rows, groups)).astype(np.float32),
            zero=rng.integers(0, 16, (rows, groups)).astype(np.uint8),
            g_idx=grid.contiguous_g_idx(128, columns).astype(np.int32))
        kernel = solver.dequantize(result.q, result.scale, result.zero,
                                   result.g_idx).T
        storage.write_packed(layer, result, 4, 128)
        layers.append((layer, keras.ops.convert_to_tensor(kernel)))
    return layers


def _median_us(calls, count):
    """`{name: median microseconds}` of `calls` (`{name: fn}`), taken in
    turn `count` times after one warm-up call each."""
    times = {name: [] for name in calls}
    for name, call in calls.items():
        call()
    for _ in range(count):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) * 1e6 for name, t in times.items()}


def main(argv=None):
    """Prints one row of median microseconds per row count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,8,32,65,128,256,520,2048")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    import keras
    import torch
    import keras_gptq  # noqa: F401  (installs the packed-layer seam)
    from keras_gptq.storage import kernels
    from keras_gptq.storage import torch_int4
    if keras.config.backend() != "torch":
        raise SystemExit("torch only")
    layers = _block()
    print("| rows | float us | int4 us | reference us | int4 / reference |")
    print("|---|---|---|---|---|")
    for count in (int(r) for r in args.rows.split(",")):
        inputs = [torch.randn(count, kernel.shape[0]) for _, kernel in layers]

        def run(way):
            def call():
                for (layer, kernel), x in zip(layers, inputs):
                    if way == "float":
                        keras.ops.matmul(x, kernel)
                    elif way == "int4":
                        torch_int4.matmul(kernels.state(layer).int4, x)
                    else:
                        with kernels.reference_only():
                            layer(x)
            return call

        with torch.no_grad():
            us = _median_us({way: run(way) for way in
                             ("float", "int4", "reference")}, args.calls)
        print(f"| {count} | {us['float']:.0f} | {us['int4']:.0f} | "
              f"{us['reference']:.0f} | "
              f"{us['int4'] / us['reference']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
