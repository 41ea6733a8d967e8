"""Taking an extension out of longrope: Hugging Face configs, vLLM, llama.cpp GGUF.

- `hf`: `RopeExtension` <-> transformers config dicts (`rope_scaling` / `rope_parameters`),
  `load_factors` (our JSON or an HF config carrying longrope factors), `export_hf`.
- `vllm`: what vLLM reads from an exported config, and the `--max-model-len` to serve it with.
- `gguf`: a copy of a GGUF model with llama.cpp's longrope keys and factor tensors.
- `staging`: write a whole output folder atomically (temp folder + rename).

Importing this package is cheap; transformers and gguf load inside the functions.
"""
