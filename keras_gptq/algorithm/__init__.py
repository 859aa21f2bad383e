"""The algorithm: pure numpy math on one matrix, no Keras layers.

Read in the order the data meets it:
- `hessian`: `H = 2/N sum x x^T` (and GPTAQ's `dXXT`) of one layer's inputs.
- `grid`: scale/zero, quantize/dequantize, round-to-nearest, MSE search.
- `solver`: GPTQ (and GPTAQ) on one `W[out, in]` with its Hessian.
"""
