"""The progressive extension recipe of `longrope extend`, as typed dataclasses (LongRoPE section 3.3).

A recipe is a YAML file: a few top-level settings and the stages, in this order:

    model: tiny                  # preset, HF directory or .gguf
    corpus: stdlib               # training, search and evaluation documents (seeded split)
    stages:
      search:   {target_length: 1024, ...}    # 1. search factors for the stage-1 target
      finetune: {length: 1024, steps: 200, ...}   # 2. fine-tune with them
      search2:  {target_length: 8192, ...}    # 3. search again on the fine-tuned model;
                                              #    final factor = stage-1 x stage-2, element-wise
      finetune2: {length: 8192, steps: 100, ...}  # 3b. fine-tune again with the final factors
                                              #    (the paper's second fine-tuning at the longer length)
      search3:  {target_length: 65536, ...}   # 3c. search again on the fine-tuned model, no fine-tuning
                                              #    after it: final factor = stage-2 factor x lambda3
      readjust: {...}                         # 4. short_factor: search at the native length
      evaluate: {lengths: [...], ...}         # 5. report: ppl and passkey for every stage

`search` and `finetune` are required, the others optional (`finetune2` needs `search2`, `search3` needs
`search2`). Parsing checks everything that can be checked without a model and raises UsageError with one
line naming the problem.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..methods import get_method
from ..options import check_options, check_value, from_mapping, option
from ..search.cma import check_samples
from ..search.driver import DEFAULT_METHOD, SearchOptions
from ..search.state import ADDED_SETTINGS, SearchConfig
from ..search.plan import RECIPE_DERIVES, SpaceOptions
from ..settings import SPLITS, CorpusOptions, LossOptions, ModelOptions
from ..train.finetune import FinetuneConfig

NOT_RECIPE_KEYS = ("reject_slack", *RECIPE_DERIVES)  # fields a recipe does not set
METHOD_KEYS = ("optimizer", "objective", "needles")  # SearchOptions.method(): needles only for needle
# keys added after recipes were first run: a stage records them only when they differ from these
RECORDED_WHEN_SET = {**DEFAULT_METHOD, **ADDED_SETTINGS, "corpus": None}
SPEED_KEYS = ("candidates_per_forward",)  # not recorded: a complete stage stays complete (its search state keeps it)
STAGES = ("search", "finetune", "search2", "finetune2", "search3", "readjust", "evaluate")
REQUIRED_STAGES = ("search", "finetune")


@dataclass(frozen=True)
class SearchSettings(SearchOptions, SearchConfig):
    """Hyper-parameters of one search: `SearchConfig` (Algorithm 1, the paper's defaults) and
    `SearchOptions` (optimizer, objective, documents, grid, bound; readjust's bound: stage 1's)."""

    def __post_init__(self):
        super().__post_init__()  # both classes' checks
        if self.optimizer == "cma":
            check_samples(self.mutations + self.crossovers)

    def settings(self) -> dict[str, Any]:
        """The stage's keys as a recipe sets them (what its stage.json records). Keys added later
        (optimizer, objective, reject, race_confidence, corpus) appear only when they are not the
        defaults, so stages completed before these keys existed still match."""
        skip = NOT_RECIPE_KEYS + METHOD_KEYS + SPEED_KEYS
        keys = {k: v for k, v in asdict(self).items() if k not in skip} | self.method()
        return {k: v for k, v in keys.items() if k not in RECORDED_WHEN_SET or RECORDED_WHEN_SET[k] != v}


@dataclass(frozen=True)
class SearchStage(SearchSettings, SpaceOptions):
    """`search` (on the original model), `search2` and `search3` (on a fine-tuned one, a factor on
    top): the search flags, and the space of `longrope search` less what a recipe derives."""

    corpus: str | None = option(None, "search3 only: its documents (a longer target may need a corpus of longer "
                                "documents)", default_help="the recipe's")

    def __post_init__(self):
        super().__post_init__()
        check_options(self)


@dataclass(frozen=True)
class ReadjustStage(SearchSettings):
    """Short-context readjustment: search `short_factor` at the native length (paper section 3.3)."""

    docs: int = option(8, "K documents at the native length", min=1, max=10_000)


@dataclass(frozen=True)
class EvaluateStage(LossOptions):
    """The report: perplexity and passkey at each length for every stage and baseline."""

    lengths: list[int] | None = option(None, "lengths of the report", default_help="1x, 2x, 4x, ... the final target",
                                       min=2)
    docs: int = option(4, "held-out documents per length (truncated, one pass each)", min=1, max=100_000)
    split: str = option("test", "the split neither pretraining of the tiny preset nor fine-tuning saw", choices=SPLITS)
    passkey_trials: int = option(10, "passkey trials per length, 0 = none", min=0, max=100_000)
    baselines: list[str] = option(["pi", "yarn"], "methods set for the final target and fine-tuned with the same budget")
    corpus: str | None = option(None, "the report's documents", default_help="the recipe's")
    peers: list[str] = option([], "with search3: methods applied as the last step instead of the search (the stage-2 "
                              "factors x the method's)")
    passkey_long_trials: int | None = option(None, "passkey trials at passkey_long_length and beyond",
                                             default_help="passkey_trials", min=1, max=100_000)
    passkey_long_length: int | None = option(None, "the length from which passkey_long_trials apply", min=2)

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class RecipeOptions(ModelOptions, CorpusOptions):
    """A recipe's top-level keys (model, corpus, split_seed, dtype: as the commands' flags)."""

    attention_by_length: bool = option(False, "the final long attention factor follows the length in force past "
                                       "the native context (longrope's runtime)")


TOP_EXCLUDED = ("device", "split", "docs")  # flags of those classes that are no recipe key


@dataclass(frozen=True)
class Recipe(RecipeOptions):
    """The top-level keys (dtype: searches and evaluation; fine-tuning keeps fp32 weights and
    autocasts) and the stages. attention_by_length: the final factors' long attention factor
    follows the length in force past the native context (RopeExtension.attention_by_length)
    instead of staying the fine-tuned one."""

    search: SearchStage | None = None  # required: parse_recipe refuses a recipe without it
    finetune: FinetuneConfig | None = None  # required likewise
    search2: SearchStage | None = None
    finetune2: FinetuneConfig | None = None  # continues from `finetune`'s model with the final factors
    readjust: ReadjustStage | None = None
    evaluate: EvaluateStage | None = None
    search3: SearchStage | None = None  # on the last fine-tuned model, with no fine-tuning after it

    @property
    def final_target(self) -> int:
        return (self.search3 or self.search2 or self.search).target_length

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in TOP_EXCLUDED}
        if self.search3 is None:  # recorded only when there: recipe.json of earlier runs reads the same
            del d["search3"]
        for name in ("search", "search2", "search3", "readjust"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name).settings()
        return d


# -- parsing -----------------------------------------------------------------------------------------
_FINETUNE_FROM_TOP = ("corpus", "split_seed")  # set once for the whole recipe


def _search_stage(stages: dict, name: str, after: SearchStage | None = None) -> SearchStage:
    """A search stage: its target required, its n_hat candidates below it, and for search2 and
    search3 a target past `after`'s (they search a factor on top of the stage before)."""
    stage = from_mapping(SearchStage, stages[name], name, NOT_RECIPE_KEYS)
    if stage.target_length is None or stage.target_length < 2:
        raise UsageError(f"recipe: {name}.target_length is required (tokens, > the native context)")
    for i, t in enumerate(stage.start_tokens or []):
        if not 0 <= t < stage.target_length:
            raise UsageError(f"recipe: {name}.start_tokens[{i}] = {t} must be in [0, {name}.target_length "
                             f"{stage.target_length})")
    if name != "search3" and stage.corpus is not None:
        raise UsageError(f"recipe: {name}.corpus: the corpus is set once at the top level; only search3 and "
                         f"evaluate read another one")
    if after is not None:
        before = "the stage-1 target" if name == "search2" else "search2.target_length"
        if stage.target_length <= after.target_length:
            raise UsageError(f"recipe: {name}.target_length {stage.target_length} must exceed {before} "
                             f"{after.target_length}")
        if stage.variant not in ("longrope", "critical"):
            raise UsageError(f"recipe: {name}.variant must be longrope or critical (it searches a factor on top of "
                             f"the stage before)")
    return stage


def _finetune_stage(stages: dict, name: str, top: RecipeOptions) -> FinetuneConfig:
    data = stages[name]
    if isinstance(data, dict):
        for k in _FINETUNE_FROM_TOP:
            if k in data:
                raise UsageError(f"recipe: {name}.{k} is set once for the whole recipe, at the top level")
    return from_mapping(FinetuneConfig, data, name, _FINETUNE_FROM_TOP, corpus=top.corpus, split_seed=top.split_seed)


def _stage_order(stages: Any) -> list[str]:
    if not isinstance(stages, dict):
        raise UsageError("recipe: 'stages' must be a mapping of stage name -> settings")
    if not stages:
        raise UsageError(f"recipe: 'stages' is empty; it needs at least {' and '.join(REQUIRED_STAGES)}")
    names = list(stages)
    for name in names:
        if name not in STAGES:
            raise UsageError(f"recipe: unknown stage {name!r}; stages are {', '.join(STAGES)} (in this order)")
    for prev, cur in zip(names, names[1:]):
        if STAGES.index(cur) < STAGES.index(prev):
            raise UsageError(f"recipe: stages out of order: {cur!r} must come before {prev!r} "
                             f"(order: {', '.join(STAGES)})")
    for name in REQUIRED_STAGES:
        if name not in stages:
            raise UsageError(f"recipe: stage {name!r} is required")
    return names


def _evaluate_stage(stages: dict, search3: SearchStage | None) -> EvaluateStage:
    evaluate = from_mapping(EvaluateStage, stages["evaluate"], "evaluate")
    if evaluate.lengths is not None and not evaluate.lengths:
        raise UsageError("recipe: evaluate.lengths must be a non-empty list of lengths >= 2")
    for key in ("baselines", "peers"):
        for name in getattr(evaluate, key):
            try:
                get_method(name)
            except UsageError as e:
                raise UsageError(f"recipe: evaluate.{key}: {e}") from None
    if evaluate.peers and search3 is None:
        raise UsageError("recipe: evaluate.peers are applied in place of search3; the recipe has no search3")
    if (evaluate.passkey_long_trials is None) != (evaluate.passkey_long_length is None):
        raise UsageError("recipe: evaluate.passkey_long_trials and evaluate.passkey_long_length go together")
    return evaluate


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """A Recipe from the parsed YAML; UsageError (one line) on anything malformed."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping with 'model' and 'stages'")
    top_keys = [f.name for f in fields(RecipeOptions) if f.name not in TOP_EXCLUDED] + ["stages"]
    unknown = [k for k in data if k not in top_keys]
    if unknown:
        raise UsageError(f"recipe: unknown top-level key(s) {', '.join(map(str, unknown))}; "
                         f"allowed: {', '.join(sorted(top_keys))}")
    if data.get("model") is None or data.get("model") == "":
        raise UsageError("recipe: 'model' is required (a preset, HF directory or .gguf)")
    check_value(data["model"], str, "model")
    top = from_mapping(RecipeOptions, {k: v for k, v in data.items() if k != "stages"}, "", TOP_EXCLUDED)
    stages = data.get("stages")
    names = _stage_order(stages)
    search = _search_stage(stages, "search")
    finetune = _finetune_stage(stages, "finetune", top)
    if finetune.length > search.target_length:
        raise UsageError(f"recipe: finetune.length {finetune.length} exceeds what the stage-1 factors cover "
                         f"(search.target_length {search.target_length})")
    search2 = _search_stage(stages, "search2", search) if "search2" in names else None
    finetune2 = None
    if "finetune2" in names:
        if search2 is None:
            raise UsageError("recipe: stage 'finetune2' needs 'search2' (it fine-tunes with the final factors)")
        finetune2 = _finetune_stage(stages, "finetune2", top)
        if finetune2.length > search2.target_length:
            raise UsageError(f"recipe: finetune2.length {finetune2.length} exceeds what the final factors cover "
                             f"(search2.target_length {search2.target_length})")
    search3 = None
    if "search3" in names:
        if search2 is None:
            raise UsageError("recipe: stage 'search3' needs 'search2' (it searches on top of the stage-2 factors)")
        search3 = _search_stage(stages, "search3", search2)
    readjust = from_mapping(ReadjustStage, stages["readjust"], "readjust", NOT_RECIPE_KEYS) if "readjust" in names \
        else None
    evaluate = _evaluate_stage(stages, search3) if "evaluate" in names else None
    return Recipe(**{f.name: getattr(top, f.name) for f in fields(RecipeOptions)}, search=search, finetune=finetune,
                  search2=search2, finetune2=finetune2, search3=search3, readjust=readjust, evaluate=evaluate)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (UsageError with one line on any problem)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise UsageError(f"recipe {path} is not valid YAML: {first}") from None
    except UnicodeDecodeError:
        raise UsageError(f"recipe {path} is not UTF-8 text") from None
    except RecursionError:
        raise UsageError(f"recipe {path} is nested too deeply to be a recipe") from None
    return parse_recipe(data, str(path))
