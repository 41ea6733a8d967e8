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

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..factors import MAX_ATTENTION_FACTOR
from ..methods import get_method
from ..options import check_options, option, rename_flags
from ..search.cma import check_samples
from ..search.driver import DEFAULT_METHOD, SearchOptions
from ..search.state import ADDED_SETTINGS, SearchConfig
from ..train.finetune import FinetuneConfig

NOT_RECIPE_KEYS = ("reject_slack",)  # SearchConfig fields a recipe does not set
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
        (optimizer, objective, reject, race_confidence) appear only when they are not the defaults,
        so stages completed before these keys existed still match."""
        skip = NOT_RECIPE_KEYS + METHOD_KEYS + SPEED_KEYS
        keys = {k: v for k, v in asdict(self).items() if k not in skip} | self.method()
        return {k: v for k, v in keys.items() if k not in RECORDED_WHEN_SET or RECORDED_WHEN_SET[k] != v}


@dataclass(frozen=True)
class SearchStage(SearchSettings):
    """`search` (on the original model) and `search2` (on the fine-tuned one, a factor on top)."""

    target_length: int = option(0, "L' of this stage (required)", min=0)
    start_tokens: list[int] | None = None  # n_hat candidates (None: the paper's; search2 keeps stage 1's)
    variant: str = "longrope"  # longrope, piecewise or critical (longrope.search.genes)
    attention_factor: float | None = option(None, "None: search: the longrope default; search2: the fine-tuned one",
                                            above=0, max=MAX_ATTENTION_FACTOR)
    corpus: str | None = None  # search3 only: its documents (None: the recipe's; a longer target may need another)


@dataclass(frozen=True)
class ReadjustStage(SearchSettings):
    """Short-context readjustment: search `short_factor` at the native length (paper section 3.3)."""

    docs: int = option(8, "K documents at the native length", min=1, max=10_000)


@dataclass
class EvaluateStage:
    """The report: perplexity and passkey at each length for every stage and baseline."""

    lengths: list[int] | None = None  # None: 1x, 2x, 4x, ... up to the final target
    docs: int = option(4, "held-out documents per length (truncated, one pass each)", min=1, max=100_000)
    split: str = "test"  # the split neither pretraining of the tiny preset nor fine-tuning saw
    passkey_trials: int = option(10, "passkey trials per length, 0 = none", min=0, max=100_000)
    baselines: list[str] = field(default_factory=lambda: ["pi", "yarn"])  # fine-tuned with the same budget
    chunk_size: int = option(1024, "tokens per LM-head chunk", min=1)
    corpus: str | None = None  # the report's documents (None: the recipe's)
    # with search3: methods applied as the last step instead of the search (stage-2 factors x the method's)
    peers: list[str] = field(default_factory=list)
    passkey_long_trials: int | None = option(None, "passkey trials at passkey_long_length and beyond (None: "
                                             "passkey_trials)", min=1, max=100_000)
    passkey_long_length: int | None = option(None, "the length from which passkey_long_trials apply", min=2)

    def __post_init__(self):
        check_options(self)


@dataclass
class Recipe:
    model: str
    search: SearchStage
    finetune: FinetuneConfig
    corpus: str | None = None
    split_seed: int = 0
    dtype: str = "auto"  # searches and evaluation; fine-tuning keeps fp32 weights + autocast
    search2: SearchStage | None = None
    finetune2: FinetuneConfig | None = None  # continues from `finetune`'s model with the final factors
    readjust: ReadjustStage | None = None
    evaluate: EvaluateStage | None = None
    search3: SearchStage | None = None  # on the last fine-tuned model, with no fine-tuning after it
    # the final factors' long attention factor follows the length in force past the native context
    # (RopeExtension.attention_by_length) instead of staying the fine-tuned one
    attention_by_length: bool = False

    @property
    def final_target(self) -> int:
        return (self.search3 or self.search2 or self.search).target_length

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.search3 is None:  # recorded only when there: recipe.json of earlier runs reads the same
            del d["search3"]
        for name in ("search", "search2", "search3", "readjust"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name).settings()
        return d


# -- parsing -----------------------------------------------------------------------------------------
_FINETUNE_FROM_TOP = ("corpus", "split_seed")  # set once for the whole recipe


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` converted to the annotated type, or UsageError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"recipe: {where} must be a list, got {value!r}")
        return [_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise UsageError(f"recipe: {where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"recipe: {where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"recipe: {where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"recipe: {where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r}")


def _build(cls, data: Any, where: str, exclude: tuple[str, ...] = ()):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"recipe: {where} must be a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in fields(cls) if f.name not in exclude]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise UsageError(f"recipe: unknown key(s) {', '.join(map(str, unknown))} in {where}; "
                         f"allowed: {', '.join(allowed)}")
    values = {k: _check_value(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**values)
        if hasattr(obj, "validate"):
            obj.validate()
        return obj
    except UsageError as e:  # a setting the dataclass itself refuses: named by its recipe key
        raise UsageError(f"recipe: {rename_flags(str(e), cls, where)}") from None
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in fields(cls) if f.name not in values and f.name in allowed
                   and f.default is f.default_factory is dataclasses.MISSING]
        raise UsageError(f"recipe: {where} needs {', '.join(missing) or str(e)}") from None


def _check_search(stage: SearchStage, where: str) -> None:
    if stage.target_length < 2:
        raise UsageError(f"recipe: {where}.target_length is required (tokens, > the native context)")
    for i, t in enumerate(stage.start_tokens or []):
        if not 0 <= t < stage.target_length:
            raise UsageError(f"recipe: {where}.start_tokens[{i}] = {t} must be in [0, {where}.target_length "
                             f"{stage.target_length})")
    if stage.variant not in ("longrope", "piecewise", "critical"):
        raise UsageError(f"recipe: {where}.variant must be longrope, piecewise or critical, got {stage.variant!r}")


def _finetune_stage(stages: dict, name: str, corpus: str | None, split_seed: int) -> FinetuneConfig:
    data = stages[name]
    if isinstance(data, dict):
        for k in _FINETUNE_FROM_TOP:
            if k in data:
                raise UsageError(f"recipe: {name}.{k} is set once for the whole recipe, at the top level")
    cfg = _build(FinetuneConfig, data, name, exclude=_FINETUNE_FROM_TOP)
    cfg.corpus, cfg.split_seed = corpus, split_seed
    return cfg


def _top_level(data: Any, source: str) -> tuple[str, str | None, int, str, bool]:
    """The recipe's top-level settings: model, corpus, split_seed, dtype, attention_by_length."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping with 'model' and 'stages'")
    top = {"model", "corpus", "split_seed", "dtype", "attention_by_length", "stages"}
    unknown = [k for k in data if k not in top]
    if unknown:
        raise UsageError(f"recipe: unknown top-level key(s) {', '.join(map(str, unknown))}; "
                         f"allowed: {', '.join(sorted(top))}")
    model = _check_value(data.get("model"), str, "model") if data.get("model") is not None else None
    if not model:
        raise UsageError("recipe: 'model' is required (a preset, HF directory or .gguf)")
    corpus = _check_value(data.get("corpus"), str | None, "corpus")
    split_seed = _check_value(data.get("split_seed", 0), int, "split_seed")
    if split_seed < 0:
        raise UsageError(f"recipe: split_seed must be >= 0, got {split_seed}")
    dtype = _check_value(data.get("dtype", "auto"), str, "dtype")
    if dtype not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"recipe: dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    attention_by_length = _check_value(data.get("attention_by_length", False), bool, "attention_by_length")
    return model, corpus, split_seed, dtype, attention_by_length


def _stages(data: dict) -> dict:
    """The recipe's stages: known names, in order, the required ones present."""
    stages = data.get("stages")
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
    return stages


def _check_evaluate(evaluate: EvaluateStage, search3: SearchStage | None) -> None:
    """UsageError on evaluate settings that cannot run (lengths, split, methods, peers without search3)."""
    if evaluate.lengths is not None and (not evaluate.lengths or min(evaluate.lengths) < 2):
        raise UsageError("recipe: evaluate.lengths must be a non-empty list of lengths >= 2")
    if evaluate.split not in ("search", "validation", "test", "all"):
        raise UsageError("recipe: evaluate.split must be search, validation, test or all")
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


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """A Recipe from the parsed YAML; UsageError (one line) on anything malformed."""
    model, corpus, split_seed, dtype, attention_by_length = _top_level(data, source)
    stages = _stages(data)
    search = _build(SearchStage, stages["search"], "search", NOT_RECIPE_KEYS)
    _check_search(search, "search")
    finetune = _finetune_stage(stages, "finetune", corpus, split_seed)
    if finetune.length > search.target_length:
        raise UsageError(f"recipe: finetune.length {finetune.length} exceeds what the stage-1 factors cover "
                         f"(search.target_length {search.target_length})")

    search2 = None
    if "search2" in stages:
        search2 = _build(SearchStage, stages["search2"], "search2", NOT_RECIPE_KEYS)
        _check_search(search2, "search2")
        if search2.target_length <= search.target_length:
            raise UsageError(f"recipe: final target search2.target_length {search2.target_length} must exceed "
                             f"the stage-1 target {search.target_length}")
        if search2.variant not in ("longrope", "critical"):
            raise UsageError("recipe: search2.variant must be longrope or critical (it searches a factor on top of "
                             "stage 1)")
    finetune2 = None
    if "finetune2" in stages:
        if search2 is None:
            raise UsageError("recipe: stage 'finetune2' needs 'search2' (it fine-tunes with the final factors)")
        finetune2 = _finetune_stage(stages, "finetune2", corpus, split_seed)
        if finetune2.length > search2.target_length:
            raise UsageError(f"recipe: finetune2.length {finetune2.length} exceeds what the final factors cover "
                             f"(search2.target_length {search2.target_length})")
    search3 = None
    if "search3" in stages:
        if search2 is None:
            raise UsageError("recipe: stage 'search3' needs 'search2' (it searches on top of the stage-2 factors)")
        search3 = _build(SearchStage, stages["search3"], "search3", NOT_RECIPE_KEYS)
        _check_search(search3, "search3")
        if search3.target_length <= search2.target_length:
            raise UsageError(f"recipe: search3.target_length {search3.target_length} must exceed search2.target_length "
                             f"{search2.target_length}")
        if search3.variant not in ("longrope", "critical"):
            raise UsageError("recipe: search3.variant must be longrope or critical (it searches a factor on top of "
                             "stage 2)")
    for name, stage in (("search", search), ("search2", search2)):
        if stage is not None and stage.corpus is not None:
            raise UsageError(f"recipe: {name}.corpus: the corpus is set once at the top level; only search3 and "
                             f"evaluate read another one")
    readjust = _build(ReadjustStage, stages["readjust"], "readjust", NOT_RECIPE_KEYS) \
        if "readjust" in stages else None
    evaluate = _build(EvaluateStage, stages["evaluate"], "evaluate") if "evaluate" in stages else None
    if evaluate is not None:
        _check_evaluate(evaluate, search3)
    return Recipe(model=model, corpus=corpus, split_seed=split_seed, dtype=dtype, search=search,
                  finetune=finetune, search2=search2, finetune2=finetune2, search3=search3, readjust=readjust,
                  evaluate=evaluate, attention_by_length=attention_by_length)


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
