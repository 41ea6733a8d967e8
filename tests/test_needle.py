"""LongRoPE2's needle-driven objective: the documents, the answer-only loss against full logits,
and `longrope search --objective needle` end to end on a tiny random model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_tokenizer
from longrope.cli import main
from longrope.errors import UsageError
from longrope.factors import RopeExtension
from longrope.search.fitness import NeedleObjective, long_factor_candidate
from longrope.search.needle import ANSWER, NEEDLE, QUESTION, needle_documents, positions_nll


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def fillers(tok, count=4, length=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([tok.bos_token_id]), torch.randint(2, len(tok), (length - 1,), generator=g)])
            for _ in range(count)]


def test_documents_are_target_length_with_the_answers_where_claimed(tok):
    T, K, n = 512, 4, 2
    docs = needle_documents(tok, fillers(tok, K), T, needles=n, seed=3)
    assert len(docs) == K
    for d in docs:
        assert d.ids.shape == (T,) and d.ids.dtype == torch.long
        assert d.ids[0] == tok.bos_token_id  # the filler's first token stays first
        assert len(set(d.keys)) == n and list(d.depths) == sorted(d.depths)
        # each answer span decodes to one needle's value, right after its question
        asked = []
        for a, b in d.answers:
            value = tok.decode(d.ids[a:b])
            assert value == ANSWER.format(value=value.strip()) and value.strip() in d.values
            key = d.keys[d.values.index(value.strip())]
            question = tok(QUESTION.format(key=key), add_special_tokens=False)["input_ids"]
            assert d.ids[a - len(question) : a].tolist() == question
            asked.append(key)
        assert sorted(asked) == sorted(d.keys)  # every needle is asked once
        assert d.answers[-1][1] == T  # the last answer ends the document
        # the needles lie in the filler, in depth order, before the questions
        ids = d.ids.tolist()
        at = []
        for key, value in zip(d.keys, d.values):
            needle = tok(NEEDLE.format(key=key, value=value), add_special_tokens=False)["input_ids"]
            at.append(next(i for i in range(T) if ids[i : i + len(needle)] == needle))
        assert at == sorted(at) and at[-1] < d.answers[0][0]
        assert d.positions.tolist() == [i for a, b in d.answers for i in range(a, b)]
    # K * n evenly spaced depths, dealt across the documents
    depths = sorted(x for d in docs for x in d.depths)
    np.testing.assert_allclose(depths, (np.arange(K * n) + 0.5) / (K * n))


def test_needles_are_deterministic_by_seed(tok):
    a = needle_documents(tok, fillers(tok), 512, needles=2, seed=0)
    b = needle_documents(tok, fillers(tok), 512, needles=2, seed=0)
    c = needle_documents(tok, fillers(tok), 512, needles=2, seed=1)
    assert all(torch.equal(x.ids, y.ids) and x.answers == y.answers for x, y in zip(a, b))
    assert [x.values for x in a] != [x.values for x in c]


def test_too_many_needles_for_the_length_is_a_usage_error(tok):
    with pytest.raises(UsageError, match="fewer --needles"):
        needle_documents(tok, fillers(tok), 256, needles=3)
    with pytest.raises(UsageError, match="--needles"):
        needle_documents(tok, fillers(tok), 512, needles=0)


def full_logit_answer_nll(model, ids: torch.Tensor, positions: torch.Tensor) -> float:
    """Reference: the model's full [T, V] logits, cross-entropy at the answer positions only."""
    with torch.no_grad():
        logits = model(ids[None]).logits[0].double()  # [T, V]
    logp = torch.log_softmax(logits, dim=-1)
    return float(-logp[positions - 1, ids[positions]].sum())


def test_answer_loss_equals_full_logits_restricted_to_the_answers(make_tiny_model, tok):
    torch.manual_seed(0)
    model = make_tiny_model("llama", vocab_size=len(tok))
    docs = needle_documents(tok, fillers(tok, 2), 512, needles=2, seed=0)
    for d in docs:
        got = float(positions_nll(model, d.ids[None], d.positions))
        # fp32 forward both ways; the reference sums in float64: agree to 1e-5 relative
        assert got == pytest.approx(full_logit_answer_nll(model, d.ids, d.positions), rel=1e-5)

    # the objective: one mean answer NLL per document, with the candidate's factors installed
    from longrope.methods import yarn_factors
    from longrope.seam import rotary_spec

    spec = rotary_spec(model)
    objective = NeedleObjective(model, docs, long_factor_candidate(spec, 512))
    lam = yarn_factors(spec, 512 / 32).numpy()
    losses = list(objective(lam, 4))
    assert len(losses) == 2
    objective.rope.set_extension(objective.make(lam, 4))
    for d, loss in zip(docs, losses):
        want = full_logit_answer_nll(model, d.ids, d.positions) / d.positions.numel()
        assert loss == pytest.approx(want, rel=1e-5)
    objective.rope.set_extension(None)


@pytest.mark.parametrize("optimizer", ["ga", "cma"])
def test_cli_search_with_the_needle_objective(tiny_model_dir, tiny_corpus, tmp_path, optimizer, capsys):
    out = tmp_path / "run"
    args = ["search", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--target-length", "512",
            "--out", str(out), "--population", "6", "--parents", "3", "--mutations", "2", "--crossovers", "2",
            "--iterations", "2", "--docs", "2", "--dtype", "fp32", "--objective", "needle", "--needles", "2",
            "--optimizer", optimizer]
    assert main(args) == 0
    ext = RopeExtension.load(out / "factors.json")
    ext.check_monotone()
    assert ext.max_position_embeddings == 512
    assert ext.metadata["objective"] == "needle" and ext.metadata["optimizer"] == optimizer
    assert ext.metadata["needles"] == 2
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history and all(h["num_docs"] == 2 for h in history)
    # a resume with another objective or optimizer would not repeat the run: refused
    capsys.readouterr()
    swap = {"needle": "ppl", "ga": "cma", "cma": "ga"}
    for flag, value in (("--objective", "needle"), ("--optimizer", optimizer)):
        changed = [swap[value] if a == value and args[i - 1] == flag else a for i, a in enumerate(args)]
        assert main(changed + ["--resume"]) == 2
        assert "different configuration" in capsys.readouterr().err


def test_passkey_documents_end_their_prompt_with_the_answer_then_filler(tok):
    from longrope.evaluate.passkey import QUESTION as PASSKEY_QUESTION
    from longrope.search.needle import passkey_documents
    T, K = 400, 3
    docs = passkey_documents(tok, K, T, seed=5)
    assert [d.values for d in docs] == [d.values for d in passkey_documents(tok, K, T, seed=5)]
    assert [d.values for d in docs] != [d.values for d in passkey_documents(tok, K, T, seed=6)]
    assert [d.depths[0] for d in docs] == sorted(d.depths[0] for d in docs) and docs[0].depths[0] < docs[-1].depths[0]
    for d in docs:
        (a, b), = d.answers
        assert d.ids.shape == (T,) and b < T  # filler follows the answer
        assert tok.decode(d.ids[a:b]).strip() == d.values[0] and 1 <= int(d.values[0]) <= 50000
        assert tok.decode(d.ids[:a]).rstrip().endswith(PASSKEY_QUESTION)
        assert f"The pass key is {d.values[0]}." in tok.decode(d.ids[:a])  # the needle holds this key
    with pytest.raises(UsageError, match="passkey"):
        passkey_documents(tok, 2, 20)


def test_cli_search_with_the_passkey_objective(tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    args = ["search", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--target-length", "256",
            "--out", str(out), "--population", "6", "--parents", "3", "--mutations", "2", "--crossovers", "2",
            "--iterations", "1", "--docs", "2", "--dtype", "fp32", "--objective", "passkey", "--optimizer", "cma"]
    assert main(args) == 0
    ext = RopeExtension.load(out / "factors.json")
    assert ext.metadata["objective"] == "passkey" and "needles" not in ext.metadata
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history and all(h["num_docs"] == 2 for h in history)
    assert all(np.isfinite(h["perplexity"]) and h["perplexity"] > 1 for h in history if not h["rejected"])
