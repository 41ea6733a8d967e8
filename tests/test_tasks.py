"""The synthetic task suite: prompt building, placement, determinism, scoring and the CLI."""
import json
import random
import re

import pytest
import torch

from longrope.cli import main
from longrope.errors import UsageError
from longrope.evaluate import tasks as T


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def haystacks(tiny_corpus):
    docs = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    return {"corpus": T.Haystack("\n\n".join(docs)), "filler": T.Haystack.filler()}


def haystack_part(prompt_text: str, sample: T.TaskSample) -> str:
    """The haystack with its needles, as it sits between the instruction and the question."""
    start = prompt_text.index(sample.instruction) + len(sample.instruction) + 2
    return prompt_text[start : prompt_text.rindex(sample.question) - 2]


@pytest.mark.parametrize("task", list(T.TASKS))
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.8])
def test_prompt_fills_the_length_and_places_the_needle_at_its_depth(task, depth, tokenizer, haystacks):
    spec, length = T.TASKS[task], 1536
    sample = spec.generate(random.Random(1), depth)
    prompt = T.fit_prompt(tokenizer, sample, haystacks[spec.haystack], length, spec.max_new_tokens, random.Random(2))
    budget = length - spec.max_new_tokens
    assert budget - 24 <= prompt.input_ids.shape[1] <= budget  # filled up to a word of the budget
    assert prompt.input_ids.shape[1] == len(tokenizer(prompt.text).input_ids)
    assert prompt.text.endswith(sample.answer_prefix)
    for needle, _ in sample.needles:
        assert prompt.text.count(needle) == 1
    # the queried needle sits at the requested depth of the haystack: within 1% of its characters
    # (16 characters in a short one), where the nearest line, sentence or word starts
    hay = haystack_part(prompt.text, sample)
    n_chars = len(hay) - sum(len(n) + 1 for n, _ in sample.needles)  # the haystack without needles
    others = sum(len(n) + 1 for n, _ in sample.needles[1:] if hay.index(n) < hay.index(sample.needles[0][0]))
    at = hay.index(sample.needles[0][0]) - others
    assert 0 <= depth * n_chars - at <= max(16, n_chars / 100) + 1
    assert abs(prompt.depth - at / n_chars) < 0.01


def test_multi_needle_tasks_ask_one_key_and_keep_chains_in_order(tokenizer, haystacks):
    rng = random.Random(3)
    mk = T.multi_key(rng, 0.5)
    keys = [re.search(r"for (\S+) is", n).group(1) for n, _ in mk.needles]
    assert len(set(keys)) == 4 and keys[0] in mk.question and not any(k in mk.question for k in keys[1:])
    mv = T.multi_value(rng, 0.5)
    assert len(mv.expected) == 4 and all(f"is: {v}." in n for (n, _), v in zip(mv.needles, mv.expected))
    vt = T.variable_tracking(rng, 0.9)
    prompt = T.fit_prompt(tokenizer, vt, haystacks["filler"], 1536, 32, random.Random(4))
    positions = [prompt.text.index(n) for n, _ in vt.needles]
    assert positions == sorted(positions)  # VAR B = VAR A comes after VAR A = v
    assert vt.needles[0][0].startswith(f"VAR {vt.expected[0]} = ") and len(vt.expected) == 5
    assert not any(name in vt.instruction for name in vt.expected)  # the worked example has its own names


def test_too_short_a_length_names_the_minimum(tokenizer, haystacks):
    sample = T.multi_value(random.Random(0), 0.5)
    with pytest.raises(UsageError, match=r"^length 100 is too short: multi-value needs at least \d+ tokens$"):
        T.fit_prompt(tokenizer, sample, haystacks["corpus"], 100, 48, random.Random(0))
    # every task a length cannot hold, in one message
    with pytest.raises(T.TooShort) as e:
        T.build_prompts(tokenizer, haystacks, ["single-needle", "multi-key", "multi-value"], [100, 2048], 2, 0)
    assert set(e.value.needs) == {"single-needle", "multi-key", "multi-value"} and "lengths 100" not in str(e.value)
    assert str(e.value).startswith("length 100 is too short: single-needle needs at least")


def test_same_seed_same_prompts_for_any_set_of_tasks(tokenizer, haystacks):
    def texts(tasks, seed):
        return [(p.task, p.length, p.text, p.expected, p.input_ids.tolist())
                for p in T.build_prompts(tokenizer, haystacks, tasks, [1280, 1536], 2, seed)]

    both = texts(["multi-key", "variable-tracking"], 0)
    assert both == texts(["multi-key", "variable-tracking"], 0)
    assert [t for t in both if t[0] == "variable-tracking"] == texts(["variable-tracking"], 0)
    assert len({t[2] for t in both}) == len(both)  # every trial its own needles
    assert texts(["multi-key"], 1) != texts(["multi-key"], 0)


def test_depths_are_stratified_over_trials(tokenizer, haystacks):
    prompts = T.build_prompts(tokenizer, haystacks, ["single-needle"], [1024], 4, seed=0)
    assert [int(p.depth * 4) for p in prompts] == [0, 1, 2, 3]


def test_exact_match_scoring():
    assert T.score_output(" 1234567.", ["1234567"]) == 1.0
    assert T.score_output(" 1234568.", ["1234567"]) == 0.0
    assert T.score_output(": 1111111, 2222222 and 9999999", ["1111111", "2222222", "3333333", "4444444"]) == 0.5
    assert T.score_output(" abcde, FGHIJ", ["ABCDE", "FGHIJ"]) == 1.0  # case-insensitive, as RULER


@pytest.mark.parametrize("output,score,correct", [
    (" 5 and 1234567 then 7654321", 1.0, True),
    (" only 7654321 here", 0.5, False),
    (" no numbers at all", 0.0, False),
])
def test_run_prompt_scores_the_decoded_output(output, score, correct, tokenizer, monkeypatch):
    fake = torch.tensor(tokenizer(output).input_ids)
    monkeypatch.setattr(T, "greedy_generate", lambda model, ids, n, eos_token_id=None: fake)
    prompt = T.TaskPrompt("multi-value", 64, 0.5, torch.zeros(1, 10, dtype=torch.long), "",
                          ["1234567", "7654321"], 8)
    trial = T.run_prompt(None, tokenizer, prompt)
    assert trial.output == tokenizer.decode(fake.tolist(), skip_special_tokens=True)
    assert (trial.score, trial.correct) == (score, correct)


def test_tasks_cli_end_to_end(tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "tasks"
    assert main(["tasks", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
                 "--lengths", "1280,1536", "--trials", "2", "--methods", "none,pi", "--dtype", "fp32",
                 "--depth-bins", "4", "--out", str(out)]) == 0
    res = json.loads((out / "tasks.json").read_text())
    assert len(res["trials"]) == 4 * 2 * 2 * 2  # tasks x lengths x trials x methods
    cells = {(r["task"], r["method"], r["length"]) for r in res["summary"]}
    assert cells == {(t, m, n) for t in T.TASKS for m in ("none", "pi") for n in (1280, 1536)}
    for r in res["summary"]:
        mine = [t for t in res["trials"] if (t["task"], t["method"], t["length"]) == (r["task"], r["method"], r["length"])]
        assert r["trials"] == 2 and r["correct"] == sum(t["correct"] for t in mine)
    for t in res["trials"]:
        assert t["prompt_tokens"] <= t["length"] - T.TASKS[t["task"]].max_new_tokens
        assert t["score"] == T.score_output(t["output"], t["expected"]) and 0 <= t["depth"] <= 1
    # every method saw the same prompts
    key = lambda m: [(t["task"], t["length"], t["prompt_tokens"], t["depth"], t["expected"])  # noqa: E731
                     for t in res["trials"] if t["method"] == m]
    assert key("none") == key("pi")
    assert res["config"]["chat_template"] is False and res["config"]["versions"]["longrope"]
    for task in T.TASKS:
        assert (out / f"{task}.png").stat().st_size > 1000


def test_rerun_reuses_finished_cells_and_redoes_changed_ones(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    import longrope.commands.tasks as cmd

    out = tmp_path / "tasks"
    argv = ["tasks", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
            "--tasks", "single-needle", "--lengths", "384", "--trials", "2", "--methods", "none,pi",
            "--dtype", "fp32", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "tasks.json").read_text())
    evaluated = []
    real = cmd.task_figures
    monkeypatch.setattr(cmd, "task_figures", lambda lm, prompts, progress: evaluated.append(prompts) or real(lm, prompts, progress))
    assert main(argv) == 0 and evaluated == []  # every cell reused
    again = json.loads((out / "tasks.json").read_text())
    assert (again["summary"], again["trials"]) == (first["summary"], first["trials"])
    assert main([*argv, "--target-length", "768"]) == 0 and len(evaluated) == 1  # pi's factors changed, none's did not
    assert main([*argv, "--target-length", "768", "--seed", "1"]) == 0 and len(evaluated) == 3  # other prompts


@pytest.mark.parametrize("argv,msg", [
    (["--tasks", "single-needle,haystack-sort"], "unknown task 'haystack-sort'"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--depth-bins", "0"], "--depth-bins must be >= 1"),
    (["--lengths", "40"], "task multi-value decodes 48 answer tokens; length 40 leaves no room"),
    (["--lengths", "400", "--tasks", "multi-value"], "multi-value needs at least"),  # knowable after the tokenizer
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, msg, tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["tasks", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all",
                 "--methods", "none", "--dtype", "fp32", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and "\n" not in err, err
    assert not out.exists()


def test_default_lengths_too_short_for_the_tasks_are_left_out_with_a_note(tiny_corpus, tmp_path, capsys):
    """The default 1x..8x lengths of a model with a short context start where the tasks fit;
    lengths the user gives are never dropped (see the bad-input test above)."""
    from conftest import save_tiny_llama, tiny_tokenizer

    model = save_tiny_llama(tmp_path / "m", tiny_tokenizer(), bos_token_id=0, eos_token_id=1,
                            max_position_embeddings=128)
    out = tmp_path / "out"
    assert main(["tasks", "--model", str(model), "--corpus", str(tiny_corpus), "--split", "all", "--methods",
                 "none", "--dtype", "fp32", "--trials", "1", "--tasks", "single-needle", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: default lengths 128, 256 are too short for these tasks" in err
    trials = json.loads((out / "tasks.json").read_text())["trials"]
    assert sorted({t["length"] for t in trials}) == [512, 1024]
