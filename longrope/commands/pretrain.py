"""`longrope pretrain`: train the tiny reference Llama (native context 128) from scratch."""
from __future__ import annotations

from dataclasses import replace

from ..errors import UsageError
from ..train.pretrain import PretrainConfig, pretrain_tiny, read_training_record


def register(sub) -> None:
    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain",
        help="train the tiny reference Llama (native context 128 tokens) on a corpus, save an HF directory",
        description="Train a BPE tokenizer and a small Llama from scratch on the search+validation splits of a "
                    "corpus (the test split is held out), then save model, tokenizer and training.json. "
                    "The default settings take about ten minutes on two idle CPU cores with bf16 (AMX); "
                    "on a busy machine --threads 1 is usually faster.",
    )
    p.add_argument("--out", default="runs/tiny", metavar="DIR", help="output directory, created atomically (default: runs/tiny)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default: {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"rows of {d.block_size} tokens per step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of initialisation and batches (default: {d.seed})")
    p.add_argument("--corpus", default=None, metavar="PATH",
                   help="directory of .txt files, a .txt file, or a .jsonl with a 'text' field "
                        "(default: the Python standard library sources and pydoc topics)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help=f"BPE vocabulary size (default: {d.vocab_size})")
    p.add_argument("--layers", type=int, default=d.n_layer, help=f"transformer layers (default: {d.n_layer})")
    p.add_argument("--passkey-fraction", type=float, default=d.passkey_fraction,
                   help=f"share of training rows that are in-window passkey prompts, 0..1 (default: {d.passkey_fraction})")
    p.add_argument("--passkey-trials", type=int, default=d.passkey_trials,
                   help=f"in-window passkey trials measured after training, 0 = skip (default: {d.passkey_trials})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often faster on a busy machine)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="training compute: bf16 autocast or fp32; auto = bf16 on AMX/AVX512-BF16 CPUs (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.passkey_fraction <= 1.0:
        raise UsageError(f"--passkey-fraction must be between 0 and 1, got {args.passkey_fraction}")
    if args.vocab_size < 300:
        raise UsageError(f"--vocab-size must be at least 300 (256 bytes + merges), got {args.vocab_size}")
    if args.layers < 1 or args.lr <= 0:
        raise UsageError("--layers must be >= 1 and --lr > 0")
    cfg = replace(
        PretrainConfig(),
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.lr / 10,
        vocab_size=args.vocab_size,
        n_layer=args.layers,
        passkey_fraction=args.passkey_fraction,
        passkey_trials=max(args.passkey_trials, 0),
        threads=args.threads,
        bf16={"auto": None, "fp32": False, "bf16": True}[args.dtype],
    )
    out = pretrain_tiny(args.out, steps=args.steps, seed=args.seed, corpus=args.corpus, config=cfg,
                        overwrite=args.overwrite, progress=not args.quiet)
    record = read_training_record(out)
    ev = record["eval"]
    print(f"saved {out}: final loss {record['final_loss']:.3f}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if isinstance(v, float))
          + f", {record['train_seconds']:.0f}s")
    return 0
