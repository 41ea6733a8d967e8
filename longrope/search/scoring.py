"""How the loop scores a generation's candidates: document by document, early rejection, batch
rows, and the memory of every document loss.

The objective is an argument: `objective(factors [d/2] float64, start_token) -> iterable of
per-document mean NLLs`. A real model yields one document at a time, so early rejection
can stop scoring a candidate that cannot enter the top-k (`RejectRule`), or that is worse
than the k-th parent with stated confidence (`RaceRule`, `--reject race`); a synthetic
objective returns a list and a search runs in milliseconds. An objective whose
`candidates_per_forward` is above 1 scores that many candidates in one forward pass, a batch
row each (`objective.losses(rows)`, `score_rows`).

A real-model search adds two steps around the objective (`Scoring`): every document loss is
looked up in, and added to, a memory (`scored.ScoredLog`, so a stop mid-generation loses at
most one forward pass), and the progress bar is told when candidates start and how many
documents the current one has. Scoring a batch is an `EvaluateBatch` function: in this process
(`evaluate_serial`), or split across ranks (`distributed.py`).

The rejection rules of a generation are fixed before it starts, so a candidate's score never
depends on which process scored it or on the order of scoring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .scored import ScoredLog
from .state import REJECT_NAMES, Evaluation, SearchConfig, SearchState

Objective = Callable[[np.ndarray, int], Iterable[float]]
Row = tuple[np.ndarray, int, int]  # (factors [d/2], start_token, index of the document): one batch row


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
assert tuple(REJECT_RULES) == REJECT_NAMES


def reject_rule(state: SearchState, parents: list[int], num_docs: int, config: SearchConfig) -> Rule | None:
    """This generation's early-rejection rule, from the state before any candidate is scored
    (None: score everything, e.g. before there are k parents)."""
    if not config.early_reject or len(parents) < config.parents:
        return None
    return REJECT_RULES[config.reject](state, parents, num_docs, config)


# -- scoring -----------------------------------------------------------------------------------
def _nothing(n: int) -> None:
    pass


@dataclass
class Scoring:
    """What the loop scores candidates with: the objective on its K documents, and the steps a
    real-model search takes around it.

    memory: every document loss kept as it comes (scored.jsonl): a loss found there is taken
        instead of computed, and each one computed is added; the objective is then asked for one
        document at a time (`losses`), so that a stop mid-generation loses at most one pass.
    on_started(n): n candidates start being scored (the progress bar's ticks).
    on_documents(m): the candidate scored alone has m of its documents scored.
    """

    objective: Objective
    num_docs: int
    memory: ScoredLog | None = None
    on_started: Callable[[int], Any] = _nothing
    on_documents: Callable[[int], Any] = _nothing

    @property
    def per_forward(self) -> int:
        """Candidates per forward pass: the objective's `candidates_per_forward` (1 if it has none)."""
        return getattr(self.objective, "candidates_per_forward", 1)


def row_losses(scoring: Scoring, rows: Sequence[Row]) -> list[float]:
    """The loss of each (factors, start_token, document) row, all in one forward pass of the
    objective (`losses`); with a memory, only the rows it lacks are computed, then added to it."""
    memory = scoring.memory
    if memory is None:
        return scoring.objective.losses(rows)
    todo = [row for row in rows if memory.get(*row) is None]
    if todo:
        for row, loss in zip(todo, scoring.objective.losses(todo)):
            memory.add(*row, loss)
    return [memory.get(*row) for row in rows]


def document_losses(scoring: Scoring, factors: np.ndarray, start_token: int) -> Iterator[float]:
    """One candidate's loss on each document in turn, each computed only when it is asked for."""
    if scoring.memory is None:
        yield from scoring.objective(factors, start_token)
        return
    for doc in range(scoring.num_docs):
        yield row_losses(scoring, [(factors, start_token, doc)])[0]


def score_candidate(scoring: Scoring, factors: np.ndarray, start_token: int, rule: Rule | None) -> Evaluation:
    """Score one candidate document by document, stopping when `rule` rejects it."""
    num_docs = scoring.num_docs
    scoring.on_started(1)
    scoring.on_documents(0)
    losses: list[float] = []
    for loss in document_losses(scoring, factors, start_token):
        losses.append(float(loss))
        scoring.on_documents(len(losses))
        if rule is not None and rule.rejects(losses):
            return Evaluation(losses, num_docs, rejected=True)
    if len(losses) != num_docs:
        raise ValueError(f"objective gave {len(losses)} document losses, expected {num_docs}")
    return Evaluation(losses, num_docs)


def score_rows(scoring: Scoring, factors: list[np.ndarray], starts: list[int], rule: Rule | None,
               per_forward: int) -> list[Evaluation]:
    """Score candidates `per_forward` at a time, as `score_candidate` does one at a time.

    Each forward pass (`row_losses`, one batch row per candidate) scores every active
    candidate on its next document; then a candidate that has all its documents, or that
    `rule` rejects, leaves, and the next waiting candidate takes its row (starting at document
    0), so rows freed by early rejection are not left idle. Losses equal one-at-a-time scoring
    up to float rounding (the rows share matmuls).
    """
    num_docs = scoring.num_docs
    losses: list[list[float]] = [[] for _ in factors]
    waiting = list(range(len(factors)))[::-1]  # pop() gives the next candidate in order
    active: list[int] = []
    while waiting or active:
        while waiting and len(active) < per_forward:
            active.append(waiting.pop())
        rows = [(factors[i], starts[i], len(losses[i])) for i in active]
        scoring.on_started(sum(1 for row in rows if row[2] == 0))
        for i, loss in zip(active, row_losses(scoring, rows)):
            losses[i].append(float(loss))
        active = [i for i in active if len(losses[i]) < num_docs and not (rule is not None and rule.rejects(losses[i]))]
    return [Evaluation(ls, num_docs, rejected=len(ls) < num_docs) for ls in losses]


EvaluateBatch = Callable[[Scoring, list[np.ndarray], list[int], "Rule | None"], list[Evaluation]]


def evaluate_serial(scoring: Scoring, factors: list[np.ndarray], starts: list[int], rule: Rule | None) -> list[Evaluation]:
    """Score the candidates in this process: one at a time, or `scoring.per_forward` of them in
    each forward pass where the objective sets that above 1 (`score_rows`)."""
    if scoring.per_forward > 1:
        return score_rows(scoring, factors, starts, rule, scoring.per_forward)
    return [score_candidate(scoring, f, s, rule) for f, s in zip(factors, starts)]
