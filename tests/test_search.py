"""The evolutionary search on synthetic objectives: constraints, determinism, resume, ranks."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from longrope.errors import UsageError
from longrope.methods import ntk_factors, pi_factors, yarn_factors
from longrope.rope import RotarySpec
from longrope.search.loop import peer_seeds
from longrope.search.scoring import RaceRule, RejectRule, Scoring, reject_rule, score_candidate
from longrope.search.state import Evaluation, Record, SearchConfig, SearchState, top_k
from longrope.search.genes import SearchSpace, critical_dimension, rescaled_critical_dimension

from helpers import assert_valid, quadratic, search, space_of

SPEC = RotarySpec(dim=64, base=10000.0, original_max_position_embeddings=128)
SMALL = SearchConfig(population=16, parents=8, mutations=4, crossovers=4, iterations=6, seed=0)


# -- the genome -------------------------------------------------------------------------------
def test_seeds_are_pi_ntk_yarn_on_the_grid():
    space = space_of("longrope")
    rng = np.random.default_rng(0)
    from longrope.search.evolution import seed_population

    pop = seed_population(space, peer_seeds(SPEC, 8.0), 64, 0.3, rng)
    assert len(pop) == 64 and len({g.key for g in pop}) == 64
    for g, f in zip(pop, (pi_factors, ntk_factors, yarn_factors)):
        want = np.maximum.accumulate(np.clip(f(SPEC, 8.0).numpy(), 1.0, 10.0))
        np.testing.assert_allclose(space.factors(g), want, atol=0.005 + 1e-9)
    for g in pop:
        assert_valid(space, g)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variant=st.sampled_from(["longrope", "piecewise", "critical"]),
    half=st.integers(4, 24),
    scale=st.floats(1.1, 40.0),
    step=st.sampled_from([0.01, 0.05, 0.1, 0.5]),
    p=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31),
)
def test_mutation_and_crossover_stay_monotone_and_in_bounds(variant, half, scale, step, p, seed):
    try:
        space = space_of(variant, half=half, scale=scale, step=step)
    except UsageError:
        assume(False)  # the grid is coarser than the factor range
    rng = np.random.default_rng(seed)
    dim_spec = RotarySpec(2 * half, 10000.0, 128)
    pop = [space.from_factors(lam) for lam in peer_seeds(dim_spec, scale)]
    for g in pop:
        assert_valid(space, g)
    for _ in range(30):
        a = pop[rng.integers(len(pop))]
        m = space.mutate(a, rng, p)
        assert_valid(space, m)
        c = space.crossover(a, m, rng)
        if c is not None:
            assert_valid(space, c)
            pop.append(c)
        pop.append(m)


# valid and unique candidates, same seed same search, resume: test_search_cma.py, for every optimizer


def test_critical_variant_follows_lambda_cd_below_cd():
    space = space_of("critical")
    cd = space.critical_dim
    assert cd == math.ceil(32 * math.log(128 / (2 * math.pi)) / math.log(10000.0))
    g = space.from_factors(yarn_factors(SPEC, 8.0).numpy())
    lam = space.factors(g)
    assert np.all(lam[cd:] >= 8.0) and len(g.units) == 32 - cd
    np.testing.assert_allclose(lam[:cd], lam[cd] ** (np.arange(cd) / cd))


@pytest.mark.parametrize("dim,base,context", [(64, 10000.0, 4096), (32, 10000.0, 256), (64, 1e5, 8192), (128, 5e5, 8192)])
def test_rescaled_critical_dimension(dim, base, context):
    """With factors all 1 it is LongRoPE2's cd; stage-1 factors lengthen periods, so a model fine-tuned
    with them at 8x its context has its cd where the rescaled period first reaches that context."""
    assert rescaled_critical_dimension(dim, base, context, [1.0] * (dim // 2)) == critical_dimension(dim, base, context)
    pi8 = [8.0] * (dim // 2)  # every period 8x longer: the same cd at 8x the context
    assert rescaled_critical_dimension(dim, base, 8 * context, pi8) == critical_dimension(dim, base, context)
    lam1 = [1.0] * 7 + [8.0] * (dim // 2 - 7)  # the tiny model's stage 1, in shape: high dims rescaled 8x
    periods = [2 * math.pi * base ** (2 * i / dim) * lam for i, lam in enumerate(lam1)]
    cd = rescaled_critical_dimension(dim, base, 8 * context, lam1)
    assert periods[cd] >= 8 * context > periods[cd - 1]


def test_critical_seeds_collapse_so_the_rest_of_the_population_is_drawn_uniformly():
    from longrope.search.evolution import seed_population

    space = space_of("critical")
    seeds = peer_seeds(SPEC, 8.0)
    assert len({space.from_factors(lam).key for lam in seeds}) == 1  # PI, NTK, YaRN: every dim >= cd at s
    pop = seed_population(space, seeds, 64, 0.3, np.random.default_rng(0))
    assert len({g.key for g in pop}) == 64
    for g in pop:
        assert_valid(space, g)
    # mutants of the flat seed would differ only in the top gene; these spread over the range
    first_genes = np.array([g.units[0] for g in pop[1:]])
    assert np.mean(first_genes > space.lo[0]) > 0.5 and np.ptp([g.units[-1] for g in pop]) > 100
    longrope = space_of("longrope")
    for g in [longrope.random_genome(np.random.default_rng(i)) for i in range(20)] + \
             [space_of("piecewise").random_genome(np.random.default_rng(i)) for i in range(20)]:
        assert_valid(longrope if g.band is None else space_of("piecewise"), g)


def test_piecewise_pins_outside_the_band():
    space = space_of("piecewise")
    g = space.from_factors(yarn_factors(SPEC, 8.0).numpy())
    alpha, beta = g.band
    lam = space.factors(g)
    assert 0 < alpha < beta < 32
    assert np.all(lam[:alpha] == 1.0) and np.all(lam[beta:] == 8.0)


def test_bad_space_and_config():
    with pytest.raises(UsageError, match="smaller than --parents"):
        SearchConfig(population=8, parents=16)
    with pytest.raises(UsageError, match="variant"):
        SearchSpace(half=8, scale=2.0, max_factor=2.5, variant="nope")
    with pytest.raises(UsageError, match="below the scale"):
        SearchSpace(half=8, scale=4.0, max_factor=2.0)


# -- the loop ---------------------------------------------------------------------------------
def test_paper_defaults_improve_on_every_seed_in_milliseconds():
    space = space_of("longrope")
    objective = quadratic(32, 8.0)
    state = search("ga", space, SearchConfig(), objective, 3, peer_seeds(SPEC, 8.0))
    assert state.generation == 40
    # ~ P + T * (N1 + N2) = 64 + 40*32 candidates (fewer only if a draw repeats a vector)
    assert 1200 <= len(state.history) <= 64 + 40 * 32
    seeds = [r.evaluation.loss for r in state.history[:3]]
    assert state.best.evaluation.loss < min(seeds)


def test_reject_rule_bounds_the_final_mean():
    rule = RejectRule(threshold=2.0, optimistic=(1.0, 2.0, 3.0))  # best possible mean: 2.0
    assert not rule.rejects([0.9])  # (0.9 + 5) / 3 < 2
    assert rule.rejects([1.1])  # (1.1 + 5) / 3 > 2: cannot beat the worst parent any more
    assert not rule.rejects([5.0, 5.0, 5.0])  # complete: scored, never rejected

    docs = iter([1.5, 1.5, 1.5])
    calls = []

    def objective(lam, n):
        for x in docs:
            calls.append(x)
            yield x

    ev = score_candidate(Scoring(objective, 3), np.ones(4), 0, rule)
    assert ev.rejected and len(ev.doc_losses) == 1 and ev.loss == math.inf and len(calls) == 1


def test_race_rule_is_a_paired_one_sided_bound_fixed_from_history():
    rule = RaceRule(parent=(1.0, 2.0, 3.0, 4.0), margin=(1.0, 0.7, 0.5))
    assert rule.rejects([2.5]) and not rule.rejects([1.9])  # mean difference 1.5 > 1.0; 0.9 < 1.0
    assert rule.rejects([1.9, 2.9]) and not rule.rejects([1.6, 2.6])  # 0.9 > 0.7; 0.6 < 0.7
    assert not rule.rejects([9.0, 9.0, 9.0, 9.0])  # complete: scored, never rejected
    assert rule.stopped_loss([1.9, 2.9]) == pytest.approx(2.5 + 0.9)

    # margins: z * s / sqrt(m), z for confidence 0.9 split over the K - 1 = 2 looks, s pooled
    space, K = space_of("longrope"), 3
    losses = [[1.0, 2.0, 3.0], [1.5, 2.0, 3.5], [1.2, 2.6, 3.1], [2.0, 2.2, 3.9]]
    history = [Record(0, space.from_factors(np.full(32, 1.0 + i)), Evaluation(x, K)) for i, x in enumerate(losses)]
    state = SearchState({}, 0, [0, 1, 2, 3], history, {})
    cfg = SearchConfig(population=4, parents=2, mutations=1, crossovers=1, reject="race", race_confidence=0.9)
    parents = top_k(state, state.population, 2)  # k-th parent: [1.2, 2.6, 3.1]
    rule = reject_rule(state, parents, K, cfg)
    diffs = np.array([losses[0], losses[1], losses[3]]) - np.array(losses[2])
    s = np.sqrt(np.mean(np.var(diffs, axis=1, ddof=1)))
    z = NormalDist().inv_cdf(1 - 0.1 / 2)
    assert rule.parent == tuple(losses[2]) and rule.margin == pytest.approx((z * s, z * s / np.sqrt(2)))
    assert reject_rule(state, parents, K, SearchConfig(**{**cfg.__dict__, "early_reject": False})) is None


def test_early_rejection_scores_fewer_documents_and_keeps_the_result():
    space, objective = space_of("longrope"), quadratic(32, 8.0, docs=(1.0, 3.0, 0.5, 2.0, 1.5))
    cfg = SearchConfig(population=32, parents=16, mutations=8, crossovers=8, iterations=15)
    full = search("ga", space, SearchConfig(**{**cfg.__dict__, "early_reject": False}), objective, 5,
                  peer_seeds(SPEC, 8.0))
    fast = search("ga", space, cfg, objective, 5, peer_seeds(SPEC, 8.0))
    docs_full = sum(len(r.evaluation.doc_losses) for r in full.history)
    docs_fast = sum(len(r.evaluation.doc_losses) for r in fast.history)
    assert docs_fast < docs_full
    assert any(r.evaluation.rejected for r in fast.history)
    # with documents offset by a constant per document, the bound is exact: same search
    assert fast.best.genome == full.best.genome
    assert [r.genome for r in fast.history] == [r.genome for r in full.history]


# -- checkpoint and resume --------------------------------------------------------------------
def test_resume_with_another_config_is_refused(tmp_path):
    space, objective = space_of("longrope"), quadratic(32, 8.0)
    state = search("ga", space, SMALL, objective, 3, peer_seeds(SPEC, 8.0), describe={"model": "a"})
    state.save(tmp_path)
    saved = SearchState.load(tmp_path)
    with pytest.raises(UsageError, match="mutation_prob"):
        search("ga", space, SearchConfig(**{**SMALL.__dict__, "mutation_prob": 0.5}), objective, 3,
               peer_seeds(SPEC, 8.0), state=saved, describe={"model": "a"})
    with pytest.raises(UsageError, match="model"):
        search("ga", space, SMALL, objective, 3, peer_seeds(SPEC, 8.0), state=saved, describe={"model": "b"})
    with pytest.raises(UsageError, match="nothing to resume"):
        SearchState.load(tmp_path / "elsewhere")
    # a state saved before --reject existed ran the exact rule: it resumes, and is refused with race
    for key in ("reject", "race_confidence"):
        del saved.config[key]
    search("ga", space, SMALL, objective, 3, peer_seeds(SPEC, 8.0), state=saved, describe={"model": "a"})
    with pytest.raises(UsageError, match="reject: saved 'exact' vs now 'race'"):
        search("ga", space, SearchConfig(**{**SMALL.__dict__, "reject": "race"}), objective, 3, peer_seeds(SPEC, 8.0),
               state=saved, describe={"model": "a"})


def test_evaluation_perplexity():
    ev = Evaluation([1.0, 2.0], 2)
    assert ev.loss == 1.5 and ev.perplexity == pytest.approx(math.exp(1.5))
