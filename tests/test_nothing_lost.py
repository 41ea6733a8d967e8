"""Nothing of the user's is ever deleted, nothing stale is ever shown: the cases of a sweep that
tried to break the output folders, the reuse of results and the reading of files back."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import yaml

from longrope.cli import main
from longrope.factors import RopeExtension
from longrope.outputs import output_dir

from conftest import make_corpus, make_tiny_model_dir
from helpers import model_and_corpus, one_line_error

SEARCH = ["--population", "6", "--parents", "3", "--mutations", "2", "--crossovers", "1", "--iterations", "1",
          "--docs", "1", "--start-token", "0"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return model_and_corpus(tmp_path_factory, "lost")


def evaluate(assets, out, *extra) -> int:
    model, corpus = assets
    return main(["eval-ppl", "--model", str(model), "--corpus", str(corpus), "--lengths", "32,64", "--docs", "1",
                 "--methods", "none,pi", "--out", str(out), *extra])


def search(assets, out, *extra) -> int:
    model, corpus = assets
    return main(["search", "--model", str(model), "--corpus", str(corpus), "--target-length", "64", *SEARCH,
                 "--out", str(out), *extra])


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder` (hidden ones too) with its bytes."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


USERS = {".bashrc.old": "k", ".model.cfg": "k", "sub/.notes.tmp": "k", ".config.old/x": "k",
         ".results.json.abc123.tmp": "k", "checkpoints/.tmp-step-000002/w": "k", ".probe.x": "k"}


def users_files(folder: Path) -> dict[str, bytes | None]:
    for name, text in USERS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return snapshot(folder)


# -- 1. nothing is cleaned up by its name --------------------------------------------------------------------
def test_files_named_like_temporaries_survive_failed_and_finished_runs(assets, tmp_path, capsys):
    x = tmp_path / "x"
    before = users_files(x)
    one_line_error(capsys, main(["eval-ppl", "--model", "nonexistent", "--out", str(x)]), "model not found")
    assert snapshot(x) == before
    assert evaluate(assets, x) == 0
    after = snapshot(x)
    assert {k: v for k, v in after.items() if k in before} == before
    assert {"results.json", "results.csv", "ppl_vs_length.png", ".longrope-run.json"} <= set(after)


def test_a_parent_given_as_out_leaves_a_running_child_alone(assets, tmp_path):
    runs, child = tmp_path / "runs", tmp_path / "runs" / "exp"
    with output_dir(child, command="eval-ppl"):
        from longrope.atomic import staged_dir

        with staged_dir(child / "d"):  # another run's temporary, in progress
            inside = snapshot(runs)
            assert evaluate(assets, runs) == 0
            assert {k: v for k, v in snapshot(runs).items() if k.startswith("exp")} == inside


def test_a_failed_forced_export_leaves_its_target_alone(assets, tmp_path, capsys, monkeypatch):
    import longrope.export.hf as hf

    model, _ = assets
    target = tmp_path / "target"
    before = users_files(target)
    ext = RopeExtension("longrope", [2.0] * 8, 32, 64).save(tmp_path / "f.json")
    monkeypatch.setattr(hf, "check_rotary", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        main(["export", "--model", str(model), "--factors", str(ext), "--out", str(target), "--force"])
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "target"]  # no temporary, lock or record left


# -- 2. an input is never removed ----------------------------------------------------------------------------
def test_export_force_onto_the_search_that_made_the_factors_is_refused(assets, tmp_path, capsys):
    s1 = tmp_path / "s1"
    assert search(assets, s1) == 0
    before = snapshot(s1)
    model, _ = assets
    one_line_error(capsys, main(["export", "--model", str(model), "--factors", str(s1 / "factors.json"),
                                 "--out", str(s1), "--force"]), "holds the factors file")
    assert snapshot(s1) == before


def test_a_search_never_overwrites_files_no_search_wrote(assets, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "factors.json").write_text('{"mine": 1}')
    (d / "history.jsonl").write_text("mine\n")
    before = snapshot(d)
    one_line_error(capsys, search(assets, d), "factors.json, not written by a longrope run")
    assert snapshot(d) == before


def test_a_folder_of_another_command_is_refused_and_an_input_in_out_is_kept(assets, tmp_path, capsys):
    s1 = tmp_path / "s1"
    assert search(assets, s1) == 0
    before = snapshot(s1)
    one_line_error(capsys, evaluate(assets, s1, "--factors", str(s1 / "factors.json")),
                   "holds the results of a `search` run")
    assert snapshot(s1) == before


# -- 3. weights edited in place are noticed ------------------------------------------------------------------
def test_weights_edited_in_place_are_scored_anew(assets, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(assets[0], model)
    out = tmp_path / "e"
    args = ["eval-ppl", "--model", str(model), "--corpus", str(assets[1]), "--lengths", "32", "--docs", "1",
            "--methods", "none", "--out", str(out)]
    assert main(args) == 0
    first = json.loads((out / "results.json").read_text())["rows"][0]["ppl"]
    weights = load_file(model / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.0.self_attn.q_proj.weight"))
    weights[name] = weights[name] * 3.0  # the same size, most bytes of the file unchanged
    stat = (model / "model.safetensors").stat()
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the same time
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())["rows"][0]["ppl"]
    shutil.rmtree(out)
    assert main(args) == 0
    fresh = json.loads((out / "results.json").read_text())["rows"][0]["ppl"]
    assert again == fresh != first
    assert torch.isfinite(torch.tensor(fresh))


# -- 4. one folder, one run ----------------------------------------------------------------------------------
def test_a_rerun_leaves_no_output_of_the_earlier_run(assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e"
    assert evaluate(assets, out, "--by-position") == 0
    assert (out / "results_by_position.csv").is_file() and (out / "ppl_by_position.png").is_file()
    assert evaluate(assets, out) == 0
    assert not (out / "results_by_position.csv").exists() and not (out / "ppl_by_position.png").exists()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(not r.get("bands") for r in rows)

    # a rerun killed midway: its partial results.json, and no figure or table of the earlier run
    import longrope.commands.eval_ppl as ev

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "save_outputs", killed)
    assert evaluate(assets, out, "--split", "search") == 130
    assert (out / "results.json").is_file()
    assert not (out / "results.csv").exists() and not (out / "ppl_vs_length.png").exists()
    assert json.loads((out / "results.json").read_text())["config"]["args"]["split"] == "search"


def test_tasks_with_fewer_tasks_leave_no_figure_of_the_others(assets, tmp_path):
    model, corpus = assets
    big = make_tiny_model_dir(tmp_path / "m", native=512)
    args = ["tasks", "--model", str(big), "--corpus", str(corpus), "--split", "all", "--lengths", "768",
            "--trials", "1", "--methods", "none", "--haystack", "filler", "--out", str(tmp_path / "t")]
    assert main(args + ["--tasks", "single-needle,multi-key"]) == 0
    assert (tmp_path / "t" / "multi-key.png").is_file()
    assert main(args + ["--tasks", "single-needle"]) == 0
    assert (tmp_path / "t" / "single-needle.png").is_file() and not (tmp_path / "t" / "multi-key.png").exists()


# -- 5. the lock -----------------------------------------------------------------------------------------------
def test_an_existing_folder_in_a_read_only_parent_can_be_written(assets, tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    (parent / "out").mkdir(parents=True)
    real_open = os.open

    def read_only_parent(path, flags, *a, **k):  # root ignores chmod: refuse writes in `parent` itself
        if Path(path).parent == parent and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only_parent)
    assert evaluate(assets, parent / "out") == 0
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


# -- 6. a damaged state is refused, not trusted ----------------------------------------------------------------
@pytest.fixture(scope="module")
def searched(assets, tmp_path_factory):
    """A finished 1-generation search of each optimizer, to be damaged and resumed to 2 generations."""
    root = tmp_path_factory.mktemp("searched")
    for optimizer in ("ga", "cma"):
        extra = ["--optimizer", optimizer, "--mutations", "3", "--crossovers", "1"] if optimizer == "cma" else []
        assert search(assets, root / optimizer, *extra) == 0
    return root


def damage(path: Path, change) -> None:
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state, allow_nan=True))


@pytest.mark.parametrize("optimizer,change,fragment", [
    ("ga", lambda s: s.update(generation=-5), "generation must be an integer >= 0"),
    ("ga", lambda s: s["history"][0].update(units=[10**7] * 8), "outside this search's space"),
    ("ga", lambda s: s["history"][0].update(units=[-5] * 8), "units must be an integer >= 0"),
    ("ga", lambda s: s["history"][1].update(units=s["history"][1]["units"][:3]), "outside this search's space"),
    ("ga", lambda s: s["history"][0].update(doc_losses=[float("nan")]), "doc_losses must be finite"),
    ("ga", lambda s: s.update(rng_state={"bit_generator": "PCG64", "state": "x"}), "rng_state is not"),
    ("ga", lambda s: s.update(generation=1.5), "generation must be an integer"),
    ("cma", lambda s: s["optimizer_state"].update(sigma=-1.0), "CMA-ES state is damaged"),
    ("cma", lambda s: s["optimizer_state"].update(mean=s["optimizer_state"]["mean"][:2]), "CMA-ES state is damaged"),
    ("cma", lambda s: s["optimizer_state"]["C"][0].__setitem__(0, float("nan")), "CMA-ES state is damaged"),
    ("cma", lambda s: s.update(rng_state={"bit_generator": "MT19937"}), "CMA-ES state is damaged"),
])
def test_a_damaged_state_is_one_line(assets, searched, tmp_path, capsys, optimizer, change, fragment):
    out = tmp_path / "run"
    shutil.copytree(searched / optimizer, out)
    damage(out / "state.json", change)
    before = snapshot(out)
    extra = ["--optimizer", optimizer, "--mutations", "3", "--crossovers", "1"] if optimizer == "cma" else []
    code = search(assets, out, *extra, "--iterations", "2", "--resume")
    one_line_error(capsys, code, fragment)
    assert snapshot(out) == before


# -- 7. no traceback -------------------------------------------------------------------------------------------
def deep(n: int = 200_000) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("case", ["factors", "jsonl", "state", "surrogate", "name", "recipe"])
def test_files_that_break_parsers_are_one_line(assets, tmp_path, capsys, case):
    model, corpus = assets
    if case == "factors":
        (tmp_path / "f.json").write_text(deep())
        argv = ["eval-ppl", "--model", str(model), "--factors", str(tmp_path / "f.json")]
        fragment = "nested too deeply"
    elif case in ("jsonl", "surrogate"):
        line = deep() if case == "jsonl" else json.dumps({"text": "abc \ud800 def"})
        (tmp_path / "c.jsonl").write_text(corpus.read_text() + line + "\n")
        argv = ["eval-ppl", "--model", str(model), "--corpus", str(tmp_path / "c.jsonl")]
        fragment = "nested too deeply" if case == "jsonl" else "not valid Unicode"
    elif case == "recipe":
        (tmp_path / "r.yaml").write_text("model: " + "[" * 100_000 + "]" * 100_000 + "\n")
        argv = ["extend", "--recipe", str(tmp_path / "r.yaml")]
        fragment = "nested too deeply"
    elif case == "state":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "state.json").write_text(deep())
        (tmp_path / "out" / ".longrope-run.json").write_text(json.dumps(
            {"run": "a", "command": "search", "files": ["state.json"], "temporaries": []}))
        argv = ["search", "--model", str(model), "--corpus", str(corpus), "--target-length", "64", *SEARCH, "--resume"]
        fragment = "nested too deeply"
    else:  # a corpus file whose name is not UTF-8
        folder = tmp_path / "texts"
        folder.mkdir()
        (folder / os.fsdecode(b"bad-\xff-name.txt")).write_text("the grass is green " * 40)
        (folder / "good.txt").write_text("the sky is blue " * 40)
        argv = ["eval-ppl", "--model", str(model), "--corpus", str(folder), "--split", "all", "--lengths", "32",
                "--methods", "none"]
        assert main(argv + ["--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
        return
    out = tmp_path / "out"
    one_line_error(capsys, main(argv + ["--out", str(out)]), fragment)


def test_write_failures_after_work_started_are_one_line(assets, tmp_path, capsys):
    out = tmp_path / "e"
    (out / "results.json").mkdir(parents=True)  # a folder where a file goes
    (out / ".longrope-run.json").write_text(json.dumps(
        {"run": "a", "command": "eval-ppl", "files": ["results.json"], "temporaries": []}))
    one_line_error(capsys, evaluate(assets, out), "results.json")


# -- 8. unclear messages -----------------------------------------------------------------------------------------
def test_unclear_cases_say_what_they_mean(assets, tmp_path, capsys):
    model, _ = assets
    d = RopeExtension("longrope", [2.0] * 8, 32, 64).to_dict()
    del d["long_factor"]
    (tmp_path / "f.json").write_text(json.dumps(d))
    one_line_error(capsys, main(["eval-ppl", "--model", str(model), "--factors", str(tmp_path / "f.json"),
                                 "--out", str(tmp_path / "o")]), "missing key(s) long_factor")
    one_line_error(capsys, main(["eval-ppl", "--model", str(model), "--lengths", "", "--out", str(tmp_path / "o")]),
                   "--lengths")
    d = RopeExtension("longrope", [2.0] * 8, 32, 64).to_dict() | {"attention_factor": 1e300}
    (tmp_path / "f.json").write_text(json.dumps(d))
    one_line_error(capsys, main(["eval-ppl", "--model", str(model), "--factors", str(tmp_path / "f.json"),
                                 "--out", str(tmp_path / "o")]), "attention_factor must be a number in (0, 10]")
    assert not (tmp_path / "o").exists()


def test_a_search_stopped_before_its_first_document_resumes_afresh_and_says_what_it_kept(assets, tmp_path, capsys,
                                                                                          monkeypatch):
    import longrope.search.fitness as fitness

    out = tmp_path / "s"
    assert search(assets, out, "--resume") == 0  # nothing to resume: starts afresh
    assert "nothing to resume" in capsys.readouterr().err
    shutil.rmtree(out)
    real = fitness.band_nll
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(fitness, "band_nll", interrupted)
    assert search(assets, out) == 130
    err = capsys.readouterr().err
    assert "no generation was complete, and 2 document loss(es) of the generation in progress" in err
    monkeypatch.setattr(fitness, "band_nll", real)
    assert search(assets, out, "--resume") == 0
    assert math.isfinite(RopeExtension.load(out / "factors.json").metadata["search_perplexity"])


def test_a_recipe_refuses_a_folder_of_another_run_and_a_rerun_keeps_its_stages(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "m", native=32)
    corpus = make_corpus(tmp_path / "c.jsonl", n_docs=12, chars=300)
    recipe = {"model": str(model), "corpus": str(corpus), "stages": {
        "search": {"target_length": 64, "population": 4, "parents": 2, "mutations": 1, "crossovers": 1,
                   "iterations": 1, "docs": 1, "start_tokens": [0]},
        "finetune": {"length": 64, "steps": 1, "mixed_precision": "no"}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "run"
    assert main(["extend", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out)]) == 0
    before = {k: v for k, v in snapshot(out).items() if not k.startswith(".longrope")}
    assert main(["extend", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out)]) == 0
    after = {k: v for k, v in snapshot(out).items() if not k.startswith(".longrope")}
    assert set(before) == set(after) and before["1-search/stage.json"] == after["1-search/stage.json"]
