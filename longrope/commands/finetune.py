"""`longrope finetune`: train a model at the extended length with its rescaled RoPE.

    longrope finetune --model tiny --factors runs/search/factors.json --length 1024 \\
        --steps 200 --out runs/ft-1024
    longrope finetune ... --resume                       # continue exactly where it stopped
    accelerate launch --config_file fsdp.yaml -m longrope finetune ...   # multi-GPU
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UsageError
from ..factors import FACTORS_FILE
from ..hf_config import load_factors
from ..train.finetune import FinetuneConfig, check_covers, finetune, prepare_out

EPILOG = """\
distributed: the loop runs on `accelerate`; pick the engine with an accelerate config file
(`accelerate config` writes one):
  DDP, 8 GPUs:   accelerate launch --multi_gpu --num_processes 8 -m longrope finetune ...
  FSDP:          accelerate launch --config_file fsdp.yaml -m longrope finetune ...
  DeepSpeed:     accelerate launch --config_file ds_zero3.yaml -m longrope finetune ...
  CPU, 2 processes (gloo): torchrun --standalone --nproc-per-node 2 -m longrope finetune ...
The global batch is batch-size x grad-accum x processes sequences of --length tokens.
Checkpoints are accelerate states (sharded under FSDP/DeepSpeed); --resume reloads the last.
"""


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, required=True, help="tokens per training sequence (N)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per micro-batch and process (default 1)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (default 2e-5, as the paper)")
    p.add_argument("--schedule", choices=("constant", "linear", "cosine"), default="linear",
                   help="decay after warm-up (default linear, as the paper)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default 0)")
    p.add_argument("--min-lr-ratio", type=float, default=0.0, help="decay floor as a share of --lr (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1.0)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                   help="autocast; auto = bf16 on GPUs and AMX/AVX512-BF16 CPUs (default auto)")
    p.add_argument("--mixed-context", type=float, default=0.0,
                   help="LongRoPE2 mixed context window: share of micro-batches that are native-length "
                        "sequences trained with the original RoPE (default 0 = off)")
    p.add_argument("--passkey-fraction", type=float, default=0.0,
                   help="share of rows replaced by passkey prompts of random length (default 0)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every this many steps (default 0: end only)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints/ after the run completes")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and passkey rows (default 0)")
    p.add_argument("--corpus", default=None, help="stdlib (default), a folder of .txt, a .txt or a .jsonl file")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the corpus split (default 0)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune at the extended length with rescaled RoPE (LongRoPE section 3.3)",
        description="Train --model with the factors of --factors on corpus documents packed into --length-token "
        "sequences (BOS/EOS between documents). Writes an HF model directory whose config carries the factors.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="preset, HF model directory or .gguf file (default: tiny)")
    p.add_argument("--factors", default=None,
                   help="factors file (search output or HF config with longrope factors); default: the model's own "
                        "(a directory written by finetune/extend), else the original RoPE")
    add_finetune_args(p)
    p.add_argument("--out", required=True, help="output model directory (checkpoints go to OUT/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.set_defaults(func=run)


def config_from_args(args) -> FinetuneConfig:
    cfg = FinetuneConfig(
        length=args.length, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        schedule=args.schedule, warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, gradient_checkpointing=args.gradient_checkpointing,
        mixed_precision=args.mixed_precision, mixed_context=args.mixed_context,
        passkey_fraction=args.passkey_fraction, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        seed=args.seed, corpus=args.corpus, split_seed=args.split_seed)
    cfg.validate()
    return cfg


def run(args) -> int:
    # everything cheap is checked before a model is loaded or a file written
    cfg = config_from_args(args)
    ext = load_factors(args.factors) if args.factors else None
    own = Path(args.model) / FACTORS_FILE
    if ext is None and own.is_file():
        ext = load_factors(str(own))
    check_covers(ext, cfg.length)
    if ext is None:
        print("note: no --factors: fine-tuning with the original RoPE")
    out = Path(args.out)
    prepare_out(out, args.resume)
    result = finetune(args.model, ext, out, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # one report per run, not per process
        return 0
    if result.skipped:
        print(f"{out} is already complete ({len(result.losses)} steps); nothing to do")
    else:
        print(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; wrote {out}")
    return 0
