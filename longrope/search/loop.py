"""The search loop: LongRoPE's Algorithm 1 (arXiv 2402.13753) with the optimizer as an argument.

    population = optimizer.first(seeds)              # PI, NTK, YaRN (the GA adds mutations of them)
    score(population)                                # generation 0: no parents, so no rejection
    optimizer.start(state); checkpoint()
    for generation in 1..T:
        parents    = top_k(population)
        candidates = optimizer.ask(state, parents)   # GA: N1 mutations + N2 crossovers; CMA-ES: lambda samples
        rule       = reject_rule(state, parents)     # early rejection, fixed before any candidate is scored
        score(candidates never scored before)        # the others keep the score they have in the history
        optimizer.tell(state, their scores)          # GA: keeps its RNG; CMA-ES: adapts its distribution
        population = parents + the new ones
        checkpoint()                                 # everything needed to resume exactly

Optimizers are chosen by name (`OPTIMIZERS`: the paper's GA, search/evolution.py; CMA-ES,
search/cma.py); this loop alone holds the state, resumes it, fixes each generation's rejection
rule, keeps the history (no vector is scored twice) and calls the checkpoint. The objective comes
in a `Scoring` (search/scoring.py), so the search runs on a synthetic objective in milliseconds.

Determinism: an optimizer keeps its random state in the search state after every generation, and
a generation's rejection rule is fixed before it starts, so a candidate's score never depends on
which process scored it or in which order: a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable, Collection, Protocol, Sequence

import numpy as np

from ..methods import ntk_factors, pi_factors, yarn_factors
from ..rope import RotarySpec
from .cma import CMAES
from .evolution import Genetic
from .genes import Genome, SearchSpace
from .scoring import EvaluateBatch, Rule, Scoring, evaluate_serial, reject_rule
from .state import Evaluation, Record, SearchConfig, SearchState, check_same_config, space_config, top_k


class Optimizer(Protocol):
    """Proposes the candidates of each generation and learns from their scores. What it needs to
    continue lives in the state (`rng_state`, `optimizer_state`: JSON), so it may be rebuilt at any
    generation: a resume is the same as going on."""

    space: SearchSpace
    config: SearchConfig
    settings: dict[str, Any]  # recorded in the state's config, so a resume with others is refused

    def first(self, seeds: Sequence[np.ndarray]) -> list[Genome]:
        """Generation 0, from the seed factor vectors [d/2]; no genome twice."""

    def start(self, state: SearchState) -> None:
        """Its own state, once generation 0 is scored."""

    def resume(self, state: SearchState) -> None:
        """Check its saved state before any work (UsageError when it is damaged or not its own)."""

    def ask(self, state: SearchState, parents: list[int], scored: Collection) -> list[Genome]:
        """The next generation's candidates; parents: the top-k (indices into the history); scored:
        the keys of every genome in the history (one of them is not scored again)."""

    def tell(self, state: SearchState, evaluations: list[Evaluation], rule: Rule | None) -> None:
        """The evaluation of each candidate asked, in order (a genome scored before: its old one)."""


# name -> Optimizer(space, config)
OPTIMIZERS: dict[str, Callable[[SearchSpace, SearchConfig], Optimizer]] = {
    "ga": Genetic,  # LongRoPE's Algorithm 1 (arXiv 2402.13753)
    "cma": CMAES,  # CMA-ES (Hansen, arXiv 1604.00772) on a monotone parametrization, search/cma.py
}


def run_search(optimizer: Optimizer, scoring: Scoring, seeds: Sequence[np.ndarray], state: SearchState | None = None,
               describe: dict[str, Any] | None = None, evaluate_batch: EvaluateBatch = evaluate_serial,
               on_generation: Callable[[SearchState], None] | None = None) -> SearchState:
    """Run (or continue, given `state`) a search; returns the final state.

    seeds: factor vectors [d/2] that start the population. describe: extra settings (model,
    corpus, ...) stored in the state so a resume with other settings is refused.
    evaluate_batch: scores a generation (`evaluate_serial`, or across ranks in distributed.py).
    on_generation: called after each generation (checkpoint, progress bar).
    """
    space, config = optimizer.space, optimizer.config
    full_config = {**asdict(config), **space_config(space), **(describe or {}), **optimizer.settings}
    if state is None:
        state = SearchState(full_config, 0, [], [], {})
        state.population = _score(state, optimizer.first(seeds), 0, space, scoring, None, evaluate_batch)
        optimizer.start(state)
        if on_generation:
            on_generation(state)
    else:
        check_same_config(state.config, full_config, state.generation)
        state.check(space)
        optimizer.resume(state)
    scored = {r.genome.key: i for i, r in enumerate(state.history)}  # genome -> its record: never scored twice

    while state.generation < config.iterations:
        generation = state.generation + 1
        parents = top_k(state, state.population, config.parents)
        asked = optimizer.ask(state, parents, scored)
        new, slots = _unscored(asked, scored, len(state.history))
        rule = reject_rule(state, parents, scoring.num_docs, config)
        fresh = _score(state, new, generation, space, scoring, rule, evaluate_batch)
        scored.update((g.key, i) for g, i in zip(new, fresh))
        optimizer.tell(state, [state.history[i].evaluation for i in slots], rule)
        state.population = parents + fresh
        state.generation = generation
        if on_generation:
            on_generation(state)
    return state


def _unscored(asked: list[Genome], scored: dict, first: int) -> tuple[list[Genome], list[int]]:
    """The asked genomes that are not in the history (each once, in order; they will be recorded
    from index `first` on), and where in the history each asked genome's record is or will be."""
    new: list[Genome] = []
    slots, pending = [], {}
    for g in asked:
        i = scored.get(g.key, pending.get(g.key))
        if i is None:
            i = pending[g.key] = first + len(new)
            new.append(g)
        slots.append(i)
    return new, slots


def _score(state: SearchState, genomes: list[Genome], generation: int, space: SearchSpace, scoring: Scoring,
           rule: Rule | None, evaluate_batch: EvaluateBatch) -> list[int]:
    """Score `genomes` (evaluate_batch) and record them in the history; returns their indices there."""
    evals = evaluate_batch(scoring, [space.factors(g) for g in genomes], [g.start_token for g in genomes], rule)
    first = len(state.history)
    state.history.extend(Record(generation, g, e) for g, e in zip(genomes, evals))
    return list(range(first, len(state.history)))


# -- the seeds ------------------------------------------------------------------------------------
PEER_SEED_NAMES = ("PI", "NTK", "YaRN")


def peer_seeds(spec: RotarySpec, scale: float) -> list[np.ndarray]:
    """PI, NTK and YaRN factor vectors [d/2]: the paper's initial population (section 3.2)."""
    return [f(spec, scale).numpy() for f in (pi_factors, ntk_factors, yarn_factors)]


def carried_seed(long_factor: Sequence[float], from_scale: float, scale: float) -> np.ndarray:
    """Long factors searched for scale s0 carried to scale s: lambda**(ln s / ln s0). A factor
    of 1 (a dim left as trained) stays 1 and a factor of s0 (interpolated) becomes s; between,
    the search's shape is kept on a log scale. Factors of a scale of at most 1 are kept as
    they are."""
    lam = np.asarray(long_factor, dtype=np.float64)
    return lam if from_scale <= 1 else lam ** (math.log(scale) / math.log(from_scale))
