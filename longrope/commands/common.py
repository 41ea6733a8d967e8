"""Flags and steps shared by the subcommands: model, corpus, methods, lengths, output."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..data import CORPUS_HELP, documents_of_length, load_corpus, select_split, tokenize_corpus
from ..errors import UsageError
from ..version import versions
from ..evaluate.runner import Variant
from ..models.load import LoadedModel
from ..models.presets import PRESETS
from ..options import ranged
from ..factors import RopeExtension
from ..hf_config import load_factors
from ..methods import build_extension, get_method


def add_model_args(p: argparse.ArgumentParser, compute: bool = True) -> None:
    """--model, and unless compute=False (a command that runs nothing) --dtype and --device."""
    p.add_argument("--model", default="tiny",
                   help=f"preset ({', '.join(PRESETS)}), Hugging Face model directory, or .gguf file (default: tiny)")
    if not compute:
        return
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute dtype; auto = bf16 on GPUs and AMX/AVX512-BF16 CPUs, else fp32 (default: auto)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def add_corpus_args(p: argparse.ArgumentParser, default_split: str = "validation", docs: bool = True) -> None:
    p.add_argument("--corpus", default=None, help=CORPUS_HELP)
    p.add_argument("--split", default=default_split, choices=["search", "validation", "test", "all"],
                   help=f"which seeded split of the corpus to use; a corpus of one or two documents has only "
                        f"the first splits, use all (default: {default_split})")
    p.add_argument("--split-seed", type=ranged(int, min=0), default=0, help="seed of the corpus split (default: 0)")
    if docs:
        p.add_argument("--docs", type=ranged(int, min=1, max=100_000), default=8,
                       help="number of documents per length (default: 8)")


DEFAULT_METHODS = "none,pi,ntk,yarn"
OWN = "model"  # the method name of the factors a model carries
# the longest sequence a length flag takes: 16M tokens, 8x LongRoPE's 2048k (a larger one is a typo,
# and would exhaust memory building its inputs before any message)
MAX_LENGTH = 1 << 24


def add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=None,
                   help=f"comma-separated methods: none (the original RoPE, even for a model that carries "
                        f"factors), {OWN} (the factors the model carries: a fine-tuned or exported longrope model), "
                        f"pi, ntk, dynamic-ntk, yarn, llama3 (default: {DEFAULT_METHODS}, plus {OWN} for a model "
                        f"that carries factors)")
    p.add_argument("--factors", action="append", default=[], metavar="F.json",
                   help="a factors file (longrope search output, or an HF config with longrope factors); "
                        "may be repeated; each is evaluated as one more method")
    p.add_argument("--target-length", type=ranged(int, min=2, max=MAX_LENGTH), default=None,
                   help="context every peer method is configured for, in tokens (default: the largest length)")


def parse_int_list(text: str, flag: str) -> list[int]:
    items = [v.strip() for v in text.split(",")]
    if items and not items[-1] and len(items) > 1:
        items.pop()  # a trailing comma
    try:
        values = [int(v) for v in items]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 2 for v in values):
        raise UsageError(f"{flag} needs one or more values, each >= 2, got {text!r}")
    if max(values) > MAX_LENGTH:
        raise UsageError(f"{flag}: {max(values)} exceeds {MAX_LENGTH}, the longest sequence this tool runs")
    return sorted(set(values))


def method_names(args) -> list[str]:
    """The --methods list, checked (cheap: call before loading a model)."""
    text = DEFAULT_METHODS if args.methods is None else args.methods
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    for name in names:
        if name != OWN:
            get_method(name)
    if not names and not args.factors:
        raise UsageError("nothing to evaluate: give --methods and/or --factors")
    return names


def factor_files(args) -> list[tuple[str, RopeExtension]]:
    """The --factors files, loaded and validated (cheap: call before loading a model)."""
    return [(path, load_factors(path)) for path in args.factors]


def check_inputs(args) -> list[int] | None:
    """Fail on bad --methods, --factors or --lengths before loading anything; the lengths given."""
    method_names(args), factor_files(args)
    lengths = parse_int_list(args.lengths, "--lengths") if args.lengths is not None else None
    if lengths and getattr(args, "stride", None) is not None and args.stride > min(lengths):
        raise UsageError(f"--stride {args.stride} exceeds the shortest length {min(lengths)} (windows would skip tokens)")
    return lengths


def method_variants(args, loaded: LoadedModel, target_length: int) -> list[Variant]:
    """One variant per --methods name (set for `target_length`) and per --factors file, each
    checked against the model before anything is evaluated."""
    spec, native = loaded.spec, loaded.spec.original_max_position_embeddings
    names = method_names(args)
    if args.methods is None:  # the defaults: the model's own factors too; nothing to scale within 1x
        names += [OWN] if loaded.own_extension is not None else []
        if target_length <= native:
            print(f"note: {target_length} tokens is within the native context {native}: the default scaled "
                  f"methods have nothing to extend; evaluating {', '.join(n for n in names if n in ('none', OWN))} "
                  f"(set --target-length above {native} to compare them)")
            names = [n for n in names if n in ("none", OWN)]
    if "none" in names and loaded.own_extension is not None:
        print(f"note: {loaded.name} carries its own factors; 'none' is the original RoPE without them, "
              f"'{OWN}' the model with them")
    variants = [_named_variant(name, loaded, target_length) for name in names]
    for path, ext in factor_files(args):
        try:  # before any cell runs, not when its turn comes
            ext.check_fits(spec)
        except UsageError as e:
            raise UsageError(f"--factors {path}: {e}") from None
        p = Path(path)
        label = ext.metadata.get("label") or (p.parent.name if p.name in ("factors.json", "config.json") else p.stem)
        variants.append(Variant(str(label or ext.method), ext))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise UsageError(f"duplicate method labels {labels}; rename factors files")
    return variants


def _named_variant(name: str, loaded: LoadedModel, target_length: int) -> Variant:
    native = loaded.spec.original_max_position_embeddings
    if name == "none":
        return Variant("none", None)
    if name == OWN:
        if loaded.own_extension is None:
            raise UsageError(f"--methods {OWN}: {loaded.name} carries no factors of its own")
        return Variant(OWN, loaded.own_extension)
    if target_length <= native:
        raise UsageError(f"--target-length {target_length} (default: the largest length) must exceed the model's "
                         f"native context {native} for method {name!r}")
    return Variant(name, build_extension(name, loaded.spec, target_length))


def evaluation_documents(args, tokenizer, min_length: int):
    """Token documents of the chosen split with at least `min_length` tokens, at most --docs."""
    corpus = load_corpus(args.corpus, args.split_seed)
    token_docs = tokenize_corpus(tokenizer, select_split(corpus, args.split, args.split_seed))
    return documents_of_length(token_docs, min_length, args.docs)


def run_info(args, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every result file records about the run."""
    return {
        "command": args.command,
        "args": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
        "versions": versions("torch", "transformers"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }


def print_table(rows: list[dict], row_key: str, col_key: str, value_key: str, fmt: str = "{:.2f}",
                col_name=str) -> str:
    """rows -> a plain text table (rows = methods, columns = lengths, headed `col_name(column)`);
    returned and printed."""
    row_labels = list(dict.fromkeys(r[row_key] for r in rows))
    cols = sorted({r[col_key] for r in rows})
    cell = {(r[row_key], r[col_key]): r[value_key] for r in rows}
    w = max(8, *(len(str(x)) for x in row_labels))
    cw = max(9, *(len(col_name(c)) for c in cols))
    lines = [f"{row_key:<{w}} " + " ".join(f"{col_name(c):>{cw}}" for c in cols)]
    for label in row_labels:
        vals = [cell.get((label, c)) for c in cols]
        lines.append(f"{label:<{w}} " + " ".join(f"{fmt.format(v) if v is not None else '-':>{cw}}" for v in vals))
    text = "\n".join(lines)
    print(text)
    return text
