"""The Python steps of bench/gpu_check.sh (run that script, not this file).

    python bench/gpu_check.py eval --model smollm2-135m --lengths 8192,32768,65536 --out eval.json
    python bench/gpu_check.py search --model smollm2-135m --target-length 16384 --out OUT/search
    python bench/gpu_check.py summary --dir OUT           # every step's figures -> OUT/gpu_check.json

`eval`: for each length, one document of the validation split (or, where none is that long,
the split's documents concatenated and cut to the length: noted as `concatenated`) is scored
by our `document_nll` (chunked LM head, SDPA, inference_mode) and by plain
`model(input_ids=x, labels=x)` (grad mode on, full [T, vocab] logits), the same model and
dtype, alternating, `--reps` times each; tokens/s and the forward's peak device memory above
what was allocated before it (`torch.cuda.max_memory_allocated`; on CPU: not measured).
A path that runs out of memory is recorded as such. Each length is written as soon as it is done.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope.atomic import atomic_write_json  # noqa: E402

from longrope.readback import read_json_or_none  # noqa: E402


def document(loaded, length: int) -> tuple[torch.Tensor, bool]:
    """[length] tokens: a validation document that long, else the split concatenated (True)."""
    from longrope.data import documents_of_length, load_corpus, split_corpus, tokenize_corpus

    docs = tokenize_corpus(loaded.tokenizer, split_corpus(load_corpus(None), seed=0)["validation"])
    from longrope.errors import UsageError

    try:
        return documents_of_length(docs, length, 1)[0], False
    except UsageError:  # no document is that long
        pass
    stream = torch.cat([d.ids for d in docs])
    return stream[:length], True


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float, float | None]:
    """(mean NLL, seconds, peak MB above the memory allocated before) of fn()."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    nll = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return nll, seconds, peak


def eval_step(args) -> None:
    from longrope.evaluate.ppl import document_nll
    from longrope.models.load import load_model

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    model = loaded.model
    out = Path(args.out)
    result = read_json_or_none(out) or {"model": args.model, "device": args.device,
                                        "dtype": str(next(model.parameters()).dtype), "lengths": {}}

    def ours(x):
        nll, n = document_nll(model, x)
        return nll / n

    def plain(x):
        return float(model(input_ids=x[None], labels=x[None]).loss)  # as most scripts call it

    for length in (int(n) for n in args.lengths.split(",")):
        ids, concatenated = document(loaded, length)
        x = ids.to(args.device)
        ours(x[: max(length // 8, 2)])  # warm-up
        row = {"tokens": int(x.numel()), "concatenated": concatenated}
        for name, fn in (("ours", ours), ("plain", plain)):
            try:
                runs = [timed(lambda: fn(x), args.device) for _ in range(args.reps)]
            except torch.OutOfMemoryError:
                row[name] = {"error": "out of memory"}
                continue
            finally:
                model.zero_grad(set_to_none=True)
            seconds = min(s for _, s, _ in runs)
            row[name] = {"tokens_per_s": x.numel() / seconds, "seconds": seconds, "peak_mb": runs[0][2],
                         "ppl": math.exp(runs[0][0])}
        if "tokens_per_s" in row["ours"] and "tokens_per_s" in row["plain"]:
            row["throughput_ratio"] = row["ours"]["tokens_per_s"] / row["plain"]["tokens_per_s"]
            if row["ours"]["peak_mb"] is not None:
                row["memory_ratio"] = row["ours"]["peak_mb"] / row["plain"]["peak_mb"]
            row["ppl_rel_diff"] = abs(row["ours"]["ppl"] / row["plain"]["ppl"] - 1)
        result["lengths"][str(length)] = row
        atomic_write_json(out, result)
        print(f"eval {length}: {json.dumps(row)}", flush=True)


def search_step(args) -> None:
    """The same short search (no early rejection) with one candidate per forward pass, then with
    B sized from free GPU memory (--candidates-per-forward 0); the model is loaded once and only
    the search itself is timed. Runs land in OUT/b1 and OUT/auto (factors.json, state.json)."""

    from longrope.search.plan import SpaceOptions, long_plan
    from longrope.models.load import load_model
    from longrope.search.driver import SearchJob, SearchOptions, drive
    from longrope.search.loop import peer_seeds
    from longrope.search.state import SearchConfig
    from longrope.search.fitness import long_factor_candidate, search_documents

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    N, L = args.target_length, lm.spec.original_max_position_embeddings
    docs = search_documents(lm.tokenizer, None, N, args.docs)
    config = SearchConfig(population=8, parents=4, mutations=4, crossovers=4, iterations=1, early_reject=False)
    space = long_plan(lm.spec, SpaceOptions(target_length=N, variant="longrope"), 0.01, None,
                      args.model).space
    from longrope.evaluate.ppl import document_nll

    document_nll(lm.model, docs[0])  # warm-up, so neither timed search pays first-call costs
    out, result = Path(args.out), {"model": args.model, "target_length": N, "docs": len(docs), "runs": {}}
    for name, per_forward in (("b1", 1), ("auto", 0)):
        options = SearchOptions(docs=len(docs), candidates_per_forward=per_forward)
        job = SearchJob(lm.model, docs, long_factor_candidate(lm.spec, N), space, config,
                        peer_seeds(lm.spec, N / L), out / name, {"model": args.model, "target_length": N}, options,
                        progress=False)
        (out / name).mkdir(parents=True, exist_ok=True)
        sync(args.device)
        t0 = time.perf_counter()
        state, _ = drive(job)
        sync(args.device)
        seconds = time.perf_counter() - t0
        result["runs"][name] = {"seconds": seconds, "candidates": len(state.history),
                                "documents_scored": sum(len(r.evaluation.doc_losses) for r in state.history),
                                "candidates_per_forward": state.config["candidates_per_forward"],
                                "best_ppl": state.best.evaluation.perplexity}
        atomic_write_json(out / "search.json", result)
        print(f"search {name}: {json.dumps(result['runs'][name])}", flush=True)
    result["speedup_auto_vs_b1"] = result["runs"]["b1"]["seconds"] / result["runs"]["auto"]["seconds"]
    atomic_write_json(out / "search.json", result)


def summary_step(args) -> None:
    """Collect the steps' files into gpu_check.json and print the ratios."""
    d = Path(args.dir)
    report = {"eval": read_json_or_none(d / "eval.json"), "steps": {}}
    for line in (d / "steps.tsv").read_text().splitlines() if (d / "steps.tsv").is_file() else []:
        name, rc, seconds = line.split("\t")
        report["steps"][name] = {"rc": int(rc), "seconds": float(seconds), "timed_out": int(rc) in (124, 137)}
    search = read_json_or_none(d / "search" / "search.json") or {}
    report["search"] = search
    ft = read_json_or_none(d / "finetune" / "finetune.json")
    if ft:
        seconds = report["steps"].get("finetune", {}).get("seconds")
        report["finetune"] = {"steps": ft["steps"], "losses": ft["losses"], "tokens_per_step": ft["tokens_per_step"],
                              "seconds_this_call": ft["seconds_this_call"], "command_seconds": seconds,
                              "tokens_per_s_incl_load": ft["steps"] * ft["tokens_per_step"] / ft["seconds_this_call"]}
    atomic_write_json(d / "gpu_check.json", report)

    print("\n== gpu check ==")
    for name, s in report["steps"].items():
        print(f"  step {name:12s} rc {s['rc']:3d}  {s['seconds']:6.1f} s" + ("  TIMED OUT" if s["timed_out"] else ""))
    for length, row in ((report["eval"] or {}).get("lengths") or {}).items():
        o, p = row.get("ours", {}), row.get("plain", {})
        fmt = lambda r: r.get("error") or (f"{r['tokens_per_s']:.0f} tok/s, "
                                            + ("" if r["peak_mb"] is None else f"{r['peak_mb']:.0f} MB, ")
                                            + f"ppl {r['ppl']:.3f}")
        print(f"  eval {length:>6s}{' (concatenated)' if row['concatenated'] else ''}: ours {fmt(o)} | plain {fmt(p)}"
              + (f" | throughput {row['throughput_ratio']:.2f}x" if "throughput_ratio" in row else "")
              + (f", memory {row['memory_ratio']:.3f}x" if "memory_ratio" in row else ""))
    for name, s in search.get("runs", {}).items():
        print(f"  search {name:4s} B={s['candidates_per_forward']}: {s['seconds']:.1f} s, "
              f"{s['candidates']} candidates, "
              f"{s['documents_scored']} documents, best ppl {s['best_ppl']:.4f}")
    if "speedup_auto_vs_b1" in search:
        print(f"  search speed-up, automatic B vs B=1: {search['speedup_auto_vs_b1']:.2f}x")
    if "finetune" in report:
        f = report["finetune"]
        print(f"  finetune: {f['steps']} steps x {f['tokens_per_step']} tokens in {f['seconds_this_call']} s "
              f"(load included), losses {', '.join(f'{v:.3f}' for v in f['losses'])}")
    print(f"wrote {d / 'gpu_check.json'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--model", default="smollm2-135m")
    e.add_argument("--lengths", default="8192,32768,65536")
    e.add_argument("--dtype", default="auto")
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--reps", type=int, default=2)
    e.add_argument("--out", required=True)
    r = sub.add_parser("search")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--target-length", type=int, default=16384)
    r.add_argument("--docs", type=int, default=2)
    r.add_argument("--dtype", default="auto")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--out", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--dir", required=True)
    args = p.parse_args()
    {"eval": eval_step, "search": search_step, "summary": summary_step}[args.step](args)


if __name__ == "__main__":
    main()
