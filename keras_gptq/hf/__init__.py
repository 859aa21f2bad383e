"""Interchange with the Hugging Face GPTQ format (AutoGPTQ, GPTQModel,
transformers, vLLM).

- `format`: the checkpoint tensors and `quantization_config` (numpy only).
- `families`: which KerasHub model maps to which transformers architecture,
  module by module and tensor by tensor (one declarative table per family).
- `parts`: the Keras side of one module: rows of a layer or of one expert
  of an expert bank, read and written as `W[out, in]`.
- `configs`: the float `config.json` of a family, both ways.
- `export`: `export_hf`, a quantized KerasHub model -> an HF GPTQ folder.
- `load`: `load_hf_gptq`, an HF GPTQ folder -> a KerasHub CausalLM.
"""
