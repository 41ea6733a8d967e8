"""`longrope extend`: recipe validation (one line, exit 2, nothing written), the stages end to
end on a tiny random model, skipping complete stages, the shipped recipe parses."""
import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from longrope.cli import main
from longrope.errors import UsageError
from longrope.factors import FACTORS_FILE, RopeExtension
from longrope.recipe.config import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parent.parent
SMALL_SEARCH = dict(docs=1, population=4, parents=2, mutations=1, crossovers=1, iterations=1, step=0.05)


def small_recipe(model: str, corpus: str) -> dict:
    """Native context 32 -> 64 (stage 1, fine-tuned) -> 128 (final), everything minimal."""
    return {
        "model": model,
        "corpus": corpus,
        "dtype": "fp32",
        "stages": {
            "search": {"target_length": 64, "start_tokens": [0, 2], **SMALL_SEARCH},
            "finetune": {"length": 64, "steps": 2, "batch_size": 1, "lr": 1e-3, "mixed_precision": "no"},
            "search2": {"target_length": 128, **SMALL_SEARCH},
            "readjust": {**SMALL_SEARCH, "docs": 2},
            "evaluate": {"lengths": [32, 64, 128], "docs": 1, "passkey_trials": 0, "baselines": ["pi"],
                         "split": "all"},
        },
    }


def write(tmp_path: Path, data: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _mutate(data: dict, how: str) -> dict:
    d = copy.deepcopy(data)
    st = d["stages"]
    if how == "unknown-stage":
        st["distill"] = {}
    elif how == "unknown-key":
        st["finetune"]["learning_rate"] = 1e-4
    elif how == "unknown-top":
        d["gpus"] = 8
    elif how == "out-of-order":
        d["stages"] = {"finetune": st["finetune"], "search": st["search"]}
    elif how == "final-below-stage1":
        st["search2"]["target_length"] = 48
    elif how == "ft-above-factors":
        st["finetune"]["length"] = 96
    elif how == "missing-search":
        del st["search"]
    elif how == "bad-type":
        st["finetune"]["steps"] = "many"
    elif how == "bad-baseline":
        st["evaluate"]["baselines"] = ["pi", "warp"]
    elif how == "bad-objective":
        st["search"]["objective"] = "bleu"
    elif how == "bad-optimizer":
        st["readjust"]["optimizer"] = "adam"
    elif how == "bad-reject":
        st["search"]["reject"] = "hoeffding"
    elif how == "bad-needles":
        st["search2"]["needles"] = 0
    elif how == "bad-attention-by-length":
        d["attention_by_length"] = "yes"
    elif how == "piecewise-search2":
        st["search2"]["variant"] = "piecewise"
    elif how == "finetune2-without-search2":
        d["stages"] = {k: v for k, v in st.items() if k != "search2"} | {"finetune2": dict(st["finetune"])}
        d["stages"] = {k: d["stages"][k] for k in ("search", "finetune", "finetune2", "readjust", "evaluate")}
    elif how == "finetune2-too-long":
        d["stages"] = {**{k: st[k] for k in ("search", "finetune", "search2")},
                       "finetune2": {**st["finetune"], "length": 256}, "evaluate": st["evaluate"]}
    elif how == "empty-stages":
        d["stages"] = {}
    elif how == "cma-too-few":
        st["search"].update(optimizer="cma", mutations=1, crossovers=2)
    elif how == "finetune2-corpus":
        d["stages"] = {**{k: st[k] for k in ("search", "finetune", "search2")},
                       "finetune2": {**st["finetune"], "corpus": "x"}}
    return d


@pytest.mark.parametrize("how,msg", [
    ("unknown-stage", "unknown stage 'distill'"),
    ("unknown-key", "unknown key(s) learning_rate in finetune"),
    ("unknown-top", "unknown top-level key(s) gpus"),
    ("out-of-order", "stages out of order"),
    ("final-below-stage1", "must exceed the stage-1 target"),
    ("ft-above-factors", "exceeds what the stage-1 factors cover"),
    ("missing-search", "stage 'search' is required"),
    ("bad-type", "finetune.steps must be an integer"),
    ("bad-baseline", "unknown method 'warp'"),
    ("bad-objective", "recipe: search.objective must be one of ppl, tail, needle, passkey, got 'bleu'"),
    ("bad-optimizer", "recipe: readjust.optimizer must be one of ga, cma, got 'adam'"),
    ("bad-reject", "recipe: search.reject must be one of exact, race, got 'hoeffding'"),
    ("bad-needles", "recipe: search2.needles must be in [1, 30], got 0"),
    ("bad-attention-by-length", "recipe: attention_by_length must be true or false, got 'yes'"),
    ("piecewise-search2", "search2.variant must be longrope or critical"),
    ("finetune2-without-search2", "stage 'finetune2' needs 'search2'"),
    ("finetune2-too-long", "finetune2.length 256 exceeds what the final factors cover (search2.target_length 128)"),
    ("finetune2-corpus", "finetune2.corpus is set once for the whole recipe"),
    ("empty-stages", "'stages' is empty; it needs at least search and finetune"),
    ("cma-too-few", "CMA-ES needs at least 4 samples per generation (search.mutations + search.crossovers), got 3"),
])
def test_bad_recipe_one_line_exit_2_nothing_written(how, msg, tmp_path, capsys):
    data = _mutate(small_recipe("tiny", "stdlib"), how)
    out = tmp_path / "out"
    code = main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert msg in err and "\n" not in err, err
    assert not out.exists()


def test_an_out_holding_something_else_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")  # e.g. an eval-ppl run
    code = main(["extend", "--recipe", str(write(tmp_path, small_recipe("tiny", "stdlib"))), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds files but no recipe run" in err and "\n" not in err, err
    assert [p.name for p in out.iterdir()] == ["results.json"]


def test_bad_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    for path, msg in ((bad, "not valid YAML"), (tmp_path / "none.yaml", "recipe not found")):
        assert main(["extend", "--recipe", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_target_not_above_native_needs_the_model(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    data["stages"]["search"]["target_length"] = 32  # the native context of the fixture model
    data["stages"]["finetune"]["length"] = 32
    code = main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "must exceed the model's native context 32" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name, model, native", [("tiny-64x", "tiny", 256), ("tiny-128-64x", "tiny-128", 128)])
def test_shipped_recipes_parse(name, model, native):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.model == model and recipe.final_target == 64 * native
    assert recipe.finetune.length <= recipe.search.target_length


def test_search_stage_with_the_needle_objective_and_cma(tiny_model_dir, tiny_corpus, tmp_path):
    """The recipe's search keys include the optimizer and objective; stage.json records them
    only when they are not the defaults (ga, ppl), so older complete stages still match."""
    from longrope.models.load import model_spec
    from longrope.recipe.stages import stage_search

    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    assert not {"optimizer", "objective", "needles"} & set(parse_recipe(data).search.settings())
    data["stages"]["search"].update(target_length=512, objective="needle", needles=2, optimizer="cma", mutations=2,
                                  crossovers=2)
    del data["stages"]["search2"]  # its target must exceed 512; only stage 1 runs here
    recipe = parse_recipe(data)
    ext = stage_search(recipe, tmp_path, model_spec(recipe.model))
    assert ext.max_position_embeddings == 512
    assert (ext.metadata["objective"], ext.metadata["optimizer"], ext.metadata["needles"]) == ("needle", "cma", 2)
    stage = json.loads((tmp_path / "1-search" / "stage.json").read_text())
    assert {k: stage["settings"][k] for k in ("objective", "optimizer", "needles")} == \
        {"objective": "needle", "optimizer": "cma", "needles": 2}
    state = json.loads((tmp_path / "1-search" / "state.json").read_text())
    assert state["config"]["optimizer"] == "cma" and state["optimizer_state"] is not None


def test_second_search_in_the_critical_variant(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    """search2's critical dim is that of the stage-1 factors at the fine-tuned length; below it
    lambda2 follows lambda2_cd^(i/cd) (LongRoPE2), from 1 at the highest frequency."""
    import math

    import numpy as np

    from longrope.models.load import model_spec
    from longrope.search.genes import rescaled_critical_dimension

    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    data["stages"]["search2"]["variant"] = "critical"
    data["stages"] = {k: data["stages"][k] for k in ("search", "finetune", "search2")}
    out = tmp_path / "run"
    assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 0, capsys.readouterr().err
    spec = model_spec(str(tiny_model_dir))
    ext1 = json.loads((out / "1-search" / "stage.json").read_text())["extension"]
    cd = rescaled_critical_dimension(spec.dim, spec.base, 64, ext1["long_factor"])
    lam2 = np.array(json.loads((out / "3-search2" / "stage.json").read_text())["extension"]["metadata"]["stage2_factor"])
    assert 0 < cd < spec.half and np.all(lam2[cd:] >= 2.0 - 1e-9)  # s = 128 / 64 from cd on
    np.testing.assert_allclose(lam2[:cd], lam2[cd] ** (np.arange(cd) / cd))
    assert math.isclose(lam2[0], 1.0)


def test_the_final_attention_factor_can_follow_the_length(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    from longrope.factors import RopeExtension
    from longrope.models.load import load_model

    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    data["attention_by_length"] = True
    del data["stages"]["evaluate"], data["stages"]["readjust"]  # no readjustment needed for it
    out = tmp_path / "run"
    assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 0, capsys.readouterr().err
    ext = RopeExtension.load(out / "final" / "longrope_factors.json")
    assert ext.attention_by_length
    assert json.loads((out / "recipe.json").read_text())["attention_by_length"] is True
    assert not RopeExtension.load(out / "2-finetune" / "longrope_factors.json").attention_by_length
    rope = load_model(str(out / "final"), dtype="fp32").model.model.rotary_emb  # the final model runs with it
    assert rope.attention_factor_at(64) < rope.attention_factor_at(128) < rope.attention_factor_at(1024)
    # its config.json (for transformers) keeps one factor
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert "attention_by_length" not in json.dumps(cfg)


def test_extend_end_to_end_then_skips_complete_stages(tiny_model_dir, tiny_corpus, tmp_path, capsys, monkeypatch):
    from longrope.models.load import load_model

    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    recipe_path = write(tmp_path, data)
    out = tmp_path / "run"
    assert main(["extend", "--recipe", str(recipe_path), "--out", str(out)]) == 0
    capsys.readouterr()
    final = RopeExtension.load(out / "final" / FACTORS_FILE)
    s1 = RopeExtension.load(out / "1-search" / "factors.json")
    s2 = json.loads((out / "3-search2" / "stage.json").read_text())["extension"]
    # final long factor = stage-1 factor x stage-2 factor, element-wise
    lam2 = s2["metadata"]["stage2_factor"]
    assert final.long_factor == pytest.approx([a * b for a, b in zip(s1.long_factor, lam2)])
    assert final.short_factor is not None and final.max_position_embeddings == 128
    assert final.start_token == s1.start_token
    config = json.loads((out / "final" / "config.json").read_text())
    rs = config["rope_scaling"]
    assert rs["long_factor"] == pytest.approx(list(final.long_factor))
    assert rs["short_factor"] == pytest.approx(list(final.short_factor))
    assert config["original_max_position_embeddings"] == 32 and config["max_position_embeddings"] == 128
    assert "attention_factor" in rs
    lm = load_model(str(out / "final"), dtype="fp32", device="cpu")
    assert lm.spec.original_max_position_embeddings == 32
    report = json.loads((out / "report" / "report.json").read_text())
    got = {(c["variant"], c["length"]) for c in report["cells"] if c["kind"] == "ppl"}
    for variant in ("original", "stage1", "final", "pi-ft"):
        assert {(variant, n) for n in (32, 64, 128)} <= got
    assert ("final-no-readjust", 32) in got
    summary = report["summary"]  # the last band of positions at 4x against the original's own window
    assert list(summary["final_ppl_by_position"]) == ["0-31", "32-63", "64-127"]
    assert summary["final_last_band_over_original_native"] == pytest.approx(
        summary["final_ppl_by_position"]["64-127"] / summary["short_ppl_original"])
    change = summary["short_ppl_after_readjust"] / summary["short_ppl_original"] - 1
    assert summary["short_ppl_after_vs_original"] == pytest.approx(change)
    assert summary["short_at_most_1_percent_worse"] == (change <= 0.01)  # one-sided: lower is no regression
    assert "perplexity by position at 128 tokens" in (out / "report" / "report.md").read_text()
    assert (out / "report" / "report.png").stat().st_size > 1000
    assert (out / "baselines" / "pi" / "finetune.json").is_file()

    # a rerun skips every stage and changes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    assert main(["extend", "--recipe", str(recipe_path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for stage in ("search", "finetune", "search2", "readjust", "final"):
        assert f"{stage}: complete" in err, err
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}

    # an interrupted stage resumes however --out is spelled (here relative, before absolute)
    (out / "3-search2" / "stage.json").unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["extend", "--recipe", str(recipe_path), "--out", "run"]) == 0, capsys.readouterr().err
    capsys.readouterr()

    # a completed stage with other settings is refused, not silently mixed
    data["stages"]["search2"]["seed"] = 7
    assert main(["extend", "--recipe", str(write(tmp_path, data, "changed.yaml")), "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # skipped stages log before it
    assert last.startswith("longrope extend: error:") and "different settings (seed)" in last


def test_second_fine_tuning_continues_stage_1_with_the_final_factors(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    """finetune2 trains the stage-1 model again with lambda1 x lambda2 at a longer length; the
    final model and the baselines (fine-tuned twice, the same budget) come from it."""
    from safetensors.torch import load_file

    from longrope.factors import FACTORS_FILE, RopeExtension

    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    st = data["stages"]
    st["finetune2"] = {"length": 128, "steps": 2, "batch_size": 1, "lr": 1e-3, "mixed_precision": "no",
                       "mixed_context": 0.5}
    data["stages"] = {k: st[k] for k in ("search", "finetune", "search2", "finetune2", "readjust", "evaluate")}
    out = tmp_path / "run"
    assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "finetune2: 2 steps at 128 tokens" in err and "baseline pi (2): 2 steps at 128 tokens" in err
    record = json.loads((out / "3b-finetune2" / "finetune.json").read_text())
    searched = json.loads((out / "3-search2" / "stage.json").read_text())["extension"]
    assert record["config"]["length"] == 128 and record["model"] == str(out / "2-finetune")
    assert record["extension"]["long_factor"] == searched["long_factor"]
    final = RopeExtension.load(out / "final" / FACTORS_FILE)
    assert final.long_factor == pytest.approx(searched["long_factor"])
    weights = {name: load_file(out / name / "model.safetensors") for name in ("2-finetune", "3b-finetune2", "final")}
    key = next(k for k in weights["final"] if k.endswith("q_proj.weight"))
    assert torch.equal(weights["final"][key], weights["3b-finetune2"][key])
    assert not torch.equal(weights["final"][key], weights["2-finetune"][key])
    pi2 = json.loads((out / "baselines" / "pi-2" / "finetune.json").read_text())
    assert pi2["model"] == str(out / "baselines" / "pi") and pi2["config"]["length"] == 128
    report = json.loads((out / "report" / "report.json").read_text())
    assert {c["variant"] for c in report["cells"]} >= {"original", "stage1", "final", "pi-ft"}
    # the rerun skips both fine-tunings
    assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "finetune2: complete" in err and "baseline pi (2): complete" in err
    # stage 2 redone with other settings: what was built on the old model is refused, stage by stage
    import shutil

    shutil.rmtree(out / "2-finetune")
    data["stages"]["finetune"]["lr"] = 5e-4
    from longrope.recipe import stages

    for stage in ("3-search2", "3b-finetune2", "4-readjust"):
        assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        if stage == "3-search2":  # finetune2 too was made from the old stage-2 model
            with pytest.raises(UsageError, match="3b-finetune2 was made from an earlier 2-finetune"):
                base = json.loads((out / "3b-finetune2" / stages.BASE_FILE).read_text())["base"]
                stages._check_base(out / "3b-finetune2", base, out / "2-finetune")
            assert f"{out / stage} was made from an earlier 2-finetune" in last, last  # its settings are the same
        else:  # the later ones see the new search2's factors first
            assert str(out / stage) in last and "remove" in last, last
        shutil.rmtree(out / stage)
    # final: made again from the new stages (it is derived from them alone); the baselines were fine-tuned
    # from the original with the old finetune settings: refused
    assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 2
    assert "baselines/pi was fine-tuned with different settings" in capsys.readouterr().err
    assert RopeExtension.load(out / "final" / FACTORS_FILE) == RopeExtension.from_dict(
        json.loads((out / "final" / "stage.json").read_text())["settings"]["extension"])
    shutil.rmtree(out / "baselines")
    code = main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)])
    assert code == 0, capsys.readouterr().err[-600:]
    record = json.loads((out / "3b-finetune2" / "finetune.json").read_text())
    assert record["model"] == str(out / "2-finetune")


def test_a_third_search_extends_the_fine_tuned_model_further_against_peers(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    """search3 (the paper's 256k -> 2048k step) on the last fine-tuned model: final factors = the
    stage-2 factors x lambda3; the report sets it against the stage-2 factors alone and against
    PI / YaRN as the last step, with Wilson intervals and more trials below the long lengths."""
    import numpy as np

    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    st = data["stages"]
    st["finetune2"] = {"length": 128, "steps": 2, "batch_size": 1, "lr": 1e-3, "mixed_precision": "no"}
    st["search3"] = {"target_length": 512, "corpus": str(tiny_corpus), **SMALL_SEARCH}
    st["evaluate"] = {"lengths": [32, 64, 256, 512], "docs": 1, "passkey_trials": 3, "passkey_long_trials": 2,
                      "passkey_long_length": 512, "baselines": [], "peers": ["pi", "yarn"], "split": "all"}
    data["attention_by_length"] = True
    data["stages"] = {k: st[k] for k in ("search", "finetune", "search2", "finetune2", "search3", "readjust",
                                          "evaluate")}
    out = tmp_path / "run"
    assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 0, capsys.readouterr().err
    stage2 = json.loads((out / "3-search2" / "stage.json").read_text())["extension"]
    stage3 = json.loads((out / "3c-search3" / "stage.json").read_text())["extension"]
    final = RopeExtension.load(out / "final" / FACTORS_FILE)
    assert final.max_position_embeddings == 512 and final.attention_by_length
    assert np.allclose(final.long_factor, np.multiply(stage2["long_factor"], stage3["metadata"]["stage3_factor"]))
    assert stage3["attention_by_length"] and stage3["attention_factor"] == stage2["attention_factor"]
    report = json.loads((out / "report" / "report.json").read_text())
    cells = {(c["variant"], c["kind"], c["length"]): c for c in report["cells"]}
    assert {("stage2", "ppl", 512), ("stage2+pi", "ppl", 512), ("stage2+yarn", "passkey", 512)} <= set(cells)
    assert ("original", "ppl", 64) in cells and ("original", "ppl", 256) not in cells  # stops at stage 1's target
    assert len(cells["final", "passkey", 512]["trials"]) == 2 and len(cells["final", "passkey", 256]["trials"]) == 3
    pi = RopeExtension.from_dict(cells["stage2+pi", "ppl", 512]["identity"]["extension"])
    assert np.allclose(pi.long_factor, np.multiply(stage2["long_factor"], 4.0))  # x PI's factor for 128 -> 512
    assert pi.short_factor == final.short_factor and pi.attention_by_length
    step = report["summary"]["last_step"]
    assert set(step["last_band_ppl"]) == {"final", "stage2", "stage2+pi", "stage2+yarn"}
    assert "final_vs_best_peer_last_band" in step and len(report["summary"]["final_passkey_95"]["512"]) == 2
    assert "(" in (out / "report" / "report.md").read_text() and not (out / "report" / "passkey-in-progress.json").exists()
    # a rerun skips everything, the report included
    assert main(["extend", "--recipe", str(write(tmp_path, data)), "--out", str(out)]) == 0
    assert "search3: complete" in capsys.readouterr().err


def test_search3_needs_search2_and_a_longer_target(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    data = small_recipe(str(tiny_model_dir), str(tiny_corpus))
    st = data["stages"]
    for stages, fragment in ((("search", "finetune", "search3"), "'search3' needs 'search2'"),
                             (("search", "finetune", "search2", "search3"), "must exceed search2.target_length")):
        st["search3"] = {"target_length": 128, **SMALL_SEARCH}
        bad = {**data, "stages": {k: st[k] for k in stages}}
        assert main(["extend", "--recipe", str(write(tmp_path, bad)), "--out", str(tmp_path / "o")]) == 2
        assert fragment in capsys.readouterr().err
    st["search"]["corpus"] = "stdlib"
    bad = {**data, "stages": {k: st[k] for k in ("search", "finetune")}}
    assert main(["extend", "--recipe", str(write(tmp_path, bad)), "--out", str(tmp_path / "o")]) == 2
    assert "search.corpus: the corpus is set once" in capsys.readouterr().err
