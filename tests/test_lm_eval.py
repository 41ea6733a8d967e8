"""lm-eval-harness on an extension without exporting (`longrope lm-eval`, the `longrope` model).

Local tasks written from a corpus (one log-likelihood multiple-choice task, one greedy generation
task) run offline on the tiny random model; the log-likelihoods lm-eval gets through the
`longrope` model equal longrope's own evaluator's for the same tokens past the native context,
so the seam is installed (n_hat and the short/long switch included)."""
import json
import sys
import textwrap

import pytest
import torch

import longrope.evaluate
from conftest import save_tiny_llama, tiny_tokenizer
from longrope.cli import main
from longrope.evaluate.ppl import document_nll
from longrope.methods import build_extension
from longrope.models.load import load_model
from longrope.seam import install_rope

NATIVE, TARGET = 32, 128  # the tiny_model_dir fixture's native context; the extensions' target


@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory):
    """tiny_model_dir's model with weights drawn 15x wider: its attention, and so its NLL, depends
    on the positions (the extensions change a text's NLL by about 7%, not 2e-5)."""
    return save_tiny_llama(tmp_path_factory.mktemp("sharp-llama"), tiny_tokenizer(), bos_token_id=0, eos_token_id=1,
                           initializer_range=0.3)


@pytest.fixture(scope="module")
def local_tasks(tiny_corpus, tmp_path_factory):
    """A folder of two lm-eval task YAMLs over JSONL files made from the corpus's lines: tiny_mc
    (which of three lines follows two lines) and tiny_gen (greedy: the first word of the next line)."""
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    lines = [ln.strip() for doc in tiny_corpus.read_text().splitlines()
             for ln in json.loads(doc)["text"].splitlines() if 12 <= len(ln.strip()) <= 24]  # ~1 token a char
    mc = [{"context": f"{lines[i]}\n{lines[i + 1]}\n", "choices": [lines[j][:12] for j in (i + 2, i + 40, i + 80)],
           "label": 0} for i in range(0, 60, 10)]
    gen = [{"prompt": f"{lines[i]}\n{lines[i + 1]}\n", "answer": lines[i + 2].split()[0]} for i in range(0, 40, 10)]
    for name, rows in (("mc", mc), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"""
        dataset_path: json
        dataset_kwargs:
          cache_dir: {root / 'hf-cache'}
          data_files:
            test: {root / '{name}.jsonl'}
        test_split: test
    """
    (root / "mc.yaml").write_text(textwrap.dedent("""
        task: tiny_mc""" + common.replace("{name}", "mc") + """
        output_type: multiple_choice
        doc_to_text: "{{context}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: label
        metric_list:
          - {metric: acc, aggregation: mean, higher_is_better: true}
    """))
    (root / "gen.yaml").write_text(textwrap.dedent("""
        task: tiny_gen""" + common.replace("{name}", "gen") + """
        output_type: generate_until
        doc_to_text: "{{prompt}}"
        doc_to_target: "{{answer}}"
        generation_kwargs: {until: ["\\n"], max_gen_toks: 6, do_sample: false}
        metric_list:
          - {metric: exact_match, aggregation: mean, higher_is_better: true}
    """))
    return root


def switching_factors(spec, path):
    """A factors file with everything an export loses: short factors of 1 with attention 1 (the
    model as trained up to NATIVE), YaRN's long factors past it, and a start token n_hat = 4."""
    yarn = build_extension("yarn", spec, TARGET)
    ext = yarn.with_(method="longrope", short_factor=[1.0] * spec.half, short_attention_factor=1.0, start_token=4)
    ext.save(path)
    return ext


@pytest.mark.parametrize("method", ["none", "yarn", "factors"])
def test_lm_eval_command_on_local_tasks(method, tiny_model_dir, local_tasks, tmp_path, capsys):
    if method == "factors":
        choice = ["--factors", str(tmp_path / "f.json")]
        switching_factors(load_model(str(tiny_model_dir), "fp32", "cpu").spec, tmp_path / "f.json")
    else:
        choice = ["--method", method] + (["--target-length", str(TARGET)] if method != "none" else [])
    out = tmp_path / "out"
    code = main(["lm-eval", "--model", str(tiny_model_dir), *choice, "--dtype", "fp32", "--device", "cpu",
                 "--tasks", "tiny_mc,tiny_gen", "--include-path", str(local_tasks), "--batch-size", "4",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"tiny_mc", "tiny_gen"}
    assert 0 <= results["results"]["tiny_mc"]["acc,none"] <= 1
    assert 0 <= results["results"]["tiny_gen"]["exact_match,none"] <= 1
    assert results["n-samples"]["tiny_mc"]["effective"] == 6 and results["n-samples"]["tiny_gen"]["effective"] == 4
    info = results["config"]["longrope"]
    assert info["method"] == {"factors": "f"}.get(method, method) and info["command"] == "lm-eval"
    assert info["max_length"] == (NATIVE if method == "none" else TARGET)
    assert (info["extension"] is None) == (method == "none")
    if method == "factors":
        assert info["extension"]["start_token"] == 4 and info["extension"]["short_attention_factor"] == 1.0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["task"] for s in samples}) == ["tiny_gen", "tiny_mc"] and len(samples) == 10


def test_loglikelihoods_and_generations_are_longropes_own(sharp_model_dir, tiny_corpus, tmp_path):
    """Rolling log-likelihoods through the `longrope` model equal document_nll on a model loaded
    and extended by longrope itself: a text past the native context (the long factors, n_hat) and
    one within it (the short ones), in one batch (each row under its own factors). Greedy
    generations equal greedy_generate's, cut at the stop string."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from longrope.evaluate import harness

    assert harness.NAME == "longrope"  # importing it registers the model with lm-eval

    ref = load_model(str(sharp_model_dir), "fp32", "cpu")
    ext = switching_factors(ref.spec, tmp_path / "f.json")
    lm = get_model("longrope")(model=str(sharp_model_dir), factors=str(tmp_path / "f.json"), dtype="fp32",
                               device="cpu", batch_size=4)
    text = json.loads(tiny_corpus.read_text().splitlines()[0])["text"]
    long_text, short_text = text[:100], text[:20]  # about a token a character
    ids = {t: torch.tensor([lm.prefix_token_id] + ref.tokenizer(t).input_ids) for t in (long_text, short_text)}
    assert len(ids[short_text]) <= NATIVE < len(ids[long_text]) <= TARGET
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i)
                                    for i, t in enumerate((long_text, short_text))], disable_tqdm=True)

    install_rope(ref.model, ext)
    want_long, _ = document_nll(ref.model, ids[long_text])
    install_rope(ref.model, None)
    plain_long, _ = document_nll(ref.model, ids[long_text])
    want_short, _ = document_nll(ref.model, ids[short_text])  # short factors of 1, attention 1: as trained
    assert got[0] == pytest.approx(-want_long, rel=1e-5)
    assert got[1] == pytest.approx(-want_short, rel=1e-5)
    assert abs(plain_long - want_long) > 1e-2 * abs(want_long)  # the extension changes this text's NLL

    from longrope.generate import greedy_generate

    install_rope(ref.model, ext)
    prompts = [text[:15], text[:28], text[:60]]  # within, across and past the native context; one batch
    kwargs = {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}
    outs = lm.generate_until([Instance("generate_until", {}, (p, kwargs), i) for i, p in enumerate(prompts)],
                             disable_tqdm=True)
    for prompt, out in zip(prompts, outs):
        new = greedy_generate(ref.model, ref.tokenizer(prompt, return_tensors="pt").input_ids, 8, lm.eot_token_id)
        assert out == ref.tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]


@pytest.mark.parametrize("argv,msg", [
    (["--method", "yarn"], "needs a target length above the model's native context 32"),
    (["--method", "yarn", "--factors", "f.json"], "give a method or a factors file, not both"),
    (["--method", "none,yarn", "--target-length", "64"], "one method at a time"),
    (["--method", "warp"], "unknown method 'warp'"),
    (["--include-path", "/nonexistent/tasks"], "--include-path /nonexistent/tasks: no such folder"),
])
def test_bad_input_exits_2_with_one_line(argv, msg, tiny_model_dir, tmp_path, capsys):
    code = main(["lm-eval", "--model", str(tiny_model_dir), "--tasks", "tiny_mc", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_unknown_task_and_missing_lm_eval(tiny_model_dir, local_tasks, tmp_path, capsys, monkeypatch):
    from functools import partialmethod

    from lm_eval.tasks import TaskManager

    # lm-eval's own ~15,000 tasks left out of the index an unknown name is looked up in (8 s)
    monkeypatch.setattr(TaskManager, "__init__", partialmethod(TaskManager.__init__, include_defaults=False))
    argv = ["lm-eval", "--model", str(tiny_model_dir), "--include-path", str(local_tasks), "--out", str(tmp_path / "o")]
    code = main([*argv, "--tasks", "tiny_mc,no_such_task"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown task(s) no_such_task" in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()

    for name in [m for m in sys.modules if m.startswith("lm_eval.")]:  # as if lm-eval were not installed
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.delitem(sys.modules, "longrope.evaluate.harness", raising=False)
    monkeypatch.delattr(longrope.evaluate, "harness", raising=False)
    code = main([*argv, "--tasks", "tiny_mc"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install lm-eval" in err and "\n" not in err, err
