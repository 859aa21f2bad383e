"""Interchange with the Hugging Face GPTQ format (AutoGPTQ, GPTQModel,
transformers, vLLM).

- `format`: the checkpoint tensors and `quantization_config` (numpy only).
- `families`: which KerasHub model maps to which transformers architecture,
  module by module (a declarative table).
- `export`: `export_hf`, a quantized KerasHub model -> an HF GPTQ folder.
- `load`: `load_hf_gptq`, an HF GPTQ folder -> a KerasHub CausalLM.
"""
