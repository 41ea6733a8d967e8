"""Budget curves: what each search strategy buys per document forward pass.

    python bench/search_budget.py --model tiny --target-length 2048 --seeds 0,1,2 --out runs/budget-tiny-8x
    python bench/search_budget.py ... --strategies paper,early-reject     # a subset
    (interrupted? run the same command again: every (strategy, seed) run resumes where it stopped)

For one model and target length, every strategy runs the search with each seed through the
search driver (`longrope.search.driver.drive`, the code `longrope search` runs), each run in its
own folder `--out/<strategy>-seed<seed>/` with the search's own state.json, scored.jsonl and
history.jsonl, so a stopped run resumes exactly. After every generation we record

    forwards     document forward passes spent so far (the documents each candidate's
                 Evaluation scored: a candidate stopped early counts only those)
    search_ppl   the best search-split perplexity so far (what the search optimises)
    heldout_ppl  the validation-split perplexity of those best factors (`mean_nlls` on
                 --heldout-docs documents of the target length; each distinct best is
                 scored once and kept in the run's heldout.json)

and print, per strategy, the forwards it needed to reach the `paper` run's final held-out
perplexity of the same seed (within --tolerance, 0.5%). Strategies (`STRATEGIES`):

    paper         LongRoPE's Algorithm 1 with the paper's schedule, no early rejection
    early-reject  the same with the exact early-rejection rule (longrope's default)
    critical      LongRoPE2's critical-dimension variant, with early rejection
    cma           CMA-ES on the same genome (--optimizer cma), with early rejection
    race          the GA with statistical racing (--reject race)
    cma-2docs     cma scoring 2 search documents instead of --docs (held-out: the same documents)
    early-reject-2docs   early-reject on 2 search documents

Writes --out/budget.json (settings, every curve, the forwards-to-reach table) and
--out/budget.png (search and held-out perplexity against document forwards, one colour per
strategy, one line per seed). The schedule flags default to the paper's (P=64, k=32,
N1=N2=16, T=40, 5 documents); a run folder holds one schedule, so another schedule needs
another --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope.search.plan import SpaceOptions, long_plan  # noqa: E402
from longrope.data import split_documents, tokens_fingerprint  # noqa: E402
from longrope.evaluate.ppl import mean_nlls, perplexity  # noqa: E402
from longrope.atomic import atomic_write_json  # noqa: E402
from longrope.outputs import output_dir  # noqa: E402
from longrope.readback import read_json_or_none  # noqa: E402
from longrope.models.load import load_model  # noqa: E402
from longrope.plots import label_axes, pyplot, save_and_close  # noqa: E402
from longrope.search.driver import SearchJob, SearchOptions, drive, has_state  # noqa: E402
from longrope.search.loop import peer_seeds  # noqa: E402
from longrope.search.state import SearchConfig, SearchState  # noqa: E402
from longrope.search.fitness import long_factor_candidate, search_documents  # noqa: E402
from longrope.seam import install_rope  # noqa: E402

# name -> (SearchConfig overrides, SearchOptions overrides, --variant, search documents (None: --docs))
STRATEGIES = {
    "paper": ({"early_reject": False}, {}, "longrope", None),
    "early-reject": ({"early_reject": True, "reject": "exact"}, {}, "longrope", None),
    "critical": ({"early_reject": True, "reject": "exact"}, {}, "critical", None),
    "cma": ({"early_reject": True, "reject": "exact"}, {"optimizer": "cma"}, "longrope", None),
    "race": ({"early_reject": True, "reject": "race"}, {}, "longrope", None),
    "cma-2docs": ({"early_reject": True, "reject": "exact"}, {"optimizer": "cma"}, "longrope", 2),
    "early-reject-2docs": ({"early_reject": True, "reject": "exact"}, {}, "longrope", 2),
}
HELDOUT_FILE = "heldout.json"


class HeldOut:
    """Validation perplexity of a genome, computed once per distinct genome and kept in
    `folder/heldout.json` (dropped if the validation documents changed)."""

    def __init__(self, lm, docs, length: int, chunk_size: int, folder: Path):
        self.lm, self.docs, self.length, self.chunk_size = lm, docs, length, chunk_size
        self.path = folder / HELDOUT_FILE
        self.fingerprint = tokens_fingerprint(docs)
        saved = read_json_or_none(self.path) or {}
        self.scores = saved.get("scores", {}) if saved.get("documents") == self.fingerprint else {}

    def __call__(self, genome, space, make) -> float:
        key = json.dumps(genome.to_dict(), sort_keys=True)
        if key not in self.scores:
            install_rope(self.lm.model, make(space.factors(genome), genome.start_token))
            nlls, _ = mean_nlls(self.lm.model, self.docs, self.length, self.chunk_size)
            install_rope(self.lm.model, None)
            self.scores[key] = perplexity(nlls)
            atomic_write_json(self.path, {"documents": self.fingerprint, "scores": self.scores})
        return self.scores[key]


def budget_curve(state: SearchState, heldout, space, make) -> list[dict]:
    """One row per generation: forwards spent so far, best search ppl so far, its held-out ppl."""
    rows, spent, candidates, best = [], 0, 0, None
    for g in range(state.generation + 1):
        records = [r for r in state.history if r.generation == g]
        spent += sum(len(r.evaluation.doc_losses) for r in records)
        candidates += len(records)
        for r in records:
            if not r.evaluation.rejected and (best is None or r.evaluation.loss < best.evaluation.loss):
                best = r
        rows.append({"generation": g, "candidates": candidates, "forwards": spent,
                     "search_ppl": best.evaluation.perplexity, "heldout_ppl": heldout(best.genome, space, make)})
    return rows


def run_one(args, lm, docs, name: str, seed: int, folder: Path, val_docs) -> list[dict]:
    """Run (or resume, or just read) one strategy with one seed; return its budget curve."""
    config_over, option_over, variant, num_docs = STRATEGIES[name]
    docs = docs[:num_docs] if num_docs else docs
    N, L = args.target_length, lm.spec.original_max_position_embeddings
    config = SearchConfig(population=args.population, parents=args.parents, mutations=args.mutations,
                          crossovers=args.crossovers, iterations=args.iterations, seed=seed, **config_over)
    options = SearchOptions(docs=len(docs), chunk_size=args.chunk_size, candidates_per_forward=1, **option_over)
    space = long_plan(lm.spec, SpaceOptions(target_length=N, variant=variant), options.step, None,
                      args.model).space
    make = long_factor_candidate(lm.spec, N)
    folder.mkdir(parents=True, exist_ok=True)
    state = SearchState.load(folder) if has_state(folder) else None
    if state is None or state.generation < config.iterations:
        describe = {"model": args.model, "corpus": args.corpus or "stdlib", "target_length": N, "docs": len(docs),
                    "split_seed": args.split_seed, "dtype": args.dtype, "strategy": name, "variant": variant}
        job = SearchJob(lm.model, docs, make, space, config, peer_seeds(lm.spec, N / L), folder, describe, options,
                        title=f"{name} seed {seed}", peers=lm.spec, resume_hint="run the same command again")
        state, _ = drive(job, state)
    return budget_curve(state, HeldOut(lm, val_docs, N, args.chunk_size, folder), space, make)


def forwards_to_reach(curve: list[dict], target: float) -> int | None:
    """Forwards spent when the held-out ppl first came within the target (None: never)."""
    return next((row["forwards"] for row in curve if row["heldout_ppl"] <= target), None)


def reach_table(curves: dict[str, dict[int, list[dict]]], tolerance: float) -> dict[str, dict]:
    """Per strategy and seed: forwards needed to reach (1 + tolerance) x the paper run's final
    held-out ppl of that seed, and the median over seeds that reached it."""
    table = {}
    for name, runs in curves.items():
        per_seed = {}
        for seed, curve in runs.items():
            ref = curves.get("paper", {}).get(seed)
            target = ref[-1]["heldout_ppl"] * (1 + tolerance) if ref else None
            per_seed[seed] = {"target_ppl": target, "forwards": forwards_to_reach(curve, target) if target else None,
                              "total_forwards": curve[-1]["forwards"], "final_heldout_ppl": curve[-1]["heldout_ppl"],
                              "final_search_ppl": curve[-1]["search_ppl"]}
        reached = [r["forwards"] for r in per_seed.values() if r["forwards"] is not None]
        table[name] = {"seeds": per_seed, "reached": f"{len(reached)}/{len(per_seed)}",
                       "median_forwards": float(np.median(reached)) if reached else None}
    return table


def plot(curves: dict[str, dict[int, list[dict]]], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, runs) in enumerate(curves.items()):
        for j, curve in enumerate(runs.values()):
            x = [r["forwards"] for r in curve]
            # strategies may score different search documents: their search ppl is shown relative to
            # their own generation 0; the held-out documents are the same for all
            first = curve[0]["search_ppl"]
            series = ([r["search_ppl"] / first for r in curve], [r["heldout_ppl"] for r in curve])
            for ax, ys in zip(axes, series):
                ax.plot(x, ys, color=colours[i % len(colours)], lw=1.4, alpha=0.85,
                        marker=".", ms=3, label=name if j == 0 else None)
    for ax, what, unit in zip(axes, ("best search-split ppl / generation 0's best",
                                     "held-out (validation) perplexity of the best"),
                              ("perplexity / generation 0's", "perplexity")):
        ax.ticklabel_format(axis="both", useOffset=False, style="plain")
        label_axes(ax, "document forward passes", unit, what)
    fig.suptitle(title)
    return save_and_close(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="a preset, an HF model directory or a .gguf")
    p.add_argument("--corpus", default=None)
    p.add_argument("--target-length", type=int, default=1024)
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--parents", type=int, default=32)
    p.add_argument("--mutations", type=int, default=16)
    p.add_argument("--crossovers", type=int, default=16)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--docs", type=int, default=5, help="search-split documents (K)")
    p.add_argument("--heldout-docs", type=int, default=5, help="validation-split documents for the held-out ppl")
    p.add_argument("--seeds", default="0", help="comma-separated search seeds")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, of {', '.join(STRATEGIES)}")
    p.add_argument("--tolerance", type=float, default=0.005, help="reach the paper's final held-out ppl within this")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    names = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    with output_dir(args.out) as out:
        lm = load_model(args.model, dtype=args.dtype, device=args.device)
        N = args.target_length
        docs = search_documents(lm.tokenizer, args.corpus, N, args.docs, args.split_seed)
        val_docs = split_documents(lm.tokenizer, args.corpus, "validation", N, args.heldout_docs, args.split_seed)
        if not docs or not val_docs:
            sys.exit(f"no search/validation documents reach {N} tokens")
        curves: dict[str, dict[int, list[dict]]] = {}
        for name in names:
            for seed in seeds:
                curves.setdefault(name, {})[seed] = run_one(args, lm, docs, name, seed, out / f"{name}-seed{seed}",
                                                             val_docs)
                last = curves[name][seed][-1]
                print(f"{name} seed {seed}: {last['forwards']} forwards, search ppl {last['search_ppl']:.4f}, "
                      f"held-out ppl {last['heldout_ppl']:.4f}", flush=True)
        table = reach_table(curves, args.tolerance)
        schedule = (f"P={args.population} k={args.parents} N1={args.mutations} N2={args.crossovers} "
                    f"T={args.iterations}, {len(docs)} docs")
        atomic_write_json(out / "budget.json", {
            "model": args.model, "target_length": N, "schedule": schedule, "settings": vars(args),
            "search_docs": len(docs), "heldout_docs": len(val_docs), "seeds": seeds,
            "strategies": {n: {"config": STRATEGIES[n][0], "options": STRATEGIES[n][1], "variant": STRATEGIES[n][2],
                               "search_docs": STRATEGIES[n][3] or len(docs)} for n in names},
            "curves": {n: {str(s): c for s, c in runs.items()} for n, runs in curves.items()},
            "forwards_to_reach_paper": {n: {**t, "seeds": {str(s): v for s, v in t["seeds"].items()}}
                                        for n, t in table.items()}})
        plot(curves, out / "budget.png", f"{args.model} at {N} tokens: {schedule}, {len(val_docs)} held-out docs")

        print(f"\n{args.model} at {N} tokens, {schedule}; seeds {seeds}; held-out: {len(val_docs)} validation docs")
        print(f"forwards to reach the paper schedule's final held-out ppl (within {args.tolerance:.1%}), same seed:")
        print(f"  {'strategy':14s} {'median':>9s} {'reached':>8s} {'per seed (forwards/total)':s}")
        for name, t in table.items():
            per = "  ".join(f"{s}: {'-' if v['forwards'] is None else v['forwards']}/{v['total_forwards']}"
                            for s, v in t["seeds"].items())
            med = "-" if t["median_forwards"] is None else f"{t['median_forwards']:.0f}"
            print(f"  {name:14s} {med:>9s} {t['reached']:>8s} {per}")
        print(f"wrote {out / 'budget.json'} and {out / 'budget.png'}")


if __name__ == "__main__":
    main()
