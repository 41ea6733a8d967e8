"""`longrope search`: find LongRoPE rescale factors and start token by evolutionary search.

    longrope search --model tiny --target-length 1024 --out runs/search-tiny
    longrope search ... --resume                      # continue a stopped run exactly
    torchrun --nproc-per-node 8 -m longrope search ... # one model replica per process

Reads top to bottom: load the model once, pick K search documents of the target length,
seed the population with PI/NTK/YaRN, run Algorithm 1 (longrope.search.evolution) with
perplexity as the fitness, checkpoint after every generation, then write factors.json,
history.jsonl, search.png and factors.png to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from .common import add_model_args


EPILOG = """\
parallel search: every process holds a model replica and scores a share of each generation;
the result equals a single-process run with the same seed (on the same kind of device and
the same number of threads per process, so that every candidate gets bit-identical scores).
  one node, 8 GPUs:  torchrun --standalone --nproc-per-node 8 -m longrope search --model M ...
  two nodes:         torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend c10d \\
                         --rdzv-endpoint HOST:29500 -m longrope search --model M ...
  (run the same command on each node with R = 0, 1; HOST is node 0; --out on node 0 is written)
CPU: torchrun --standalone --nproc-per-node 2 ... uses gloo and one thread per process.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="evolutionary search for LongRoPE rescale factors (paper Algorithm 1)",
        description="Search per-dimension RoPE rescale factors and the start token for a target context "
        "length, with perplexity on long documents as the fitness. Defaults are the paper's.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--corpus", default=None, help="stdlib (default), a folder of .txt, a .txt or a .jsonl file")
    p.add_argument("--target-length", type=int, required=True, help="target context L' in tokens")
    p.add_argument("--out", required=True, help="output folder (state.json, factors.json, history.jsonl, plots)")
    p.add_argument("--docs", type=int, default=5, help="K search documents (default 5, as the paper)")
    p.add_argument("--population", type=int, default=64, help="P (default 64)")
    p.add_argument("--parents", type=int, default=32, help="top-k kept each generation (default 32)")
    p.add_argument("--mutations", type=int, default=16, help="N1 mutants per generation (default 16)")
    p.add_argument("--crossovers", type=int, default=16, help="N2 crossovers per generation (default 16)")
    p.add_argument("--mutation-prob", type=float, default=0.3, help="p, per-gene mutation probability (0.3)")
    p.add_argument("--iterations", type=int, default=40, help="T generations (default 40)")
    p.add_argument("--step", type=float, default=0.01, help="grid step of the factors (default 0.01)")
    p.add_argument("--max-factor", type=float, default=None, help="upper bound of lambda (default 1.25*s)")
    p.add_argument("--start-token", type=int, default=None,
                   help="fix n_hat to this value (default: search it over the paper's candidates)")
    p.add_argument("--variant", choices=("longrope", "piecewise", "critical"), default="longrope",
                   help="search every dim (longrope), a band between 1 and s (piecewise), or only dims >= "
                   "the critical dim, LongRoPE2 (critical)")
    p.add_argument("--critical-dim", type=int, default=None,
                   help="cd for --variant critical (default: ceil(d/2 * log_b(L / 2pi)))")
    p.add_argument("--no-early-reject", dest="early_reject", action="store_false",
                   help="score every candidate on all documents (default: stop scoring a candidate once its "
                   "losses so far, plus the best loss ever seen on each remaining document, cannot beat the "
                   "worst of the top-k)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the search (default 0)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the search/validation/test split (0)")
    p.add_argument("--chunk-size", type=int, default=1024, help="tokens per LM-head chunk in the loss")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.distributed import close_distributed, init_distributed

    d = init_distributed()
    try:
        return search(args, d)
    finally:
        close_distributed()


def _on_main(d, fn):
    """Run fn() on rank 0 and hand its result (or its UsageError) to every rank."""
    from ..search.distributed import broadcast

    result, error = None, None
    if d.is_main:
        try:
            result = fn()
        except UsageError as e:
            error = str(e)
    result, error = broadcast((result, error), d)
    if error is not None:
        raise UsageError(error)
    return result


def search(args: argparse.Namespace, d) -> int:
    import torch

    from ..io import check_writable_dir
    from ..model import load_model, resolve_dtype
    from ..search.evolution import STATE_FILE, SearchConfig, SearchState, peer_seeds, run_search
    from ..search.fitness import PerplexityObjective, search_documents
    from ..search.genes import START_TOKENS, SearchSpace, critical_dimension

    # -- check the cheap things before loading anything ---------------------------------------
    config = SearchConfig(population=args.population, parents=args.parents, mutations=args.mutations,
                          crossovers=args.crossovers, mutation_prob=args.mutation_prob,
                          iterations=args.iterations, seed=args.seed, early_reject=args.early_reject)
    if args.docs < 1:
        raise UsageError("--docs must be at least 1")
    if args.start_token is not None and args.start_token < 0:
        raise UsageError("--start-token must be >= 0")
    out = Path(args.out)

    def prepare_out():
        check_writable_dir(out)
        has_state = (out / STATE_FILE).is_file()
        if args.resume and not has_state:
            raise UsageError(f"nothing to resume: {out / STATE_FILE} does not exist")
        if not args.resume and has_state:
            raise UsageError(f"{out} already holds a search; pass --resume to continue it or choose another --out")

    _on_main(d, prepare_out)

    # -- the model, loaded once; candidates only swap its RoPE factors -------------------------
    device = args.device or (f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    lm = load_model(args.model, dtype=args.dtype, device=device)
    spec = lm.spec
    L, N = spec.original_max_position_embeddings, args.target_length
    if N <= L:
        raise UsageError(f"--target-length {N} must exceed the model's native context {L}")
    scale = N / L

    # -- K search documents of the target length (the split eval-ppl holds out) ----------------
    fitness_docs = search_documents(lm.tokenizer, args.corpus, N, args.docs, args.split_seed)
    if d.is_main and len(fitness_docs) < args.docs:
        print(f"note: only {len(fitness_docs)} search documents reach {N} tokens (asked for {args.docs})",
              file=sys.stderr)

    starts = START_TOKENS if args.start_token is None else (args.start_token,)
    starts = tuple(t for t in starts if t < N) or (0,)
    space = SearchSpace(
        half=spec.half, scale=scale, max_factor=args.max_factor or 1.25 * scale, step=args.step,
        start_tokens=starts, variant=args.variant,
        critical_dim=(args.critical_dim or critical_dimension(spec.dim, spec.base, L)) if args.variant == "critical" else 0,
    )
    describe = {"model": args.model, "corpus": args.corpus or "stdlib", "target_length": N,
                "docs": len(fitness_docs), "split_seed": args.split_seed,
                "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch.")}
    state = _on_main(d, lambda: SearchState.load(out)) if args.resume else None

    objective = PerplexityObjective(lm.model, spec, fitness_docs, N, args.chunk_size)
    outputs = SearchOutputs(out, space, spec, objective, describe) if d.is_main else None
    from tqdm.auto import tqdm

    from ..search.distributed import distributed_evaluator

    bar = tqdm(total=config.iterations + 1, desc="search", unit="gen", disable=not d.is_main,
               initial=0 if state is None else state.generation + 1)

    def on_generation(st: SearchState) -> None:
        if outputs is not None:
            outputs.checkpoint(st)
            bar.set_postfix(best_ppl=f"{st.best.evaluation.perplexity:.3f}", scored=len(st.history))
            bar.update(st.generation + 1 - bar.n)

    try:
        state = run_search(space, config, objective, len(fitness_docs), peer_seeds(spec, scale), state=state,
                           describe=describe, evaluate_batch=distributed_evaluator(d), on_generation=on_generation)
    except KeyboardInterrupt:
        bar.close()
        if outputs is not None and outputs.last is not None:
            outputs.finish(outputs.last)
            print(f"interrupted: generation {outputs.last.generation} is saved in {out}; continue with --resume",
                  file=sys.stderr)
        raise
    bar.close()
    if outputs is not None:
        ext = outputs.finish(state)
        best = state.best.evaluation
        print(f"best perplexity {best.perplexity:.4f} at {N} tokens (n_hat={ext.start_token}) after "
              f"{state.generation} generations, {len(state.history)} candidates; wrote {out / 'factors.json'}")
    return 0


class SearchOutputs:
    """What rank 0 writes: state.json + history.jsonl + factors.json after each generation,
    and the plots at the end. Every file is written atomically."""

    def __init__(self, out: Path, space, spec, objective, describe: dict):
        self.out, self.space, self.spec, self.objective, self.describe = out, space, spec, objective, describe
        self.last = None

    def extension(self, state):
        import longrope

        best = state.best
        ext = self.objective.extension(self.space.factors(best.genome), best.genome.start_token)
        return ext.with_(metadata={
            **self.describe, "search_perplexity": best.evaluation.perplexity, "generations": state.generation,
            "candidates": len(state.history), "variant": self.space.variant, "seed": state.config.get("seed"),
            "version": longrope.__version__,
        })

    def checkpoint(self, state) -> None:
        from ..search.evolution import write_history

        write_history(self.out, state, self.space)
        state.save(self.out)  # last: state.json is the record of a completed generation
        self.extension(state).save(self.out / "factors.json")
        self.last = state

    def finish(self, state):
        from ..methods import ntk_factors, pi_factors, yarn_factors
        from ..search.plots import plot_factors, plot_progress

        ext = self.extension(state)
        ext.save(self.out / "factors.json")
        N = ext.max_position_embeddings
        plot_progress(state, self.out / "search.png", title=f"search at {N} tokens ({self.describe['model']})")
        s = self.space.scale
        curves = {"PI": pi_factors(self.spec, s).tolist(), "NTK": ntk_factors(self.spec, s).tolist(),
                  "YaRN": yarn_factors(self.spec, s).tolist(), "searched": list(ext.long_factor)}
        plot_factors(curves, self.out / "factors.png", title=f"rescale factors, s = {s:g}")
        return ext
