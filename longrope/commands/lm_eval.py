"""`longrope lm-eval`: lm-evaluation-harness tasks on a model with any extension, nothing exported.

Run lm-evaluation-harness tasks on --model with one extension installed through longrope's rotary
seam, so what an export cannot carry stays in force (the start token n_hat, the short attention
factor, attention_by_length, the short/long switch by length). Writes lm-eval's results
(results.json) and its per-sample records (samples.jsonl, one line per sample with its task) to
--out. Needs lm-eval (pip install lm-eval).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import UsageError
from ..outputs import output_dir
from ..evaluate.frontend import run_info
from ..options import check_options, option
from ..settings import FactorsOption, ModelOptions, TargetOptions
from .common import OutputOptions, add_command

OUTPUTS = ("results.json", "samples.jsonl")

EPILOG = """\
examples:
  longrope lm-eval --model smollm2-135m --method yarn --target-length 32768 \\
      --tasks mmlu,arc_challenge,hellaswag,truthfulqa_mc2 --out runs/lm-eval-yarn
  longrope lm-eval --model M --factors F.json --tasks my_task --include-path my_tasks/ --out DIR

The same model in lm-eval's own command line: python -m longrope.evaluate.harness --model longrope \\
  --model_args model=tiny,method=yarn,target_length=2048 --tasks ...
"""


@dataclass(frozen=True)
class LmEvalOptions:
    """Which extension (or a factors file, `FactorsOption`) and which lm-eval tasks."""

    tasks: list[str] = option(dataclasses.MISSING, "comma-separated lm-eval task, group or tag names (globs allowed)")
    method: str | None = option(None, "none (the original RoPE, also for a model that carries factors), model (the "
                                "factors the model carries), pi, ntk, dynamic-ntk, yarn or llama3 (with "
                                "--target-length; it is also lm-eval's window, where longer prompts are cut from the "
                                "left)", default_help="model for a model that carries factors, else none",
                                metavar="NAME")
    include_path: str | None = option(None, "a folder of your own task YAMLs", metavar="DIR")
    limit: int | None = option(None, "at most this many samples per task", default_help="all", min=1)
    num_fewshot: int | None = option(None, "few-shot examples per prompt", default_help="each task's own", min=0,
                                     max=1000)
    batch_size: int = option(1, "requests per forward for log-likelihoods; greedy generation decodes one at a time",
                             min=1, max=4096)

    def __post_init__(self):
        check_options(self)


def register(sub) -> None:
    add_command(sub, "lm-eval", run,
                [ModelOptions, TargetOptions, FactorsOption, LmEvalOptions,
                 (OutputOptions, dict(skip=("resume", "force"), out="runs/lm-eval"))],
                help="lm-evaluation-harness tasks on any extension, without exporting",
                description=__doc__, epilog=EPILOG)


def _harness():
    """longrope.evaluate.harness, imported only now: lm-eval is optional and slow to import."""
    try:
        from ..evaluate import harness
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "lm_eval":
            raise
        raise UsageError("lm-eval is not installed: pip install lm-eval (or pip install 'longrope[eval]')") from None
    return harness


def run(args) -> int:
    harness = _harness()
    harness.check_choice(args.model, args.method, args.factors, args.target_length)  # before any weights
    names = list(dict.fromkeys(args.tasks))
    if not names:
        raise UsageError("--tasks names no task")
    if args.include_path is not None and not Path(args.include_path).expanduser().is_dir():
        raise UsageError(f"--include-path {args.include_path}: no such folder")
    with output_dir(args.out, command="lm-eval", outputs=OUTPUTS, marker="results.json",
                    inputs=[args.model, args.factors]) as out:
        return evaluate(args, out, harness, names)


def evaluate(args, out: Path, harness, names: list[str]) -> int:
    tasks = harness.load_tasks(names, args.include_path)  # unknown tasks, unreadable data: before the model
    lm = harness.LongRopeLM(model=args.model, method=args.method, factors=args.factors,
                            target_length=args.target_length, dtype=args.dtype, device=args.device,
                            batch_size=args.batch_size)
    results = harness.run_tasks(lm, tasks, limit=args.limit, num_fewshot=args.num_fewshot)
    results["config"]["longrope"] = run_info(args, results["config"]["longrope"])
    samples = results.pop("samples", {})
    from lm_eval.utils import handle_non_serializable, make_table

    def dumps(obj, **kwargs) -> str:  # numpy numbers, tensors and sets as lm-eval writes them
        return json.dumps(obj, default=handle_non_serializable, ensure_ascii=False, **kwargs)

    atomic_write_text(out / "results.json", dumps(results, indent=2) + "\n")
    atomic_write_text(out / "samples.jsonl",
                      "".join(dumps({"task": task, **s}) + "\n" for task, rows in samples.items() for s in rows))
    print(f"{lm.longrope['model']}, method {lm.longrope['method']}:")
    print(make_table(results))
    print(f"wrote {out / 'results.json'}, {out / 'samples.jsonl'}")
    return 0
