"""`longrope search`: find LongRoPE rescale factors and start token by evolutionary search.

    longrope search --model tiny --target-length 1024 --out runs/search-tiny
    longrope search ... --resume                      # continue a stopped run exactly
    torchrun --nproc-per-node 8 -m longrope search ... # one model replica per process
    longrope search ... --optimizer cma --objective needle  # CMA-ES; LongRoPE2's needle loss

Reads top to bottom: load the model once, pick K search documents of the target length,
seed the population with PI/NTK/YaRN, run Algorithm 1 (the loop of search/loop.py with the GA of
search/evolution.py, or CMA-ES: search/cma.py) with perplexity (or its last band, the needle loss:
search/needle.py, or the passkey answer loss) as the fitness, checkpoint after every generation,
then write factors.json, history.jsonl, search.png and factors.png to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data import CORPUS_HELP
from ..errors import UsageError
from ..factors import MAX_ATTENTION_FACTOR, RopeExtension
from ..hf_config import load_factors
from ..outputs import output_dir
from ..models.device import resolve_dtype
from ..models.load import fingerprint_matches, load_model, model_fingerprint
from ..rope import RotarySpec
from ..search.distributed import (Dist, broadcast, close_distributed, distributed_evaluator, init_distributed,
                                  min_over_ranks)
from ..options import add_options, build, ranged
from ..search.cma import check_samples
from ..search.driver import SearchJob, SearchOptions, drive, has_state, seed_scores
from ..search.scored import SCORED_FILE
from ..search.loop import PEER_SEED_NAMES, carried_seed, peer_seeds
from ..search.state import HISTORY_FILE, STATE_FILE, SearchConfig, SearchState
from ..search.fitness import MakeExtension, long_factor_candidate, search_documents, short_factor_candidate
from ..search.genes import START_TOKENS, SearchSpace, critical_dimension
from .common import MAX_LENGTH, add_model_args


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
        "length, with perplexity on long documents (or on their last band, LongRoPE2's needle loss, or the "
        "passkey answer loss: --objective) as the fitness, by the paper's "
        "evolutionary search or CMA-ES. Defaults are the paper's.",
        epilog=EPILOG)
    add_model_args(p)
    p.add_argument("--corpus", default=None, help=CORPUS_HELP)
    p.add_argument("--target-length", type=ranged(int, min=2, max=MAX_LENGTH), required=True,
                   help="target context L' in tokens")
    p.add_argument("--out", required=True, help="output folder (state.json, factors.json, history.jsonl, plots)")
    add_options(p, SearchConfig)
    add_options(p, SearchOptions)
    p.add_argument("--start-token", type=ranged(int, min=0), default=None,
                   help="fix n_hat to this value, below --target-length (default: search it over the paper's "
                        "candidates)")
    p.add_argument("--variant", choices=("longrope", "piecewise", "critical"), default="longrope",
                   help="search every dim (longrope), a band between 1 and s (piecewise), or only dims >= "
                   "the critical dim, LongRoPE2 (critical)")
    p.add_argument("--critical-dim", type=ranged(int, min=1), default=None,
                   help="cd for --variant critical (default: ceil(d/2 * log_b(L / 2pi)))")
    p.add_argument("--attention-factor", type=ranged(float, above=0, max=MAX_ATTENTION_FACTOR), default=None,
                   help="fix the attention (magnitude) factor multiplied into cos and sin; 1 keeps attention "
                   "logits as trained, so with short factors of 1 a short context is unchanged (default: "
                   "LongRoPE's sqrt(1 + ln s / ln L), which also applies below L)")
    p.add_argument("--init-factors", action="append", default=[], metavar="FACTORS",
                   help="also start from these factors (a factors file, HF config or shipped name; repeat the "
                   "flag for more), e.g. a search at a shorter target: their long factors, searched for scale "
                   "s0, are carried to this search's scale s as lambda**(ln s / ln s0), which keeps "
                   "unscaled dims at 1 and takes s0 to s; joins PI/NTK/YaRN in generation 0")
    p.add_argument("--short-for", default=None, metavar="FACTORS",
                   help="readjust instead (LongRoPE section 3.3): search short_factor, used up to the native "
                   "context, for these long factors (kept, with their n_hat and attention factor), at "
                   "--target-length <= the native context, lambda in [1, --max-factor (default: their scale s)]; "
                   "seeded with 1 (the original RoPE) and the long factors; writes both")
    p.add_argument("--split", default="search", choices=["search", "validation", "test", "all"],
                   help="the split searched on; eval-ppl's held-out splits are validation and test, so search "
                   "another only to bound what factors can do on those very documents, or use all for a "
                   "corpus kept for searching (default: search)")
    p.add_argument("--split-seed", type=ranged(int, min=0), default=0,
                   help="seed of the search/validation/test split (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    d = init_distributed()
    try:
        return search(args, d)
    finally:
        close_distributed()


def _on_main(d: Dist, fn):
    """Run fn() on rank 0 and hand its result (or its UsageError) to every rank."""
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


# what a search writes into --out, and what --resume continues from
OUTPUTS = (STATE_FILE, HISTORY_FILE, SCORED_FILE, "factors.json", "search.png", "factors.png")
RESUMED = (STATE_FILE, HISTORY_FILE, SCORED_FILE)


def _prepare_out(out: Path, resume: bool) -> None:
    # a search stopped in its first generation has no state yet, only its scored documents
    if resume and not has_state(out) and not (out / SCORED_FILE).is_file():
        print(f"note: nothing to resume in {out} (killed before its first document): starting afresh", file=sys.stderr)
    if not resume and has_state(out):
        raise UsageError(f"{out} already holds a search; pass --resume to continue it or choose another --out")


def search_space(args: argparse.Namespace, spec: RotarySpec, target_length: int) -> SearchSpace:
    """The genomes of this search: every factor (or a band, or dims >= cd) and n_hat candidates."""
    scale = target_length / spec.original_max_position_embeddings
    starts = START_TOKENS if args.start_token is None else (args.start_token,)
    starts = tuple(t for t in starts if t < target_length) or (0,)
    cd = 0
    if args.variant == "critical":
        cd = args.critical_dim or critical_dimension(spec.dim, spec.base, spec.original_max_position_embeddings)
    return SearchSpace(half=spec.half, scale=scale, max_factor=args.max_factor or 1.25 * scale, step=args.step,
                       start_tokens=starts, variant=args.variant, critical_dim=cd)


def _loaded(flag: str, given: str) -> RopeExtension:
    """A factors file, HF config or shipped name given to `flag` (cheap: before the model)."""
    try:
        return load_factors(given)
    except UsageError as e:
        raise UsageError(f"{flag}: {e}") from None


def _fitting(flag: str, given: str, spec: RotarySpec) -> RopeExtension:
    """`_loaded`, checked against the loaded model's RoPE."""
    ext = _loaded(flag, given)
    try:
        ext.check_fits(spec)
    except UsageError as e:
        raise UsageError(f"{flag} {given}: {e}") from None
    return ext


def search(args: argparse.Namespace, d: Dist) -> int:
    # -- check the cheap things before loading anything ---------------------------------------
    config, options, N = build(SearchConfig, args), build(SearchOptions, args), args.target_length
    if options.optimizer == "cma":
        check_samples(config.mutations + config.crossovers)
    for given in args.init_factors:
        _loaded("--init-factors", given)
    if args.short_for is not None:
        if args.init_factors or args.variant != "longrope" or args.start_token is not None:
            raise UsageError("--short-for searches every short factor at the long factors' n_hat; it takes no "
                             "--init-factors, --variant or --start-token")
        _loaded("--short-for", args.short_for)
    if args.start_token is not None and args.start_token >= N:
        raise UsageError(f"--start-token {args.start_token} must be below --target-length {N}")
    out = Path(args.out).expanduser()
    with contextlib.ExitStack() as owned:  # rank 0 owns --out (lock, writability, cleanup)
        owner = output_dir(out, command="search", outputs=OUTPUTS, keep=RESUMED if args.resume else (),
                           marker=STATE_FILE, inputs=[args.model, args.corpus, *args.init_factors, args.short_for])
        _on_main(d, lambda: _prepare_out(owned.enter_context(owner), args.resume))
        return _search(args, d, config, options, out)


@dataclass
class Plan:
    """What a search scores: candidates (`make`), their genome space, the seeds and their names."""

    make: MakeExtension
    space: SearchSpace
    seeds: list[np.ndarray]
    names: list[str]
    title: str
    peers: RotarySpec | None = None  # plot the found factors against PI/NTK/YaRN for this RoPE
    finalize: Callable[[RopeExtension], RopeExtension] | None = None  # adjusts the factors file written


def _long_plan(args: argparse.Namespace, spec: RotarySpec, N: int, describe: dict[str, Any]) -> Plan:
    """Long factors for the target (Algorithm 1), seeded with PI/NTK/YaRN and --init-factors."""
    L = spec.original_max_position_embeddings
    if N <= L:
        raise UsageError(f"--target-length {N} must exceed the model's native context {L}")
    carried = []  # (name, factors) of each --init-factors, carried to this scale
    for given in args.init_factors:
        ext = _fitting("--init-factors", given, spec)
        carried.append((str(ext.metadata.get("label") or Path(given).stem),
                        carried_seed(ext.long_factor, ext.scale, N / L)))
    if carried:  # recorded only when given: older states resume unchanged
        describe["init_factors"] = {name: [round(float(x), 6) for x in lam] for name, lam in carried}
    return Plan(long_factor_candidate(spec, N, args.attention_factor), search_space(args, spec, N),
                peer_seeds(spec, N / L) + [lam for _, lam in carried],
                list(PEER_SEED_NAMES) + [name for name, _ in carried], f"search at {N} tokens ({args.model})",
                peers=spec)


def _short_plan(args: argparse.Namespace, spec: RotarySpec, N: int, describe: dict[str, Any]) -> Plan:
    """--short-for: short factors at a length within the native context, for fixed long factors."""
    ext, L = _fitting("--short-for", args.short_for, spec), spec.original_max_position_embeddings
    if N > L:
        raise UsageError(f"--target-length {N} must be at most the model's native context {L} with --short-for "
                         f"(short factors serve sequences up to it)")
    if args.attention_factor is not None:
        raise UsageError("--short-for keeps the long factors' attention factor; drop --attention-factor")
    bound = args.max_factor or max(ext.scale, 1.0 + args.step)
    describe["short_for"] = ext.to_dict()
    space = SearchSpace(half=spec.half, scale=bound, max_factor=bound, step=args.step,
                        start_tokens=(ext.start_token,))
    seeds = [np.ones(spec.half), np.minimum(np.asarray(ext.long_factor), bound)]  # original RoPE, the long ones
    return Plan(short_factor_candidate(ext), space, seeds, ["original", "long"],
                f"short factors at {N} tokens ({args.model})", finalize=_short_metadata(ext))


def _search(args: argparse.Namespace, d: Dist, config: SearchConfig, options: SearchOptions, out: Path) -> int:
    # -- the model, loaded once; candidates only swap its RoPE factors -------------------------
    device = args.device or (f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    lm = load_model(args.model, dtype=args.dtype, device=device)
    N = args.target_length
    if args.critical_dim is not None and args.critical_dim > lm.spec.half:
        raise UsageError(f"--critical-dim {args.critical_dim} exceeds the model's {lm.spec.half} frequencies")
    describe = {"model": args.model, "model_files": model_fingerprint(args.model),
                "corpus": args.corpus or "stdlib", "target_length": N, "split_seed": args.split_seed,
                "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch.")}
    if args.attention_factor is not None:  # recorded only when set: older states resume unchanged
        describe["attention_factor"] = args.attention_factor
    if args.split != "search":
        describe["split"] = args.split
    plan = (_long_plan if args.short_for is None else _short_plan)(args, lm.spec, N, describe)

    # -- K search documents of the target length (the split eval-ppl holds out) ----------------
    docs = search_documents(lm.tokenizer, args.corpus, N, args.docs, args.split_seed, options.objective,
                            options.needles, split=args.split)
    if d.is_main and len(docs) < args.docs:
        print(f"note: only {len(docs)} {args.split} documents reach {N} tokens (asked for {args.docs})",
              file=sys.stderr)
    if d.is_main and args.split in ("validation", "test"):
        print(f"note: searching on the {args.split} split, which eval-ppl holds out: its figures on that split "
              "are no longer held out", file=sys.stderr)
    describe["docs"] = len(docs)
    state = _on_main(d, lambda: SearchState.load(out)) if args.resume and has_state(out) else None
    recorded = None if state is None else state.config.get("model_files")
    if recorded and recorded != describe["model_files"] and fingerprint_matches(recorded, args.model):
        describe["model_files"] = recorded  # an earlier release's fingerprint of these same weights
    job = SearchJob(lm.model, docs, plan.make, plan.space, config, plan.seeds, out, describe, options,
                    peers=plan.peers, seed_names=tuple(plan.names), title=plan.title,
                    is_main=d.is_main, evaluate_batch=distributed_evaluator(d), agree=lambda n: min_over_ranks(n, d),
                    finalize=plan.finalize)
    state, ext = drive(job, state)
    if d.is_main:
        best = state.best.evaluation
        peers = ", ".join(f"{name} {ppl:.4f}" for name, ppl in seed_scores(job, state).items())
        print(f"best perplexity {best.perplexity:.4f} at {N} tokens (n_hat={ext.start_token}) after "
              f"{state.generation} generations, {len(state.history)} candidates"
              + (f"; the seeds scored {peers}" if peers else "") + f"; wrote {out / 'factors.json'}")
    return 0


def _short_metadata(long_ext: RopeExtension):
    """The found extension's metadata: the long search's record, with this search's under
    "short_search" (its settings and cost) instead of replacing it."""
    keys = ("search_perplexity", "generations", "candidates", "document_forwards", "seed", "target_length",
            "docs", "corpus", "split_seed", "dtype", "optimizer", "objective")

    def finalize(ext: RopeExtension) -> RopeExtension:
        found = {k: ext.metadata[k] for k in keys if k in ext.metadata}
        return ext.with_(metadata={**long_ext.metadata, "short_search": found})

    return finalize
