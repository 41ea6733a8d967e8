"""`longrope eval-ppl`: perplexity vs context length for several methods, as data and a plot."""
from __future__ import annotations

import csv
import io
import math

import torch

from ..errors import UsageError
from ..evaluate.runner import ppl_figures, run_cells
from ..io import atomic_write_json, atomic_write_text, check_writable_dir, read_json_or_none
from ..models.load import load_model
from ..plots import band_label, plot_ppl_by_position, plot_ppl_vs_length
from .common import (
    add_corpus_args, add_method_args, add_model_args, check_inputs, evaluation_documents, method_variants, print_table,
    run_info,
)


def register(sub) -> None:
    p = sub.add_parser(
        "eval-ppl",
        help="perplexity vs context length for peer methods and searched factors",
        description="Truncate each held-out document to each length and score it in one forward pass "
        "(or in sliding windows with --stride). Every peer method is configured for --target-length "
        "(default: the largest length), so shorter lengths show short-context regression. "
        "Writes results.json, results.csv and ppl_vs_length.png to --out (with --by-position also "
        "results_by_position.csv and ppl_by_position.png); rerunning with the same arguments reuses "
        "finished cells.",
    )
    add_model_args(p)
    add_corpus_args(p)
    add_method_args(p)
    p.add_argument("--lengths", default=None,
                   help="comma-separated context lengths in tokens (default: 1x,2x,4x,8x the native context)")
    p.add_argument("--stride", type=int, default=None,
                   help="sliding-window mode: score whole documents in windows of each length advancing by "
                        "this many tokens (default: off, one truncated pass per document)")
    p.add_argument("--by-position", action="store_true",
                   help="also report the perplexity of the tokens in each band of positions [0, L), [L, 2L), "
                        "[2L, 4L), ... of the native length L, from the same pass (not with --stride)")
    p.add_argument("--chunk-size", type=int, default=1024, help="LM-head chunk in tokens (default: 1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", default="runs/eval-ppl", help="output directory (default: runs/eval-ppl)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = check_writable_dir(args.out)
    if args.stride is not None and args.stride < 1:
        raise UsageError("--stride must be >= 1")
    if args.by_position and args.stride is not None:
        raise UsageError("--by-position scores each document in one pass; it does not combine with --stride")
    torch.manual_seed(args.seed)
    given_lengths = check_inputs(args)  # fail on bad input before loading anything
    loaded = load_model(args.model, args.dtype, args.device)
    L = loaded.spec.original_max_position_embeddings
    lengths = given_lengths or [L, 2 * L, 4 * L, 8 * L]
    target = args.target_length or max(lengths)
    variants = method_variants(args, loaded.spec, target)
    longest = max(lengths)
    # sliding mode scores whole documents; any document longer than the window will do
    docs = evaluation_documents(args, loaded.tokenizer, longest if args.stride is None else longest + 1)
    if len(docs) < args.docs:
        print(f"note: only {len(docs)} document(s) of the split reach {longest} tokens")

    info = run_info(args, {"model": loaded.name, "native_context": L, "rotary": vars(loaded.spec) | {},
                           "target_length": target, "lengths": lengths, "documents": len(docs),
                           "dtype": str(next(loaded.model.parameters()).dtype)})
    key_fields = ("model", "lengths", "target_length", "documents", "dtype")
    previous = read_json_or_none(out / "results.json")
    done = {}
    if previous and all(previous.get("config", {}).get(k) == info[k] for k in key_fields) \
            and all(previous["config"]["args"].get(k) == getattr(args, k) for k in ("stride", "by_position")):
        done = {(r["method"], "ppl", r["length"]): r for r in previous.get("rows", [])}

    def cell(lm, variant, length):
        figures = ppl_figures(lm.model, docs, length, args.chunk_size, args.stride, L if args.by_position else None)
        return {"method": variant.label, "length": length, **figures,
                "extension": None if variant.extension is None else variant.extension.to_dict()}

    def save(cells):  # after every cell
        atomic_write_json(out / "results.json", {"config": info, "rows": list(cells.values())})

    rows = list(run_cells(variants, lengths, {"ppl": cell}, loaded, done, save, desc="eval-ppl").values())
    save_outputs(rows, out, L, f"{loaded.name}: perplexity vs context length (methods set for {target} tokens)")
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
