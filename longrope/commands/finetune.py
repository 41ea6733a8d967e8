"""`longrope finetune`: train a model at the extended length with its rescaled RoPE.

Train --model with the factors of --factors on corpus documents packed into --length-token sequences
(BOS/EOS between documents). Writes an HF model directory whose config carries the factors; without
--factors the model's own (a directory written by finetune or extend), else the original RoPE.
Checkpoints go to OUT/checkpoints.

    longrope finetune --model tiny --factors runs/search/factors.json --length 1024 \\
        --steps 200 --out runs/ft-1024
    longrope finetune ... --resume                       # continue exactly where it stopped
    accelerate launch --config_file fsdp.yaml -m longrope finetune ...   # multi-GPU
"""
from __future__ import annotations

import os
from pathlib import Path

from ..factors import FACTORS_FILE
from ..hf_config import load_factors
from ..outputs import EVERYTHING, output_dir
from ..options import build
from ..settings import FactorsOption, ModelOptions
from .common import OutputOptions, add_command
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


def register(sub) -> None:
    add_command(sub, "finetune", run,
                [(ModelOptions, dict(skip=("dtype", "device"))),  # the precision is --mixed-precision
                 FactorsOption, FinetuneConfig, (OutputOptions, dict(skip=("force",)))],
                help="fine-tune at the extended length with rescaled RoPE (LongRoPE section 3.3)",
                description=__doc__, epilog=EPILOG)


def run(args) -> int:
    # everything cheap is checked before a model is loaded or a file written
    cfg = build(FinetuneConfig, args)
    cfg.validate()
    ext = load_factors(args.factors) if args.factors else None
    own = Path(args.model) / FACTORS_FILE
    if ext is None and own.is_file():
        ext = load_factors(str(own))
    check_covers(ext, cfg.length)
    if ext is None:
        print("note: no --factors: fine-tuning with the original RoPE")
    out = Path(args.out).expanduser()
    # rank 0 owns it: lock, writability, a killed run's temporaries; --resume continues all it wrote
    with output_dir(out, command="finetune", keep=EVERYTHING if args.resume else (),
                    inputs=[args.model, args.factors, cfg.corpus]):
        prepare_out(out, args.resume)
        result = finetune(args.model, ext, out, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # one report per run, not per process
        return 0
    if result.skipped:
        print(f"{out} is already complete ({len(result.losses)} steps); nothing to do")
    else:
        print(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; wrote {out}")
    return 0
