"""The model walk: from calibration text to solved layers, block by block.

Read in the order the data meets it:
- `calibration`: text, files or token arrays -> reproducible token windows.
- `capture`: the first block's inputs from the real forward pass; each
  layer's inputs while a block runs.
- `layout`: a Dense/EinsumDense kernel as one `W[out, in]` matrix.
- `experts`: the mixture-of-experts families, one declarative table each.
- `solve`: one named matrix: checks, GPTQ (or RTN), the report entry.
- `expert_walk`: a block's expert banks, one Hessian per expert.
- `pipeline`: the block-by-block driver (`quantize`), rollback on failure.
- `low_memory`: the same walk over a preset on disk (`quantize_preset`),
  one block's float weights in memory at a time.
- `baselines`: round-to-nearest on the same grid, for comparison.
- `report`: the per-layer report.

The walker does no math: Hessians and solves come from `keras_gptq.algorithm`,
packed layers from `keras_gptq.storage`.
"""
