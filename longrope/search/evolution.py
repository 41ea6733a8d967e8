"""LongRoPE's evolutionary search (arXiv 2402.13753, Algorithm 1): the genetic optimizer that the
search loop (search/loop.py) asks for each generation's candidates.

    population = seed_population()              # PI, NTK, YaRN + mutations of them   (first)
    for generation in 1..T:                      # the loop
        parents  = top_k(population)
        mutants  = N1 mutations of random parents                                      (ask)
        children = N2 crossovers of random parent pairs                                (ask)
        score(mutants + children)               # never a vector scored before
        population = parents + mutants + children

One numpy Generator drives every random choice; its state is the search state's `rng_state`,
saved after each generation (tell), so a resumed run draws what an uninterrupted one does.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Sequence

import numpy as np

from .genes import Genome, SearchSpace
from .scoring import Rule
from .state import Evaluation, SearchConfig, SearchState, restore_rng


def _new_genome(make: Callable[[], Genome | None], seen: set, tries: int = 100) -> Genome | None:
    """Draw with `make` until a genome never scored (nor drawn in this batch) comes out."""
    for _ in range(tries):
        g = make()
        if g is not None and g.key not in seen:
            seen.add(g.key)
            return g
    return None  # the neighbourhood is exhausted (only in tiny search spaces)


def seed_population(space: SearchSpace, seeds: Sequence[np.ndarray], size: int, p: float,
                    rng: np.random.Generator, start_token: int | None = None) -> list[Genome]:
    """The seed vectors snapped onto the grid (PI, NTK, YaRN in the paper), then mutations
    of randomly chosen seeds until the population has `size` members.

    When the seeds snap to one genome, as PI, NTK and YaRN do for LongRoPE2's critical variant
    (each puts every dim >= cd at s, the lower bound), the rest are drawn uniformly
    (`SearchSpace.random_genome`) instead: a mutation redraws a gene between its neighbours'
    values, so the mutants of a flat genome differ only in its top gene, and the search could
    not leave the seed."""
    seen: set = set()
    population = []
    for lam in seeds:
        g = space.from_factors(lam, start_token)
        if g.key not in seen and len(population) < size:
            seen.add(g.key)
            population.append(g)
    base = list(population)
    if len(base) == 1:
        def make() -> Genome:
            return space.random_genome(rng, start_token)
    else:
        def make() -> Genome:
            return space.mutate(base[int(rng.integers(len(base)))], rng, p)
    while len(population) < size:
        g = _new_genome(make, seen)
        if g is None:
            break
        population.append(g)
    return population


class Genetic:
    """Algorithm 1's optimizer (`search.loop.Optimizer`): the population of generation 0 is the
    seeds and their mutations; each generation, N1 mutations and N2 crossovers of the top-k."""

    def __init__(self, space: SearchSpace, config: SearchConfig):
        self.space, self.config = space, config
        self.settings: dict[str, Any] = {}  # the config's fields say all
        self.rng: np.random.Generator | None = None

    def first(self, seeds: Sequence[np.ndarray]) -> list[Genome]:
        self.rng = np.random.default_rng(self.config.seed)
        fixed = self.space.start_tokens[0] if len(self.space.start_tokens) == 1 else None
        return seed_population(self.space, seeds, self.config.population, self.config.mutation_prob, self.rng, fixed)

    def start(self, state: SearchState) -> None:
        state.rng_state = self.rng.bit_generator.state

    def resume(self, state: SearchState) -> None:
        restore_rng(state.rng_state)  # a damaged one is refused before any work

    def ask(self, state: SearchState, parents: list[int], scored: Collection) -> list[Genome]:
        """N1 mutants, then N2 children, each never scored (nor drawn in this batch) before."""
        space, p = self.space, self.config.mutation_prob
        rng = self.rng = restore_rng(state.rng_state)
        seen = set(scored)
        parent_genomes = [state.history[i].genome for i in parents]

        def random_parent() -> Genome:
            return parent_genomes[int(rng.integers(len(parent_genomes)))]

        mutants = []
        for _ in range(self.config.mutations):
            g = _new_genome(lambda: space.mutate(random_parent(), rng, p), seen)
            if g is not None:
                mutants.append(g)

        def cross() -> Genome:
            # up to 20 tries for a valid child, then a mutation instead (Algorithm 1 keeps the population size)
            for _ in range(20):
                i, j = rng.choice(len(parent_genomes), size=2, replace=len(parent_genomes) < 2)
                child = space.crossover(parent_genomes[i], parent_genomes[j], rng)
                if child is not None and child.key not in seen:
                    return child
            return space.mutate(random_parent(), rng, p)

        children = []
        for _ in range(self.config.crossovers):
            g = _new_genome(cross, seen)
            if g is not None:
                children.append(g)
        return mutants + children

    def tell(self, state: SearchState, evaluations: list[Evaluation], rule: Rule | None) -> None:
        state.rng_state = self.rng.bit_generator.state  # selection is the loop's top-k: only the draws to keep
