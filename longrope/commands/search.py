"""`longrope search`: find LongRoPE rescale factors and start token by evolutionary search.

Search per-dimension RoPE rescale factors and the start token for a target context length, with
perplexity on long documents (or on their last band, LongRoPE2's needle loss, or the passkey answer
loss: --objective) as the fitness, by the paper's evolutionary search or CMA-ES. Defaults are the
paper's.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import SPLIT_NAMES
from ..errors import UsageError
from ..factors import RopeExtension
from ..hf_config import load_factors
from ..outputs import output_dir
from ..models.device import resolve_dtype
from ..models.load import fingerprint_matches, load_model, model_fingerprint
from ..rope import RotarySpec
from ..search.distributed import (Dist, broadcast, close_distributed, distributed_evaluator, init_distributed,
                                  min_over_ranks)
from ..options import build
from ..search.cma import check_samples
from ..search.driver import SearchJob, SearchOptions, drive, has_state, seed_scores
from ..search.scored import SCORED_FILE
from ..search.fitness import search_documents
from ..search.loop import PEER_SEED_NAMES
from ..search.plan import Plan, SpaceOptions, long_plan, short_plan
from ..search.state import HISTORY_FILE, STATE_FILE, SearchConfig, SearchState
from ..settings import CorpusOptions, ModelOptions
from .common import OutputOptions, add_command


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


def register(sub) -> None:
    add_command(sub, "search", run,
                [ModelOptions, (CorpusOptions, dict(skip=("docs",), split=SPLIT_NAMES[0])),  # docs: SearchOptions'
                 (SpaceOptions, dict(required=("target_length",))), SearchConfig, SearchOptions,
                 (OutputOptions, dict(skip=("force",)))],
                help="evolutionary search for LongRoPE rescale factors (paper Algorithm 1)",
                description=__doc__, epilog=EPILOG)


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
    config, options, space = build(SearchConfig, args), build(SearchOptions, args), build(SpaceOptions, args)
    build(ModelOptions, args), build(CorpusOptions, args, docs=1)
    N = space.target_length
    if options.optimizer == "cma":
        check_samples(config.mutations + config.crossovers)
    for given in space.init_factors:
        _loaded("--init-factors", given)
    if space.short_for is not None:
        if space.init_factors or space.variant != "longrope" or space.start_tokens is not None:
            raise UsageError("--short-for searches every short factor at the long factors' n_hat; it takes no "
                             "--init-factors, --variant or --start-token")
        _loaded("--short-for", space.short_for)
    for t in space.start_tokens or ():
        if t >= N:
            raise UsageError(f"--start-token {t} must be below --target-length {N}")
    out = Path(args.out).expanduser()
    with contextlib.ExitStack() as owned:  # rank 0 owns --out (lock, writability, cleanup)
        owner = output_dir(out, command="search", outputs=OUTPUTS, keep=RESUMED if args.resume else (),
                           marker=STATE_FILE, inputs=[args.model, args.corpus, *space.init_factors, space.short_for])
        _on_main(d, lambda: _prepare_out(owned.enter_context(owner), args.resume))
        return _search(args, d, config, options, space, out)


def _long_plan(args: argparse.Namespace, space: SpaceOptions, options: SearchOptions, spec: RotarySpec,
               describe: dict[str, Any]) -> Plan:
    """Long factors for the target (Algorithm 1), seeded with PI/NTK/YaRN and --init-factors."""
    L, N = spec.original_max_position_embeddings, space.target_length
    if N <= L:
        raise UsageError(f"--target-length {N} must exceed the model's native context {L}")
    if space.critical_dim is not None and space.critical_dim >= spec.half:
        raise UsageError(f"--critical-dim {space.critical_dim} exceeds the model's {spec.half} frequencies")
    carried = []  # (name, extension) of each --init-factors
    for given in space.init_factors:
        ext = _fitting("--init-factors", given, spec)
        carried.append((str(ext.metadata.get("label") or Path(given).stem), ext))
    plan = long_plan(spec, space, options.step, options.max_factor, args.model, carried)
    if carried:  # recorded only when given: older states resume unchanged
        own = slice(len(PEER_SEED_NAMES), None)
        describe["init_factors"] = {name: [round(float(x), 6) for x in lam]
                                    for name, lam in zip(plan.names[own], plan.seeds[own])}
    return plan


def _short_plan(args: argparse.Namespace, space: SpaceOptions, options: SearchOptions, spec: RotarySpec,
                describe: dict[str, Any]) -> Plan:
    """--short-for: short factors at a length within the native context, for fixed long factors."""
    ext = _fitting("--short-for", space.short_for, spec)
    L, N = spec.original_max_position_embeddings, space.target_length
    if N > L:
        raise UsageError(f"--target-length {N} must be at most the model's native context {L} with --short-for "
                         f"(short factors serve sequences up to it)")
    if space.attention_factor is not None:
        raise UsageError("--short-for keeps the long factors' attention factor; drop --attention-factor")
    bound = options.max_factor or max(ext.scale, 1.0 + options.step)
    describe["short_for"] = ext.to_dict()
    return short_plan(ext, options.step, bound, {"long": np.minimum(np.asarray(ext.long_factor), bound)},
                      f"short factors at {N} tokens ({args.model})", finalize=_short_metadata(ext))


def _search(args: argparse.Namespace, d: Dist, config: SearchConfig, options: SearchOptions, space: SpaceOptions,
            out: Path) -> int:
    # -- the model, loaded once; candidates only swap its RoPE factors -------------------------
    device = args.device or (f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    lm = load_model(args.model, dtype=args.dtype, device=device)
    N = space.target_length
    describe = {"model": args.model, "model_files": model_fingerprint(args.model),
                "corpus": args.corpus or "stdlib", "target_length": N, "split_seed": args.split_seed,
                "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch.")}
    if space.attention_factor is not None:  # recorded only when set: older states resume unchanged
        describe["attention_factor"] = space.attention_factor
    if args.split != "search":
        describe["split"] = args.split
    plan = (_long_plan if space.short_for is None else _short_plan)(args, space, options, lm.spec, describe)

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
