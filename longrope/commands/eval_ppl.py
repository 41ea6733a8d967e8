"""`longrope eval-ppl`: perplexity vs context length for several methods, as data and a plot.

Truncate each held-out document to each length and score it in one forward pass (or in sliding
windows with --stride). Every peer method is configured for --target-length (default: the largest
length), so shorter lengths show short-context regression. Writes results.json, results.csv and
ppl_vs_length.png to --out (with --by-position also results_by_position.csv and
ppl_by_position.png); a rerun reuses a finished cell only when the model files, documents (corpus,
split, split seed, lengths), dtype, chunking and the method's factors are all the same.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import torch

from ..atomic import atomic_write_text
from ..data import tokens_fingerprint
from ..errors import UsageError
from ..evaluate.frontend import (Store, check_methods, evaluation_documents, lengths_and_target, method_variants,
                                 run_info)
from ..evaluate.runner import ppl_figures, run_cells
from ..models.load import load_model, model_fingerprint
from ..options import build, check_options, option
from ..outputs import output_dir
from ..plots import band_label, plot_ppl_by_position, plot_ppl_vs_length
from ..settings import CorpusOptions, LengthOptions, LossOptions, ModelOptions
from .common import OutputOptions, add_command, print_table

OUTPUTS = ("results.json", "results.csv", "ppl_vs_length.png", "results_by_position.csv", "ppl_by_position.png")
EXAMPLES = """\
examples:
  longrope eval-ppl --by-position --dtype fp32 --out runs/quickstart
  longrope eval-ppl --model smollm2-135m --lengths 8192,16384 --methods yarn \\
      --factors smollm2-135m-16k --docs 2
  longrope eval-ppl --model M --lengths 16384 --methods "" --factors runs/search/factors.json
"""


@dataclass(frozen=True)
class PerplexityOptions:
    """How eval-ppl scores a document."""

    stride: int | None = option(None, "sliding-window mode: score whole documents in windows of each length "
                                "advancing by this many tokens, at most the shortest length",
                                default_help="off, one truncated pass per document", min=1)
    by_position: bool = option(False, "also report the perplexity of the tokens in each band of positions [0, L), "
                               "[L, 2L), [2L, 4L), ... of the native length L, from the same pass (not with --stride)")
    seed: int = option(0, "random seed", min=0)

    def __post_init__(self):
        check_options(self)
        if self.by_position and self.stride is not None:
            raise UsageError("--by-position scores each document in one pass; it does not combine with --stride")


def register(sub) -> None:
    add_command(sub, "eval-ppl", run,
                [*OPTIONS, (OutputOptions, dict(skip=("resume", "force"), out="runs/eval-ppl"))],
                help="perplexity vs context length for peer methods and searched factors",
                description=__doc__, epilog=EXAMPLES)


OPTIONS = (ModelOptions, CorpusOptions, LengthOptions, PerplexityOptions, LossOptions)


def run(args) -> int:
    opts = [build(cls, args) for cls in OPTIONS]  # bad input fails here, before anything loads
    check_methods(args.methods, args.factors)
    if args.lengths and args.stride is not None and args.stride > min(args.lengths):
        raise UsageError(f"--stride {args.stride} exceeds the shortest length {min(args.lengths)} (windows would "
                         f"skip tokens)")
    with output_dir(args.out, command="eval-ppl", outputs=OUTPUTS, keep=["results.json"], marker="results.json",
                    inputs=[args.model, *args.factors, args.corpus]) as out:
        return evaluate(args, out, *opts)


def evaluate(args, out, model_opts: ModelOptions, corpus: CorpusOptions, lengths_opts: LengthOptions,
             ppl_opts: PerplexityOptions, loss: LossOptions) -> int:
    torch.manual_seed(ppl_opts.seed)
    loaded = load_model(model_opts.model, model_opts.dtype, model_opts.device)
    L = loaded.spec.original_max_position_embeddings
    lengths, target = lengths_and_target(lengths_opts.lengths, lengths_opts.target_length, L)
    if ppl_opts.stride is not None and ppl_opts.stride > min(lengths):
        raise UsageError(f"--stride {ppl_opts.stride} exceeds the shortest length {min(lengths)}")
    variants = method_variants(lengths_opts.methods, lengths_opts.factors, loaded, target)
    longest = max(lengths)
    # sliding mode scores whole documents; any document longer than the window will do
    docs = evaluation_documents(loaded.tokenizer, corpus.corpus, corpus.split, corpus.split_seed, corpus.docs,
                                longest if ppl_opts.stride is None else longest + 1)
    if len(docs) < corpus.docs:
        print(f"note: only {len(docs)} document(s) of the split reach {longest} tokens")

    dtype = str(next(loaded.model.parameters()).dtype)
    # everything a cell's number depends on besides its method and length: reuse only identical work
    key = {"model": loaded.name, "model_files": model_fingerprint(model_opts.model),
           "corpus": corpus.corpus or "stdlib", "split": corpus.split, "split_seed": corpus.split_seed,
           "documents": tokens_fingerprint(docs), "dtype": dtype, "chunk_size": loss.chunk_size,
           "stride": ppl_opts.stride, "by_position": ppl_opts.by_position}
    info = run_info(args, {"model": loaded.name, "native_context": L, "rotary": vars(loaded.spec) | {},
                           "target_length": target, "lengths": lengths, "documents": len(docs), "dtype": dtype,
                           "key": key})
    store = Store(out / "results.json", key, layout=lambda cells: {"config": info, "rows": list(cells.values())},
                  cells_of=lambda content: content.get("rows", []),
                  key_of=lambda content: content.get("config", {}).get("key"), model=model_opts.model)
    done = store.reusable(variants, cell_key=lambda r: (r["method"], "ppl", r["length"]))

    def cell(lm, variant, length, progress):
        figures = ppl_figures(lm.model, docs, length, loss.chunk_size, ppl_opts.stride,
                              L if ppl_opts.by_position else None, progress)
        return {"method": variant.label, "length": length, **figures,
                "extension": None if variant.extension is None else variant.extension.to_dict()}

    cells = run_cells(variants, lengths, {"ppl": cell}, loaded, done, store.save, desc="eval-ppl")
    store.save(cells)  # every cell, reused ones after the last computed one included
    rows = list(cells.values())
    title = (f"{loaded.name}: perplexity vs context length\n{len(docs)} {corpus.split} document(s), "
             f"methods set for {target} tokens")
    save_outputs(rows, out, L, title)
    print(f"perplexity of {len(docs)} {corpus.split} document(s), methods configured for {target} tokens:")
    print_table(rows, "method", "length", "ppl")
    written = [out / "results.json", out / "results.csv", out / "ppl_vs_length.png"]
    if ppl_opts.by_position:
        longest_rows = [r for r in rows if r["length"] == longest]
        save_band_outputs(rows, longest_rows, out, f"{loaded.name}: perplexity by position at {longest} tokens "
                          f"(native {L}, methods set for {target})", native=L)
        print(f"perplexity of the tokens at each position band, at {longest} tokens:")
        band_rows = [{"method": r["method"], "band": (b["start"], b["end"]), "ppl": b["ppl"]}
                     for r in longest_rows for b in r["bands"]]
        print_table(band_rows, "method", "band", "ppl", col_name=lambda band: band_label(*band))
        written += [out / "results_by_position.csv", out / "ppl_by_position.png"]
    if any(not math.isfinite(r["ppl"]) for r in rows):
        print("warning: some perplexities are not finite")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def save_outputs(rows: list[dict], out, native: int, title: str) -> None:
    """results.csv and ppl_vs_length.png of the finished rows."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "length", "ppl", "mean_nll", "tokens", "seconds"])
    for r in rows:
        writer.writerow([r["method"], r["length"], f"{r['ppl']:.6g}", f"{r['mean_nll']:.6g}", r["tokens"],
                         f"{r['seconds']:.2f}"])
    atomic_write_text(out / "results.csv", buf.getvalue())
    plot_ppl_vs_length(rows, out / "ppl_vs_length.png", native=native, title=title)


def save_band_outputs(rows: list[dict], longest_rows: list[dict], out, title: str, native: int | None = None) -> None:
    """results_by_position.csv (every length) and ppl_by_position.png (the longest length)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "length", "band_start", "band_end", "ppl", "mean_nll", "tokens"])
    for r in rows:
        for b in r["bands"]:
            writer.writerow([r["method"], r["length"], b["start"], b["end"], f"{b['ppl']:.6g}", f"{b['mean_nll']:.6g}",
                             b["tokens"]])
    atomic_write_text(out / "results_by_position.csv", buf.getvalue())
    plot_ppl_by_position(longest_rows, out / "ppl_by_position.png", title=title, native=native)
