"""Nothing lost, nothing silently wrong, every bad input one line: the output-folder helper,
the validation of every input, and results keyed by everything that determines them."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml

import longrope.atomic as atomic
from longrope.cli import main
from longrope.errors import UsageError
from longrope.factors import FACTORS_FILE, RopeExtension
from longrope.readback import changed_keys
from longrope.outputs import output_dir

from conftest import make_corpus, make_tiny_model_dir
from helpers import one_line_error

HALF, NATIVE = 8, 32  # the tiny_model_dir fixture: head dim 16, native context 32


def factors(path: Path, scale: float = 2.0, **changes) -> Path:
    """A longrope factors file for the tiny fixtures (native 32 -> 32 * scale)."""
    d = RopeExtension("longrope", [scale] * HALF, NATIVE, int(NATIVE * scale)).to_dict()
    d.update(changes)
    path.write_text(json.dumps(d))
    return path


@pytest.fixture
def fine_tuned_dir(tiny_model_dir, tmp_path):
    """A copy of the tiny model carrying its own factors (as finetune writes them)."""
    d = tmp_path / "ft"
    shutil.copytree(tiny_model_dir, d)
    RopeExtension("longrope", [1.0, 1.0, 1.5, 2, 2, 3, 4, 4], NATIVE, 128).save(d / FACTORS_FILE)
    return d


# -- the output folder -------------------------------------------------------------------------
def test_output_dir_honours_umask_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with output_dir(out):
            atomic.atomic_write_json(out / "x.json", {})
            (out / "x.json").unlink()
            raise RuntimeError("failed run")
    assert not (tmp_path / "a").exists()  # nothing it created is left, parents included

    out.mkdir(parents=True)
    (out / "mine.txt").write_text("the user's")
    with output_dir(out):
        path = atomic.atomic_write_json(out / "r.json", {})
        with atomic.staged_dir(out / "d") as tmp:
            (tmp / "f").write_text("x")
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "weights").write_text("w")
            os.chmod(tmp / "sub" / "weights", 0o600)  # as a library's private temporary leaves it
    mask = atomic.UMASK
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((out / "d").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "d" / "sub").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "d" / "sub" / "weights").stat().st_mode) == 0o666 & ~mask
    assert (out / "mine.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == [".longrope-run.json", "d", "mine.txt", "r.json"]
    record = json.loads((out / ".longrope-run.json").read_text())
    assert record["files"] == ["r.json", "d"] and record["temporaries"] == []


def test_a_folder_in_use_is_refused_with_the_pid_and_a_stale_lock_is_not(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".longrope.lock").write_text("999999\n")  # a killed run's file: flock is gone with it
    (tmp_path / "link").symlink_to(out)
    with output_dir(out):
        for other in (out, tmp_path / "." / "out", tmp_path / "link"):  # the same folder, however reached
            with pytest.raises(UsageError, match=f"in use by another longrope run \\(pid {os.getpid()}\\)"):
                with output_dir(other):
                    pass


@pytest.mark.parametrize("command", [
    ["eval-ppl", "--lengths", "32"],
    ["passkey", "--lengths", "64"],
    ["search", "--target-length", "64"],
    ["finetune", "--length", "32", "--steps", "1"],
    ["export", "--factors", "F", "--force"],
    ["extend", "--recipe", "R"],
])
def test_every_command_refuses_a_folder_in_use(command, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a.replace("F", str(factors(tmp_path / "f.json"))) for a in command]
    if command[0] == "extend":
        recipe = {"model": str(tiny_model_dir), "stages": {"search": {"target_length": 64},
                                                           "finetune": {"length": 64, "steps": 1}}}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        args = ["extend", "--recipe", str(tmp_path / "r.yaml")]
    else:
        args += ["--model", str(tiny_model_dir)]
    with output_dir(out):
        one_line_error(capsys, main(args + ["--out", str(out)]), "in use by another longrope run")


def test_unwritable_out_fails_before_any_model_is_loaded(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import longrope.train.finetune as ft

    (tmp_path / "out").mkdir()

    real_open = os.open

    def denied(path, *a, **k):
        if str(path).startswith(str(tmp_path / "out")):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", denied)
    monkeypatch.setattr(ft, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(["finetune", "--model", str(tiny_model_dir), "--factors", str(factors(tmp_path / "f.json")),
                 "--length", "64", "--steps", "1", "--out", str(tmp_path / "out")])
    one_line_error(capsys, code, "cannot write into")


def test_export_never_replaces_a_folder_that_appears_while_it_runs(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import longrope.export.hf as hf

    out = tmp_path / "exported"
    real = hf.check_rotary

    def meanwhile(*a, **k):
        out.mkdir()
        (out / "user.txt").write_text("keep me")
        return real(*a, **k)

    monkeypatch.setattr(hf, "check_rotary", meanwhile)
    code = main(["export", "--model", str(tiny_model_dir), "--factors", str(factors(tmp_path / "f.json")),
                 "--out", str(out)])
    one_line_error(capsys, code, "appeared while this run was writing it")
    assert (out / "user.txt").read_text() == "keep me" and sorted(os.listdir(out)) == ["user.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]


def test_failed_runs_leave_no_folder_and_errors_start_their_own_line(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    code = main(["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
                 "--lengths", "10000000", "--out", str(out)])
    one_line_error(capsys, code, "no document reaches")
    assert not (tmp_path / "deep").exists()
    # a cell that fails while the progress bar is drawn: the error is not glued to the bar
    code = main(["passkey", "--model", str(tiny_model_dir), "--lengths", "8,16", "--trials", "1", "--methods", "none",
                 "--out", str(out)])
    one_line_error(capsys, code, "a passkey trial needs at least", "and 10 for the answer); 8 is too short")
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize("device,fragment", [
    ("foo", "--device 'foo' is not a torch device"),
    pytest.param("cuda", "--device cuda: no CUDA device is available", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="a CUDA device is here")),
])
def test_an_unusable_device_is_one_line(device, fragment, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    one_line_error(capsys, main(["eval-ppl", "--model", str(tiny_model_dir), "--lengths", "32", "--device", device,
                                 "--out", str(out)]), fragment)
    assert not out.exists()


def test_interrupted_finetune_saves_its_steps_and_resumes(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C after a step's optimizer update, before the step is counted: the run stops after
    that step with a checkpoint that holds exactly it, and the resumed run repeats the
    uninterrupted one (the batch is not trained twice). A second Ctrl-C stops at once."""
    import os
    import signal

    from safetensors.torch import load_file

    import longrope.train.finetune as ft

    cfg = ft.FinetuneConfig(length=32, steps=3, lr=1e-3, mixed_precision="no", corpus=str(tiny_corpus))
    full = ft.finetune(str(tiny_model_dir), None, tmp_path / "full", cfg, progress=False)
    real, calls, presses = ft._train_step, [], {"n": 1}

    def step(run, i):
        loss = real(run, i)  # the weights now hold step i
        calls.append(i)
        if i == 1 and len(calls) == 2:
            for _ in range(presses["n"]):
                os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(ft, "_train_step", step)
    out = tmp_path / "ft"
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(str(tiny_model_dir), None, out, cfg)
    assert ft.Checkpoints(out).last_step() == 2  # --save-every 0, yet nothing is lost
    assert "interrupted: step 2 is saved" in capsys.readouterr().err
    result = ft.finetune(str(tiny_model_dir), None, out, cfg, resume=True, progress=False)
    assert calls == [0, 1, 2] and result.losses == full.losses
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # twice: stops inside the step, and saves nothing the weights do not match
    calls.clear()
    presses["n"] = 2
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(str(tiny_model_dir), None, tmp_path / "twice", cfg)
    assert ft.Checkpoints(tmp_path / "twice").last_step() is None
    assert "interrupted mid-step: nothing is saved" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_outputs_that_are_empty_the_current_folder_or_under_a_file(tiny_model_dir, tmp_path, capsys, monkeypatch):
    f = factors(tmp_path / "f.json")
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "keep.txt").write_text("mine")
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path / "here")
    export = ["export", "--model", str(tiny_model_dir), "--factors", str(f), "--force", "--out"]
    one_line_error(capsys, main(export + ["."]), "is the current folder or holds it")
    one_line_error(capsys, main(export + [".."]), "is the current folder or holds it")
    one_line_error(capsys, main(export + [""]), "--out is empty")
    one_line_error(capsys, main(["eval-ppl", "--model", str(tiny_model_dir), "--out", ""]), "--out is empty")
    one_line_error(capsys, main(["eval-ppl", "--model", str(tiny_model_dir), "--out", str(tmp_path / "afile" / "o")]),
                   "afile is a file, not a folder")
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["keep.txt"]


def test_a_corrupt_checkpoint_is_one_line(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    import longrope.train.finetune as ft

    cfg = ft.FinetuneConfig(length=32, steps=3, lr=1e-3, mixed_precision="no", corpus=str(tiny_corpus))
    out = tmp_path / "ft"
    ft.finetune(str(tiny_model_dir), None, out, cfg, stop_after=2, progress=False)
    (out / "checkpoints" / "step-000002" / "model.safetensors").write_bytes(b"garbage" * 10)
    argv = ["finetune", "--model", str(tiny_model_dir), "--length", "32", "--steps", "3", "--lr", "1e-3",
            "--mixed-precision", "no", "--corpus", str(tiny_corpus), "--out", str(out), "--resume"]
    one_line_error(capsys, main(argv), "cannot resume from", "step-000002", "remove that folder")
    assert not (out / "finetune.json").exists()


def test_finetune_killed_before_its_first_checkpoint_can_restart(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "ft"
    (out / "checkpoints").mkdir(parents=True)  # what SIGKILL mid-checkpoint leaves: the run's temporary
    (out / ".longrope-abc-0.tmp").mkdir()
    (out / ".longrope-abc-0.tmp" / "model.safetensors").write_text("partial")
    (out / ".longrope-run.json").write_text(json.dumps({"run": "abc", "command": "finetune", "files": [],
                                                         "temporaries": [".longrope-abc-0.tmp"]}))
    argv = ["finetune", "--model", str(tiny_model_dir), "--length", "32", "--steps", "1", "--mixed-precision", "no",
            "--corpus", str(tiny_corpus), "--out", str(out)]
    assert main(argv + ["--resume"]) == 0  # nothing to resume yet: starts from step 0
    assert not (out / ".longrope-abc-0.tmp").exists()  # the killed run's recorded temporary
    assert (out / "finetune.json").is_file()
    # a finished run is resumed only with the settings it was made with
    one_line_error(capsys, main(argv + ["--resume", "--lr", "1e-3"]), "config.lr")
    one_line_error(capsys, main([*argv[:2], str(fine_tuned_copy(tiny_model_dir, tmp_path)), *argv[3:], "--resume"]),
                   "model")


def fine_tuned_copy(src: Path, tmp_path: Path) -> Path:
    d = tmp_path / "other-model"
    shutil.copytree(src, d)
    return d


def test_diverged_training_is_an_error_and_saves_nothing(tiny_model_dir, tiny_corpus, tmp_path, capsys, monkeypatch):
    import longrope.train.finetune as ft

    monkeypatch.setattr(ft, "_train_step", lambda run, step: float("nan"))
    out = tmp_path / "ft"
    code = main(["finetune", "--model", str(tiny_model_dir), "--length", "32", "--steps", "2", "--mixed-precision",
                 "no", "--corpus", str(tiny_corpus), "--out", str(out)])
    one_line_error(capsys, code, "diverged at step 0")
    assert not (out / "finetune.json").exists() and not (out / "config.json").exists()


# -- inputs: one line naming the field, before any model loads ----------------------------------
@pytest.mark.parametrize("argv,fragment", [
    (["eval-ppl", "--chunk-size", "-1"], "--chunk-size must be >= 1"),
    (["eval-ppl", "--chunk-size", "0"], "--chunk-size must be >= 1"),
    (["eval-ppl", "--target-length", "0"], "--target-length must be >= 2"),
    (["eval-ppl", "--lengths", "32", "--stride", "64"], "--stride 64 exceeds the shortest length 32"),
    (["passkey", "--lengths", "256,100000000000"], "--lengths must be <= 16777216, got 100000000000"),  # not built first
    (["tasks", "--lengths", "99999999999"], "--lengths must be <= 16777216, got 99999999999"),
    (["eval-ppl", "--target-length", "99999999999"], "--target-length must be <= 16777216"),
    (["search", "--target-length", "99999999999"], "--target-length must be <= 16777216"),
    (["eval-ppl", "--docs", "-2"], "--docs must be >= 1"),
    (["passkey", "--depth-bins", "0"], "--depth-bins must be >= 1"),
    (["search", "--target-length", "64", "--chunk-size", "-5"], "--chunk-size must be >= 1"),
    (["search", "--target-length", "64", "--start-token", "100000"], "--start-token 100000 must be below"),
    (["search", "--target-length", "64", "--population", "2", "--parents", "4"], "--population 2 is smaller"),
    (["search", "--target-length", "64", "--mutation-prob", "nan"], "--mutation-prob must be a finite number"),
    (["search", "--target-length", "64", "--optimizer", "cma", "--mutations", "1", "--crossovers", "1"],
     "CMA-ES needs at least 4 samples per generation (--mutations + --crossovers), got 2"),
    (["finetune", "--length", "32", "--steps", "1", "--lr", "inf"], "--lr must be a finite number"),
    (["pretrain", "--steps", "0"], "--steps must be >= 1"),
    (["finetune", "--length", "32", "--steps", "1", "--lr", "1e300"], "--lr must be <= 10"),  # finite, not in fp32
    (["pretrain", "--lr", "1e300"], "--lr must be <= 10"),
    (["pretrain", "--width", "65", "--heads", "2"], "--width 65 is not a multiple of --heads 2"),
    (["pretrain", "--head-dim", "31"], "--head-dim must be even"),
    (["pretrain", "--passkey-fraction", "0.8", "--copy-fraction", "0.8"], "exceed 1"),
])
def test_bad_numbers_are_one_line_before_loading(argv, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    one_line_error(capsys, main(argv + ["--model", "/nonexistent/m", "--out", str(out)][0 if argv[0] != "pretrain"
                                                                                          else 2:]), fragment)
    assert not out.exists()


@pytest.mark.parametrize("change,fragment", [
    ({"long_factor": [1.0, "2.0"] + [2.0] * 6}, "long_factor[1] must be a number, got '2.0'"),
    ({"long_factor": [1.0, True] + [2.0] * 6}, "long_factor[1] must be a number, got True"),
    ({"long_factor": [1.0, "x"] + [2.0] * 6}, "long_factor[1] must be a number, got 'x'"),
    ({"short_factor": [1.0] * 7 + [None]}, "short_factor[7] must be a number"),
    ({"method": "dynamic-ntk"}, "recomputes its factors at every length"),
    ({"method": "warp"}, "method 'warp' is unknown"),
    ({"start_token": 1e9}, "start_token must be an integer"),
    ({"start_token": 100000}, "start_token must be a non-negative integer below"),
    ({"max_position_embeddings": "64"}, "max_position_embeddings must be an integer"),
    ({"attention_factor": "1.0"}, "attention_factor must be a number"),
])
def test_factors_files_reject_wrong_types_naming_the_field(change, fragment, tiny_model_dir, tmp_path, capsys):
    path = factors(tmp_path / "f.json", **change)
    code = main(["eval-ppl", "--model", str(tiny_model_dir), "--methods", "none", "--factors", str(path),
                 "--out", str(tmp_path / "out")])
    one_line_error(capsys, code, fragment)


def test_factors_of_the_wrong_length_fail_before_any_method_runs(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    wrong = tmp_path / "w.json"
    RopeExtension("longrope", [2.0] * 5, NATIVE, 64).save(wrong)
    code = main(["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
                 "--lengths", "64", "--methods", "none,pi", "--factors", str(wrong), "--out", str(tmp_path / "o")])
    one_line_error(capsys, code, "hold 5 values", "takes 8")
    assert not (tmp_path / "o").exists()  # no method ran


def test_a_one_file_corpus_names_split_all(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "book.txt"
    corpus.write_text("word " * 2000)
    argv = ["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--lengths", "32",
            "--methods", "none", "--docs", "1", "--out", str(tmp_path / "o")]
    one_line_error(capsys, main(argv), "validation split of this corpus is empty", "--split all")
    assert main(argv + ["--split", "all"]) == 0


@pytest.mark.parametrize("content", [
    {"config": [], "generation": 0, "population": [0], "history": [], "rng_state": {}},
    {"config": {}, "generation": 0, "population": [5], "history": [
        {"generation": 0, "units": [100] * 8, "start_token": 0, "doc_losses": [1.0], "num_docs": 1,
         "rejected": False}], "rng_state": {}},
    {"config": {}, "generation": "x", "population": [], "history": [{}], "rng_state": None},
    ["not", "a", "state"],
])
def test_a_malformed_search_state_is_one_line(content, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "state.json").write_text(json.dumps(content))
    model = make_tiny_model_dir(tmp_path / "m")
    corpus = make_corpus(tmp_path / "c.jsonl")
    code = main(["search", "--model", str(model), "--corpus", str(corpus), "--target-length", "64", "--out", str(out),
                 "--resume", "--docs", "1"])
    one_line_error(capsys, code, "is not a search state")


def test_changed_keys_name_nested_settings():
    assert changed_keys({"config": {"lr": 1, "steps": 2}, "model": "a"}, {"config": {"lr": 2, "steps": 2},
                                                                          "model": "a"}) == ["config.lr"]


# -- results keyed by everything that determines them -------------------------------------------
def test_eval_ppl_reuses_only_identical_work(tiny_model_dir, tiny_corpus, tmp_path):
    f = factors(tmp_path / "mine.json", 2.0)
    base = ["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--lengths", "64",
            "--methods", "none", "--factors", str(f), "--docs", "1", "--dtype", "fp32"]

    def ppl(out, *extra):
        assert main(base + ["--out", str(out), *extra]) == 0
        res = json.loads((out / "results.json").read_text())
        return res, {r["method"]: r["ppl"] for r in res["rows"]}

    _, validation = ppl(tmp_path / "o")
    res, test = ppl(tmp_path / "o", "--split", "test")
    assert res["config"]["args"]["split"] == "test"
    assert test == ppl(tmp_path / "fresh-test", "--split", "test")[1] and test != validation
    factors(f, 3.0)  # the same file name, other factors
    _, replaced = ppl(tmp_path / "o", "--split", "test")
    assert replaced["mine"] != test["mine"] and replaced["none"] == test["none"]
    # a method added before the factors: results.json keeps the reused cells computed after it too
    _, added = ppl(tmp_path / "o", "--split", "test", "--methods", "none,pi", "--target-length", "128")
    assert set(added) == {"none", "pi", "mine"} and added["mine"] == replaced["mine"]


def test_search_resume_refuses_an_edited_corpus_or_other_chunking(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "m")
    corpus = make_corpus(tmp_path / "c.jsonl", n_docs=6, chars=200)
    out = tmp_path / "s"
    argv = ["search", "--model", str(model), "--corpus", str(corpus), "--target-length", "64", "--out", str(out),
            "--population", "3", "--parents", "2", "--mutations", "1", "--crossovers", "0", "--iterations", "1",
            "--docs", "1", "--dtype", "fp32"]
    assert main(argv) == 0
    assert "the seeds scored PI" in capsys.readouterr().out
    one_line_error(capsys, main(argv + ["--resume", "--chunk-size", "7"]), "chunk_size")
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(line.replace("green", "grey") for line in lines) + "\n")
    one_line_error(capsys, main(argv + ["--resume"]), "documents")


def test_export_of_a_fine_tuned_model_carries_the_new_factors(fine_tuned_dir, tmp_path):
    from longrope.models.load import load_model

    new = RopeExtension("longrope", [2.0] * HALF, NATIVE, 64)
    new.save(tmp_path / "new.json")
    out = tmp_path / "exported"
    assert main(["export", "--model", str(fine_tuned_dir), "--factors", str(tmp_path / "new.json"),
                 "--out", str(out)]) == 0
    assert load_model(str(out), "fp32", "cpu").own_extension.long_factor == new.long_factor


def test_truncated_or_foreign_weights_are_one_line(tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    f = factors(tmp_path / "f.json")
    one_line_error(capsys, main(["export", "--model", str(broken), "--factors", str(f), "--out",
                                 str(tmp_path / "o")]), "truncated")
    assert not (tmp_path / "o").exists()
    one_line_error(capsys, main(["info", "--model", str(broken)]), "truncated")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    one_line_error(capsys, main(["export", "--format", "gguf", "--model", str(bad), "--factors", str(f), "--out",
                                 str(tmp_path / "o")]), "not a readable GGUF file")
    one_line_error(capsys, main(["info", "--model", str(bad)]), "not a readable GGUF file")


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: c.update(rope_theta="abc"), "rope_theta 'abc': it must be a number > 1"),
    (lambda c: c.pop("hidden_size"), "does not describe these weights"),
    (lambda c: c.update(num_attention_heads="4"), "num_attention_heads"),
])
def test_a_config_that_does_not_describe_its_weights_is_one_line(edit, fragment, tiny_model_dir, tmp_path, capsys):
    """Checked before any model is built or any file copied: no traceback, and no export that
    plain transformers could not load."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config.pop("rope_parameters", None)  # transformers 5.x nests rope_theta there; 4.x keeps it on top
    config["rope_theta"] = 10000.0
    edit(config)
    (bad / "config.json").write_text(json.dumps(config))
    f = factors(tmp_path / "f.json")
    for argv in (["info"], ["eval-ppl", "--lengths", "32", "--out", str(tmp_path / "e")],
                 ["export", "--factors", str(f), "--out", str(tmp_path / "x")]):
        one_line_error(capsys, main(argv + ["--model", str(bad)]), fragment)
    assert not (tmp_path / "e").exists() and not (tmp_path / "x").exists()


def test_method_model_is_the_models_own_factors_and_none_the_original(fine_tuned_dir, tiny_model_dir, tiny_corpus,
                                                                       tmp_path, capsys):
    argv = ["eval-ppl", "--model", str(fine_tuned_dir), "--corpus", str(tiny_corpus), "--split", "all",
            "--lengths", "64", "--docs", "1", "--dtype", "fp32", "--factors", str(fine_tuned_dir / FACTORS_FILE)]
    assert main(argv + ["--methods", "none,model", "--out", str(tmp_path / "o")]) == 0
    assert "'none' is the original RoPE" in capsys.readouterr().out
    rows = {r["method"]: r["ppl"] for r in json.loads((tmp_path / "o" / "results.json").read_text())["rows"]}
    assert rows["model"] == rows["longrope_factors"] != rows["none"]
    code = main(["eval-ppl", "--model", str(tiny_model_dir), "--methods", "model", "--out", str(tmp_path / "p")])
    one_line_error(capsys, code, "carries no factors of its own")


def test_default_methods_within_the_native_context(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    assert main(["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
                 "--lengths", "32", "--docs", "1", "--out", str(tmp_path / "o")]) == 0
    assert "nothing to extend" in capsys.readouterr().out
    code = main(["eval-ppl", "--model", str(tiny_model_dir), "--lengths", "32", "--methods", "pi",
                 "--out", str(tmp_path / "p")])
    one_line_error(capsys, code, "--target-length 32", "'pi'")


# -- recipes -------------------------------------------------------------------------------------
def recipe(model: str, corpus: str, **stage_changes) -> dict:
    small = dict(docs=1, population=4, parents=2, mutations=1, crossovers=1, iterations=1, step=0.05)
    stages = {"search": {"target_length": 64, **small},
              "finetune": {"length": 64, "steps": 1, "lr": 1e-3, "mixed_precision": "no"},
              "readjust": dict(small), "evaluate": {"lengths": [32, 64], "docs": 1, "passkey_trials": 0,
                                                     "baselines": [], "split": "all"}}
    for key, value in stage_changes.items():
        stage, name = key.split("__")
        stages[stage][name] = value
    return {"model": model, "corpus": corpus, "dtype": "fp32", "stages": stages}


@pytest.mark.parametrize("changes,fragment", [
    ({"readjust__docs": -2}, "recipe: readjust.docs must be >= 1, got -2"),
    ({"finetune__lr": float("inf")}, "recipe: finetune.lr must be a finite number"),
    ({"search__population": 10 ** 30}, "recipe: search.population must be <= 100000"),
    ({"search__population": 2, "search__parents": 3}, "search.population 2 is smaller than search.parents 3"),
    ({"evaluate__chunk_size": -1}, "recipe: evaluate.chunk_size must be >= 1"),
    ({"search__chunk_size": 0}, "recipe: search.chunk_size must be >= 1"),
    ({"search__start_tokens": [0, 100]}, "search.start_tokens[1] = 100"),
    ({"search__target_length": 100000}, "recipe: search.target_length: in the search split, no document reaches"),
])
def test_recipe_errors_name_recipe_keys_and_write_nothing(changes, fragment, tiny_model_dir, tiny_corpus, tmp_path,
                                                          capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(str(tiny_model_dir), str(tiny_corpus), **changes), sort_keys=False))
    out = tmp_path / "out"
    one_line_error(capsys, main(["extend", "--recipe", str(path), "--out", str(out)]), fragment)
    assert not out.exists()


# -- rough edges ---------------------------------------------------------------------------------
def test_help_of_every_command_is_wrapped_and_every_option_explained(capsys, monkeypatch):
    import argparse

    from longrope.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings}"
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert max(len(line) for line in text.splitlines()) <= 100, name


def test_info_prints_path_and_dtype(tiny_model_dir, capsys):
    assert main(["info", "--model", str(tiny_model_dir), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["path"] == str(Path(tiny_model_dir).resolve()) and facts["dtype"] == "float32"


def test_figures_use_plain_numbers_and_whole_generations(tmp_path, monkeypatch):
    import longrope.plots as plots
    from longrope.search.plots import plot_progress

    figures = []
    monkeypatch.setattr(plots, "atomic_savefig", lambda fig, path, **kw: figures.append(fig) or Path(path))
    monkeypatch.setattr(plots.pyplot(), "close", lambda fig: None)
    rows = [{"method": "none", "length": n, "ppl": p} for n, p in ((128, 150.0), (256, 210.0), (512, 330.0))]
    plots.plot_ppl_vs_length(rows, tmp_path / "p.png", title="t")
    ax = figures[-1].axes[0]
    figures[-1].canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
    assert "128" in labels and "512" in labels and not any("^" in t or "times" in t for t in labels)
    plot_progress([(0, 9.0, 12.0), (1, 8.0, 11.0), (2, 7.5, 9.0)], tmp_path / "s.png")
    ax = figures[-1].axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    plot_progress([(0, 102.3436, 102.3559), (1, 102.3436, 102.3492), (2, 102.3435, 102.3436)], tmp_path / "n.png")
    figures[-1].canvas.draw()
    ax = figures[-1].axes[0]  # a narrow range: ticks carry the digits, no "+1.023e2" offset
    assert ax.yaxis.get_offset_text().get_text() == "" and "102.344" in [t.get_text() for t in ax.get_yticklabels()]
    trials = [{"method": "none", "length": 64, "depth": 0.1, "correct": True},
              {"method": "none", "length": 128, "depth": 0.9, "correct": False}]
    plots.plot_depth_heatmap(trials, tmp_path / "k.png", depth_bins=3)
    ax = figures[-1].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert ax.get_xlabel() and "n=1" in " ".join(texts) and "no trial" in texts and "(1 trial per length)" in ax.get_title()


def test_a_folder_held_by_another_process_is_refused_and_freed_when_it_is_killed(tmp_path):
    """Two real processes: the second run into the same --out fails with one line naming the
    first's pid; once the first is killed (SIGKILL: no clean-up code runs) the folder is free."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom longrope.outputs import output_dir\n"
         f"with output_dir({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = subprocess.run([sys.executable, "-m", "longrope", "search", "--model", "/nonexistent",
                              "--target-length", "64", "--out", str(out)], capture_output=True, text=True, timeout=120)
        err = run.stderr.strip()
        assert run.returncode == 2 and "in use by another longrope run" in err and str(holder.pid) in err, err
        assert "\n" not in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    probe = subprocess.run([sys.executable, "-c", "from longrope.outputs import output_dir\n"
                            f"with output_dir({str(out)!r}) as p: print(p.is_dir())"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and probe.stdout.strip() == "True", probe.stderr


def test_long_titles_wrap_to_the_figure_width():
    from longrope.plots import pyplot, wrap_title

    fig = pyplot().figure(figsize=(6, 4))
    title = "smollm2-135m: perplexity by position at 16384 tokens (native 8192, methods set for 16384 tokens)"
    lines = wrap_title(title, fig).splitlines()
    assert len(lines) == 2 and all(len(line) <= 54 for line in lines) and " ".join(lines) == title
    pyplot().close(fig)


def test_model_fingerprint_follows_content_not_modification_times(tiny_model_dir, tmp_path):
    import os
    import shutil

    from longrope.models.load import model_fingerprint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)  # new modification times, same bytes
    for p in copy.iterdir():
        os.utime(p, (1, 1))
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_model_dir))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(copy)) != model_fingerprint(str(tiny_model_dir))


def test_step_boundary_leaves_an_ignored_signal_ignored_and_defers_sigterm():
    import os
    import signal

    from longrope.train.loop import StepBoundary, StepInterrupted

    said = []
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a background job of a script
    try:
        with StepBoundary(said.append) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            stop.check()  # ignored: nothing pending
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and said == []
    finally:
        signal.signal(signal.SIGINT, old)
    term = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StepInterrupted):
        with StepBoundary(said.append) as stop:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's preemption: taken at the step's end
            stop.check()
    assert said and signal.getsignal(signal.SIGTERM) == term
