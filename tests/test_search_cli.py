"""`longrope search` end to end on a tiny random Llama: outputs, bad input, Ctrl-C + resume,
and torchrun with 2 gloo processes against one process."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from longrope.cli import main
from longrope.factors import RopeExtension
from longrope.search.genes import START_TOKENS

from helpers import model_and_corpus

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ["--population", "6", "--parents", "3", "--mutations", "2", "--crossovers", "2", "--iterations", "2",
          "--docs", "2", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return model_and_corpus(tmp_path_factory, "search_assets")


def search_args(assets, out, target=64, extra=()):
    model, corpus = assets
    return ["search", "--model", str(model), "--corpus", str(corpus), "--target-length", str(target),
            "--out", str(out), *BUDGET, *extra]


def test_search_writes_factors_history_and_plots(assets, tmp_path):
    out = tmp_path / "run"
    assert main(search_args(assets, out)) == 0
    ext = RopeExtension.load(out / "factors.json")
    assert ext.method == "longrope" and ext.max_position_embeddings == 64
    assert ext.original_max_position_embeddings == 32 and ext.half_dim == 8
    ext.check_monotone()
    assert 1.0 <= min(ext.long_factor) and max(ext.long_factor) <= 1.25 * 2.0
    assert ext.start_token in START_TOKENS
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 6 + 2 * 4 == ext.metadata["candidates"]
    assert {"generation", "units", "start_token", "perplexity", "docs_scored", "factors"} <= set(history[0])
    best = min(h["perplexity"] for h in history if not h["rejected"])
    assert ext.metadata["search_perplexity"] == pytest.approx(best)
    # the factors record the RoPE they fit and what the search spent
    assert ext.metadata["rotary_dim"] == 16 and ext.metadata["rope_theta"] == 10000.0
    assert ext.metadata["document_forwards"] == sum(h["docs_scored"] for h in history)
    assert (out / "search.png").stat().st_size > 0 and (out / "factors.png").stat().st_size > 0

    # the found factors install into the model like any other extension
    from longrope.models.load import load_model
    from longrope.seam import install_rope

    lm = load_model(str(assets[0]), dtype="fp32", device="cpu")
    install_rope(lm.model, ext)


def test_progress_shows_the_documents_of_the_candidate_being_scored(assets, tmp_path, capsys):
    assert main(search_args(assets, tmp_path / "run", extra=["--no-early-reject"])) == 0
    err = capsys.readouterr().err
    assert "docs=2/2" in err and "cand" in err  # candidates started, and how far the current one is


def test_fixed_start_token_and_variants(assets, tmp_path):
    assert main(search_args(assets, tmp_path / "a", extra=["--start-token", "0", "--variant", "critical"])) == 0
    history = [json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert {h["start_token"] for h in history} == {0}
    assert main(search_args(assets, tmp_path / "b", extra=["--variant", "piecewise"])) == 0


def test_a_fixed_attention_factor_is_used_recorded_and_kept_on_resume(assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(search_args(assets, out, extra=["--attention-factor", "1"])) == 0
    ext = RopeExtension.load(out / "factors.json")
    assert ext.attention_factor == 1.0 and ext.metadata["attention_factor"] == 1.0
    # the default differs (sqrt(1 + ln 2 / ln 32) for 32 -> 64 tokens), so the scores do too
    assert main(search_args(assets, tmp_path / "default")) == 0
    first = lambda run: json.loads((run / "history.jsonl").read_text().splitlines()[0])["perplexity"]  # noqa: E731
    assert first(out) != first(tmp_path / "default")
    assert RopeExtension.load(tmp_path / "default" / "factors.json").attention_factor is None
    capsys.readouterr()
    assert main(search_args(assets, out, extra=["--resume"])) == 2  # the run fixed it; this one would not
    assert "attention_factor" in capsys.readouterr().err
    assert main(search_args(assets, tmp_path / "bad", extra=["--attention-factor", "0"])) == 2
    assert not (tmp_path / "bad").exists()


def test_split_chooses_the_documents_searched_on_and_is_kept_on_resume(assets, tmp_path, capsys):
    from longrope.data import split_corpus, load_corpus
    from longrope.models.load import load_model
    from longrope.search.fitness import search_documents
    model, corpus = assets
    tok = load_model(str(model), dtype="fp32").tokenizer
    test, search = (search_documents(tok, str(corpus), 64, 2, split=s) for s in ("test", "search"))
    names = {s: [d.name for d in split_corpus(load_corpus(str(corpus)))[s]] for s in ("test", "search")}
    assert len(test) == 2 and set(names["test"]).isdisjoint(names["search"])
    assert all(not any(a.equal(b) for b in search) for a in test)
    assert len(search_documents(tok, str(corpus), 64, 20, split="all")) == 12
    out = tmp_path / "run"
    assert main(search_args(assets, out, extra=["--split", "test"])) == 0
    assert "no longer held out" in capsys.readouterr().err
    assert RopeExtension.load(out / "factors.json").metadata["split"] == "test"
    assert main(search_args(assets, tmp_path / "default")) == 0
    assert "split" not in RopeExtension.load(tmp_path / "default" / "factors.json").metadata
    first = lambda run: json.loads((run / "history.jsonl").read_text().splitlines()[0])["perplexity"]  # noqa: E731
    assert first(out) != first(tmp_path / "default")  # the same seed (PI) scored on other documents
    capsys.readouterr()
    assert main(search_args(assets, out, extra=["--resume"])) == 2  # searched on test; this would be search
    assert "split" in capsys.readouterr().err


def test_init_factors_carry_a_shorter_search_into_generation_0(assets, tmp_path, capsys):
    import numpy as np

    from longrope.search.loop import carried_seed

    short = tmp_path / "x2"
    assert main(search_args(assets, short)) == 0  # 32 -> 64 tokens
    ext = RopeExtension.load(short / "factors.json")
    lam = np.asarray(ext.long_factor)
    carried = carried_seed(ext.long_factor, ext.scale, 4.0)  # to 128 tokens: lambda ** (ln 4 / ln 2) = lambda ** 2
    assert np.allclose(carried, lam ** 2) and np.allclose(carried_seed(ext.long_factor, 2.0, 2.0), lam)
    out = tmp_path / "x4"
    capsys.readouterr()
    given = ["--init-factors", str(short / "factors.json"), "--no-early-reject"]
    assert main(search_args(assets, out, target=128, extra=given)) == 0
    first = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()][:4]
    assert all(h["generation"] == 0 for h in first)
    assert np.allclose(first[3]["factors"], np.round(np.clip(lam ** 2, 1.0, 1.25 * 4) / 0.01) * 0.01, atol=1e-6)
    assert re.search(r"YaRN [\d.]+, factors [\d.]+;", capsys.readouterr().out)  # the end line names it too
    state = json.loads((out / "state.json").read_text())
    assert state["config"]["init_factors"]["factors"] == pytest.approx(carried.tolist())
    # resuming with other --init-factors is refused; a missing file is one line, nothing written
    assert main(search_args(assets, out, target=128, extra=["--resume", "--no-early-reject"])) == 2
    assert main(search_args(assets, tmp_path / "bad", target=128, extra=["--init-factors", "nope-16k"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--init-factors" in err[-1] and "not found" in err[-1] and not (tmp_path / "bad").exists()


def test_short_for_searches_short_factors_within_the_native_context(assets, tmp_path, capsys):
    long_run = tmp_path / "long"
    assert main(search_args(assets, long_run)) == 0  # 32 -> 64 tokens
    long_ext = RopeExtension.load(long_run / "factors.json")
    out = tmp_path / "short"
    given = ["--short-for", str(long_run / "factors.json"), "--no-early-reject"]
    capsys.readouterr()
    assert main(search_args(assets, out, target=32, extra=given)) == 0
    ext = RopeExtension.load(out / "factors.json")
    # the long factors, n_hat and attention factor are kept; the short ones are searched in [1, s]
    assert ext.long_factor == long_ext.long_factor and ext.start_token == long_ext.start_token
    assert ext.attention_factor == long_ext.attention_factor and ext.short_factor is not None
    assert 1.0 <= min(ext.short_factor) and max(ext.short_factor) <= 2.0
    # the long search's record stays; this one's is beside it
    assert ext.metadata["search_perplexity"] == long_ext.metadata["search_perplexity"]
    assert ext.metadata["short_search"]["target_length"] == 32 and ext.metadata["short_search"]["candidates"] == 14
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert history[0]["factors"] == [1.0] * 8 and {h["start_token"] for h in history} == {long_ext.start_token}
    # the short factors are what the model uses at 32 tokens: different ones score differently
    assert len({h["perplexity"] for h in history}) > 5
    best = min(h["perplexity"] for h in history)
    assert ext.metadata["short_search"]["search_perplexity"] == pytest.approx(best)
    line = capsys.readouterr().out
    assert "original " in line and "long " in line
    # bad input: one line, exit 2, nothing written
    for bad in (search_args(assets, tmp_path / "b1", target=64, extra=given),  # above the native context
                search_args(assets, tmp_path / "b2", target=32, extra=given + ["--variant", "critical"]),
                search_args(assets, tmp_path / "b3", target=32, extra=["--short-for", "nope-16k"])):
        assert main(bad) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not any((tmp_path / b).exists() for b in ("b1", "b2", "b3"))


@pytest.mark.parametrize("case", ["short_target", "population", "corpus", "unwritable"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(assets, tmp_path, capsys, case):
    out = tmp_path / "out"
    if case == "short_target":
        args = search_args(assets, out, target=32)
    elif case == "population":
        args = search_args(assets, out) + ["--population", "2", "--parents", "3"]
    elif case == "corpus":
        args = search_args(assets, out, target=4096)
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
        args = search_args(assets, out)
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and err[0].startswith("longrope search: error:"), err
    assert not out.exists() or not any(out.iterdir())


def test_help_states_the_race_rule_and_its_confidence(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--reject {exact,race}" in text and "--race-confidence" in text and "(default: 0.95)" in text
    assert "z * s / sqrt(m)" in text and "Bonferroni" in text


def test_resume_with_nothing_to_resume_starts_afresh_and_a_new_run_refuses_an_old_one(assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(search_args(assets, out, extra=["--resume"])) == 0  # killed before its first document: afresh
    assert "nothing to resume" in capsys.readouterr().err
    shutil.rmtree(out)
    assert main(search_args(assets, out)) == 0
    assert main(search_args(assets, out)) == 2  # would overwrite a finished search
    assert main(search_args(assets, out, extra=["--resume", "--mutation-prob", "0.5"])) == 2
    assert "different configuration" in capsys.readouterr().err


def test_a_state_without_optimizer_and_objective_resumes_as_ga_on_perplexity(assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(search_args(assets, out)) == 0
    state = json.loads((out / "state.json").read_text())
    assert (state["config"]["optimizer"], state["config"]["objective"]) == ("ga", "ppl")
    del state["config"]["optimizer"], state["config"]["objective"]  # as written before these settings existed
    (out / "state.json").write_text(json.dumps(state))
    assert main(search_args(assets, out, extra=["--resume"])) == 0
    (out / "state.json").write_text(json.dumps(state))
    assert main(search_args(assets, out, extra=["--resume", "--optimizer", "cma"])) == 2
    assert "optimizer: saved 'ga' vs now 'cma'" in capsys.readouterr().err


def _interrupt_after(monkeypatch, n: int) -> dict:
    """Make the n-th forward pass of the search objective raise KeyboardInterrupt; count passes."""
    from longrope.search import fitness

    real = fitness.PerplexityObjective.losses
    calls = {"n": 0, "real": real}

    def counted(self, rows):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, rows)

    monkeypatch.setattr(fitness.PerplexityObjective, "losses", counted)
    return calls


def test_ctrl_c_saves_and_resume_finishes_like_an_uninterrupted_run(assets, tmp_path, monkeypatch):
    from longrope.search import fitness

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(search_args(assets, whole)) == 0
    calls = _interrupt_after(monkeypatch, 17)  # in the middle of generation 1 (6 x 2 passes in generation 0)
    assert main(search_args(assets, broken)) == 130
    assert json.loads((broken / "state.json").read_text())["generation"] == 0
    monkeypatch.setattr(fitness.PerplexityObjective, "losses", calls["real"])
    assert main(search_args(assets, broken, extra=["--resume"])) == 0
    assert (broken / "history.jsonl").read_text() == (whole / "history.jsonl").read_text()
    assert (broken / "factors.json").read_text() == (whole / "factors.json").read_text()


def test_a_stop_in_the_first_generation_loses_only_the_pass_in_flight(assets, tmp_path, monkeypatch, capsys):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    calls = _interrupt_after(monkeypatch, 10**9)
    assert main(search_args(assets, whole)) == 0
    total = calls["n"]
    assert not (whole / "scored.jsonl").exists()  # emptied at every checkpoint

    calls = _interrupt_after(monkeypatch, 8)  # generation 0 is 12 passes: no state.json yet
    assert main(search_args(assets, broken)) == 130
    assert not (broken / "state.json").exists()
    assert len((broken / "scored.jsonl").read_text().splitlines()) == 1 + 7  # header + 7 document losses
    capsys.readouterr()

    calls = _interrupt_after(monkeypatch, 10**9)
    assert main(search_args(assets, broken, extra=["--resume"])) == 0
    assert calls["n"] == total - 7  # nothing scored twice
    assert "reusing 7 document losses" in capsys.readouterr().err
    assert (broken / "history.jsonl").read_text() == (whole / "history.jsonl").read_text()
    assert (broken / "factors.json").read_text() == (whole / "factors.json").read_text()


def test_a_scored_log_of_other_work_is_not_reused(tmp_path):
    from longrope.search.scored import ScoredLog

    path = tmp_path / "scored.jsonl"
    log = ScoredLog(path, {"model": "a", "documents": "x"})
    log.add([1.0, 2.0], 0, 0, 3.5)
    log.add([1.0, 2.0], 0, 1, 4.5)
    log.close()
    with open(path, "a") as f:
        f.write('{"factors": [1.0, 2.5], "start_tok')  # a line cut by a kill
    again = ScoredLog(path, {"model": "a", "documents": "x"})
    assert again.get([1.0, 2.0], 0, 1) == 4.5 and len(again.losses) == 2
    again.add([1.0, 2.5], 4, 0, 5.0)  # rewrites the file clean before appending
    again.close()
    assert len(path.read_text().splitlines()) == 4
    assert ScoredLog(path, {"model": "b", "documents": "x"}).losses == {}  # another search's log


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_processes_equal_one(assets, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "longrope", *search_args(assets, one)], check=True, env=env)
    subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "longrope",
                    *search_args(assets, two)], check=True, env=env)
    assert (two / "history.jsonl").read_text() == (one / "history.jsonl").read_text()
    assert (two / "factors.json").read_text() == (one / "factors.json").read_text()


@pytest.mark.parametrize("optimizer", ["ga", "cma"])
def test_a_resume_may_ask_for_more_generations(assets, tmp_path, capsys, optimizer):
    """--iterations only says when to stop: a finished 1-generation run resumed with 2 ends
    byte-identical to a 2-generation run; fewer than those done is refused."""
    opt = ["--optimizer", optimizer]

    def run(out, iterations, *extra):
        budget = [a for a in BUDGET]
        budget[budget.index("--iterations") + 1] = str(iterations)
        return main(["search", "--model", str(assets[0]), "--corpus", str(assets[1]), "--target-length", "64",
                     "--out", str(out), *budget, *opt, *extra])

    assert run(tmp_path / "short", 1) == 0
    capsys.readouterr()
    assert run(tmp_path / "short", 2, "--resume") == 0
    # the resumed progress bar shows the best so far from its first line on
    first = next(part for part in re.split(r"[\r\n]", capsys.readouterr().err) if "gen=" in part)
    assert "gen=2/2" in first and "best_ppl=" in first
    assert run(tmp_path / "long", 2) == 0
    for name in ("factors.json", "history.jsonl", "state.json"):
        assert (tmp_path / "short" / name).read_bytes() == (tmp_path / "long" / name).read_bytes(), name
    capsys.readouterr()
    assert run(tmp_path / "short", 1, "--resume") == 2
    assert "already run 2 generations" in capsys.readouterr().err
