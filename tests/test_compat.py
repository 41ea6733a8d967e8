"""What the 0.1.0 release wrote is read by this one: a recipe run's stages stay complete, an
eval-ppl results.json is reused cell for cell. The files under tests/data/release-0.1.0 were
written by that release."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from longrope.cli import main
from longrope.factors import RopeExtension
from longrope.recipe.config import load_recipe

from conftest import make_corpus, make_tiny_model_dir

DATA = Path(__file__).parent / "data" / "release-0.1.0"


def test_a_recipe_run_of_the_release_keeps_its_stages_complete():
    """The settings each stage records (stage.json, finetune.json) come out of this release's
    code exactly as 0.1.0 recorded them for the same recipe, so a rerun skips those stages."""
    from longrope.recipe import stages

    saved = json.loads((DATA / "recipe-settings.json").read_text())
    r = load_recipe(DATA / "tiny-64x.yaml")
    ext = RopeExtension("longrope", [1.0] * 16, 256, 2048, metadata={"x": 1})
    assert stages.search_settings(r, "search") == saved["search"]
    assert stages.search_settings(r, "search2", {"stage1": ext.to_dict()}) == saved["search2"]
    assert stages.search_settings(r, "readjust", {"extension": ext.to_dict()}) == saved["readjust"]
    for name in ("finetune", "finetune2"):
        assert asdict(getattr(r, name)) == saved[name]
    from longrope.recipe.report import report_settings

    skip = ("lengths", "by_position", "corpus", "split_seed", "dtype")  # the report sets these from the recipe
    assert {k: v for k, v in report_settings(r, r.evaluate).items() if k not in skip} == {
        k: v for k, v in saved["evaluate"].items() if k not in skip}


def test_an_eval_results_file_of_the_release_is_reused(tmp_path, monkeypatch):
    import longrope.evaluate.runner as runner

    model = make_tiny_model_dir(tmp_path / "model", native=32)
    corpus = make_corpus(tmp_path / "corpus.jsonl", n_docs=12, chars=300)
    old = json.loads((DATA / "eval-ppl-results.json").read_text())
    old["config"]["key"].update(model=str(model), corpus=str(corpus))  # the paths it was given then
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(old))

    def recomputed(*a, **k):
        raise AssertionError("a cell of the release's results.json was computed again")

    monkeypatch.setattr(runner, "ppl_figures", recomputed)
    argv = ["eval-ppl", "--model", str(model), "--corpus", str(corpus), "--lengths", "32,64", "--docs", "2",
            "--methods", "none,pi,yarn", "--split", "all", "--by-position", "--dtype", "bf16", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["method"], r["length"], r["ppl"]) for r in rows] == [
        (r["method"], r["length"], r["ppl"]) for r in old["rows"]]
    shutil.rmtree(out)
