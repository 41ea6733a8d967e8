"""One search driver for `longrope search` and the recipe's search stages.

    objective = OBJECTIVES[name](model, docs, make, chunk_size)   # ppl (default), tail, needle or passkey
    optimizer = OPTIMIZERS[name](space, config)                   # ga: Algorithm 1 (default), or cma
    state     = run_search(optimizer, Scoring(objective, ...), seeds, ...)   # the one loop, search/loop.py
    after every generation: history.jsonl, state.json, factors.json  (resume point)
    at the end:             factors.json, search.png [, factors.png]

The caller decides what a candidate means (`make`, see `fitness`), which documents score it,
and whether to resume (a loaded `SearchState`). Objectives and optimizers are chosen by name
(`SearchOptions`); both names are part of the state's configuration, so a resume with another
one is refused (states written before they existed are the GA's, on perplexity).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..version import __version__
from ..data import tokens_fingerprint
from ..settings import LossOptions
from ..errors import UsageError
from ..factors import RopeExtension
from ..methods import attention_factor, ntk_factors, pi_factors, yarn_factors
from ..options import check_options, option
from ..rope import RotarySpec
from .fitness import OBJECTIVES, MakeExtension, auto_candidates_per_forward
from .genes import SearchSpace
from .loop import OPTIMIZERS, PEER_SEED_NAMES, run_search
from .needle import KEYS
from .plots import plot_factors, plot_progress
from .scored import SCORED_FILE, ScoredLog
from .scoring import Scoring, evaluate_serial
from .state import STATE_FILE, SearchConfig, SearchState, population_curve, write_history


@dataclass(frozen=True)
class SearchOptions(LossOptions):
    """What a search needs beyond Algorithm 1's hyper-parameters: the optimizer and objective,
    the fitness documents, the grid and bound of the factors, the loss chunk. `longrope search`
    flags, recipe keys."""

    docs: int = option(5, "K search documents (as the paper)", min=1, max=10_000)
    step: float = option(0.01, "grid step of the factors", above=0)
    max_factor: float | None = option(None, "upper bound of lambda", default_help="1.25*s", above=1)
    optimizer: str = option("ga", "ga: the paper's evolutionary search; cma: CMA-ES (cmaes) on a monotone "
                            "parametrization of the same genome, mutations + crossovers samples per generation",
                            choices=tuple(OPTIMIZERS))
    objective: str = option("ppl", "ppl: perplexity of every token; tail: perplexity of the last half of each "
                            "document's tokens (the positions only the extension reaches); needle: loss of the "
                            "answer tokens only, with needles inserted at several depths of each document "
                            "(LongRoPE2); passkey: the same on passkey prompts, one per document, for a model "
                            "that knows them (tiny presets, passkey fine-tuning)",
                            choices=tuple(OBJECTIVES))
    needles: int = option(3, f"needles per document for --objective needle (1 to {len(KEYS)})")
    candidates_per_forward: int = option(0, "candidates scored together in one forward pass, a batch row each, on "
                                         "a GPU for little more than the cost of one (scores equal one at a time "
                                         "up to float rounding); 0: sized from free GPU memory, 1 on CPU, or a "
                                         "resumed search's value")

    def __post_init__(self):
        check_options(self)
        for key, names in (("optimizer", OPTIMIZERS), ("objective", OBJECTIVES)):
            if getattr(self, key) not in names:
                raise UsageError(f"--{key} must be one of {', '.join(names)}, got {getattr(self, key)!r}")
        if not 1 <= self.needles <= len(KEYS):
            raise UsageError(f"--needles must be in [1, {len(KEYS)}], got {self.needles}")
        if self.candidates_per_forward < 0:
            raise UsageError(f"--candidates-per-forward must be >= 1, or 0 to size it automatically; "
                             f"got {self.candidates_per_forward}")
        # a settings class that also derives from SearchConfig checks its fields too
        getattr(super(), "__post_init__", lambda: None)()

    def method(self) -> dict[str, Any]:
        """Optimizer and objective (and the needles of the needle objective): recorded in the
        search state, so a resume with another one is refused."""
        needles = {"needles": self.needles} if self.objective == "needle" else {}
        return {"optimizer": self.optimizer, "objective": self.objective, **needles}


# {"optimizer": "ga", "objective": "ppl"}: the defaults, and what a state.json written before these keys existed ran
DEFAULT_METHOD = SearchOptions().method()


@dataclass
class SearchJob:
    """Everything one search needs. `describe` (model, corpus, ...) is stored in the state, so a
    resume with other settings is refused, and in the factors file's metadata."""

    model: torch.nn.Module
    docs: Sequence[torch.Tensor]  # K documents [T], scored in this order
    make: MakeExtension
    space: SearchSpace
    config: SearchConfig
    seeds: Sequence[np.ndarray]  # factor vectors [d/2] that start the population
    out: Path
    describe: dict[str, Any]
    options: SearchOptions = SearchOptions()  # optimizer, objective, chunk_size (docs: already chosen)
    title: str = "search"
    peers: RotarySpec | None = None  # plot factors.png against PI/NTK/YaRN for this spec
    is_main: bool = True  # writes the files (rank 0)
    evaluate_batch: Callable = evaluate_serial
    resume_hint: str = "continue with --resume"
    progress: bool = True
    agree: Callable[[int], int] = int  # the value every rank uses of a per-rank one (distributed: the smallest)
    seed_names: Sequence[str] = PEER_SEED_NAMES  # a name per seed, for the comparison printed at the end
    finalize: Callable[[RopeExtension], RopeExtension] | None = None  # adjusts the factors file written

    @property
    def settings(self) -> dict[str, Any]:
        """`describe` with the optimizer and objective: the state's and factors file's record."""
        return {**self.describe, **self.options.method()}


def has_state(out: Path) -> bool:
    return (out / STATE_FILE).is_file()


class SearchOutputs:
    """What the main process writes: state.json + history.jsonl + factors.json after each
    generation, and the plots at the end. Every file is written atomically."""

    def __init__(self, job: SearchJob):
        self.job = job
        self.last: SearchState | None = None

    def extension(self, state: SearchState) -> RopeExtension:
        """The best candidate's extension, with what produced it in its metadata."""
        best, job = state.best, self.job
        ext = job.make(job.space.factors(best.genome), best.genome.start_token)
        rope = {} if job.peers is None else {"rope_theta": job.peers.base, "rotary_dim": job.peers.dim}
        ext = ext.with_(metadata={
            **ext.metadata, **job.settings, **rope, "search_perplexity": best.evaluation.perplexity,
            "generations": state.generation, "candidates": len(state.history),
            "document_forwards": sum(len(r.evaluation.doc_losses) for r in state.history),
            "variant": job.space.variant, "seed": state.config.get("seed"), "version": __version__,
        })
        return ext if job.finalize is None else job.finalize(ext)

    def checkpoint(self, state: SearchState) -> None:
        write_history(self.job.out, state, self.job.space)
        state.save(self.job.out)  # last: state.json is the record of a completed generation
        self.extension(state).save(self.job.out / "factors.json")
        self.last = state

    def finish(self, state: SearchState) -> RopeExtension:
        job = self.job
        ext = self.extension(state)
        ext.save(job.out / "factors.json")
        n = len(job.docs)
        plot_progress(population_curve(state), job.out / "search.png",
                      title=f"{job.title}\n{n} document{'s' if n != 1 else ''} scored per candidate")
        if job.peers is not None:
            s = job.space.scale
            curves = {"PI": pi_factors(job.peers, s).tolist(), "NTK": ntk_factors(job.peers, s).tolist(),
                      "YaRN": yarn_factors(job.peers, s).tolist(), "searched": list(ext.long_factor)}
            plot_factors(curves, job.out / "factors.png",
                         title=f"{job.title}: rescale factors, s = {s:g}\nsearched: n_hat = {ext.start_token}, "
                               f"attention factor {attention_factor(ext):.3f}")
        return ext


def candidates_per_forward(job: SearchJob, objective, state: SearchState | None) -> int:
    """--candidates-per-forward resolved: the value given; else a resumed search's (1 for a state
    written before the option existed); else sized from free GPU memory, 1 on CPU."""
    if job.options.candidates_per_forward:
        return job.options.candidates_per_forward
    if state is not None:
        return int(state.config.get("candidates_per_forward", 1))
    probe = job.space.from_factors(np.asarray(job.seeds[0]), job.space.start_tokens[0])
    n = job.agree(auto_candidates_per_forward(objective, (job.space.factors(probe), probe.start_token)))
    if job.is_main and next(job.model.parameters()).is_cuda:
        print(f"scoring {n} candidates per forward pass (sized from free GPU memory)", file=sys.stderr)
    return n


# what a state records about its inputs since these were added; a state saved before lacks them
FINGERPRINTS = ("documents", "chunk_size", "model_files")


def _describe(job: SearchJob, state: SearchState | None) -> dict[str, Any]:
    """`job.settings` plus the fingerprint of the scored documents and the chunking, so a resume
    on edited documents or another --chunk-size is refused (a state from before: noted, taken)."""
    ids = [d if isinstance(d, torch.Tensor) else d.ids for d in job.docs]  # needle documents carry .ids
    describe = {**job.settings, "documents": tokens_fingerprint(ids), "chunk_size": job.options.chunk_size}
    if state is not None and job.is_main:
        missing = [k for k in FINGERPRINTS if k in describe and k not in state.config]
        if missing:
            print(f"note: {job.out / STATE_FILE} predates {', '.join(missing)} checks; resuming without them",
                  file=sys.stderr)
            describe = {k: v for k, v in describe.items() if k not in missing}
    return describe


def seed_scores(job: SearchJob, state: SearchState) -> dict[str, float]:
    """Perplexity of the PI / NTK / YaRN seeds (and any --init-factors), as snapped onto the grid,
    among the scored candidates: what the search result is to be compared with."""
    keys = {job.space.from_factors(np.asarray(seed)).key: name
            for name, seed in zip(job.seed_names, job.seeds)} if len(job.seed_names) == len(job.seeds) else {}
    found = {}
    for r in state.history:
        name = keys.get(r.genome.key)
        if name and name not in found and not r.evaluation.rejected:
            found[name] = r.evaluation.perplexity
    return {name: found[name] for name in job.seed_names if name in found}


def _candidates(config: SearchConfig) -> int:
    return config.population + config.iterations * (config.mutations + config.crossovers)


class _Progress:
    """The search's progress bar: candidates started, generation, best so far, and the
    documents the current candidate has scored (redrawn at most once a second)."""

    def __init__(self, job: SearchJob, state: SearchState | None):
        self.bar = tqdm(total=_candidates(job.config), desc=job.title, unit="cand", dynamic_ncols=True,
                        disable=not (job.is_main and job.progress),
                        initial=0 if state is None else len(state.history))
        self.num_docs, self.fields, self.shown = len(job.docs), {}, 0.0
        self.iterations = job.config.iterations
        if state is None:
            self.generation(0)
        else:  # resumed: the best of the saved generations from the start
            self.generation(state.generation + 1, best_ppl=f"{state.best.evaluation.perplexity:.3f}")

    def generation(self, g: int, **fields) -> None:
        """The generation in progress, g of T (0: the initial population; T once the last is done)."""
        self.set(gen=f"{min(g, self.iterations)}/{self.iterations}", **fields)

    def set(self, **fields) -> None:
        self.fields.update(fields)
        self.bar.set_postfix(self.fields, refresh=False)
        if time.monotonic() - self.shown >= 1.0:
            self.shown = time.monotonic()
            self.bar.refresh()

    def docs(self, scored: int) -> None:
        self.set(docs=f"{scored}/{self.num_docs}")


def drive(job: SearchJob, state: SearchState | None = None) -> tuple[SearchState, RopeExtension | None]:
    """Run (or continue, given `state`) one search and write its files; returns the final state
    and, on the main process, the best candidate's extension. The model's RoPE is left original."""
    opts = job.options
    scorer = OBJECTIVES[opts.objective](job.model, job.docs, job.make, opts.chunk_size)
    if state is not None:
        for key, value in {**DEFAULT_METHOD, "candidates_per_forward": 1}.items():  # as before these keys existed
            state.config.setdefault(key, value)
    # recorded in the state: batch rows share matmuls, so another value changes the last bits of scores
    scorer.candidates_per_forward = candidates_per_forward(job, scorer, state)
    describe = {**_describe(job, state), "candidates_per_forward": scorer.candidates_per_forward}
    outputs = SearchOutputs(job) if job.is_main else None
    # one tick per candidate this process starts (resynchronised after each generation)
    progress = _Progress(job, state)
    bar = progress.bar

    # every document loss is kept as it comes (scored.jsonl), so a stop mid-generation loses at most one pass
    log = ScoredLog(job.out / SCORED_FILE if job.is_main else None, describe)
    scoring = Scoring(scorer, len(job.docs), memory=log, on_started=bar.update, on_documents=progress.docs)
    if log.losses:
        bar.write(f"reusing {len(log.losses)} document losses of the interrupted generation ({SCORED_FILE})", file=sys.stderr)

    def on_generation(st: SearchState) -> None:
        if outputs is not None:
            outputs.checkpoint(st)
            progress.generation(st.generation + 1, best_ppl=f"{st.best.evaluation.perplexity:.3f}")
            bar.update(len(st.history) - bar.n)
        log.clear()

    try:
        state = run_search(OPTIMIZERS[opts.optimizer](job.space, job.config), scoring, job.seeds, state=state,
                           describe=describe, evaluate_batch=job.evaluate_batch, on_generation=on_generation)
    except KeyboardInterrupt:
        bar.close()
        if outputs is not None:
            last = outputs.last or state
            if outputs.last is not None:
                outputs.finish(outputs.last)
            kept = (f"generation {last.generation} is saved in {job.out / STATE_FILE}" if last is not None
                    else "no generation was complete")
            print(f"interrupted: {kept}, and {len(log.losses)} document loss(es) of the generation in progress in "
                  f"{job.out / SCORED_FILE}; {job.resume_hint}", file=sys.stderr)
        raise
    finally:
        log.close()
        scorer.rope.set_extension(None)
    bar.close()
    return state, (outputs.finish(state) if outputs is not None else None)
