"""CMA-ES over the LongRoPE genome: a library optimizer next to the paper's genetic algorithm.

    seeds = PI, NTK, YaRN on the grid           # first: generation 0, scored like the GA's
    mean  = z(best seed); sigma = sigma0; C = I  # start
    for generation in 1..T:                      # the search loop (search/loop.py)
        z_1..z_lambda ~ N(mean, sigma^2 C)      # ask: cmaes.CMA.ask
        genomes = monotone_map(z)               # snapped to the grid
        score(genomes never scored)             # early rejection as in the GA
        tell(z, loss)                           # mean, sigma, C and evolution paths adapt
        checkpoint()                            # distribution + sampler state, as JSON

CMA-ES is Hansen's covariance matrix adaptation evolution strategy ("The CMA Evolution
Strategy: A Tutorial", arXiv 1604.00772), here from the maintained `cmaes` package. It works
on a real vector z; `MonotoneMap` turns any z into a valid genome of the same search space
as the GA (LongRoPE arXiv 2402.13753, section 3.2), so outputs, plots and resume code are shared:

- factor genes: lambda_i = lo + u * (|z_0| + ... + |z_i|), clipped to hi, then snapped to the
  grid. Increments are non-negative, so every vector is non-decreasing and inside its bounds;
  u = (hi - lo) / n, so z = (1, ..., 1) spans the whole range. |z| rather than max(z, 0): a
  flat stretch (zero increments) is then a minimum CMA can home in on, not a half-space plateau
  its mean would drift into.
- n_hat (when searched): one more coordinate, START_TOKENS index = round(z_n * (m - 1)),
  clipped to [0, m - 1]; generation 0 scores the seeds at the first candidate (0), as the GA.
- variants: the genes are those of the space (all d/2 dims, or dims >= cd for "critical");
  "piecewise" reads its band off the snapped vector: beta = the first gene at the top of the
  band's range (pinned to s from there), alpha = the genes at 1 before it.

lambda (samples per generation) = config.mutations + config.crossovers (N1 + N2, 32 by default,
as many new candidates per generation as the GA), the GA's `population` P is unused. The
population kept in the state is the GA's: top-k of everything scored plus the new candidates.

A sample that snaps to a genome scored before reuses its score (nothing is scored twice) and is
still told to CMA. Early rejection is the GA's (`--reject exact` or `race`, against the top-k);
CMA needs a finite value for every sample, so a rejected one is told the rule's stand-in: for
exact, its lower bound (losses so far + best-ever loss of each remaining document) / K; for
race, the k-th parent's mean + the mean paired difference so far; both above the threshold.

Determinism: every generation rebuilds the `cmaes.CMA` object from the state (mean, sigma, C,
evolution paths, generation and the MT19937 state of its sampler; explicit JSON fields, floats
round-trip exactly) and snapshots it after `tell`, so an uninterrupted run and a resumed one
take the same path. The `cmaes` version is part of the configuration: resuming with another
version, whose update could differ, is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

import numpy as np

from ..errors import UsageError
from .genes import Genome, SearchSpace
from .scoring import Rule
from .state import Evaluation, SearchConfig, SearchState

SIGMA0 = 0.25  # initial step size in z; z = 1 spans a gene's whole range
REJECTED = 1e9  # told for a rejected candidate when no bound exists (never in practice)


@dataclass(frozen=True)
class MonotoneMap:
    """z in R^dim <-> Genome of `space`; dim = genes (+ 1 when n_hat is searched)."""

    space: SearchSpace
    lo: float = field(init=False)
    hi: float = field(init=False)
    unit: float = field(init=False)  # u, in grid units

    def __post_init__(self):
        s = self.space
        lo, hi = float(s.lo[0]), float(s.hi[0])  # the bounds are the same for every gene
        assert np.all(s.lo == s.lo[0]) and np.all(s.hi == s.hi[0])
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "unit", max(hi - lo, 1.0) / s.num_genes)

    @property
    def searches_start(self) -> bool:
        return len(self.space.start_tokens) > 1

    @property
    def dim(self) -> int:
        return self.space.num_genes + int(self.searches_start)

    def genome(self, z: np.ndarray) -> Genome:
        """The genome of any real vector z [dim]: valid by construction."""
        s, n = self.space, self.space.num_genes
        assert z.shape == (self.dim,)
        v = np.minimum(self.lo + self.unit * np.cumsum(np.abs(z[:n])), self.hi)  # [n] grid units
        units = np.clip(np.rint(v), self.lo, self.hi)
        start = s.start_tokens[0]
        if self.searches_start:
            m = len(s.start_tokens)
            start = s.start_tokens[int(np.clip(np.rint(z[n] * (m - 1)), 0, m - 1))]
        band = None
        if s.variant == "piecewise":  # dims from the first one at the top are pinned to s, those at 1 below it to 1
            at_top = np.nonzero(units >= self.hi)[0]
            beta = int(at_top[0]) if at_top.size else s.half
            band = (int(np.sum(units[:beta] <= self.lo)), beta)
        return s._pin(units.astype(np.int64), band, start)

    def z_of(self, g: Genome) -> np.ndarray:
        """A z with genome(z).units == g.units (and genome(z) == g, except a piecewise band
        that the snapped vector does not determine): CMA's mean at a seed."""
        units = np.asarray(g.units, dtype=np.float64)
        z = np.diff(units, prepend=self.lo) / self.unit  # increments >= 0
        if self.searches_start:
            m = len(self.space.start_tokens)
            z = np.append(z, self.space.start_tokens.index(g.start_token) / (m - 1))
        return z


# -- the CMA state as explicit JSON fields -----------------------------------------------------
def _snapshot(cma) -> tuple[dict[str, Any], dict[str, Any]]:
    """(distribution, sampler RNG) of a cmaes.CMA right after `tell` (no cached eigenbasis)."""
    dist = {"mean": cma._mean.tolist(), "sigma": float(cma._sigma), "C": cma._C.tolist(),
            "p_sigma": cma._p_sigma.tolist(), "p_c": cma._pc.tolist(), "generation": int(cma._g)}
    rng = cma._rng.get_state(legacy=False)
    rng = {**rng, "state": {"key": rng["state"]["key"].tolist(), "pos": int(rng["state"]["pos"])}}
    return dist, rng


MIN_SAMPLES = 4  # with fewer, one parent: CMA-ES's rank-mu weights degenerate (cmu = 0)


def check_samples(samples: int) -> int:
    """The samples per generation (mutations + crossovers), or UsageError when CMA-ES cannot use so few."""
    if samples < MIN_SAMPLES:
        raise UsageError(f"CMA-ES needs at least {MIN_SAMPLES} samples per generation (--mutations + --crossovers), "
                         f"got {samples}")
    return samples


def _restore(dist: dict[str, Any], rng: dict[str, Any], popsize: int):
    """The cmaes.CMA that `_snapshot` saw. Its other fields (weights, learning rates) are
    functions of (dim, popsize); the sampler is the MT19937 `RandomState` it draws from."""
    import cmaes

    try:
        mean, sigma, cov = _vector(dist["mean"]), float(dist["sigma"]), np.array(dist["C"], dtype=np.float64)
        n = len(mean)
        paths = _vector(dist["p_sigma"]), _vector(dist["p_c"])
        if not (n >= 1 and math.isfinite(sigma) and sigma > 0 and cov.shape == (n, n) and np.all(np.isfinite(cov))
                and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
                and all(len(p) == n for p in paths) and isinstance(dist["generation"], int) and dist["generation"] >= 0):
            raise ValueError("needs a finite mean, sigma > 0, a symmetric positive definite C and paths of one length")
        cma = cmaes.CMA(mean=mean, sigma=sigma, population_size=popsize, cov=cov)
        cma._p_sigma, cma._pc = paths
        cma._g = dist["generation"]
        cma._rng.set_state(rng)
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as e:
        raise UsageError(f"state.json: the CMA-ES state is damaged ({e}); remove it to start afresh") from None
    return cma


def _vector(values) -> np.ndarray:
    """A finite float vector from a JSON list (ValueError otherwise)."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError("expected a list of numbers")
    out = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError("expected finite numbers")
    return out


def told_value(ev: Evaluation, rule: Rule | None) -> float:
    """What CMA is told for a scored candidate: its loss, or for a rejected one the rule's finite
    stand-in (exact: a lower bound of its loss; race: an estimate; above the threshold when it
    was just rejected)."""
    if not ev.rejected:
        return ev.loss
    if rule is None:
        return REJECTED
    return rule.stopped_loss(ev.doc_losses)


class CMAES:
    """CMA-ES as an `Optimizer` of the search loop (search/loop.py): generation 0 is the seeds;
    each generation, lambda = mutations + crossovers samples of N(mean, sigma^2 C), mapped to
    genomes by `MonotoneMap` and told their losses. sigma0: the initial step size in z."""

    def __init__(self, space: SearchSpace, config: SearchConfig, sigma0: float = SIGMA0):
        import cmaes

        self.popsize = check_samples(config.mutations + config.crossovers)
        self.space, self.config, self.sigma0, self.zmap = space, config, sigma0, MonotoneMap(space)
        self.settings = {"optimizer": "cma", "sigma0": sigma0, "cmaes_version": cmaes.__version__}
        self.cma, self.zs = None, []

    def first(self, seeds: Sequence[np.ndarray]) -> list[Genome]:
        """The seeds at n_hat = the first candidate, each once."""
        seen: set = set()
        genomes = []
        for lam in seeds:
            g = self.space.from_factors(lam, self.space.start_tokens[0])
            if g.key not in seen:
                seen.add(g.key)
                genomes.append(g)
        return genomes

    def start(self, state: SearchState) -> None:
        """The distribution's mean at the best seed, step size sigma0, C = I."""
        import cmaes

        cma = cmaes.CMA(mean=self.zmap.z_of(state.best.genome), sigma=self.sigma0, population_size=self.popsize,
                        seed=self.config.seed)
        state.optimizer_state, state.rng_state = _snapshot(cma)

    def resume(self, state: SearchState) -> None:
        if state.optimizer_state is None:
            raise UsageError("the saved search has no CMA-ES state")
        _restore(state.optimizer_state, state.rng_state, self.popsize)  # a damaged distribution: refused before any work

    def ask(self, state: SearchState, parents: list[int], scored: Collection) -> list[Genome]:
        """lambda samples z of the distribution the state holds, as genomes (some may be scored already)."""
        self.cma = _restore(state.optimizer_state, state.rng_state, self.popsize)
        self.zs = [self.cma.ask() for _ in range(self.popsize)]
        return [self.zmap.genome(z) for z in self.zs]

    def tell(self, state: SearchState, evaluations: list[Evaluation], rule: Rule | None) -> None:
        """Each sample's loss (`told_value`) to CMA, whose mean, sigma, C and paths adapt; then saved."""
        self.cma.tell([(z, told_value(ev, rule)) for z, ev in zip(self.zs, evaluations)])
        state.optimizer_state, state.rng_state = _snapshot(self.cma)
