"""The LongRoPE search space: genomes, their constraints, mutation and crossover.

A genome is the rescale-factor vector lambda on a grid (integer grid units, so that
"never score the same vector twice" is an exact comparison) plus the start token n_hat
(LongRoPE arXiv 2402.13753, section 3.2 and Algorithm 1). Every generator here returns
only genomes that are inside their bounds and non-decreasing (lambda_i <= lambda_{i+1}).

Three layouts of the lambda genes, chosen by name (`VARIANTS`):

- "longrope": every one of the d/2 factors is a gene, in [1, max_factor].
- "piecewise": two extra genes alpha <= beta; dims below alpha are pinned to 1, dims from
  beta on to s, only the band in between is searched, in [1, s] (paper, section 3.2).
- "critical": LongRoPE2 (arXiv 2502.20082, section 3): only dims >= cd are genes, in
  [s, max_factor]; dims below follow lambda_i = lambda_cd^(i/cd).

This module needs numpy only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError

# n_hat candidates of the paper (section 3.2, "start token")
START_TOKENS = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
VARIANTS = ("longrope", "piecewise", "critical")


@dataclass(frozen=True)
class Genome:
    """One candidate: `units` are the lambda genes in grid units (lambda = units * step),
    `band` the piecewise (alpha, beta) or None, `start_token` n_hat."""

    units: tuple[int, ...]
    start_token: int = 0
    band: tuple[int, int] | None = None

    @property
    def key(self) -> tuple:
        """Identity used to never score a vector twice."""
        return (self.units, self.start_token, self.band)

    def to_dict(self) -> dict:
        return {"units": list(self.units), "start_token": self.start_token,
                "band": None if self.band is None else list(self.band)}

    @classmethod
    def from_dict(cls, d: dict) -> "Genome":
        band = d.get("band")
        return cls(tuple(int(u) for u in d["units"]), int(d["start_token"]),
                   None if band is None else (int(band[0]), int(band[1])))


def critical_dimension(dim: int, base: float, original_max_position_embeddings: int) -> int:
    """LongRoPE2's theoretical critical dim cd = ceil((d/2) * log_b(L / (2*pi)))."""
    cd = math.ceil((dim / 2) * math.log(original_max_position_embeddings / (2 * math.pi)) / math.log(base))
    return min(max(cd, 1), dim // 2 - 1)


def rescaled_critical_dimension(dim: int, base: float, context: int, factors) -> int:
    """The critical dim of a model that already runs rescaled RoPE (factors lambda, fine-tuned at
    `context` tokens): the first dim whose rescaled period 2*pi*b^(2i/d)*lambda_i reaches `context`,
    LongRoPE2's cd for the frequencies the model was fine-tuned with (all ones: `critical_dimension`)."""
    half = dim // 2
    cd = next((i for i, lam in enumerate(factors) if 2 * math.pi * base ** (2 * i / dim) * lam >= context), half)
    return min(max(cd, 1), half - 1)


@dataclass(frozen=True)
class SearchSpace:
    """Where the genomes live: d/2 factors, scale s, grid step, bounds, n_hat candidates."""

    half: int  # d/2
    scale: float  # s = L'/L
    max_factor: float  # upper bound of lambda (paper: 1.25*s)
    step: float = 0.01  # grid step of lambda
    start_tokens: tuple[int, ...] = START_TOKENS  # one value = n_hat fixed
    variant: str = VARIANTS[0]
    critical_dim: int = 0  # cd, used by the "critical" variant
    lo: np.ndarray = field(init=False, repr=False, compare=False)
    hi: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise UsageError(f"unknown search variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        if not self.step > 0:
            raise UsageError(f"--step must be positive, got {self.step}")
        if self.scale <= 1:
            raise UsageError(f"scale must exceed 1, got {self.scale}")
        if self.max_factor < self.scale:
            raise UsageError(f"--max-factor {self.max_factor} is below the scale s = {self.scale:g}")
        if not self.start_tokens or any(t < 0 for t in self.start_tokens):
            raise UsageError("start-token candidates must be non-negative integers")
        if self.variant == "critical" and not 0 < self.critical_dim < self.half:
            raise UsageError(f"critical dim must be in [1, {self.half - 1}], got {self.critical_dim}")
        one, s, top = self.to_units(1.0, "up"), self.to_units(self.scale, "up"), self.to_units(self.max_factor, "down")
        n = self.num_genes
        if self.variant == "longrope":
            lo, hi = np.full(n, one), np.full(n, top)
        elif self.variant == "piecewise":  # the band lies between 1 and s, so pins keep monotone
            lo, hi = np.full(n, one), np.full(n, self.to_units(self.scale, "down"))
        else:  # critical: dims >= cd need lambda >= s (LongRoPE2, section 3.1)
            lo, hi = np.full(n, s), np.full(n, top)
        if np.any(lo > hi):
            raise UsageError(f"no grid point of step {self.step} lies in the factor range [{lo[0] * self.step:g}, "
                             f"{hi[0] * self.step:g}]; use a smaller --step or a larger --max-factor")
        object.__setattr__(self, "lo", lo.astype(np.int64))
        object.__setattr__(self, "hi", hi.astype(np.int64))

    def to_units(self, value: float, rounding: str = "nearest") -> int:
        x = value / self.step
        if rounding == "up":
            return int(math.ceil(x - 1e-9))
        if rounding == "down":
            return int(math.floor(x + 1e-9))
        return int(round(x))

    @property
    def num_genes(self) -> int:
        return self.half - self.critical_dim if self.variant == "critical" else self.half

    def factors(self, g: Genome) -> np.ndarray:
        """The d/2 rescale factors lambda (float64) that genome `g` stands for."""
        lam = np.round(np.asarray(g.units, dtype=np.float64) * self.step, 9)  # 1.23, not 1.2300000000000002
        if self.variant == "piecewise":
            alpha, beta = g.band
            lam[:alpha] = 1.0
            lam[beta:] = self.scale
        elif self.variant == "critical":
            cd = self.critical_dim
            below = lam[0] ** (np.arange(cd) / cd)  # lambda_i = lambda_cd^(i/cd), LongRoPE2 eq. 6
            lam = np.concatenate([below, lam])
        assert lam.shape == (self.half,)
        return lam

    def is_valid(self, g: Genome) -> bool:
        u = np.asarray(g.units)
        ok = u.shape == (self.num_genes,) and bool(np.all(u >= self.lo) and np.all(u <= self.hi))
        ok = ok and bool(np.all(np.diff(u) >= 0)) and g.start_token in self.start_tokens
        if self.variant == "piecewise":
            ok = ok and g.band is not None and 0 <= g.band[0] <= g.band[1] <= self.half
            ok = ok and g == self._pin(u, g.band, g.start_token)
        return ok

    # -- building genomes ------------------------------------------------------------------
    def _pin(self, units: np.ndarray, band: tuple[int, int] | None, start_token: int) -> Genome:
        """Genome from a monotone unit vector; piecewise pins the dims outside the band."""
        units = units.copy()
        if self.variant == "piecewise":
            alpha, beta = band
            units[:alpha] = self.lo[:alpha]
            units[beta:] = self.hi[beta:]
        return Genome(tuple(int(u) for u in units), int(start_token), band)

    def from_factors(self, lam: np.ndarray, start_token: int | None = None) -> Genome:
        """Snap any factor vector onto the grid, clip it to the bounds, repair it to be
        non-decreasing (running maximum) and read its piecewise band off it."""
        lam = np.asarray(lam, dtype=np.float64)
        assert lam.shape == (self.half,)
        start = self.start_tokens[0] if start_token is None else start_token
        band = None
        if self.variant == "piecewise":
            alpha = int(np.sum(lam <= 1.0 + self.step / 2))  # leading dims at 1
            at_s = np.nonzero(lam >= self.scale - self.step / 2)[0]
            beta = max(int(at_s[0]) if at_s.size else self.half, alpha)
            band = (alpha, beta)
        elif self.variant == "critical":
            lam = lam[self.critical_dim :]
        units = np.rint(lam / self.step).astype(np.int64)
        units = np.maximum.accumulate(np.clip(units, self.lo, self.hi))
        return self._pin(units, band, start)

    def random_genome(self, rng: np.random.Generator, start_token: int | None = None) -> Genome:
        """A genome drawn uniformly over the non-decreasing ones: every gene uniform on its grid
        range, sorted; n_hat uniform over its candidates unless given."""
        units = np.sort(rng.integers(self.lo, self.hi + 1))
        lam = units * self.step
        if self.variant == "critical":  # from_factors takes all d/2 and keeps dims >= cd
            lam = np.concatenate([np.ones(self.critical_dim), lam])
        start = self.start_tokens[int(rng.integers(len(self.start_tokens)))] if start_token is None else start_token
        return self.from_factors(lam, start)

    def mutate(self, g: Genome, rng: np.random.Generator, p: float) -> Genome:
        """Each gene changes with probability p (paper Algorithm 1, MUTATION): a factor is
        redrawn uniformly on the grid between its neighbours' current values, so the vector
        stays non-decreasing and in bounds; n_hat is redrawn from its candidates."""
        units = np.asarray(g.units, dtype=np.int64).copy()
        band = g.band
        n = units.size
        if band is not None:
            alpha, beta = band
            if rng.random() < p:
                alpha = int(rng.integers(0, beta + 1))
            if rng.random() < p:
                beta = int(rng.integers(alpha, self.half + 1))
            band = (alpha, beta)
            units = np.asarray(self._pin(units, band, 0).units, dtype=np.int64)
            active = range(alpha, beta)
        else:
            active = range(n)
        for i in active:
            if rng.random() < p:
                low = units[i - 1] if i > 0 else self.lo[i]
                high = units[i + 1] if i + 1 < n else self.hi[i]
                units[i] = rng.integers(max(low, self.lo[i]), min(high, self.hi[i]) + 1)
        start = g.start_token
        if len(self.start_tokens) > 1 and rng.random() < p:
            start = self.start_tokens[int(rng.integers(len(self.start_tokens)))]
        return self._pin(units, band, start)

    def crossover(self, a: Genome, b: Genome, rng: np.random.Generator) -> Genome | None:
        """Uniform crossover (paper Algorithm 1, CROSSOVER): each gene comes from parent b with
        probability 0.5. Returns None when the child is not non-decreasing."""
        ua, ub = np.asarray(a.units), np.asarray(b.units)
        take_b = rng.random(ua.size) < 0.5
        child = np.where(take_b, ub, ua)
        band = a.band
        if band is not None and rng.random() < 0.5:
            band = b.band
        start = b.start_token if rng.random() < 0.5 else a.start_token
        out = self._pin(child, band, start)
        if np.any(np.diff(out.units) < 0):
            return None
        return out
