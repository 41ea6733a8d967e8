"""`longrope eval-ppl`: perplexity vs context length for several methods, as data and a plot."""
from __future__ import annotations

import csv
import io
import math

import torch

from ..errors import UsageError
from ..evaluate.runner import ppl_figures, run_cells
from ..data import tokens_fingerprint
from ..atomic import atomic_write_json, atomic_write_text
from ..outputs import output_dir
from ..readback import read_json_or_none
from ..models.load import load_model, model_fingerprint
from ..options import ranged
from ..plots import band_label, plot_ppl_by_position, plot_ppl_vs_length
from .common import (
    add_corpus_args, add_method_args, add_model_args, check_inputs, evaluation_documents, method_variants, print_table,
    run_info,
)

OUTPUTS = ("results.json", "results.csv", "ppl_vs_length.png", "results_by_position.csv", "ppl_by_position.png")


def register(sub) -> None:
    p = sub.add_parser(
        "eval-ppl",
        help="perplexity vs context length for peer methods and searched factors",
        description="Truncate each held-out document to each length and score it in one forward pass "
        "(or in sliding windows with --stride). Every peer method is configured for --target-length "
        "(default: the largest length), so shorter lengths show short-context regression. "
        "Writes results.json, results.csv and ppl_vs_length.png to --out (with --by-position also "
        "results_by_position.csv and ppl_by_position.png); a rerun reuses a finished cell only when the "
        "model files, documents (corpus, split, split seed, lengths), dtype, chunking and the method's "
        "factors are all the same.",
    )
    add_model_args(p)
    add_corpus_args(p)
    add_method_args(p)
    p.add_argument("--lengths", default=None,
                   help="comma-separated context lengths in tokens (default: 1x,2x,4x,8x the native context)")
    p.add_argument("--stride", type=ranged(int, min=1), default=None,
                   help="sliding-window mode: score whole documents in windows of each length advancing by "
                        "this many tokens, at most the shortest length (default: off, one truncated pass per document)")
    p.add_argument("--by-position", action="store_true",
                   help="also report the perplexity of the tokens in each band of positions [0, L), [L, 2L), "
                        "[2L, 4L), ... of the native length L, from the same pass (not with --stride)")
    p.add_argument("--chunk-size", type=ranged(int, min=1), default=1024, help="LM-head chunk in tokens (default: 1024)")
    p.add_argument("--seed", type=ranged(int, min=0), default=0, help="random seed (default: 0)")
    p.add_argument("--out", default="runs/eval-ppl", help="output directory (default: runs/eval-ppl)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.by_position and args.stride is not None:
        raise UsageError("--by-position scores each document in one pass; it does not combine with --stride")
    given_lengths = check_inputs(args)  # fail on bad input before loading anything
    with output_dir(args.out, command="eval-ppl", outputs=OUTPUTS, keep=["results.json"], marker="results.json",
                    inputs=[args.model, *args.factors, args.corpus]) as out:
        return evaluate(args, out, given_lengths)


def evaluate(args, out, given_lengths: list[int] | None) -> int:
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, args.dtype, args.device)
    L = loaded.spec.original_max_position_embeddings
    lengths = given_lengths or [L, 2 * L, 4 * L, 8 * L]
    if args.stride is not None and args.stride > min(lengths):
        raise UsageError(f"--stride {args.stride} exceeds the shortest length {min(lengths)}")
    target = args.target_length or max(lengths)
    variants = method_variants(args, loaded, target)
    longest = max(lengths)
    # sliding mode scores whole documents; any document longer than the window will do
    docs = evaluation_documents(args, loaded.tokenizer, longest if args.stride is None else longest + 1)
    if len(docs) < args.docs:
        print(f"note: only {len(docs)} document(s) of the split reach {longest} tokens")

    dtype = str(next(loaded.model.parameters()).dtype)
    # everything a cell's number depends on besides its method and length: reuse only identical work
    key = {"model": loaded.name, "model_files": model_fingerprint(args.model), "corpus": args.corpus or "stdlib",
           "split": args.split, "split_seed": args.split_seed, "documents": tokens_fingerprint(docs),
           "dtype": dtype, "chunk_size": args.chunk_size, "stride": args.stride, "by_position": args.by_position}
    info = run_info(args, {"model": loaded.name, "native_context": L, "rotary": vars(loaded.spec) | {},
                           "target_length": target, "lengths": lengths, "documents": len(docs), "dtype": dtype,
                           "key": key})
    previous = read_json_or_none(out / "results.json")
    done = {}
    if isinstance(previous, dict) and previous.get("config", {}).get("key") == key:
        ext_of = {v.label: None if v.extension is None else v.extension.to_dict() for v in variants}
        done = {(r["method"], "ppl", r["length"]): r for r in previous.get("rows", [])
                if r.get("method") in ext_of and r.get("extension") == ext_of[r["method"]]}

    def cell(lm, variant, length, progress):
        figures = ppl_figures(lm.model, docs, length, args.chunk_size, args.stride, L if args.by_position else None,
                              progress)
        return {"method": variant.label, "length": length, **figures,
                "extension": None if variant.extension is None else variant.extension.to_dict()}

    def save(cells):  # after every cell
        atomic_write_json(out / "results.json", {"config": info, "rows": list(cells.values())})

    cells = run_cells(variants, lengths, {"ppl": cell}, loaded, done, save, desc="eval-ppl")
    save(cells)  # every cell, reused ones after the last computed one included
    rows = list(cells.values())
    title = (f"{loaded.name}: perplexity vs context length\n{len(docs)} {args.split} document(s), "
             f"methods set for {target} tokens")
    save_outputs(rows, out, L, title)
    print(f"perplexity of {len(docs)} {args.split} document(s), methods configured for {target} tokens:")
    print_table(rows, "method", "length", "ppl")
    written = [out / "results.json", out / "results.csv", out / "ppl_vs_length.png"]
    if args.by_position:
        longest_rows = [r for r in rows if r["length"] == longest]
        save_band_outputs(rows, longest_rows, out, f"{loaded.name}: perplexity by position at {longest} tokens "
                          f"(native {L}, methods set for {target})")
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


def save_band_outputs(rows: list[dict], longest_rows: list[dict], out, title: str) -> None:
    """results_by_position.csv (every length) and ppl_by_position.png (the longest length)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "length", "band_start", "band_end", "ppl", "mean_nll", "tokens"])
    for r in rows:
        for b in r["bands"]:
            writer.writerow([r["method"], r["length"], b["start"], b["end"], f"{b['ppl']:.6g}", f"{b['mean_nll']:.6g}",
                             b["tokens"]])
    atomic_write_text(out / "results_by_position.csv", buf.getvalue())
    plot_ppl_by_position(longest_rows, out / "ppl_by_position.png", title=title)
