"""`longrope pretrain`: train a tiny reference Llama from scratch (the tiny-128 preset by default)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..outputs import output_dir, refuse_current_folder
from ..options import build, flag_name, option
from ..settings import ModelOptions
from .common import OutputOptions, add_command
from ..train.pretrain import TINY, PretrainConfig, pretrain_tiny, read_training_record


def tiny_flags() -> str:
    """The flags that train the `tiny` preset (`TINY`; the command line sets min_lr to lr / 10)."""
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    return " ".join(f"{flag_name(fields[k])} {v:g}" for k, v in TINY.items() if k != "min_lr")


DESCRIPTION = ("Train a BPE tokenizer and a small Llama from scratch on the search+validation splits of a "
                    "corpus (the test split is held out), then save model, tokenizer and training.json. "
                    "The defaults make the tiny-128 preset (native context 128, about eight minutes on two idle "
                    f"CPU cores with bf16/AMX); the tiny preset is {tiny_flags()} "
                    "(also about eight minutes). On a busy machine --threads 1 is usually faster.")


def register(sub) -> None:
    add_command(sub, "pretrain", run,
                [(OutputOptions, dict(out="runs/tiny")),  # --resume: from OUT.checkpoints
                 PretrainConfig, (ModelOptions, dict(skip=("model", "device"))), QuietOption],  # --dtype: training's
                help="train a tiny reference Llama on a corpus, save an HF directory", description=DESCRIPTION)


@dataclass(frozen=True)
class QuietOption:
    quiet: bool = option(False, "no progress bar or log lines")


def checkpoints_of(out: str) -> Path:
    """Where a run writing `out` keeps its checkpoints: OUT.checkpoints beside it."""
    out_path = Path(out).expanduser().resolve()
    return out_path.with_name(out_path.name + ".checkpoints")


def run(args) -> int:
    if not args.out.strip():
        raise UsageError("--out is empty: name the folder to write")
    if args.dtype == "fp16":
        raise UsageError("--dtype fp16: pretraining computes in fp32 or with bf16 autocast (auto, fp32, bf16)")
    refuse_current_folder(Path(args.out).expanduser())
    cfg = build(PretrainConfig, args, min_lr=args.lr / 10, bf16={"auto": None, "fp32": False, "bf16": True}[args.dtype])
    # the folder appears whole, when training is done; its checkpoints live beside it (OUT.checkpoints)
    with output_dir(args.out, create=False, command="pretrain", inputs=[args.corpus], replace=args.force):
        out = pretrain_tiny(args.out, steps=args.steps, seed=args.seed, corpus=args.corpus, config=cfg,
                            overwrite=args.force, progress=not args.quiet, checkpoints=checkpoints_of(args.out),
                            resume=args.resume)
    record = read_training_record(out)
    ev = record["eval"]
    print(f"saved {out}: final loss {record['final_loss']:.3f}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if isinstance(v, float))
          + f", {record['train_seconds']:.0f}s")
    return 0
