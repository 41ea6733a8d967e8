"""The one front end of every evaluation (eval-ppl, passkey, tasks, the recipe's report, lm-eval):
which methods and factors files, checked before a model loads; which lengths (1x..8x the native
context unless given) and target; what a results file records about its run; and a results file
that keeps every cell as it comes and gives back the cells an earlier run computed on identical
inputs (`Store`)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_write_json
from ..data import documents_of_length, load_corpus, select_split, tokenize_corpus
from ..errors import UsageError
from ..factors import RopeExtension
from ..hf_config import load_factors
from ..methods import build_extension, get_method
from ..models.load import LoadedModel, fingerprint_matches
from ..readback import read_json_or_none
from ..settings import DEFAULT_METHODS, OWN, default_lengths
from ..version import versions
from .runner import Cell, Key, Variant


# -- methods and factors ---------------------------------------------------------------------------
def method_names(methods: list[str] | None, factors: list[str] = ()) -> list[str]:
    """The methods asked for (the defaults when None), checked (cheap: before loading a model)."""
    names = list(dict.fromkeys(DEFAULT_METHODS if methods is None else methods))
    for name in names:
        if name != OWN:
            get_method(name)
    if not names and not factors:
        raise UsageError("nothing to evaluate: give --methods and/or --factors")
    return names


def factor_files(factors: list[str]) -> list[tuple[str, RopeExtension]]:
    """The --factors files (or shipped names), loaded and validated (cheap: before loading a model)."""
    return [(path, load_factors(path)) for path in factors]


def check_methods(methods: list[str] | None, factors: list[str]) -> None:
    """Fail on bad --methods or --factors before anything loads."""
    method_names(methods, factors), factor_files(factors)


def method_variants(methods: list[str] | None, factors: list[str], loaded: LoadedModel,
                    target_length: int) -> list[Variant]:
    """One variant per method (set for `target_length`) and per factors file, each checked
    against the model before anything is evaluated. methods None: the defaults, plus the
    model's own factors, and only the unscaled ones when the target is within the native context."""
    spec, native = loaded.spec, loaded.spec.original_max_position_embeddings
    names = method_names(methods, factors)
    if methods is None:
        names += [OWN] if loaded.own_extension is not None else []
        if target_length <= native:
            print(f"note: {target_length} tokens is within the native context {native}: the default scaled "
                  f"methods have nothing to extend; evaluating {', '.join(n for n in names if n in ('none', OWN))} "
                  f"(set --target-length above {native} to compare them)")
            names = [n for n in names if n in ("none", OWN)]
    if "none" in names and loaded.own_extension is not None:
        print(f"note: {loaded.name} carries its own factors; 'none' is the original RoPE without them, "
              f"'{OWN}' the model with them")
    variants = [_named_variant(name, loaded, target_length) for name in names]
    for path, ext in factor_files(factors):
        try:  # before any cell runs, not when its turn comes
            ext.check_fits(spec)
        except UsageError as e:
            raise UsageError(f"--factors {path}: {e}") from None
        p = Path(path)
        label = ext.metadata.get("label") or (p.parent.name if p.name in ("factors.json", "config.json") else p.stem)
        variants.append(Variant(str(label or ext.method), ext))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise UsageError(f"duplicate method labels {labels}; rename factors files")
    return variants


def _named_variant(name: str, loaded: LoadedModel, target_length: int) -> Variant:
    native = loaded.spec.original_max_position_embeddings
    if name == "none":
        return Variant("none", None)
    if name == OWN:
        if loaded.own_extension is None:
            raise UsageError(f"--methods {OWN}: {loaded.name} carries no factors of its own")
        return Variant(OWN, loaded.own_extension)
    if target_length <= native:
        raise UsageError(f"--target-length {target_length} (default: the largest length) must exceed the model's "
                         f"native context {native} for method {name!r}")
    return Variant(name, build_extension(name, loaded.spec, target_length))


def extension_dict(variant: Variant) -> dict[str, Any] | None:
    """A variant's extension as its cells record it (None: the model's RoPE as it is)."""
    return None if variant.extension is None else variant.extension.to_dict()


# -- lengths, documents, the run -------------------------------------------------------------------
def lengths_and_target(lengths: list[int] | None, target_length: int | None, native: int) -> tuple[list[int], int]:
    """The lengths to measure (given, else 1x..8x native) and the target every method is set for
    (given, else the largest length)."""
    chosen = sorted(set(lengths)) if lengths else default_lengths(native)
    return chosen, target_length or max(chosen)


def evaluation_documents(tokenizer, corpus: str | None, split: str, split_seed: int, docs: int, min_length: int):
    """Token documents of one split with at least `min_length` tokens, at most `docs` of them."""
    token_docs = tokenize_corpus(tokenizer, select_split(load_corpus(corpus, split_seed), split, split_seed))
    return documents_of_length(token_docs, min_length, docs)


def run_info(args, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every result file records about its run: the command, its arguments, versions, time."""
    return {
        "command": args.command,
        "args": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
        "versions": versions("torch", "transformers"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }


# -- the results file ------------------------------------------------------------------------------
class Store:
    """A results file written after every cell. `reusable(variants)` gives back the cells of the
    earlier file at `path` whose run `key` (what a cell's number depends on besides its variant:
    model files, documents or prompts, dtype, settings) equals this run's, and whose variant's
    extension is the same, under the same label. A model fingerprint of an earlier release counts
    as equal when it is that release's fingerprint of these same files.

    layout(cells) -> the file's content; cells_of(content) -> its cells (dicts with "method"/
    "variant", "length" and, for several kinds, "task"), so each command keeps its file format."""

    def __init__(self, path: Path, key: dict[str, Any], layout: Callable[[dict[Key, Cell]], dict],
                 cells_of: Callable[[dict], list[Cell]], key_of: Callable[[dict], Any], model: str | None = None):
        self.path, self.key, self.layout, self.cells_of, self.key_of = path, key, layout, cells_of, key_of
        self.model = model

    def _same_run(self, earlier: Any) -> bool:
        if not isinstance(earlier, dict):
            return False
        mine = dict(self.key)
        recorded = earlier.get("model_files")
        if self.model is not None and recorded != mine.get("model_files") and isinstance(recorded, str) \
                and fingerprint_matches(recorded, self.model):
            mine["model_files"] = recorded
        return earlier == mine

    def reusable(self, variants: list[Variant], cell_key: Callable[[Cell], Key],
                 same_cell: Callable[[Cell], bool] = lambda cell: True,
                 identity: Callable[[Variant], Any] = extension_dict, recorded: str = "extension") -> dict[Key, Cell]:
        """The earlier cells to keep: same run key, and per cell its variant's `identity` (by
        default its extension) equal to what the cell `recorded`, and `same_cell`."""
        earlier = read_json_or_none(self.path)
        if not isinstance(earlier, dict) or not self._same_run(self.key_of(earlier)):
            return {}
        # through JSON, as the earlier cells were
        identities = json.loads(json.dumps({v.label: identity(v) for v in variants}))
        done = {}
        for cell in self.cells_of(earlier):
            label = cell.get("method", cell.get("variant"))
            if label in identities and cell.get(recorded) == identities[label] and same_cell(cell):
                done[cell_key(cell)] = cell
        return done

    def save(self, cells: dict[Key, Cell]) -> dict:
        content = self.layout(cells)
        atomic_write_json(self.path, content)
        return content
