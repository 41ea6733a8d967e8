"""`longrope extend`: the progressive extension recipe, stage by stage (LongRoPE section 3.3).

    1-search     search lambda1 for the stage-1 target on the original model
    2-finetune   fine-tune with lambda1 at the fine-tuning length
    3-search2    search lambda2 on the fine-tuned model for the final target;
                 long_factor = lambda1 * lambda2 (element-wise)
    3b-finetune2 (optional) fine-tune the stage-1 model again with the final factors, at a
                 longer length (the paper fine-tunes at 128k, then at 256k with its factors)
    3c-search3   (optional) search lambda3 on the last fine-tuned model for a longer target, with
                 no fine-tuning after it: long_factor = stage-2 factors * lambda3 (the paper's
                 256k -> 2048k step)
    4-readjust   search short_factor at the native length on the extended model
    final        HF model directory: long_factor, short_factor, attention_factor,
                 original_max_position_embeddings, max_position_embeddings (with the recipe's
                 attention_by_length, the long attention factor follows the length in force)
    report       perplexity vs length and passkey for every stage, beside PI and YaRN
                 fine-tuned with the same budget at the same lengths (baselines/)

Every stage writes into its own folder and marks completion last (`stage.json`, or
`finetune.json` for fine-tuning); a rerun skips complete stages, resumes an interrupted
search from its state.json and an interrupted fine-tuning from its last checkpoint, and
refuses a stage whose recorded settings differ from the recipe's.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..data import documents_of_length, load_corpus, split_corpus, tokenize_corpus
from ..errors import UsageError
from ..evaluate.runner import Variant
from ..export.hf import export_hf
from ..factors import FACTORS_FILE, RopeExtension
from ..atomic import atomic_write_json, staged_dir
from ..readback import changed_keys, read_json_or_none
from ..methods import build_extension
from ..options import build
from ..models.load import fingerprint_matches, load_model, load_tokenizer, model_fingerprint, model_spec
from ..rope import RotarySpec
from ..search.driver import SearchJob, SearchOptions, drive, has_state
from ..search.fitness import search_documents
from ..search.loop import carried_seed
from ..search.plan import Plan, long_plan, on_top_plan, short_plan
from ..search.state import SearchConfig, SearchState
from ..train.finetune import finetune, has_checkpoint, is_complete, original_rope_below_native, with_defaults
from .config import Recipe
from .report import log, report_lengths, stage_evaluate

DIRS = {"search": "1-search", "finetune": "2-finetune", "search2": "3-search2", "finetune2": "3b-finetune2",
        "search3": "3c-search3", "readjust": "4-readjust", "final": "final", "evaluate": "report", "baselines": "baselines"}
STAGE_FILE = "stage.json"  # written last in a stage folder: the stage is complete


def write_stage(out: Path, record: dict[str, Any]) -> None:
    atomic_write_json(out / STAGE_FILE, record)


def read_stage(out: Path) -> dict[str, Any] | None:
    path = out / STAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _check_stage(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a complete stage with these settings; None if not complete; UsageError if the
    stage was completed with other settings (rerunning it would silently mix two recipes)."""
    record = read_stage(out)
    if record is None:
        return None
    if record["settings"] != settings:
        changed = changed_keys(record["settings"], settings)
        raise UsageError(f"{out} was completed with different settings ({', '.join(changed)}); "
                         f"restore them or remove that folder to redo the stage")
    return record


# in finetune2's folder: the fingerprint of the model it continued (a dot file: neither exported nor fingerprinted)
BASE_FILE = ".recipe-base.json"


def _check_base(where: Path, recorded: str | None, base: Path) -> None:
    """UsageError when the complete stage in `where` was made from an earlier version of the
    model in `base` (that stage was redone since): its result would mix two runs. A record
    without a fingerprint (written before they were kept) is taken as it is."""
    if not fingerprint_matches(recorded, str(base)):
        raise UsageError(f"{where} was made from an earlier {base.name} (redone since); remove {where} and the "
                         f"stages after it to redo them")


def _completed_search(name: str, where: Path, settings: dict[str, Any], base: Path | None = None
                      ) -> RopeExtension | None:
    """The extension a complete search stage found (None: not complete yet); `base`: the model
    folder it searched on, when an earlier stage made it."""
    done = _check_stage(where, settings)
    if done is None:
        return None
    if base is not None:
        _check_base(where, done.get("base"), base)
    log(f"{name}: complete in {where}, skipped")
    return RopeExtension.from_dict(done["extension"])


def check_recipe_against_model(recipe: Recipe, spec) -> None:
    """What needs the model's native context: every target must exceed it."""
    L = spec.original_max_position_embeddings
    if recipe.search.target_length <= L:
        raise UsageError(f"recipe: search.target_length {recipe.search.target_length} must exceed the model's "
                         f"native context {L}")
    for name in ("finetune", "finetune2"):
        cfg = getattr(recipe, name)
        if cfg is not None and cfg.mixed_context > 0 and cfg.length <= L:
            raise UsageError(f"recipe: mixed context window needs {name}.length above the native context {L}")
    if recipe.readjust is not None and recipe.readjust.max_factor is not None \
            and recipe.readjust.max_factor > 1.25 * recipe.search.target_length / L:
        log(f"note: readjust.max_factor {recipe.readjust.max_factor} exceeds stage 1's bound "
            f"{1.25 * recipe.search.target_length / L:g}")


def check_recipe_corpus(recipe: Recipe, spec: RotarySpec) -> None:
    """Every length the recipe needs is reached by a document of the split it reads (checked
    before any stage runs, with the tokenizer only): UsageError naming the recipe key."""
    tokenizer = load_tokenizer(recipe.model)
    needs = [("search.target_length", recipe.corpus, "search", recipe.search.target_length)]
    if recipe.search2 is not None:
        needs.append(("search2.target_length", recipe.corpus, "search", recipe.search2.target_length))
    if recipe.search3 is not None:
        needs.append(("search3.target_length", recipe.search3.corpus or recipe.corpus, "search",
                      recipe.search3.target_length))
    if recipe.evaluate is not None:
        lengths = report_lengths(recipe, spec.original_max_position_embeddings)
        needs.append(("evaluate.lengths", recipe.evaluate.corpus or recipe.corpus, recipe.evaluate.split, max(lengths)))
    for key, corpus_name, split, length in needs:
        corpus = load_corpus(corpus_name, recipe.split_seed)
        docs = corpus if split == "all" else split_corpus(corpus, recipe.split_seed)[split]
        if not docs:
            raise UsageError(f"recipe: {key}: the {split} split of the corpus is empty; use a larger corpus"
                             + (" or evaluate.split: all" if key.startswith("evaluate") else ""))
        try:
            documents_of_length(tokenize_corpus(tokenizer, docs), length, 1)
        except UsageError as e:
            raise UsageError(f"recipe: {key}: in the {split} split, {e}") from None


def search_settings(recipe: Recipe, name: str, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a search stage records in its stage.json and is matched on when the recipe runs again:
    its keys (`SearchSettings.settings`), what it was built on (`recorded`: stage 1 for search2,
    the stage-2 factors for search3, the extension for readjust) and the dtype; stage 1 also the
    model and corpus."""
    stage = getattr(recipe, name)
    settings = {**stage.settings(), **(recorded or {}), "dtype": recipe.dtype}
    if name == "search":
        settings = {**stage.settings(), "model": recipe.model, "corpus": recipe.corpus,
                    "split_seed": recipe.split_seed, "dtype": recipe.dtype}
    if name == "search3" and recipe.attention_by_length:  # scored as the final factors are used
        settings["attention_by_length"] = True
    return settings


def _search(recipe: Recipe, name: str, settings: dict[str, Any], out: Path, model: str, length: int, plan: Plan,
            describe: dict[str, Any]) -> tuple[RopeExtension, float]:
    """One search stage through the search driver, resumed from its state.json if there; marked
    complete with the found extension (as `plan.finalize` adjusts it). Returns it and the seconds
    this run took."""
    t0 = time.time()
    stage, where = getattr(recipe, name), out / DIRS[name]
    config = build(SearchConfig, stage)
    lm = load_model(model, recipe.dtype)
    docs = search_documents(lm.tokenizer, getattr(stage, "corpus", None) or recipe.corpus, length, stage.docs,
                            recipe.split_seed, stage.objective, stage.needles)
    if len(docs) < stage.docs:
        log(f"note: only {len(docs)} search documents reach {length} tokens (asked for {stage.docs})")
    where.mkdir(parents=True, exist_ok=True)
    state = SearchState.load(where) if has_state(where) else None
    job = SearchJob(lm.model, docs, plan.make, plan.space, config, plan.seeds, where, {**describe, "docs": len(docs)},
                    build(SearchOptions, stage), title=plan.title, resume_hint="rerun the recipe to continue",
                    finalize=plan.finalize)
    ext = drive(job, state)[1]
    write_stage(where, {"settings": settings, "extension": ext.to_dict(), "seconds": round(time.time() - t0, 1),
                        "base": model_fingerprint(model)})
    return ext, time.time() - t0


# -- stages ---------------------------------------------------------------------------------------------
def stage_search(recipe: Recipe, out: Path, spec: RotarySpec) -> RopeExtension:
    """1. lambda1 for the stage-1 target, on the original model (Algorithm 1)."""
    settings = search_settings(recipe, "search")
    if (done := _completed_search("search", out / DIRS["search"], settings)) is not None:
        return done
    stage = recipe.search
    L, N = spec.original_max_position_embeddings, stage.target_length
    plan = long_plan(spec, stage, stage.step, stage.max_factor, recipe.model)
    plan.title = f"search 1: {L} -> {N}"
    ext, seconds = _search(recipe, "search", settings, out, recipe.model, N, plan,
                           {"stage": "search", "model": recipe.model, "target_length": N})
    log(f"search: {L} -> {N} tokens, n_hat={ext.start_token}, ppl {ext.metadata['search_perplexity']:.3f} "
        f"({seconds:.0f}s)")
    return ext


def stage_finetune(recipe: Recipe, ext: RopeExtension | None, where: Path, label: str,
                   second: Path | None = None) -> Path:
    """2. fine-tune recipe.model with `ext` at finetune.length (also used for the baselines); with
    `second` (the first fine-tuning's model), 3b: fine-tune that model again with finetune2's settings."""
    cfg, model = (recipe.finetune, recipe.model) if second is None else (recipe.finetune2, str(second))
    if is_complete(where):
        record = json.loads((where / "finetune.json").read_text())
        # settings added since a run was recorded count as their defaults
        record["config"] = with_defaults(record.get("config", {}))
        want = {"config": asdict(cfg), "extension": None if ext is None else ext.to_dict()}
        changed = changed_keys({k: record.get(k) for k in want}, want)
        if changed:
            raise UsageError(f"{where} was fine-tuned with different settings ({', '.join(changed)}); restore them "
                             f"or remove that folder")
        if second is not None:
            _check_base(where, (read_json_or_none(where / BASE_FILE) or {}).get("base"), second)
        log(f"{label}: complete in {where}, skipped")
        return where
    resume = has_checkpoint(where)
    if where.exists() and not resume:
        shutil.rmtree(where)  # started but never checkpointed: nothing to keep
    t0 = time.time()
    finetune(model, ext, where, cfg, resume=resume, resume_hint="rerun the recipe to continue")
    if second is not None:
        atomic_write_json(where / BASE_FILE, {"base": model_fingerprint(str(second)), "model": str(second)})
    log(f"{label}: {cfg.steps} steps at {cfg.length} tokens ({time.time() - t0:.0f}s)")
    return where


def stage_search2(recipe: Recipe, out: Path, spec: RotarySpec, ext1: RopeExtension, ft_dir: Path) -> RopeExtension:
    """3. lambda2 on the fine-tuned model for the final target; long_factor = lambda1 * lambda2."""
    return _search_on_top(recipe, "search2", out, spec, ext1, ft_dir, {"stage1": ext1.to_dict()})


def stage_search3(recipe: Recipe, out: Path, spec: RotarySpec, ext2: RopeExtension, ft_dir: Path) -> RopeExtension:
    """3c. lambda3 on the last fine-tuned model, for a target past the one it was fine-tuned
    for, with no fine-tuning after it: long_factor = stage-2 factors * lambda3. Scored as the
    final factors are used (attention_by_length when the recipe sets it); seeded with PI, NTK,
    YaRN for the remaining scale and the stage-2 factors carried to the new target."""
    carried = carried_seed(ext2.long_factor, ext2.scale, recipe.search3.target_length / ext2.original_max_position_embeddings)
    return _search_on_top(recipe, "search3", out, spec, ext2, ft_dir, {"stage2": ext2.to_dict()},
                          extra_seeds=[carried / np.asarray(ext2.long_factor)], by_length=recipe.attention_by_length)


def _search_on_top(recipe: Recipe, name: str, out: Path, spec: RotarySpec, base: RopeExtension, ft_dir: Path,
                   recorded: dict[str, Any], extra_seeds=(), by_length: bool = False) -> RopeExtension:
    """A search on the fine-tuned model `ft_dir` for a factor on top of the extension `base` it was
    fine-tuned with (search2, search3): `on_top_plan`."""
    settings = search_settings(recipe, name, recorded)
    if (done := _completed_search(name, out / DIRS[name], settings, ft_dir)) is not None:
        return done
    stage = getattr(recipe, name)
    N1, N2 = base.max_position_embeddings, stage.target_length
    plan = on_top_plan(spec, stage, stage.step, stage.max_factor, base, f"stage{name.removeprefix('search')}_factor",
                       f"{name}: {N1} -> {N2} (x the fine-tuned factors)", extra_seeds, by_length)
    ext, seconds = _search(recipe, name, settings, out, str(ft_dir), N2, plan,
                           {"stage": name, "model": ft_dir.name, "target_length": N2})
    log(f"{name}: {N1} -> {N2} tokens, ppl {ext.metadata['search_perplexity']:.3f} ({seconds:.0f}s)")
    return ext


def stage_readjust(recipe: Recipe, out: Path, spec: RotarySpec, ext1: RopeExtension, ext: RopeExtension,
                   ft_dir: Path) -> RopeExtension:
    """4. short_factor: a search at the native length with a smaller upper bound (paper section 3.3),
    seeded with 1, the factors the model was fine-tuned with and the final ones."""
    settings = search_settings(recipe, "readjust", {"extension": ext.to_dict()})
    if (done := _completed_search("readjust", out / DIRS["readjust"], settings, ft_dir)) is not None:
        return done
    stage, L = recipe.readjust, spec.original_max_position_embeddings
    bound = stage.max_factor or 1.25 * ext1.scale  # stage 1's bound: smaller than the final one (> 1)

    def keep_metadata(found: RopeExtension) -> RopeExtension:
        return found.with_(metadata=dict(ext.metadata) | {"short_search_perplexity": found.metadata["search_perplexity"]})

    seeds = {"fine-tuned": np.minimum(ext1.long_factor, bound), "final": np.minimum(ext.long_factor, bound)}
    plan = short_plan(ext, stage.step, bound, seeds, f"readjust short_factor at {L}", keep_metadata)
    found, seconds = _search(recipe, "readjust", settings, out, str(ft_dir), L, plan,
                             {"stage": "readjust", "model": ft_dir.name, "length": L})
    log(f"readjust: short_factor at {L} tokens, ppl {found.metadata['short_search_perplexity']:.3f} ({seconds:.0f}s)")
    return found


def last_step_variants(recipe: Recipe, spec: RotarySpec, fine_tuned: RopeExtension, final: RopeExtension,
                       ft_dir: Path) -> list[Variant]:
    """What search3 is measured against, on the same fine-tuned weights: the factors they were
    fine-tuned with and no further extension (`stage2`), and each `evaluate.peers` method as the
    last step instead of the search (`stage2+NAME`: the fine-tuned factors times the method's for
    the remaining scale). All keep the final's short factors, n_hat and attention-factor rule, so
    they differ from it in the long factors alone."""
    N2, N3, L = fine_tuned.max_position_embeddings, final.max_position_embeddings, spec.original_max_position_embeddings
    same = dict(short_factor=final.short_factor, short_attention_factor=final.short_attention_factor,
                attention_factor=final.attention_factor, attention_by_length=final.attention_by_length,
                start_token=final.start_token)
    variants = [Variant("stage2", fine_tuned.with_(metadata={}, **same), str(ft_dir))]
    base = RotarySpec(spec.dim, spec.base, N2)  # the fine-tuned model's context
    for name in recipe.evaluate.peers:
        step = np.asarray(build_extension(name, base, N3).long_factor)
        composed = RopeExtension("longrope", (np.asarray(fine_tuned.long_factor) * step).tolist(), L, N3,
                                 metadata={"peer": name}, **same)
        variants.append(Variant(f"stage2+{name}", composed, str(ft_dir)))
    return variants


def stage_final(out: Path, ext: RopeExtension, ft_dir: Path) -> Path:
    """The final HF model directory: the fine-tuned weights with the final factors in its config
    (and in our factors file, which keeps n_hat)."""
    where = out / DIRS["final"]
    done = read_stage(where)
    if done is not None and done["settings"] == {"extension": ext.to_dict()}:
        _check_base(where, done.get("base"), ft_dir)
        log(f"final: complete in {where}, skipped")
        return where
    # a final of this recipe's with other factors (a later stage was added or redone) is replaced
    with staged_dir(where, create=False, replace=done is not None) as staging:
        result = export_hf(str(ft_dir), ext, staging, drop_start_token=True)  # without the fine-tuning's record
        ext.save(staging / FACTORS_FILE)
        write_stage(staging, {"settings": {"extension": ext.to_dict()}, "notes": result.notes,
                              "fine_tuned": str(ft_dir), "base": model_fingerprint(str(ft_dir))})
    log(f"final: wrote {where}")
    return where


# -- the whole recipe ------------------------------------------------------------------------------------------
def run_recipe(recipe: Recipe, out: str | os.PathLike) -> dict[str, Any]:
    """Run every stage of `recipe` into `out`, skipping the complete ones. Returns the summary."""
    out = Path(out).expanduser().resolve()  # however --out is spelled, the same run
    spec = model_spec(recipe.model)
    check_recipe_against_model(recipe, spec)
    check_recipe_corpus(recipe, spec)  # a length no document reaches: before any stage runs
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recipe.json", recipe.to_dict())
    timings: dict[str, float] = {}
    t = time.time()

    ext1 = stage_search(recipe, out, spec)
    timings["search"] = time.time() - t
    t = time.time()
    ft_dir = stage_finetune(recipe, ext1, out / DIRS["finetune"], "finetune")
    timings["finetune"] = time.time() - t
    t = time.time()
    ext = ext1
    stage1_dir = ft_dir
    if recipe.search2 is not None:
        ext = stage_search2(recipe, out, spec, ext1, ft_dir)
        timings["search2"] = time.time() - t
        t = time.time()
    if recipe.finetune2 is not None:
        ft_dir = stage_finetune(recipe, ext, out / DIRS["finetune2"], "finetune2", second=ft_dir)
        timings["finetune2"] = time.time() - t
        t = time.time()
    fine_tuned = ext  # the factors the final weights were fine-tuned with
    if recipe.search3 is not None:
        ext = stage_search3(recipe, out, spec, ext, ft_dir)
        timings["search3"] = time.time() - t
        t = time.time()
    if (recipe.finetune2 or recipe.finetune).mixed_context > 0:
        ext = original_rope_below_native(ext)
    no_readjust = ext
    if recipe.readjust is not None:
        ext = stage_readjust(recipe, out, spec, ext1, ext, ft_dir)
        timings["readjust"] = time.time() - t
        t = time.time()
    if recipe.attention_by_length:  # longrope's runtime; exports keep the fine-tuned factor and say so
        ext = ext.with_(attention_by_length=True)
    final_dir = stage_final(out, ext, ft_dir)
    summary: dict[str, Any] = {"final": str(final_dir), "extension": ext.to_dict()}

    if recipe.evaluate is not None:
        L = spec.original_max_position_embeddings
        # with a third step the models before it stop at stage 1's target: past it they only break, slowly
        early = recipe.search.target_length if recipe.search3 is not None else None
        variants = [Variant("original", None, recipe.model, max_length=early),
                    Variant("stage1", None, str(stage1_dir), max_length=early),
                    Variant("final", None, str(final_dir))]
        if recipe.search3 is not None:
            variants += last_step_variants(recipe, spec, fine_tuned, ext, ft_dir)
        if recipe.readjust is not None:
            variants.append(Variant("final-no-readjust", no_readjust, str(final_dir), max_length=L))
        for name in recipe.evaluate.baselines:  # same budget, same length, set for the final target
            base_ext = build_extension(name, spec, recipe.final_target)
            where = out / DIRS["baselines"] / name
            stage_finetune(recipe, base_ext, where, f"baseline {name}")
            if recipe.finetune2 is not None:  # the same two fine-tunings
                where = stage_finetune(recipe, base_ext, out / DIRS["baselines"] / f"{name}-2", f"baseline {name} (2)",
                                       second=where)
            variants.append(Variant(f"{name}-ft", None, str(where)))
        timings["baselines"] = time.time() - t
        t = time.time()
        report = stage_evaluate(recipe, out / DIRS["evaluate"], spec, variants)
        timings["evaluate"] = time.time() - t
        summary["report"] = report["summary"]
    summary["seconds_this_run"] = {k: round(v, 1) for k, v in timings.items()}
    atomic_write_json(out / "summary.json", summary)
    return summary
