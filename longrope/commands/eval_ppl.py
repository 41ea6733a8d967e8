"""`longrope eval-ppl`: perplexity vs context length for several methods, as data and a plot."""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

from ..errors import UsageError
from ..io import atomic_write_json, atomic_write_text, check_writable_dir
from .common import (
    factor_files,
    method_names,
    add_corpus_args,
    add_method_args,
    add_model_args,
    evaluation_documents,
    method_variants,
    parse_int_list,
    print_table,
    read_previous,
    run_info,
)


def register(sub) -> None:
    p = sub.add_parser(
        "eval-ppl",
        help="perplexity vs context length for peer methods and searched factors",
        description="Truncate each held-out document to each length and score it in one forward pass "
        "(or in sliding windows with --stride). Every peer method is configured for --target-length "
        "(default: the largest length), so shorter lengths show short-context regression. "
        "Writes results.json, results.csv and ppl_vs_length.png to --out; rerunning with the same "
        "arguments reuses finished cells.",
    )
    add_model_args(p)
    add_corpus_args(p)
    add_method_args(p)
    p.add_argument("--lengths", default=None,
                   help="comma-separated context lengths in tokens (default: 1x,2x,4x,8x the native context)")
    p.add_argument("--stride", type=int, default=None,
                   help="sliding-window mode: score whole documents in windows of each length advancing by "
                        "this many tokens (default: off, one truncated pass per document)")
    p.add_argument("--chunk-size", type=int, default=1024, help="LM-head chunk in tokens (default: 1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", default="runs/eval-ppl", help="output directory (default: runs/eval-ppl)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from ..evaluate.ppl import document_nll, perplexity, sliding_window_nll
    from ..model import install_rope, load_model
    from ..plots import plot_ppl_vs_length

    out = check_writable_dir(args.out)
    if args.stride is not None and args.stride < 1:
        raise UsageError("--stride must be >= 1")
    torch.manual_seed(args.seed)
    method_names(args), factor_files(args)  # fail on bad input before loading anything
    given_lengths = parse_int_list(args.lengths, "--lengths") if args.lengths else None
    loaded = load_model(args.model, args.dtype, args.device)
    L = loaded.spec.original_max_position_embeddings
    lengths = given_lengths or [L, 2 * L, 4 * L, 8 * L]
    target = args.target_length or max(lengths)
    variants = method_variants(args, loaded.spec, target)
    longest = max(lengths)
    # sliding mode scores whole documents; any document longer than the window will do
    docs = evaluation_documents(args, loaded.tokenizer, longest if args.stride is None else max(lengths) + 1)
    if len(docs) < args.docs:
        print(f"note: only {len(docs)} document(s) of the split reach {longest} tokens")

    info = run_info(args, {"model": loaded.name, "native_context": L, "rotary": vars(loaded.spec) | {},
                           "target_length": target, "lengths": lengths, "documents": len(docs),
                           "dtype": str(next(loaded.model.parameters()).dtype)})
    key_fields = ("model", "lengths", "target_length", "documents", "dtype")
    previous = read_previous(out / "results.json")
    done = {}
    if previous and all(previous.get("config", {}).get(k) == info[k] for k in key_fields) \
            and previous["config"]["args"].get("stride") == args.stride:
        done = {(r["method"], r["length"]): r for r in previous.get("rows", [])}

    rows: list[dict] = []
    total = len(variants) * len(lengths) * len(docs)
    bar = tqdm(total=total, desc="eval-ppl", unit="doc")
    for variant in variants:
        install_rope(loaded.model, variant.extension)
        for length in lengths:
            if (variant.label, length) in done:
                rows.append(done[(variant.label, length)])
                bar.update(len(docs))
                continue
            t0 = time.perf_counter()
            mean_nlls, tokens = [], 0
            for doc in docs:
                if args.stride is None:
                    nll, n = document_nll(loaded.model, doc[:length], args.chunk_size)
                else:
                    nll, n = sliding_window_nll(loaded.model, doc, length, args.stride, args.chunk_size)
                mean_nlls.append(nll / n)
                tokens += n
                bar.set_postfix(method=variant.label, length=length)
                bar.update(1)
            rows.append({"method": variant.label, "length": length, "ppl": perplexity(mean_nlls),
                         "mean_nll": sum(mean_nlls) / len(mean_nlls), "doc_nlls": mean_nlls, "tokens": tokens,
                         "seconds": time.perf_counter() - t0,
                         "extension": None if variant.extension is None else variant.extension.to_dict()})
            atomic_write_json(out / "results.json", {"config": info, "rows": rows})  # after every cell
    bar.close()

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "length", "ppl", "mean_nll", "tokens", "seconds"])
    for r in rows:
        writer.writerow([r["method"], r["length"], f"{r['ppl']:.6g}", f"{r['mean_nll']:.6g}", r["tokens"],
                         f"{r['seconds']:.2f}"])
    atomic_write_text(out / "results.csv", buf.getvalue())
    plot_ppl_vs_length(rows, out / "ppl_vs_length.png", native=L,
                       title=f"{loaded.name}: perplexity vs context length (methods set for {target} tokens)")
    print(f"perplexity of {len(docs)} {args.split} document(s), methods configured for {target} tokens:")
    print_table(rows, "method", "length", "ppl")
    if any(not math.isfinite(r["ppl"]) for r in rows):
        print("warning: some perplexities are not finite")
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'ppl_vs_length.png'}")
    return 0
