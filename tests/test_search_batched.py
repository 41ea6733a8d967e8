"""Several search candidates in one forward pass, a batch row each: the rotary rows, the
objectives' batched losses and the search with --candidates-per-forward against one candidate
at a time (fp32 on CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longrope.cli import main
from longrope.factors import RopeExtension
from longrope.methods import build_extension
from longrope.rope import RotarySpec
from longrope.seam import ScaledRotaryEmbedding, rotary_spec
from longrope.search.loop import OPTIMIZERS, peer_seeds
from longrope.search.scoring import RejectRule, Scoring, evaluate_serial
from longrope.search.state import SearchConfig
from longrope.evaluate.ppl import sequence_nll
from longrope.search.fitness import (NeedleObjective, PerplexityObjective, TailObjective,
                                    auto_candidates_per_forward, long_factor_candidate)
from longrope.search.genes import SearchSpace
from longrope.search.needle import NeedleDocument

from conftest import tiny_model
from helpers import model_and_corpus, search

RTOL = 1e-5  # batched vs one-at-a-time losses, fp32 (measured: within 1e-6 relative here)
TINY = SearchConfig(population=6, parents=3, mutations=2, crossovers=2, iterations=2, seed=0)


# -- the rotary rows --------------------------------------------------------------------------
def test_each_row_equals_its_extension_alone():
    spec = RotarySpec(16, 10000.0, 32)
    exts = [build_extension("pi", spec, 128), None,
            RopeExtension("longrope", [1.0 + 0.3 * i for i in range(8)], 32, 128,
                          short_factor=[1.0 + 0.01 * i for i in range(8)], start_token=4, attention_factor=1.3),
            build_extension("yarn", spec, 128).with_(start_token=2)]
    exts.append(exts[2].with_(short_attention_factor=1.0))  # twice: within and past the native context
    exts.append(exts[4])
    T = 100
    # rows 1, 2 and 4 stay within the native context (short factors), rows 0, 3 and 5 go past it (long)
    pos = torch.stack([torch.arange(T), torch.arange(T) % 32, torch.arange(T) % 32, torch.arange(T),
                       torch.arange(T) % 32, torch.arange(T)])  # [B, T]
    rope, x = ScaledRotaryEmbedding(spec), torch.zeros(len(exts), T, 8)
    rope.set_row_extensions(exts)
    cos, sin = rope(x, pos)
    assert cos.shape == (len(exts), T, 16)
    for b, ext in enumerate(exts):
        rope.set_extension(ext)
        c, s = rope(x[:1], pos[b : b + 1])
        torch.testing.assert_close(cos[b : b + 1], c, rtol=0, atol=1e-7)  # measured: bit-identical on CPU
        torch.testing.assert_close(sin[b : b + 1], s, rtol=0, atol=1e-7)


def test_rows_broadcast_shared_positions_and_refuse_another_batch_size():
    spec = RotarySpec(16, 10000.0, 32)
    rope = ScaledRotaryEmbedding(spec)
    rope.set_row_extensions([build_extension("pi", spec, 64), build_extension("ntk", spec, 64)])
    cos, _ = rope(torch.zeros(2, 50, 8), torch.arange(50)[None])  # transformers passes [1, T]
    assert cos.shape == (2, 50, 16) and not torch.equal(cos[0], cos[1])
    with pytest.raises(ValueError, match="3 rows"):
        rope(torch.zeros(3, 50, 8), torch.arange(50)[None])
    rope.set_extension(None)  # back to one extension for any batch
    assert rope(torch.zeros(3, 50, 8), torch.arange(50)[None])[0].shape == (1, 50, 16)


# -- the objectives ---------------------------------------------------------------------------
def _candidates(spec: RotarySpec, target: int) -> list[tuple[np.ndarray, int]]:
    space = SearchSpace(half=spec.half, scale=target / spec.original_max_position_embeddings,
                        max_factor=1.25 * target / spec.original_max_position_embeddings)
    rng = np.random.default_rng(0)
    seeds = [space.from_factors(s, t) for s, t in zip(peer_seeds(spec, space.scale), (0, 4, 16))]
    return [(space.factors(g), g.start_token) for g in seeds + [space.mutate(seeds[0], rng, 0.5)]]


def _needle_docs(ids: list[torch.Tensor]) -> list[NeedleDocument]:
    return [NeedleDocument(x, ((40, 44), (57 - k, 62)), ("a", "b"), ("1", "2"), (0.3, 0.6)) for k, x in enumerate(ids)]


@pytest.mark.parametrize("kind", ["ppl", "tail", "needle"])
def test_batched_losses_equal_one_at_a_time(kind):
    model = tiny_model("llama").float()
    spec, T = rotary_spec(model), 64
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 97, (T,), generator=g) for _ in range(3)]
    make = long_factor_candidate(spec, T)
    objective = {"ppl": lambda: PerplexityObjective(model, ids, make, chunk_size=16),
                 "tail": lambda: TailObjective(model, ids, make, chunk_size=16),
                 "needle": lambda: NeedleObjective(model, _needle_docs(ids), make)}[kind]()
    cands = _candidates(spec, T)
    alone = [list(objective(f, s)) for f, s in cands]  # [candidate][document]
    rows = [(f, s, (i + 1) % 3) for i, (f, s) in enumerate(cands)]  # mixed documents in one pass
    batched = objective.losses(rows)
    assert len(batched) == 4
    np.testing.assert_allclose(batched, [alone[i][doc] for i, (_, _, doc) in enumerate(rows)], rtol=RTOL)
    assert auto_candidates_per_forward(objective, cands[0]) == 1  # on CPU: one at a time


def test_tail_objective_scores_the_last_half_only():
    """The tail value is the mean NLL of tokens T/2 .. T-1: the whole sequence's summed NLL less
    that of its first T/2 tokens (a causal model scores a prefix the same alone)."""
    model = tiny_model("llama").float()
    spec, T = rotary_spec(model), 64
    ids = torch.randint(0, 97, (T,), generator=torch.Generator().manual_seed(1))
    make = long_factor_candidate(spec, T)
    factors, start = _candidates(spec, T)[1]
    [tail] = TailObjective(model, [ids], make)(factors, start)
    PerplexityObjective(model, [ids], make).rope.set_extension(make(factors, start))
    whole, head = (float(sequence_nll(model, x[None])) for x in (ids, ids[: T // 2]))
    assert tail == pytest.approx((whole - head) / (T - T // 2), rel=1e-5)


# -- the search loop --------------------------------------------------------------------------
class Synthetic:
    """A batched synthetic objective: loss = document offset + distance to a target curve;
    records the rows of every forward pass."""

    def __init__(self, per_forward: int, docs=(1.0, 3.0, 0.5, 2.0)):
        self.candidates_per_forward, self.docs, self.passes = per_forward, docs, []
        self.target = np.linspace(1.0, 8.0, 32)

    def value(self, lam, start, doc):
        return self.docs[doc] + float(np.mean((lam - self.target) ** 2)) + 0.001 * abs(start - 4)

    def __call__(self, lam, start):
        return [self.value(lam, start, j) for j in range(len(self.docs))]

    def losses(self, rows):
        self.passes.append([doc for _, _, doc in rows])
        return [self.value(lam, start, doc) for lam, start, doc in rows]


def test_rows_reject_per_candidate_and_refill_freed_rows():
    rng = np.random.default_rng(1)
    factors = [np.sort(rng.uniform(1, 10, 32)) for _ in range(7)]
    starts = [0] * 7
    one = Synthetic(1)
    threshold = float(np.median([np.mean(one(f, 0)) for f in factors]))
    rule = RejectRule(threshold=threshold, optimistic=(1.0, 3.0, 0.5, 2.0))
    want = evaluate_serial(Scoring(one, 4), factors, starts, rule)
    assert any(e.rejected for e in want) and not all(e.rejected for e in want)
    three = Synthetic(3)
    got = evaluate_serial(Scoring(three, 4), factors, starts, rule)
    assert [(e.doc_losses, e.rejected) for e in got] == [(e.doc_losses, e.rejected) for e in want]
    assert max(map(len, three.passes)) == 3 and sum(map(len, three.passes)) == sum(len(e.doc_losses) for e in want)
    assert any(len(set(p)) > 1 for p in three.passes)  # a freed row went to a new candidate at document 0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("reject", ["exact", "race"])
def test_batched_synthetic_search_is_the_same_search(name, reject):
    space = SearchSpace(half=32, scale=8.0, max_factor=10.0)
    seeds = peer_seeds(RotarySpec(64, 10000.0, 128), 8.0)
    cfg = SearchConfig(population=16, parents=8, mutations=4, crossovers=4, iterations=6, reject=reject)
    whole = search(name, space, cfg, Synthetic(1), 4, seeds).to_dict()
    assert any(r["rejected"] for r in whole["history"])
    assert search(name, space, cfg, Synthetic(3), 4, seeds).to_dict() == whole


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_batched_search_on_a_random_model_selects_the_same_candidates(name):
    model = tiny_model("llama").float()
    spec, T = rotary_spec(model), 64
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 97, (T,), generator=g) for _ in range(3)]
    space = SearchSpace(half=spec.half, scale=2.0, max_factor=2.5, start_tokens=(0, 1, 2, 4))
    runs = {}
    for per_forward in (1, 3):
        objective = PerplexityObjective(model, docs, long_factor_candidate(spec, T))
        objective.candidates_per_forward = per_forward
        runs[per_forward] = search(name, space, TINY, objective, 3, peer_seeds(spec, 2.0)).history
    one, three = runs[1], runs[3]
    assert [(r.generation, r.genome, r.evaluation.rejected) for r in three] == \
        [(r.generation, r.genome, r.evaluation.rejected) for r in one]
    for a, b in zip(one, three):
        np.testing.assert_allclose(b.evaluation.doc_losses, a.evaluation.doc_losses, rtol=RTOL)


# -- the command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return model_and_corpus(tmp_path_factory, "batched_assets")


def _search(assets, out, *extra):
    model, corpus = assets
    return main(["search", "--model", str(model), "--corpus", str(corpus), "--target-length", "64", "--out", str(out),
                 "--population", "6", "--parents", "3", "--mutations", "2", "--crossovers", "2", "--iterations", "1",
                 "--docs", "2", "--dtype", "fp32", *extra])


def test_cli_records_candidates_per_forward_and_refuses_another_on_resume(assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert _search(assets, out, "--candidates-per-forward", "3") == 0
    assert json.loads((out / "state.json").read_text())["config"]["candidates_per_forward"] == 3
    assert _search(assets, out, "--resume", "--candidates-per-forward", "2") == 2
    assert "candidates_per_forward: saved 3 vs now 2" in capsys.readouterr().err
    assert _search(assets, out, "--resume") == 0  # 0 (auto) takes the saved value
    state = json.loads((out / "state.json").read_text())
    del state["config"]["candidates_per_forward"]  # as written before the option existed: one at a time
    (out / "state.json").write_text(json.dumps(state))
    assert _search(assets, out, "--resume", "--candidates-per-forward", "1") == 0
    auto = tmp_path / "auto"
    assert _search(assets, auto) == 0  # on CPU, auto is one at a time
    assert json.loads((auto / "state.json").read_text())["config"]["candidates_per_forward"] == 1


def test_cli_refuses_a_negative_value_in_one_line(assets, tmp_path, capsys):
    assert _search(assets, tmp_path / "bad", "--candidates-per-forward", "-1") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "--candidates-per-forward must be >= 1, or 0" in err[0], err
