"""Defaults that modules at every floor share, each written once here: the compute dtype and the
loss chunk. (The settings a user sets are declared in `longrope.settings` and beside their code.)"""

AUTO = "auto"  # the default dtype: bf16 where the hardware runs it fast (CUDA with bf16, AMX or AVX512-BF16), else fp32
DTYPES = (AUTO, "fp32", "bf16", "fp16")
CHUNK_SIZE = 1024  # tokens per LM-head chunk: the loss never materialises [T, vocab] logits
