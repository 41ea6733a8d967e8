"""Training: the tiny reference model from scratch, and fine-tuning at the extended length.

toolkit.py: what both share (schedule, AdamW, loss, passkey rows, checkpoints, model folders).
loop.py: the one training loop both run (steps, schedule, non-finite loss, checkpoints, Ctrl-C).
pretrain.py: the tiny preset's tokenizer and model, trained on the default corpus.
finetune.py: long-context fine-tuning on `accelerate` (packing, exact resume, LongRoPE2
mixed context window).
"""
