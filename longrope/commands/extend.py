"""`longrope extend`: the whole progressive recipe (search -> fine-tune -> search again ->
short-context readjustment -> final model and report), each stage resumable.

Run the stages of a recipe YAML (see recipes/) into --out. Complete stages are skipped, an
interrupted search or fine-tuning resumes where it stopped; a stage completed with other settings is
refused. Writes OUT/final (HF model directory) and OUT/report (report.json, report.md, report.png).

    longrope extend --recipe recipes/tiny-64x.yaml --out runs/tiny-64x
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..options import option
from ..outputs import EVERYTHING, output_dir
from .common import OutputOptions, add_command
from ..models.load import model_spec
from ..recipe.config import load_recipe
from ..recipe.stages import check_recipe_against_model, run_recipe


@dataclass(frozen=True)
class ExtendOptions:
    recipe: str = option(dataclasses.MISSING, "recipe YAML file (see recipes/)", metavar="YAML")


EXAMPLES = """\
examples:
  longrope extend --recipe recipes/tiny-64x.yaml --out runs/tiny-64x    # ~30 minutes on 2 cores
  longrope extend --recipe recipes/tiny-512x.yaml --out runs/tiny-64x   # the same run on to 512x
"""


def register(sub) -> None:
    add_command(sub, "extend", run, [ExtendOptions, (OutputOptions, dict(skip=("resume", "force")))],
                help="progressive extension recipe: search, fine-tune, search again, readjust, report",
                description=__doc__, epilog=EXAMPLES)


def run(args) -> int:
    recipe = load_recipe(args.recipe)  # every check that needs no model, before anything is written
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and not (out / "recipe.json").is_file() and any(
            not p.name.startswith(".") for p in out.iterdir()):
        raise UsageError(f"--out {out} holds files but no recipe run (no recipe.json): choose a new or empty folder")
    check_recipe_against_model(recipe, model_spec(recipe.model))
    with output_dir(out, command="extend", outputs=EVERYTHING, keep=EVERYTHING, marker="recipe.json",
                    inputs=[args.recipe, recipe.model, recipe.corpus]):
        summary = run_recipe(recipe, out)
    print(json.dumps(summary.get("report", {}), indent=2))
    print(f"final model: {summary['final']}")
    return 0
