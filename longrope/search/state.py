"""What a search is and what it keeps: its settings, every scored candidate, and the state
saved after each generation (state.json, history.jsonl), from which a resume continues exactly.

Both optimizers (search/evolution.py, search/cma.py) share this state; what each needs of its
own is kept in `SearchState.rng_state` (the GA: its numpy Generator; CMA-ES: its sampler) and
`SearchState.optimizer_state` (CMA-ES: its distribution).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import UsageError
from ..options import check_options, option
from ..readback import changed_keys, read_json_file
from .genes import Genome, SearchSpace

STATE_FILE = "state.json"
HISTORY_FILE = "history.jsonl"
REJECT_NAMES = ("exact", "race")  # --reject: the rules of search/scoring.py


@dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of Algorithm 1; defaults are the paper's (section 4.1). The fields are
    `longrope search`'s flags and a recipe search stage's keys."""

    population: int = option(64, "P, candidates per generation", min=1, max=100_000)
    parents: int = option(32, "top-k kept each generation", min=1, max=100_000)
    mutations: int = option(16, "N1 mutants per generation", min=0, max=100_000)
    crossovers: int = option(16, "N2 crossovers per generation", min=0, max=100_000)
    mutation_prob: float = option(0.3, "p, per-gene mutation probability", above=0, max=1)
    iterations: int = option(40, "T generations", min=0, max=100_000)
    seed: int = option(0, "random seed of the search", min=0)
    early_reject: bool = option(True, "score every candidate on all documents (default: stop a candidate early by the "
                                "--reject rule)", flag="--no-early-reject")
    reject: str = option("exact", "early rejection rule. exact: stop a candidate once its losses so far, plus the "
                         "best loss ever seen on each remaining document, cannot beat the worst of the top-k. race: "
                         "after m of K documents, stop it once mean_j(its loss_j - the k-th parent's loss_j) over "
                         "those m documents > z * s / sqrt(m), a one-sided paired z-test: z = the normal quantile of "
                         "1 - (1 - race_confidence) / (K - 1) (Bonferroni over its K - 1 looks), s = the spread of "
                         "per-document differences to the k-th parent pooled over every fully scored candidate, "
                         "fixed before the generation", choices=REJECT_NAMES)
    race_confidence: float = option(0.95, "confidence that a candidate stopped by --reject race is worse than the "
                                    "k-th parent on the documents it was scored on")
    reject_slack: float = 0.0  # nats a candidate may beat the best-ever loss of a document by

    def __post_init__(self):
        check_options(self)
        if self.population < self.parents:
            raise UsageError(f"--population {self.population} is smaller than --parents {self.parents}")
        if self.mutations + self.crossovers < 1:
            raise UsageError("need at least one mutation or crossover per generation (--mutations, --crossovers)")
        if self.reject not in REJECT_NAMES:
            raise UsageError(f"--reject must be one of {', '.join(REJECT_NAMES)}, got {self.reject!r}")
        if not 0.5 <= self.race_confidence < 1:
            raise UsageError(f"--race-confidence must be in [0.5, 1), got {self.race_confidence}")


@dataclass
class Evaluation:
    """What scoring one candidate gave: mean token NLL of each document scored, in order."""

    doc_losses: list[float]
    num_docs: int  # K documents in the fitness set
    rejected: bool = False  # stopped early: cannot enter the top-k

    @property
    def loss(self) -> float:
        """Mean NLL over all documents; +inf for a rejected candidate (never selected)."""
        return math.inf if self.rejected else sum(self.doc_losses) / len(self.doc_losses)

    @property
    def perplexity(self) -> float:
        """exp(mean NLL) over the documents scored (partial when rejected)."""
        return math.exp(sum(self.doc_losses) / len(self.doc_losses))


@dataclass
class Record:
    """One line of history.jsonl: a scored candidate."""

    generation: int
    genome: Genome
    evaluation: Evaluation

    def to_dict(self, space: SearchSpace | None = None) -> dict[str, Any]:
        d = {"generation": self.generation, **self.genome.to_dict(),
             "doc_losses": self.evaluation.doc_losses, "docs_scored": len(self.evaluation.doc_losses),
             "num_docs": self.evaluation.num_docs, "rejected": self.evaluation.rejected,
             "perplexity": self.evaluation.perplexity}
        if space is not None:
            d["factors"] = [round(float(x), 6) for x in space.factors(self.genome)]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        if not isinstance(d, dict):
            raise ValueError("a history entry must be an object")
        losses = d["doc_losses"]
        if not isinstance(losses, list) or not all(_number(x) and math.isfinite(x) and x >= 0 for x in losses):
            raise ValueError(f"doc_losses must be finite non-negative numbers, got {losses!r}"[:160])
        num_docs = _integer(d["num_docs"], "num_docs", 1)
        if len(losses) > num_docs or not isinstance(d["rejected"], bool):
            raise ValueError("a history entry scores at most num_docs documents and says whether it was rejected")
        units, band = d["units"], d.get("band")
        if not isinstance(units, list) or not units or not all(_integer(u, "units", 0) >= 0 for u in units):
            raise ValueError("units must be a non-empty list of non-negative integers")
        if band is not None and (not isinstance(band, list) or len(band) != 2):
            raise ValueError("band must be null or two integers")
        genome = Genome(tuple(units), _integer(d["start_token"], "start_token", 0),
                        None if band is None else (_integer(band[0], "band", 0), _integer(band[1], "band", 0)))
        return cls(_integer(d["generation"], "generation", 0), genome, Evaluation(losses, num_docs, d["rejected"]))


@dataclass
class SearchState:
    """Everything needed to continue a search exactly where it stopped."""

    config: dict[str, Any]  # SearchConfig + search space + objective description
    generation: int  # generations completed; 0 = the initial population is scored
    population: list[int]  # indices into history of the current population
    history: list[Record]
    rng_state: dict[str, Any]
    optimizer_state: dict[str, Any] | None = None  # e.g. CMA-ES's distribution (search/cma.py); None: the GA

    @property
    def best(self) -> Record:
        return min((self.history[i] for i in self.population), key=lambda r: r.evaluation.loss)

    def to_dict(self) -> dict[str, Any]:
        d = {"config": self.config, "generation": self.generation, "population": self.population,
             "history": [r.to_dict() for r in self.history], "rng_state": self.rng_state}
        if self.optimizer_state is not None:
            d["optimizer_state"] = self.optimizer_state
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchState":
        if not isinstance(d, dict) or not isinstance(d["history"], list) or not isinstance(d["population"], list):
            raise ValueError("expected an object with a history and a population list")
        generation = _integer(d["generation"], "generation", 0)
        history = [Record.from_dict(r) for r in d["history"]]
        if any(r.generation > generation + 1 for r in history):
            raise ValueError(f"a candidate of a generation past {generation + 1} is recorded at generation {generation}")
        return cls(d["config"], generation, [_integer(i, "population", 0) for i in d["population"]], history,
                   d["rng_state"], d.get("optimizer_state"))

    def check(self, space: SearchSpace) -> None:
        """UsageError unless every recorded genome lies in `space` (the file was edited or damaged:
        resuming would mutate candidates no search can make)."""
        for i, r in enumerate(self.history):
            if not space.is_valid(r.genome):
                raise UsageError(f"{STATE_FILE}: candidate {i} ({list(r.genome.units)[:4]}...) lies outside this "
                                 f"search's space (length {space.num_genes}, grid units in [{space.lo.min()}, "
                                 f"{space.hi.max()}], non-decreasing); remove the state to start afresh")

    def save(self, out_dir: str | Path) -> None:
        atomic_write_json(Path(out_dir) / STATE_FILE, self.to_dict())

    @classmethod
    def load(cls, out_dir: str | Path) -> "SearchState":
        path = Path(out_dir) / STATE_FILE
        if not path.is_file():
            raise UsageError(f"nothing to resume: {path} does not exist")
        data = read_json_file(path, "search state")
        try:
            state = cls.from_dict(data)
            if not isinstance(state.config, dict) or not state.history:
                raise ValueError("config must be an object and history non-empty")
            if not all(0 <= i < len(state.history) for i in state.population) or not state.population:
                raise ValueError("population must index the history")
            if not isinstance(state.rng_state, dict):
                raise ValueError("rng_state must be an object")
            return state
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise UsageError(f"{path} is not a search state ({type(e).__name__}: {e}); remove it to start "
                             f"afresh") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any, name: str, minimum: int) -> int:
    """`v` when it is an integer >= minimum (not a bool, not a float), else ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def restore_rng(state: dict[str, Any]) -> np.random.Generator:
    """A numpy Generator continuing from a saved `bit_generator.state` (UsageError if it is not one)."""
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise UsageError(f"{STATE_FILE}: rng_state is not a saved random generator ({e}); remove the state to start "
                         f"afresh") from None
    return rng


def write_history(out_dir: str | Path, state: SearchState, space: SearchSpace) -> None:
    """history.jsonl: one scored candidate per line (generation, genes, factors, losses, ppl)."""
    lines = [json.dumps(r.to_dict(space)) for r in state.history]
    atomic_write_text(Path(out_dir) / HISTORY_FILE, "\n".join(lines) + ("\n" if lines else ""))


# settings added after states were first saved: a state without them ran with these values
ADDED_SETTINGS = {"reject": "exact", "race_confidence": 0.95}


def check_same_config(saved: dict[str, Any], current: dict[str, Any], generation: int | None = None) -> None:
    """Resuming with other settings would not reproduce the run: refuse, naming the keys.
    `saved` gains the ADDED_SETTINGS it lacks. The number of generations only says when to stop
    (no generation depends on it): with `generation` (how many are done) a resume may ask for
    more, or fewer down to those done, and `saved` takes the new number."""
    for key, value in ADDED_SETTINGS.items():
        saved.setdefault(key, value)
    if generation is not None and saved.get("iterations") != current.get("iterations"):
        if current["iterations"] < generation:
            raise UsageError(f"the search has already run {generation} generations; --iterations "
                             f"{current['iterations']} would undo them (give {generation} or more)")
        saved["iterations"] = current["iterations"]
    keys = changed_keys(saved, current)
    if keys:
        diffs = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys)
        raise UsageError(f"cannot resume with a different configuration ({diffs})")


def top_k(state: SearchState, indices: list[int], k: int) -> list[int]:
    """The k lowest-loss candidates; ties go to the one scored first (stable and exact)."""
    return sorted(indices, key=lambda i: (state.history[i].evaluation.loss, i))[:k]


def space_config(space: SearchSpace) -> dict[str, Any]:
    """The search space's fields as the state's config records them."""
    return {"half": space.half, "scale": space.scale, "max_factor": space.max_factor, "step": space.step,
            "start_tokens": list(space.start_tokens), "variant": space.variant,
            "critical_dim": space.critical_dim}


def population_curve(state: SearchState) -> list[tuple[int, float, float]]:
    """(generation, best, median perplexity) of the population after each generation.

    The population of generation g is the top-k of everything scored before g plus the
    candidates of g (Algorithm 1); rejected candidates have no full score and are left out.
    """
    k = int(state.config.get("parents", SearchConfig.parents))
    curve = []
    for g in range(state.generation + 1):
        scored = [i for i, r in enumerate(state.history) if not r.evaluation.rejected]
        before = top_k(state, [i for i in scored if state.history[i].generation < g], k)
        losses = [state.history[i].evaluation.loss for i in before + [i for i in scored if state.history[i].generation == g]]
        if losses:
            curve.append((g, float(np.exp(min(losses))), float(np.exp(np.median(losses)))))
    return curve
