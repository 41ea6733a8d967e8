"""Every search loop (`OPTIMIZERS`: the paper's GA and CMA-ES) on synthetic objectives: valid
and unique candidates, determinism across seeds and evaluate_batch splits, resume from a saved
state.json, early rejection; plus CMA's monotone parametrization. (SIGKILL and two processes:
test_search_resume.py.)"""
from __future__ import annotations

import hashlib
import json
from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from longrope.errors import UsageError
from longrope.rope import RotarySpec
from longrope.search.cma import CMAES, MonotoneMap, _restore, _snapshot
from longrope.search.loop import OPTIMIZERS, peer_seeds, run_search
from longrope.search.scoring import Scoring, evaluate_serial
from longrope.search.state import SearchConfig, SearchState, top_k
from longrope.search.genes import START_TOKENS

from helpers import assert_valid, quadratic, search, space_of

SPEC = RotarySpec(dim=64, base=10000.0, original_max_position_embeddings=128)
SMALL = SearchConfig(population=16, parents=8, mutations=4, crossovers=4, iterations=6, seed=0)
ALL = sorted(OPTIMIZERS)


def noisy(half: int, scale: float, docs=(1.0, 3.0, 0.5, 2.0, 1.5, 2.5), sigma: float = 0.05):
    """`quadratic` plus Gaussian noise on each (candidate, document), seeded by the candidate, so
    that documents disagree; `objective.expected` gives the noise-free losses."""
    target = np.linspace(1.0, scale, half)

    def expected(lam: np.ndarray, start_token: int) -> list[float]:
        base = float(np.mean((lam - target) ** 2)) + 0.001 * abs(start_token - 4)
        return [w + base for w in docs]

    def objective(lam: np.ndarray, start_token: int):
        key = hashlib.sha256(np.asarray(lam, dtype=np.float64).tobytes() + str(start_token).encode()).digest()
        noise = np.random.default_rng(int.from_bytes(key[:8], "little")).normal(0.0, sigma, len(docs))
        return [x + float(e) for x, e in zip(expected(lam, start_token), noise)]

    objective.expected = expected
    return objective


def race_case(reject: str, docs: int = 4):
    """(config, objective) exercising a rejection rule: exact on constant per-document offsets,
    race on noisy documents."""
    if reject == "exact":
        return SMALL, quadratic(32, 8.0, docs=(1.0, 3.0, 0.5, 2.0)[:docs])
    return SearchConfig(**{**SMALL.__dict__, "reject": "race"}), noisy(32, 8.0, docs=(1.0, 3.0, 0.5, 2.0)[:docs])


# -- the monotone parametrization ----------------------------------------------------------------
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(["longrope", "piecewise", "critical"]), half=st.integers(4, 24),
       scale=st.floats(1.1, 40.0), step=st.sampled_from([0.01, 0.05, 0.5]), fixed=st.booleans(),
       data=st.data())
def test_any_z_is_a_valid_genome_and_seeds_round_trip(variant, half, scale, step, fixed, data):
    try:
        space = space_of(variant, half=half, scale=scale, step=step, start_tokens=(8,) if fixed else START_TOKENS)
    except UsageError:
        assume(False)
    zmap = MonotoneMap(space)
    z = np.array(data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=zmap.dim, max_size=zmap.dim)))
    assert_valid(space, zmap.genome(z))
    for lam in peer_seeds(RotarySpec(2 * half, 10000.0, 128), scale):
        g = space.from_factors(lam)
        back = zmap.genome(zmap.z_of(g))  # CMA's mean starts exactly at the best seed
        assert back.units == g.units and back.start_token == g.start_token
        assert back == g or variant == "piecewise"


def test_snapshot_restore_continues_the_same_cma():
    """Rebuilding cmaes.CMA from the JSON state each generation gives the same samples as one
    object kept alive (this guards the fields read from `cmaes` internals)."""
    import cmaes

    rng = np.random.default_rng(0)
    alive = cmaes.CMA(mean=np.zeros(6), sigma=0.3, population_size=8, seed=5)
    dist, state = _snapshot(alive)
    for _ in range(5):
        rebuilt = _restore(json.loads(json.dumps(dist)), json.loads(json.dumps(state)), 8)
        xs = [alive.ask() for _ in range(8)]
        assert all(np.array_equal(x, rebuilt.ask()) for x in xs)
        values = [float(v) for v in rng.random(8)]
        alive.tell(list(zip(xs, values)))
        rebuilt.tell(list(zip(xs, values)))
        dist, state = _snapshot(alive)
        assert (dist, state) == _snapshot(rebuilt)


# -- every optimizer --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_improves_on_every_seed_and_scores_nothing_twice(name):
    space, objective = space_of("longrope"), quadratic(32, 8.0)
    cfg = SearchConfig(population=32, parents=16, mutations=8, crossovers=8, iterations=15)
    state = search(name, space, cfg, objective, 3, peer_seeds(SPEC, 8.0))
    assert state.generation == 15
    keys = [r.genome.key for r in state.history]
    assert len(keys) == len(set(keys))
    assert state.best.evaluation.loss < min(r.evaluation.loss for r in state.history if r.generation == 0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(ALL), variant=st.sampled_from(["longrope", "piecewise", "critical"]),
       seed=st.integers(0, 1000), half=st.integers(3, 16), fixed=st.booleans())
def test_every_scored_candidate_is_valid_and_unique(name, variant, seed, half, fixed):
    space = space_of(variant, half=half, start_tokens=(8,) if fixed else START_TOKENS)
    scored = []

    def objective(lam, n):
        scored.append((tuple(lam), n))
        rng = np.random.default_rng(abs(hash((tuple(lam), n))) % 2**32)
        return list(rng.random(3))

    cfg = SearchConfig(population=12, parents=6, mutations=3, crossovers=3, iterations=5, seed=seed)
    state = search(name, space, cfg, objective, 3, peer_seeds(RotarySpec(2 * half, 1e4, 128), 8.0))
    keys = [r.genome.key for r in state.history]
    assert len(keys) == len(set(keys)) == len(scored)
    for r in state.history:
        assert_valid(space, r.genome)
        assert not fixed or r.genome.start_token == 8


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_search_other_seed_other_search(name):
    run = partial(search, name)
    space, objective = space_of("longrope"), quadratic(32, 8.0)
    a = run(space, SMALL, objective, 3, peer_seeds(SPEC, 8.0))
    b = run(space, SMALL, objective, 3, peer_seeds(SPEC, 8.0))
    c = run(space, SearchConfig(**{**SMALL.__dict__, "seed": 1}), objective, 3, peer_seeds(SPEC, 8.0))
    assert a.to_dict() == b.to_dict()
    assert a.to_dict()["history"] != c.to_dict()["history"]


def split_evaluator(parts: int, reverse: bool):
    """Scores a batch as a distributed run does: in interleaved shares, here in any order."""

    def evaluate_batch(scoring, factors, starts, rule):
        out = {}
        ranks = range(parts)[::-1] if reverse else range(parts)
        for r in ranks:
            for i in range(r, len(factors), parts):
                out[i] = evaluate_serial(scoring, [factors[i]], [starts[i]], rule)[0]
        return [out[i] for i in range(len(factors))]

    return evaluate_batch


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("reject", ["exact", "race"])
def test_evaluate_batch_splits_do_not_change_the_search(name, reject):
    run = partial(search, name)
    space, (cfg, objective) = space_of("longrope"), race_case(reject)
    whole = run(space, cfg, objective, 4, peer_seeds(SPEC, 8.0)).to_dict()
    assert any(r["rejected"] for r in whole["history"])  # the rule is exercised
    for parts, reverse in ((2, False), (3, True), (7, True)):
        split = run(space, cfg, objective, 4, peer_seeds(SPEC, 8.0), evaluate_batch=split_evaluator(parts, reverse))
        assert split.to_dict() == whole


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("reject", ["exact", "race"])
def test_resume_from_any_generation_repeats_the_uninterrupted_run(name, reject, tmp_path):
    run = partial(search, name)
    space, (cfg, objective) = space_of("longrope"), race_case(reject, docs=3)
    whole = run(space, cfg, objective, 3, peer_seeds(SPEC, 8.0))
    for stop_at in (0, 1, 4):
        def checkpoint(state, stop_at=stop_at):
            state.save(tmp_path)
            if state.generation == stop_at:
                raise Stop

        with pytest.raises(Stop):
            run(space, cfg, objective, 3, peer_seeds(SPEC, 8.0), on_generation=checkpoint)
        saved = SearchState.load(tmp_path)
        assert saved.generation == stop_at
        resumed = run(space, cfg, objective, 3, peer_seeds(SPEC, 8.0), state=saved)
        assert json.dumps(resumed.to_dict()) == json.dumps(whole.to_dict())


@pytest.mark.parametrize("name", ALL)
def test_race_stops_only_candidates_worse_than_the_kth_parent_with_the_stated_confidence(name):
    """Every stopped candidate's noise-free loss on the documents it was scored on is compared
    with the k-th parent's losses there: at most 1 - confidence of them may be no worse."""
    run, space, objective = partial(search, name), space_of("longrope"), noisy(32, 8.0, sigma=0.3)
    cfg = SearchConfig(population=32, parents=16, mutations=8, crossovers=8, iterations=15, reject="race",
                       race_confidence=0.9)
    state = run(space, cfg, objective, 6, peer_seeds(SPEC, 8.0))
    stopped = [r for r in state.history if r.evaluation.rejected]
    wrong = 0
    for r in stopped:
        before = [i for i, h in enumerate(state.history) if h.generation < r.generation]
        kth = state.history[top_k(state, before, cfg.parents)[-1]].evaluation.doc_losses
        m = len(r.evaluation.doc_losses)
        wrong += sum(objective.expected(space.factors(r.genome), r.genome.start_token)[:m]) <= sum(kth[:m])
    assert len(stopped) >= 20 and wrong <= (1 - cfg.race_confidence) * len(stopped), (wrong, len(stopped))
    full = run(space, SearchConfig(**{**cfg.__dict__, "early_reject": False}), objective, 6, peer_seeds(SPEC, 8.0))
    docs = [sum(len(r.evaluation.doc_losses) for r in s.history) for s in (state, full)]
    assert docs[0] < docs[1], docs


def test_resuming_with_the_other_optimizer_is_refused(tmp_path):
    space, objective = space_of("longrope"), quadratic(32, 8.0)
    describe = {"model": "m", "optimizer": "ga"}
    search("ga", space, SMALL, objective, 3, peer_seeds(SPEC, 8.0), describe=describe).save(tmp_path)
    with pytest.raises(UsageError, match="optimizer"):
        search("cma", space, SMALL, objective, 3, peer_seeds(SPEC, 8.0), state=SearchState.load(tmp_path),
               describe=describe)
    cma = search("cma", space, SMALL, objective, 3, peer_seeds(SPEC, 8.0), describe={"model": "m"})
    with pytest.raises(UsageError, match="optimizer"):
        search("ga", space, SMALL, objective, 3, peer_seeds(SPEC, 8.0), state=cma, describe=describe)
    with pytest.raises(UsageError, match="sigma0"):
        run_search(CMAES(space, SMALL, sigma0=0.5), Scoring(objective, 3), peer_seeds(SPEC, 8.0), state=cma,
                   describe={"model": "m"})


@pytest.mark.parametrize("name", ALL)
def test_early_rejection_drops_only_candidates_that_miss_the_top_k(name):
    """Fewer documents scored; a rejected candidate's full loss (the synthetic objective can
    tell) is never better than the worst of the top-k it was compared with."""
    run = partial(search, name)
    docs = (1.0, 3.0, 0.5, 2.0, 1.5)
    space, objective = space_of("longrope"), quadratic(32, 8.0, docs=docs)
    cfg = SearchConfig(population=32, parents=16, mutations=8, crossovers=8, iterations=12)
    full = run(space, SearchConfig(**{**cfg.__dict__, "early_reject": False}), objective, 5, peer_seeds(SPEC, 8.0))
    fast = run(space, cfg, objective, 5, peer_seeds(SPEC, 8.0))
    docs_scored = [sum(len(r.evaluation.doc_losses) for r in s.history) for s in (fast, full)]
    assert docs_scored[0] < docs_scored[1]
    rejected = [r for r in fast.history if r.evaluation.rejected]
    assert rejected
    for r in rejected:
        earlier = sorted(h.evaluation.loss for h in fast.history if h.generation < r.generation)
        threshold = earlier[cfg.parents - 1]  # the worst of the top-k before this generation
        true_loss = float(np.mean(objective(space.factors(r.genome), r.genome.start_token)))
        assert true_loss >= threshold - 1e-12
    assert fast.best.evaluation.loss < min(r.evaluation.loss for r in fast.history if r.generation == 0)


def test_cma_refuses_a_single_sample_per_generation():
    with pytest.raises(UsageError, match="at least 4 samples"):
        search("cma", space_of("longrope"), SearchConfig(population=4, parents=2, mutations=1, crossovers=0),
               quadratic(32, 8.0), 3, peer_seeds(SPEC, 8.0))
