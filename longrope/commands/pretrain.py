"""`longrope pretrain`: train a tiny reference Llama from scratch (the tiny-128 preset by default)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UsageError
from ..outputs import output_dir, refuse_current_folder
from ..options import add_options, build, flag_name
from ..train.pretrain import TINY, PretrainConfig, pretrain_tiny, read_training_record


def tiny_flags() -> str:
    """The flags that train the `tiny` preset (`TINY`; the command line sets min_lr to lr / 10)."""
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    return " ".join(f"{flag_name(fields[k])} {v:g}" for k, v in TINY.items() if k != "min_lr")


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train a tiny reference Llama on a corpus, save an HF directory",
        description="Train a BPE tokenizer and a small Llama from scratch on the search+validation splits of a "
                    "corpus (the test split is held out), then save model, tokenizer and training.json. "
                    "The defaults make the tiny-128 preset (native context 128, about eight minutes on two idle "
                    f"CPU cores with bf16/AMX); the tiny preset is {tiny_flags()} "
                    "(also about eight minutes). On a busy machine --threads 1 is usually faster.",
    )
    p.add_argument("--out", default="runs/tiny", metavar="DIR", help="output directory, created atomically (default: runs/tiny)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint (OUT.checkpoints, written every 100 "
                        "steps and on Ctrl-C; removed once the model is written)")
    add_options(p, PretrainConfig)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="training compute: bf16 autocast or fp32; auto = bf16 on AMX/AVX512-BF16 CPUs (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=run)


def checkpoints_of(out: str) -> Path:
    """Where a run writing `out` keeps its checkpoints: OUT.checkpoints beside it."""
    out_path = Path(out).expanduser().resolve()
    return out_path.with_name(out_path.name + ".checkpoints")


def run(args) -> int:
    if not args.out.strip():
        raise UsageError("--out is empty: name the folder to write")
    refuse_current_folder(Path(args.out).expanduser())
    cfg = build(PretrainConfig, args, min_lr=args.lr / 10, bf16={"auto": None, "fp32": False, "bf16": True}[args.dtype])
    # the folder appears whole, when training is done; its checkpoints live beside it (OUT.checkpoints)
    with output_dir(args.out, create=False, command="pretrain", inputs=[args.corpus], replace=args.overwrite):
        out = pretrain_tiny(args.out, steps=args.steps, seed=args.seed, corpus=args.corpus, config=cfg,
                            overwrite=args.overwrite, progress=not args.quiet, checkpoints=checkpoints_of(args.out),
                            resume=args.resume)
    record = read_training_record(out)
    ev = record["eval"]
    print(f"saved {out}: final loss {record['final_loss']:.3f}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if isinstance(v, float))
          + f", {record['train_seconds']:.0f}s")
    return 0
