"""`longrope tasks`: a RULER-style synthetic task suite, exact-match accuracy by length and depth."""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass

from ..data import load_corpus, select_split
from ..errors import UsageError
from ..evaluate.frontend import Store, check_methods, extension_dict, lengths_and_target, method_variants, run_info
from ..evaluate.runner import run_cells, task_figures
from ..evaluate.tasks import (
    TASKS, Haystack, TaskPrompt, TaskSettings, TooShort, build_prompts, get_task, has_chat_template,
)
from ..models.load import load_model, model_fingerprint
from ..options import build, option
from ..outputs import output_dir
from ..plots import plot_depth_heatmap
from ..settings import CorpusOptions, DepthOptions, LengthOptions, ModelOptions
from .common import OutputOptions, add_command, print_table

# config entries that must match for a finished cell of an earlier run to be reused; each
# cell also records its extension and a digest of its prompts
TINY_PRESETS = ("tiny", "tiny-128")
REUSE_KEYS = ("model", "model_files", "dtype", "corpus", "split", "split_seed", "settings", "chat_template")


DESCRIPTION = (
    "For each task, length and trial, build one seeded prompt (the same for every method): needles in a "
    "haystack of corpus text (or the passkey filler) at a stratified depth, a question and an answer prefix (in "
    "the chat template when the tokenizer has one), filling the length minus the answer tokens. Greedy-decode "
    "the answer with a KV cache and score it by exact match (share of expected strings in the output; a trial "
    "is correct when all are there). Tasks: " + "; ".join(f"{k}: {v.help}" for k, v in TASKS.items()) + ". "
    "Writes tasks.json and one <task>.png heat map (depth x length, one panel per method) to --out; rerunning "
    "with the same arguments reuses finished cells."
)


@dataclass(frozen=True)
class TaskOptions(DepthOptions):
    """Which tasks of the suite."""

    tasks: list[str] = option(list(TASKS), "comma-separated tasks", choices=tuple(TASKS))


OPTIONS = (ModelOptions, LengthOptions, CorpusOptions, TaskOptions, TaskSettings)
EXAMPLES = """\
examples:
  longrope tasks --model tiny --lengths 1024,2048 --trials 20 --out runs/tasks
  longrope tasks --model smollm2-135m --lengths 8192,16384 --methods none,yarn \\
      --factors smollm2-135m-16k --tasks single-needle,multi-key --out runs/tasks-smollm2

A small model may score zeros on the harder tasks (multi-value, variable-tracking): the tiny presets were
trained on passkey prompts only.
"""


def register(sub) -> None:
    add_command(sub, "tasks", run,
                [*((cls, dict(skip=("docs",))) for cls in OPTIONS),
                 (OutputOptions, dict(skip=("resume", "force"), out="runs/tasks"))],
                help="synthetic long-context tasks (RULER-style needles, variable tracking) vs length",
                description=DESCRIPTION, epilog=EXAMPLES)


def check_answer_room(tasks: list[str], lengths: list[int]) -> None:
    """The cheap part of the length check: a length must leave room for the answer tokens.
    (The exact minimum needs the tokenizer; `fit_prompt` checks it.)"""
    for task in tasks:
        need = get_task(task).max_new_tokens
        for length in lengths:
            if length <= need:
                raise UsageError(f"task {task} decodes {need} answer tokens; length {length} leaves no room "
                                 "for the prompt")


def haystacks_for(args, tasks: list[str]) -> dict[str, Haystack]:
    """The haystack texts the tasks read: {"corpus": ..., "filler": ...} (each only if used)."""
    kinds = {args.haystack or get_task(t).haystack for t in tasks}
    haystacks = {}
    if "filler" in kinds:
        haystacks["filler"] = Haystack.filler()
    if "corpus" in kinds:
        docs = select_split(load_corpus(args.corpus, args.split_seed), args.split, args.split_seed)
        if not docs:
            raise UsageError(f"the {args.split} split of the corpus has no documents; use --split all")
        haystacks["corpus"] = Haystack("\n\n".join(d.text.strip() for d in docs) + "\n\n")
    if args.haystack:  # one haystack for every task
        haystacks = dict.fromkeys(("corpus", "filler"), haystacks[args.haystack])
    return haystacks


def use_chat(setting: str, loaded) -> bool:
    chat = setting == "on" or (setting == "auto" and has_chat_template(loaded.tokenizer))
    if chat and not has_chat_template(loaded.tokenizer):
        raise UsageError(f"--chat on: the tokenizer of {loaded.name} has no chat template")
    return chat


def prompts_digest(prompts: list[TaskPrompt]) -> str:
    """What a cell's prompts are, token by token, with their answers: part of its reuse key."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.input_ids.tolist(), p.expected, p.max_new_tokens, p.depth]).encode())
    return h.hexdigest()[:32]


def cells_of(content: dict) -> list[dict]:
    """The cells of a tasks.json: each summary row with its trials."""
    trials = content.get("trials", [])
    return [{**r, "results": [{k: v for k, v in t.items() if k != "method"} for t in trials
                              if (t.get("method"), t.get("task"), t.get("length")) == (r["method"], r["task"], r["length"])]}
            for r in content.get("summary", [])]


def results_file(info: dict, cells: dict) -> dict:
    """tasks.json: the config, one summary row per (task, method, length) cell and every trial."""
    summary = [{k: v for k, v in c.items() if k != "results"} for c in cells.values()]
    trials = [{"method": c["method"], **t} for c in cells.values() for t in c["results"]]
    return {"config": info, "summary": summary, "trials": trials}


def run(args) -> int:
    # bad input fails here, before loading the model and before --out is created
    tasks = list(dict.fromkeys(args.tasks))
    if not tasks:
        raise UsageError("--tasks is empty")
    settings = build(TaskSettings, args)
    if settings.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {settings.trials}")
    build(LengthOptions, args)
    check_methods(args.methods, args.factors)
    given_lengths = args.lengths
    check_answer_room(tasks, given_lengths or [])
    haystacks = haystacks_for(args, tasks)
    outputs = ("tasks.json", *(f"{t}.png" for t in TASKS))
    with output_dir(args.out, command="tasks", outputs=outputs, keep=["tasks.json"], marker="tasks.json",
                    inputs=[args.model, *args.factors, args.corpus]) as out:
        return evaluate(args, out, tasks, settings, given_lengths, haystacks)


def evaluate(args, out, tasks: list[str], settings, given_lengths: list[int] | None, haystacks) -> int:
    if args.model in TINY_PRESETS:
        print(f"note: the {args.model} preset was trained on passkey prompts only, not on these tasks' instructions: "
              f"expect accuracies near zero; the suite measures a model that follows instructions (e.g. smollm2-135m)",
              file=sys.stderr)
    loaded = load_model(args.model, args.dtype, args.device)
    L = loaded.spec.original_max_position_embeddings
    lengths, target = lengths_and_target(given_lengths, args.target_length, L)
    check_answer_room(tasks, lengths)
    variants = method_variants(args.methods, args.factors, loaded, target)
    # one prompt per (task, length, trial), shared by every method; a too short length fails here
    chat = use_chat(settings.chat, loaded)
    prompts: dict[tuple[str, int], list[TaskPrompt]] = {}
    try:
        built = build_prompts(loaded.tokenizer, haystacks, tasks, lengths, settings.trials, settings.seed, chat)
    except TooShort as e:
        need = max(e.needs.values())
        if given_lengths or not any(n >= need for n in lengths):
            raise
        dropped, lengths = [n for n in lengths if n < need], [n for n in lengths if n >= need]
        print(f"note: default lengths {', '.join(map(str, dropped))} are too short for these tasks ({e.listed()}); "
              f"measuring {', '.join(map(str, lengths))}", file=sys.stderr)
        built = build_prompts(loaded.tokenizer, haystacks, tasks, lengths, settings.trials, settings.seed, chat)
    for p in built:
        prompts.setdefault((p.task, p.length), []).append(p)
    digests = {k: prompts_digest(v) for k, v in prompts.items()}

    info = run_info(args, {"model": loaded.name, "model_files": model_fingerprint(args.model), "native_context": L,
                           "target_length": target, "tasks": tasks, "lengths": lengths,
                           "corpus": args.corpus, "split": args.split, "split_seed": args.split_seed,
                           "settings": asdict(settings), "chat_template": chat,
                           "dtype": str(next(loaded.model.parameters()).dtype)})
    store = Store(out / "tasks.json", {k: info[k] for k in REUSE_KEYS}, lambda cells: results_file(info, cells),
                  cells_of, key_of=lambda content: {k: content.get("config", {}).get(k) for k in REUSE_KEYS},
                  model=args.model)
    done = store.reusable(variants, cell_key=lambda c: (c["method"], c["task"], c["length"]),
                          same_cell=lambda c: c.get("prompts") == digests.get((c["task"], c["length"])))

    def evaluator(task: str):
        def cell(lm, variant, length, progress):
            return {"task": task, "method": variant.label, "length": length,
                    **task_figures(lm, prompts[task, length], progress), "prompts": digests[task, length],
                    "extension": extension_dict(variant)}
        return cell

    cells = run_cells(variants, lengths, {t: evaluator(t) for t in tasks}, loaded, done, store.save,
                      dtype=args.dtype, desc="tasks")
    store.save(cells)
    report(results_file(info, cells), tasks, out, loaded.name, args.depth_bins)
    return 0


def report(results: dict, tasks: list[str], out, model_name: str, depth_bins: int) -> None:
    """One heat map per task and the accuracy tables."""
    figures = []
    for task in tasks:
        figures.append(plot_depth_heatmap([t for t in results["trials"] if t["task"] == task], out / f"{task}.png",
                                          depth_bins, title=f"{model_name}: {task} (exact match)"))
        print(f"{task}: accuracy over {results['config']['settings']['trials']} trial(s) per cell")
        print_table([r for r in results["summary"] if r["task"] == task], "method", "length", "accuracy",
                    fmt="{:.0%}")
    print(f"wrote {out / 'tasks.json'}, " + ", ".join(str(f) for f in figures))
