"""Bad input: one line on stderr, exit status 2, no output written."""
import json
import subprocess
import sys

import pytest

from longrope.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "longrope", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    r = run_cli("--help")
    assert r.returncode == 0
    for name in ("info", "eval-ppl", "passkey", "lm-eval"):
        assert name in r.stdout


def test_version_prints_the_version_stamp():
    from longrope.version import __version__

    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"longrope {__version__}"


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["info", "--model", "/nonexistent/model"], "model not found"),
        (["eval-ppl", "--model", "/nonexistent.gguf"], "GGUF file not found"),
        (["eval-ppl", "--lengths", "abc"], "--lengths must be comma-separated integers"),
        (["passkey", "--trials", "0"], "--trials must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, msg, capsys, tmp_path):
    argv = [*argv, "--out", str(tmp_path / "out")] if argv[0] != "info" else argv
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert msg in err and "\n" not in err


def test_unknown_method_and_bad_factors_file(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "longrope", "long_factor": [1, 2]}))
    for argv, msg in (
        (["--methods", "none,warp"], "unknown method 'warp'"),
        (["--methods", "", "--factors", str(bad)], "missing key"),
    ):
        code = main(["eval-ppl", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and msg in err and "\n" not in err, err
    assert not (tmp_path / "o" / "results.json").exists()


def test_eval_ppl_end_to_end_and_resume(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
            "--docs", "2", "--lengths", "32,64", "--methods", "none,pi,yarn", "--dtype", "fp32", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["length"]) for r in res["rows"]} == {(m, n) for m in ("none", "pi", "yarn") for n in (32, 64)}
    assert all(r["ppl"] > 1 for r in res["rows"])
    assert (out / "results.csv").read_text().startswith("method,length,ppl")
    assert (out / "ppl_vs_length.png").stat().st_size > 1000
    # none at native length equals the untouched model's; PI differs there (it is set for 64)
    ppl = {(r["method"], r["length"]): r["ppl"] for r in res["rows"]}
    assert ppl[("pi", 32)] != ppl[("none", 32)]
    # a rerun reuses the finished cells
    assert main(argv) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert [r["ppl"] for r in res2["rows"]] == [r["ppl"] for r in res["rows"]]
    # --by-position: the same perplexities, plus one per band of positions of the native length (32)
    capsys.readouterr()
    assert main(argv + ["--by-position"]) == 0
    printed = capsys.readouterr().out
    assert "0-31" in printed and "32-63" in printed
    res3 = json.loads((out / "results.json").read_text())
    for r, before in zip(res3["rows"], res["rows"]):
        assert r["ppl"] == pytest.approx(before["ppl"], rel=1e-5)
        assert [(b["start"], b["end"]) for b in r["bands"]] == [(0, 32), (32, 64)][: r["length"] // 32]
    assert (out / "results_by_position.csv").read_text().startswith("method,length,band_start,band_end,ppl")
    assert (out / "ppl_by_position.png").stat().st_size > 1000
    assert main(argv + ["--by-position", "--stride", "16"]) == 2


def test_too_long_length_names_the_longest(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    code = main(["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
                 "--lengths", "10000000", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "longest" in err


def test_passkey_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "pk"
    assert main(["passkey", "--model", str(tiny_model_dir), "--lengths", "256", "--trials", "2",
                 "--methods", "none,pi", "--dtype", "fp32", "--out", str(out)]) == 0
    res = json.loads((out / "passkey.json").read_text())
    assert len(res["trials"]) == 4 and all(t["prompt_tokens"] <= 246 for t in res["trials"])
    assert (out / "passkey.png").stat().st_size > 1000


def test_info_on_a_directory_without_tokenizer(tmp_path, make_tiny_model, capsys):
    make_tiny_model("qwen2").save_pretrained(tmp_path / "m")
    assert main(["info", "--model", str(tmp_path / "m"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["rotary_dim"] == 16 and facts["original_context"] == 32 and facts["rope_type"] == "default"


def test_every_flag_and_recipe_key_comes_from_an_option_dataclass():
    """One declaration per setting: each subcommand's flags are fields of option dataclasses
    (type, bounds, default and help declared there), and so is every key a recipe takes."""
    import argparse
    import dataclasses

    from longrope.cli import build_parser
    from longrope.options import OPTION_TAG
    from longrope.recipe.config import (NOT_RECIPE_KEYS, TOP_EXCLUDED, EvaluateStage, ReadjustStage, RecipeOptions,
                                        SearchStage)
    from longrope.train.finetune import FinetuneConfig

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = 0
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            cls = getattr(action, OPTION_TAG, None)
            assert cls is not None and dataclasses.is_dataclass(cls), (name, action.option_strings)
            field = {f.name: f for f in dataclasses.fields(cls)}[action.dest]
            assert field.metadata["help"], (name, action.option_strings)
            flags += 1
    assert flags > 100
    for cls, excluded in ((SearchStage, NOT_RECIPE_KEYS), (ReadjustStage, NOT_RECIPE_KEYS), (EvaluateStage, ()),
                          (FinetuneConfig, ("corpus", "split_seed")), (RecipeOptions, TOP_EXCLUDED)):
        for f in dataclasses.fields(cls):
            if f.name not in excluded and f.init:
                assert f.metadata.get("help"), (cls.__name__, f.name)
