"""LongRoPE's evolutionary search (arXiv 2402.13753, Algorithm 1) as one explicit loop.

    population = seed_population()              # PI, NTK, YaRN + mutations of them
    score(population)
    for generation in 1..T:
        parents  = top_k(population)
        mutants  = N1 mutations of random parents
        children = N2 crossovers of random parent pairs
        score(mutants + children)               # never a vector scored before
        population = parents + mutants + children
        checkpoint()                            # everything needed to resume exactly

The objective is an argument: `objective(factors [d/2] float64, start_token) -> iterable of
per-document mean NLLs`. A real model yields one document at a time, so early rejection
can stop scoring a candidate that cannot enter the top-k (`RejectRule`), or that is worse
than the k-th parent with stated confidence (`RaceRule`, `--reject race`); a synthetic
objective returns a list and the loop runs in milliseconds. Scoring a batch is delegated
to an `evaluate_batch` function (in this process here, split across ranks in `distributed.py`);
an objective that scores several candidates in one forward pass gets them in batch rows
(`score_rows`).

Determinism: one numpy Generator drives every random choice, its state is saved with the
population after each generation, and the rejection thresholds of a generation are fixed
before it starts, so a candidate's score never depends on which process scored it or on
the order of scoring. A resumed run therefore repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import UsageError
from ..atomic import atomic_write_json, atomic_write_text
from ..readback import changed_keys, read_json_file
from ..methods import ntk_factors, pi_factors, yarn_factors
from ..options import check_options, option
from ..rope import RotarySpec
from .genes import Genome, SearchSpace

Objective = Callable[[np.ndarray, int], Iterable[float]]
STATE_FILE = "state.json"
HISTORY_FILE = "history.jsonl"


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
                         "fixed before the generation", choices=("exact", "race"))
    race_confidence: float = option(0.95, "confidence that a candidate stopped by --reject race is worse than the "
                                    "k-th parent on the documents it was scored on")
    reject_slack: float = 0.0  # nats a candidate may beat the best-ever loss of a document by

    def __post_init__(self):
        check_options(self)
        if self.population < self.parents:
            raise UsageError(f"--population {self.population} is smaller than --parents {self.parents}")
        if self.mutations + self.crossovers < 1:
            raise UsageError("need at least one mutation or crossover per generation (--mutations, --crossovers)")
        if self.reject not in REJECT_RULES:
            raise UsageError(f"--reject must be one of {', '.join(REJECT_RULES)}, got {self.reject!r}")
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


@dataclass(frozen=True)
class RejectRule:
    """Early rejection, fixed for one generation before any of its candidates is scored.

    A candidate enters the top-k only if its mean loss beats `threshold` (the worst
    parent's). After m of K documents we bound its final mean from below by assuming each
    remaining document j scores `optimistic[j]`: the best loss any earlier candidate got
    on j, minus a slack. Documents differ in difficulty far more than candidates differ on
    one document, so a per-document bound is tight where a bound on the mean is not.
    Reject once (sum of m losses + sum of remaining optimistic) / K >= threshold.
    """

    threshold: float
    optimistic: tuple[float, ...]

    def rejects(self, losses: Sequence[float]) -> bool:
        m, K = len(losses), len(self.optimistic)
        if m >= K:
            return False
        return self.stopped_loss(losses) >= self.threshold

    def stopped_loss(self, losses: Sequence[float]) -> float:
        """A finite stand-in for a stopped candidate's mean loss (told to CMA-ES): its lower bound."""
        return (sum(losses) + sum(self.optimistic[len(losses):])) / len(self.optimistic)


@dataclass(frozen=True)
class RaceRule:
    """Statistical racing (as in irace and Hoeffding races), fixed for one generation.

    After m of K documents, d_j = candidate loss_j - k-th parent loss_j (paired: the same
    documents). Stop the candidate once mean(d_1..d_m) > margin[m-1] = z * s / sqrt(m): a
    one-sided z-test that its mean loss on those documents exceeds the parent's, with s the
    spread of per-document differences observed in history and z set so that the K - 1 looks
    together keep the confidence (Bonferroni). Unlike `RejectRule`, it can stop a candidate that
    would have entered the top-k, with probability at most 1 - confidence (if the differences are
    Gaussian with spread s).
    """

    parent: tuple[float, ...]  # the k-th parent's loss on each of the K documents
    margin: tuple[float, ...]  # [K - 1]: the bound on the mean difference after m = 1 .. K-1 documents

    def rejects(self, losses: Sequence[float]) -> bool:
        m = len(losses)
        if m >= len(self.parent):
            return False
        return sum(c - p for c, p in zip(losses, self.parent)) / m > self.margin[m - 1]

    def stopped_loss(self, losses: Sequence[float]) -> float:
        """A finite stand-in for a stopped candidate's mean loss (told to CMA-ES): the parent's mean
        plus the mean paired difference so far (above the parent's mean when stopped)."""
        diff = sum(c - p for c, p in zip(losses, self.parent)) / len(losses)
        return sum(self.parent) / len(self.parent) + diff


Rule = RejectRule | RaceRule


def score_candidate(objective: Objective, factors: np.ndarray, start_token: int, num_docs: int,
                    rule: Rule | None) -> Evaluation:
    """Score one candidate document by document, stopping when `rule` rejects it."""
    losses: list[float] = []
    for loss in objective(factors, start_token):
        losses.append(float(loss))
        if rule is not None and rule.rejects(losses):
            return Evaluation(losses, num_docs, rejected=True)
    if len(losses) != num_docs:
        raise ValueError(f"objective gave {len(losses)} document losses, expected {num_docs}")
    return Evaluation(losses, num_docs)


EvaluateBatch = Callable[[Objective, list[np.ndarray], list[int], int, "Rule | None"], list[Evaluation]]


def score_rows(objective, factors: list[np.ndarray], starts: list[int], num_docs: int, rule: Rule | None,
               per_forward: int) -> list[Evaluation]:
    """Score candidates `per_forward` at a time, as `score_candidate` does one at a time.

    Each forward pass (`objective.losses`, one batch row per candidate) scores every active
    candidate on its next document; then a candidate that has all its documents, or that
    `rule` rejects, leaves, and the next waiting candidate takes its row (starting at document
    0), so rows freed by early rejection are not left idle. Losses equal one-at-a-time scoring
    up to float rounding (the rows share matmuls).
    """
    losses: list[list[float]] = [[] for _ in factors]
    waiting = list(range(len(factors)))[::-1]  # pop() gives the next candidate in order
    active: list[int] = []
    while waiting or active:
        while waiting and len(active) < per_forward:
            active.append(waiting.pop())
        values = objective.losses([(factors[i], starts[i], len(losses[i])) for i in active])
        for i, loss in zip(active, values):
            losses[i].append(float(loss))
        active = [i for i in active if len(losses[i]) < num_docs and not (rule is not None and rule.rejects(losses[i]))]
    return [Evaluation(ls, num_docs, rejected=len(ls) < num_docs) for ls in losses]


def evaluate_serial(objective: Objective, factors: list[np.ndarray], starts: list[int], num_docs: int,
                    rule: Rule | None) -> list[Evaluation]:
    """Score the candidates in this process: one at a time, or `objective.candidates_per_forward`
    of them in each forward pass where the objective sets that above 1 (`score_rows`)."""
    per_forward = getattr(objective, "candidates_per_forward", 1)
    if per_forward > 1:
        return score_rows(objective, factors, starts, num_docs, rule, per_forward)
    return [score_candidate(objective, f, s, num_docs, rule) for f, s in zip(factors, starts)]


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


# -- the algorithm ---------------------------------------------------------------------------
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


def exact_rule(state: SearchState, parents: list[int], num_docs: int, config: SearchConfig) -> RejectRule:
    worst_parent = max(state.history[i].evaluation.loss for i in parents)
    best = [math.inf] * num_docs
    for r in state.history:
        for j, loss in enumerate(r.evaluation.doc_losses):
            best[j] = min(best[j], loss)
    return RejectRule(worst_parent, tuple(b - config.reject_slack for b in best))


def race_rule(state: SearchState, parents: list[int], num_docs: int, config: SearchConfig) -> RaceRule | None:
    """The k-th parent's losses and the margins z * s / sqrt(m); s^2 = the mean over fully scored
    candidates of the sample variance across documents of their differences to that parent."""
    kth = max(parents, key=lambda i: (state.history[i].evaluation.loss, i))
    parent = state.history[kth].evaluation
    others = [r.evaluation.doc_losses for i, r in enumerate(state.history) if i != kth and not r.evaluation.rejected]
    if parent.rejected or num_docs < 2 or not others:
        return None
    diffs = np.asarray(others, dtype=np.float64) - np.asarray(parent.doc_losses, dtype=np.float64)  # [H, K]
    s = math.sqrt(float(np.mean(np.var(diffs, axis=1, ddof=1))))
    z = NormalDist().inv_cdf(1 - (1 - config.race_confidence) / (num_docs - 1))
    return RaceRule(tuple(parent.doc_losses), tuple(z * s / math.sqrt(m) for m in range(1, num_docs)))


REJECT_RULES = {"exact": exact_rule, "race": race_rule}  # --reject NAME


def reject_rule(state: SearchState, parents: list[int], num_docs: int, config: SearchConfig) -> Rule | None:
    """This generation's early-rejection rule, from the state before any candidate is scored
    (None: score everything, e.g. before there are k parents)."""
    if not config.early_reject or len(parents) < config.parents:
        return None
    return REJECT_RULES[config.reject](state, parents, num_docs, config)


def _score(state: SearchState, genomes: list[Genome], generation: int, space: SearchSpace, objective: Objective,
           num_docs: int, rule: Rule | None, evaluate_batch: EvaluateBatch) -> list[int]:
    evals = evaluate_batch(objective, [space.factors(g) for g in genomes], [g.start_token for g in genomes],
                           num_docs, rule)
    first = len(state.history)
    state.history.extend(Record(generation, g, e) for g, e in zip(genomes, evals))
    return list(range(first, len(state.history)))


def top_k(state: SearchState, indices: list[int], k: int) -> list[int]:
    """The k lowest-loss candidates; ties go to the one scored first (stable and exact)."""
    return sorted(indices, key=lambda i: (state.history[i].evaluation.loss, i))[:k]


def run_search(
    space: SearchSpace,
    config: SearchConfig,
    objective: Objective,
    num_docs: int,
    seeds: Sequence[np.ndarray],
    state: SearchState | None = None,
    describe: dict[str, Any] | None = None,
    evaluate_batch: EvaluateBatch = evaluate_serial,
    on_generation: Callable[[SearchState], None] | None = None,
) -> SearchState:
    """Run (or continue, given `state`) the evolutionary search; returns the final state.

    seeds: factor vectors [d/2] that start the population. describe: extra settings (model,
    corpus, ...) stored in the state so a resume with other settings is refused.
    on_generation: called after each generation (checkpoint, progress bar).
    """
    full_config = {**asdict(config), **space_config(space), **(describe or {})}
    if state is None:
        rng = np.random.default_rng(config.seed)
        fixed = space.start_tokens[0] if len(space.start_tokens) == 1 else None
        genomes = seed_population(space, seeds, config.population, config.mutation_prob, rng, fixed)
        state = SearchState(full_config, 0, [], [], {})
        # Generation 0 has no parents yet, so nothing to compare against: score everything.
        state.population = _score(state, genomes, 0, space, objective, num_docs, None, evaluate_batch)
        state.rng_state = rng.bit_generator.state
        if on_generation:
            on_generation(state)
    else:
        check_same_config(state.config, full_config, state.generation)
        state.check(space)
    rng = restore_rng(state.rng_state)
    seen = {r.genome.key for r in state.history}
    p = config.mutation_prob

    while state.generation < config.iterations:
        generation = state.generation + 1
        parents = top_k(state, state.population, config.parents)
        parent_genomes = [state.history[i].genome for i in parents]

        def random_parent() -> Genome:
            return parent_genomes[int(rng.integers(len(parent_genomes)))]

        mutants = []
        for _ in range(config.mutations):
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
        for _ in range(config.crossovers):
            g = _new_genome(cross, seen)
            if g is not None:
                children.append(g)

        rule = reject_rule(state, parents, num_docs, config)
        new = _score(state, mutants + children, generation, space, objective, num_docs, rule, evaluate_batch)
        state.population = parents + new
        state.generation = generation
        state.rng_state = rng.bit_generator.state
        if on_generation:
            on_generation(state)
    return state


def space_config(space: SearchSpace) -> dict[str, Any]:
    return {"half": space.half, "scale": space.scale, "max_factor": space.max_factor, "step": space.step,
            "start_tokens": list(space.start_tokens), "variant": space.variant,
            "critical_dim": space.critical_dim}


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
