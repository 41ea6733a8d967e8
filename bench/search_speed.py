"""How fast is `longrope search`? Three measurements, one model, one seed, one run:

(a) early rejection on vs off: candidate evaluations per minute, seconds per generation,
    documents scored, and the best perplexity each reaches after the same generations;
(b) the cost of switching a candidate (new factors -> new inverse frequencies and cos/sin
    tables) as a fraction of one forward pass over a target-length document;
(c) one process vs two (torchrun, gloo on CPU): seconds per generation and the speed-up.

    python bench/search_speed.py --model tiny --target-length 1024 --generations 4
    python bench/search_speed.py --model tiny --skip-parallel     # (a) and (b) only

Results print as a table and are written to --out as JSON.

Figures on a shared 2-core AMX CPU, `tiny` (native 128) at 1024 tokens, 5 documents,
P=16 k=8 N1=N2=4, 4 generations, bf16: (a) 23.4 vs 27.7 evaluations/min without/with
early rejection (150 of 160 documents scored, same best candidate, ppl 55.16); (b) a switch
costs 1.5 ms against 497 ms for one forward pass (0.3%); (c) 18.7 s per generation in one
single-threaded process, 12.1 s in two (1.55x), and identical histories. Timings vary with
the load other jobs put on the machine; the documents-scored counts do not.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope.atomic import atomic_write_json  # noqa: E402
from longrope.models.load import load_model  # noqa: E402
from longrope.seam import install_rope  # noqa: E402
from longrope.search.distributed import close_distributed, distributed_evaluator, init_distributed  # noqa: E402
from longrope.search.evolution import Genetic  # noqa: E402
from longrope.search.loop import peer_seeds, run_search  # noqa: E402
from longrope.search.scoring import Scoring  # noqa: E402
from longrope.search.state import SearchConfig  # noqa: E402
from longrope.search.fitness import PerplexityObjective, long_factor_candidate, search_documents  # noqa: E402
from longrope.search.genes import START_TOKENS, SearchSpace  # noqa: E402


def setup(args, device="cpu"):
    lm = load_model(args.model, dtype=args.dtype, device=device)
    L, N = lm.spec.original_max_position_embeddings, args.target_length
    docs = search_documents(lm.tokenizer, args.corpus, N, args.docs)
    objective = PerplexityObjective(lm.model, docs, long_factor_candidate(lm.spec, N))
    space = SearchSpace(half=lm.spec.half, scale=N / L, max_factor=1.25 * N / L,
                        start_tokens=tuple(t for t in START_TOKENS if t < N))
    config = SearchConfig(population=args.population, parents=args.parents, mutations=args.mutations,
                          crossovers=args.crossovers, iterations=args.generations, seed=args.seed)
    return lm, objective, space, config, len(docs)


def timed_search(objective, space, config, num_docs, seeds, evaluate_batch=None):
    """Run the search; return (state, seconds of each generation after the first)."""
    stamps = []
    kwargs = {} if evaluate_batch is None else {"evaluate_batch": evaluate_batch}
    t0 = time.perf_counter()
    state = run_search(Genetic(space, config), Scoring(objective, num_docs), seeds,
                       on_generation=lambda s: stamps.append(time.perf_counter()), **kwargs)
    return state, np.diff([t0] + stamps)


def early_rejection(args, lm, objective, space, config, num_docs) -> dict:
    seeds = peer_seeds(lm.spec, space.scale)
    rows = {}
    for name, on in (("early_reject", True), ("full", False)):
        cfg = SearchConfig(**{**config.__dict__, "early_reject": on})
        state, secs = timed_search(objective, space, cfg, num_docs, seeds)
        later = [r for r in state.history if r.generation > 0]
        t_later = float(np.sum(secs[1:]))
        rows[name] = {
            "generations": state.generation,
            "candidates": len(state.history),
            "rejected": sum(r.evaluation.rejected for r in state.history),
            "docs_scored": sum(len(r.evaluation.doc_losses) for r in state.history),
            "docs_scored_after_gen0": sum(len(r.evaluation.doc_losses) for r in later),
            "docs_full_after_gen0": len(later) * num_docs,
            "seconds_gen0": float(secs[0]),
            "seconds_per_generation": t_later / max(len(secs) - 1, 1),
            "evaluations_per_minute": 60 * len(later) / max(t_later, 1e-9),
            "best_perplexity": state.best.evaluation.perplexity,
            "best_genome": state.best.genome.to_dict(),
        }
    rows["same_best"] = rows["early_reject"]["best_genome"] == rows["full"]["best_genome"]
    return rows


def switch_cost(args, lm, objective, space) -> dict:
    """Seconds to install new factors and rebuild the tables vs one forward pass."""
    from longrope.evaluate.ppl import document_nll

    rope = install_rope(lm.model, None)
    doc = objective.docs[0][None]
    rng = np.random.default_rng(0)
    genomes = [space.mutate(space.from_factors(s), rng, 0.3) for s in peer_seeds(lm.spec, space.scale)] * 20
    exts = [objective.make(space.factors(g), g.start_token) for g in genomes]
    pos = torch.arange(args.target_length)[None]
    x = torch.zeros(1, dtype=next(lm.model.parameters()).dtype)
    t0 = time.perf_counter()
    for ext in exts:  # what a new candidate costs: set factors, rebuild inv_freq and cos/sin
        rope.set_extension(ext)
        rope(x, pos)
    switch = (time.perf_counter() - t0) / len(exts)
    document_nll(lm.model, doc)  # warm-up
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        document_nll(lm.model, doc)
    forward = (time.perf_counter() - t0) / reps
    return {"switch_seconds": switch, "forward_seconds": forward, "fraction": switch / forward}


# -- (c): the same search in 1 and 2 processes -----------------------------------------------
def worker(args) -> None:
    """Run under torchrun (or alone): full-cost generations, rank 0 prints their timings."""
    d = init_distributed()
    torch.manual_seed(0)
    lm, objective, space, config, num_docs = setup(args)
    cfg = SearchConfig(**{**config.__dict__, "early_reject": False})
    state, secs = timed_search(objective, space, cfg, num_docs, peer_seeds(lm.spec, space.scale),
                               evaluate_batch=distributed_evaluator(d))
    if d.is_main:
        print("RESULT " + json.dumps({"world_size": d.world_size, "threads": torch.get_num_threads(),
                                      "seconds_per_generation": float(np.mean(secs[1:])),
                                      "seconds_gen0": float(secs[0]),
                                      "best_perplexity": state.best.evaluation.perplexity,
                                      "history": [r.to_dict() for r in state.history]}))
    close_distributed()


def parallel(args) -> dict:
    forwarded = [a for a in sys.argv[1:] if a != "--worker"] + ["--worker"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cores = os.cpu_count() or 2
    runs = {}
    # the default single process (all cores as threads), one process with one thread, and
    # two processes with the cores shared out (torchrun's default of one thread each here)
    for name, n, threads in (("one", 1, cores), ("one_1thread", 1, 1), ("two", 2, max(1, cores // 2))):
        cmd = ([sys.executable, __file__] if n == 1 else
               ["torchrun", "--standalone", "--nproc-per-node", str(n), __file__]) + forwarded
        out = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            raise RuntimeError(f"{name} run failed:\n{out.stderr[-3000:]}")
        runs[name] = json.loads(line[0][len("RESULT "):])
    histories = {name: r.pop("history") for name, r in runs.items()}
    return {**runs, "speedup": runs["one"]["seconds_per_generation"] / runs["two"]["seconds_per_generation"],
            "speedup_vs_1thread": runs["one_1thread"]["seconds_per_generation"]
            / runs["two"]["seconds_per_generation"],
            "same_history_as_1thread": histories["two"] == histories["one_1thread"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--corpus", default=None)
    p.add_argument("--target-length", type=int, default=1024)
    p.add_argument("--docs", type=int, default=5)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--parents", type=int, default=32)
    p.add_argument("--mutations", type=int, default=16)
    p.add_argument("--crossovers", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--skip-parallel", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="runs/bench_search_speed.json")
    args = p.parse_args()
    if args.worker:
        return worker(args)

    lm, objective, space, config, num_docs = setup(args)
    result = {"model": args.model, "target_length": args.target_length, "docs": num_docs,
              "config": config.__dict__, "threads": torch.get_num_threads(),
              "dtype": str(next(lm.model.parameters()).dtype)}
    result["switch"] = switch_cost(args, lm, objective, space)
    s = result["switch"]
    print(f"(b) switching a candidate: {1e3 * s['switch_seconds']:.3f} ms vs one forward pass "
          f"{1e3 * s['forward_seconds']:.1f} ms = {100 * s['fraction']:.3f}%", flush=True)
    result["early_rejection"] = er = early_rejection(args, lm, objective, space, config, num_docs)
    print(f"(a) {config.iterations} generations, P={config.population} k={config.parents} "
          f"N1={config.mutations} N2={config.crossovers}, {num_docs} docs of {args.target_length} tokens")
    print(f"    {'':14s} {'eval/min':>9s} {'s/gen':>7s} {'docs scored':>12s} {'rejected':>9s} {'best ppl':>9s}")
    for name in ("full", "early_reject"):
        r = er[name]
        print(f"    {name:14s} {r['evaluations_per_minute']:9.1f} {r['seconds_per_generation']:7.2f} "
              f"{r['docs_scored_after_gen0']:5d}/{r['docs_full_after_gen0']:<6d} {r['rejected']:9d} "
              f"{r['best_perplexity']:9.4f}")
    print(f"    same best candidate: {er['same_best']}", flush=True)
    del lm, objective
    if not args.skip_parallel:
        result["parallel"] = par = parallel(args)
        print(f"(c) seconds per generation (no early rejection): 1 process x {par['one']['threads']} threads "
              f"{par['one']['seconds_per_generation']:.2f}, 1 process x 1 thread "
              f"{par['one_1thread']['seconds_per_generation']:.2f}, 2 processes x {par['two']['threads']} thread "
              f"{par['two']['seconds_per_generation']:.2f}: speed-up {par['speedup']:.2f}x "
              f"({par['speedup_vs_1thread']:.2f}x vs 1 thread); same history as 1 process x 1 thread: "
              f"{par['same_history_as_1thread']}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
