"""Taking an extension out of longrope: transformers / vLLM directories and llama.cpp GGUF.

- `hf`: `export_hf`, a transformers model directory whose config carries the factors
  (the config dicts themselves are `longrope.hf_config`'s), checked by `check_rotary`.
- `vllm`: what vLLM reads from an exported config, and the `--max-model-len` to serve it with.
- `gguf`: a copy of a GGUF model with llama.cpp's longrope keys and factor tensors.

Output folders are written atomically (`longrope.atomic.staged_dir`). Importing this package is
cheap; transformers and gguf load inside the functions.
"""
