"""`longrope extend`: the progressive extension recipe, stage by stage (LongRoPE section 3.3).

    1-search     search lambda1 for the stage-1 target on the original model
    2-finetune   fine-tune with lambda1 at the fine-tuning length
    3-search2    search lambda2 on the fine-tuned model for the final target;
                 long_factor = lambda1 * lambda2 (element-wise)
    4-readjust   search short_factor at the native length on the extended model
    final        HF model directory: long_factor, short_factor, attention_factor,
                 original_max_position_embeddings, max_position_embeddings
    report       perplexity vs length and passkey for every stage, beside PI and YaRN
                 fine-tuned with the same budget at the same length (baselines/)

Every stage writes into its own folder and marks completion last (`stage.json`, or
`finetune.json` for fine-tuning); a rerun skips complete stages, resumes an interrupted
search from its state.json and an interrupted fine-tuning from its last checkpoint, and
refuses a stage whose recorded settings differ from the recipe's.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..factors import RopeExtension
from ..io import atomic_write_json
from ..recipe import Recipe
from .stages import log, read_stage, run_search_stage, write_stage

DIRS = {"search": "1-search", "finetune": "2-finetune", "search2": "3-search2", "readjust": "4-readjust",
        "final": "final", "evaluate": "report", "baselines": "baselines"}


def _check_stage(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a complete stage with these settings; None if not complete; UsageError if the
    stage was completed with other settings (rerunning it would silently mix two recipes)."""
    record = read_stage(out)
    if record is None:
        return None
    if record["settings"] != settings:
        changed = sorted(k for k in set(record["settings"]) | set(settings)
                         if record["settings"].get(k) != settings.get(k))
        raise UsageError(f"{out} was completed with different settings ({', '.join(changed)}); "
                         f"restore them or remove that folder to redo the stage")
    return record


def check_recipe_against_model(recipe: Recipe, spec) -> None:
    """What needs the model's native context: every target must exceed it."""
    L = spec.original_max_position_embeddings
    if recipe.search.target_length <= L:
        raise UsageError(f"recipe: search.target_length {recipe.search.target_length} must exceed the model's "
                         f"native context {L}")
    if recipe.finetune.mixed_context > 0 and recipe.finetune.length <= L:
        raise UsageError(f"recipe: mixed context window needs finetune.length above the native context {L}")


def model_spec(model: str):
    """The RotarySpec of a model from its config only (cheap: no weights are loaded)."""
    import os as _os

    _os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    from ..model import rotary_spec_from_config
    from ..presets import resolve_model

    source = resolve_model(model)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot read the config of {model!r}: {str(e).splitlines()[0]}") from None
    return rotary_spec_from_config(config)


def _space_and_config(stage, scale: float, max_factor: float, start_tokens, half: int, critical_dim: int = 0):
    from ..search.evolution import SearchConfig
    from ..search.genes import SearchSpace

    space = SearchSpace(half=half, scale=scale, max_factor=max_factor, step=stage.step,
                        start_tokens=tuple(start_tokens), variant=getattr(stage, "variant", "longrope"),
                        critical_dim=critical_dim)
    config = SearchConfig(population=stage.population, parents=stage.parents, mutations=stage.mutations,
                          crossovers=stage.crossovers, mutation_prob=stage.mutation_prob,
                          iterations=stage.iterations, seed=stage.seed, early_reject=stage.early_reject)
    return space, config


def _search_docs(recipe: Recipe, tokenizer, length: int, count: int):
    from ..search.fitness import search_documents

    docs = search_documents(tokenizer, recipe.corpus, length, count, recipe.split_seed)
    if len(docs) < count:
        log(f"note: only {len(docs)} search documents reach {length} tokens (asked for {count})")
    return docs


# -- stages ---------------------------------------------------------------------------------------------
def stage_search(recipe: Recipe, out: Path, spec) -> RopeExtension:
    """1. lambda1 for the stage-1 target, on the original model (Algorithm 1)."""
    from ..model import load_model
    from ..search.evolution import peer_seeds
    from ..search.genes import START_TOKENS, critical_dimension

    stage, where = recipe.search, out / DIRS["search"]
    settings = {**asdict(stage), "model": recipe.model, "corpus": recipe.corpus, "split_seed": recipe.split_seed,
                "dtype": recipe.dtype}
    done = _check_stage(where, settings)
    if done is not None:
        log(f"search: complete in {where}, skipped")
        return RopeExtension.from_dict(done["extension"])
    t0 = time.time()
    L, N = spec.original_max_position_embeddings, stage.target_length
    scale = N / L
    starts = tuple(t for t in (stage.start_tokens or START_TOKENS) if t < N) or (0,)
    cd = critical_dimension(spec.dim, spec.base, L) if stage.variant == "critical" else 0
    space, config = _space_and_config(stage, scale, stage.max_factor or 1.25 * scale, starts, spec.half, cd)
    lm = load_model(recipe.model, recipe.dtype)
    docs = _search_docs(recipe, lm.tokenizer, N, stage.docs)

    def make(factors: np.ndarray, start_token: int) -> RopeExtension:
        return RopeExtension(method="longrope", long_factor=[float(x) for x in factors],
                             original_max_position_embeddings=L, max_position_embeddings=N,
                             start_token=int(start_token), attention_factor=stage.attention_factor)

    ext = run_search_stage(lm.model, docs, make, space, config, peer_seeds(spec, scale), where,
                           {"stage": "search", "model": recipe.model, "target_length": N, "docs": len(docs)},
                           stage.chunk_size, title=f"search 1: {L} -> {N}")
    write_stage(where, {"settings": settings, "extension": ext.to_dict(), "seconds": round(time.time() - t0, 1)})
    log(f"search: {L} -> {N} tokens, n_hat={ext.start_token}, ppl {ext.metadata['search_perplexity']:.3f} "
        f"({time.time() - t0:.0f}s)")
    return ext


def stage_finetune(recipe: Recipe, ext: RopeExtension | None, where: Path, label: str) -> Path:
    """2. fine-tune with `ext` at finetune.length (also used for the baselines)."""
    from .finetune import _checkpoints, finetune, is_complete

    if is_complete(where):
        import json

        record = json.loads((where / "finetune.json").read_text())
        want = {"config": asdict(recipe.finetune), "extension": None if ext is None else ext.to_dict()}
        for key, value in want.items():
            if record.get(key) != value:
                raise UsageError(f"{where} was fine-tuned with a different {key}; restore it or remove that folder")
        log(f"{label}: complete in {where}, skipped")
        return where
    resume = bool(_checkpoints(where))
    if where.exists() and not resume:
        shutil.rmtree(where)  # started but never checkpointed: nothing to keep
    t0 = time.time()
    finetune(recipe.model, ext, where, recipe.finetune, resume=resume)
    log(f"{label}: {recipe.finetune.steps} steps at {recipe.finetune.length} tokens ({time.time() - t0:.0f}s)")
    return where


def stage_search2(recipe: Recipe, out: Path, spec, ext1: RopeExtension, ft_dir: Path) -> RopeExtension:
    """3. lambda2 on the fine-tuned model for the final target; long_factor = lambda1 * lambda2."""
    from ..methods import attention_factor
    from ..model import load_model
    from ..rope import RotarySpec
    from ..search.evolution import peer_seeds

    stage, where = recipe.search2, out / DIRS["search2"]
    settings = {**asdict(stage), "stage1": ext1.to_dict(), "dtype": recipe.dtype}
    done = _check_stage(where, settings)
    if done is not None:
        log(f"search2: complete in {where}, skipped")
        return RopeExtension.from_dict(done["extension"])
    t0 = time.time()
    L, N1, N2 = spec.original_max_position_embeddings, ext1.max_position_embeddings, stage.target_length
    scale2 = N2 / N1
    lam1 = np.asarray(ext1.long_factor, dtype=np.float64)
    # the weights adapted to the fine-tuned attention magnitude: keep it unless the recipe says otherwise
    af = stage.attention_factor if stage.attention_factor is not None else attention_factor(ext1)
    start = ext1.start_token  # the model was fine-tuned with this n_hat
    space, config = _space_and_config(stage, scale2, stage.max_factor or 1.25 * scale2, (start,), spec.half)
    lm = load_model(str(ft_dir), recipe.dtype)
    docs = _search_docs(recipe, lm.tokenizer, N2, stage.docs)

    def make(factors: np.ndarray, start_token: int) -> RopeExtension:
        return RopeExtension(method="longrope", long_factor=(lam1 * factors).tolist(),
                             original_max_position_embeddings=L, max_position_embeddings=N2,
                             start_token=int(start_token), attention_factor=af,
                             metadata={"stage1_factor": lam1.tolist(), "stage2_factor": [float(x) for x in factors]})

    # the fine-tuned model's context is N1 now: PI/NTK/YaRN seeds for N1 -> N2
    seeds = peer_seeds(RotarySpec(spec.dim, spec.base, N1), scale2)
    ext = run_search_stage(lm.model, docs, make, space, config, seeds, where,
                           {"stage": "search2", "model": str(ft_dir), "target_length": N2, "docs": len(docs)},
                           stage.chunk_size, title=f"search 2: {N1} -> {N2} (x lambda1)")
    write_stage(where, {"settings": settings, "extension": ext.to_dict(), "seconds": round(time.time() - t0, 1)})
    log(f"search2: {N1} -> {N2} tokens, ppl {ext.metadata['search_perplexity']:.3f} ({time.time() - t0:.0f}s)")
    return ext


def stage_readjust(recipe: Recipe, out: Path, spec, ext1: RopeExtension, ext: RopeExtension,
                   ft_dir: Path) -> RopeExtension:
    """4. short_factor: a search at the native length with a smaller upper bound (paper section 3.3)."""
    from ..model import load_model

    stage, where = recipe.readjust, out / DIRS["readjust"]
    settings = {**asdict(stage), "extension": ext.to_dict(), "dtype": recipe.dtype}
    done = _check_stage(where, settings)
    if done is not None:
        log(f"readjust: complete in {where}, skipped")
        return RopeExtension.from_dict(done["extension"])
    t0 = time.time()
    L = spec.original_max_position_embeddings
    bound = stage.max_factor or 1.25 * ext1.scale  # stage 1's bound: smaller than the final one
    if bound <= 1:
        raise UsageError(f"recipe: readjust.max_factor must exceed 1, got {bound}")
    space, config = _space_and_config(stage, bound, bound, (ext.start_token,), spec.half)
    lm = load_model(str(ft_dir), recipe.dtype)
    docs = _search_docs(recipe, lm.tokenizer, L, stage.docs)

    def make(factors: np.ndarray, start_token: int) -> RopeExtension:
        return ext.with_(short_factor=[float(x) for x in factors])

    # seeds: the original RoPE, the factors the model was fine-tuned with, and the final ones
    seeds = [np.ones(spec.half), np.minimum(ext1.long_factor, bound), np.minimum(ext.long_factor, bound)]
    found = run_search_stage(lm.model, docs, make, space, config, seeds, where,
                             {"stage": "readjust", "model": str(ft_dir), "length": L, "docs": len(docs)},
                             stage.chunk_size, title=f"readjust short_factor at {L}")
    found = found.with_(metadata={k: v for k, v in ext.metadata.items()}
                        | {"short_search_perplexity": found.metadata["search_perplexity"]})
    write_stage(where, {"settings": settings, "extension": found.to_dict(), "seconds": round(time.time() - t0, 1)})
    log(f"readjust: short_factor at {L} tokens, ppl {found.metadata['short_search_perplexity']:.3f} "
        f"({time.time() - t0:.0f}s)")
    return found


def stage_final(out: Path, ext: RopeExtension, ft_dir: Path) -> Path:
    """The final HF model directory: the fine-tuned weights with the final factors in its config
    (and in our factors file, which keeps n_hat)."""
    from ..export.hf import export_hf
    from ..model import FACTORS_FILE

    where = out / DIRS["final"]
    done = read_stage(where)
    if done is not None and done["settings"] == {"extension": ext.to_dict()}:
        log(f"final: complete in {where}, skipped")
        return where
    staging = out / f".final-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = export_hf(str(ft_dir), ext, staging, drop_start_token=True)
        for stale in ("finetune.json", "loss.png"):
            (staging / stale).unlink(missing_ok=True)
        ext.save(staging / FACTORS_FILE)
        write_stage(staging, {"settings": {"extension": ext.to_dict()}, "notes": result.notes,
                              "fine_tuned": str(ft_dir)})
        if where.exists():
            shutil.rmtree(where)
        os.replace(staging, where)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"final: wrote {where}")
    return where


# -- the report ----------------------------------------------------------------------------------------------
def _lengths(recipe: Recipe, native: int) -> list[int]:
    if recipe.evaluate.lengths:
        return sorted(set(recipe.evaluate.lengths))
    out, n = [], native
    while n <= recipe.final_target:
        out.append(n)
        n *= 2
    return out


def variant_identity(model: str, ext: RopeExtension | None, out: Path) -> dict[str, Any]:
    """What a variant's figures depend on: its model (relative to `out` when inside it), the
    extension installed, and for our model directories their factors file and training record.
    A rerun, or a recipe changing only later stages, reuses the cells of unchanged variants."""
    import json

    from ..model import FACTORS_FILE

    p = Path(model)
    inside = p.is_dir() and p.resolve().is_relative_to(out.resolve())
    ident: dict[str, Any] = {"model": str(p.resolve().relative_to(out.resolve())) if inside else model,
                             "extension": None if ext is None else ext.to_dict()}
    if (p / FACTORS_FILE).is_file():
        ident["factors_file"] = json.loads((p / FACTORS_FILE).read_text())
    if (p / "finetune.json").is_file():
        ident["finetune_losses"] = json.loads((p / "finetune.json").read_text())["losses"]
    return ident


def stage_evaluate(recipe: Recipe, out: Path, spec, variants: list[tuple[str, str, RopeExtension | None, int]],
                   ) -> dict[str, Any]:
    """Perplexity (held-out documents, truncated, one pass) and passkey accuracy at each length.

    variants: (label, model directory or preset, extension to install or None for the model's
    own, the longest length to evaluate). Cells already in report.json are reused.
    """
    import json

    from tqdm import tqdm

    from ..data import documents_of_length, load_corpus, select_split, tokenize_corpus
    from ..evaluate.passkey import run_trials
    from ..evaluate.ppl import document_nll, perplexity
    from ..model import install_rope, load_model

    ev, where = recipe.evaluate, out / DIRS["evaluate"]
    where.mkdir(parents=True, exist_ok=True)
    L = spec.original_max_position_embeddings
    lengths = _lengths(recipe, L)
    settings = {**{k: v for k, v in asdict(ev).items() if k != "baselines"}, "lengths": lengths,
                "corpus": recipe.corpus, "split_seed": recipe.split_seed, "dtype": recipe.dtype}

    ids = {label: variant_identity(model, ext, out) for label, model, ext, _ in variants}
    path = where / "report.json"
    cells: dict[tuple, dict] = {}
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("settings") == settings:
            cells = {(c["variant"], c["kind"], c["length"]): c for c in previous["cells"]
                     if c.get("identity") == ids.get(c["variant"])}

    def save(extra: dict | None = None) -> dict:
        report = {"settings": settings, "cells": list(cells.values()), **(extra or {})}
        atomic_write_json(path, report)
        return report

    todo = sum(1 for v in variants for n in lengths if n <= v[3] for kind in ("ppl", "passkey")
               if (v[0], kind, n) not in cells and (kind == "ppl" or ev.passkey_trials > 0))
    bar = tqdm(total=todo, desc="report", unit="cell", dynamic_ncols=True)
    docs = None
    for label, model, ext, max_len in variants:
        wanted = [n for n in lengths if n <= max_len]
        if all((label, k, n) in cells for n in wanted for k in ("ppl", "passkey")
               if k == "ppl" or ev.passkey_trials > 0):
            continue
        lm = load_model(model, recipe.dtype)
        if ext is not None:
            install_rope(lm.model, ext)
        if docs is None:  # the same held-out documents for every variant
            tokens = tokenize_corpus(lm.tokenizer, select_split(load_corpus(recipe.corpus), ev.split,
                                                                recipe.split_seed))
            docs = documents_of_length(tokens, max(lengths), ev.docs)
            if len(docs) < ev.docs:
                log(f"note: only {len(docs)} {ev.split} documents reach {max(lengths)} tokens")
        for n in wanted:
            if (label, "ppl", n) not in cells:
                t0 = time.time()
                nlls = []
                for doc in docs:
                    nll, count = document_nll(lm.model, doc[:n], ev.chunk_size)
                    nlls.append(nll / count)
                cells[(label, "ppl", n)] = {"variant": label, "identity": ids[label], "kind": "ppl", "length": n,
                                            "value": perplexity(nlls),
                                            "doc_nlls": nlls, "seconds": round(time.time() - t0, 1)}
                save()
                bar.update(1)
                bar.set_postfix(variant=label, length=n)
            if ev.passkey_trials > 0 and (label, "passkey", n) not in cells:
                t0 = time.time()
                rng = random.Random(f"{ev.split}:{n}")  # the same keys and depths for every variant
                try:
                    trials = run_trials(lm.model, lm.tokenizer, n, ev.passkey_trials, rng)
                except ValueError:  # the prompt does not fit this length
                    trials = []
                acc = sum(t.correct for t in trials) / len(trials) if trials else None
                cells[(label, "passkey", n)] = {"variant": label, "identity": ids[label], "kind": "passkey",
                                                "length": n, "value": acc,
                                                "trials": [asdict(t) for t in trials],
                                                "seconds": round(time.time() - t0, 1)}
                save()
                bar.update(1)
                bar.set_postfix(variant=label, length=n)
        del lm
    bar.close()
    summary = summarize(cells, lengths, L, recipe.final_target)
    report = save({"lengths": lengths, "native": L, "final_target": recipe.final_target, "summary": summary,
                   "documents": len(docs) if docs is not None else None})
    plot_report(cells, lengths, L, where / "report.png", title=f"{recipe.model}: {L} -> {recipe.final_target} tokens")
    write_table(cells, lengths, where / "report.md")
    return report


def _value(cells, label, kind, n):
    c = cells.get((label, kind, n))
    return None if c is None else c["value"]


def summarize(cells: dict, lengths: list[int], native: int, final_target: int) -> dict[str, Any]:
    """The issue's claims as numbers: ppl up to the final length, passkey >= 90%, short ppl within 2%."""
    upto = [n for n in lengths if n <= final_target]
    original_native = _value(cells, "original", "ppl", native)
    final_ppl = {n: _value(cells, "final", "ppl", n) for n in upto}
    passkey = {n: _value(cells, "final", "passkey", n) for n in upto}
    after = _value(cells, "final", "ppl", native)
    before = _value(cells, "final-no-readjust", "ppl", native)
    out: dict[str, Any] = {
        "final_ppl": final_ppl,
        "final_max_ppl_over_original_native": (max(v for v in final_ppl.values() if v is not None) / original_native
                                               if original_native and any(final_ppl.values()) else None),
        "final_passkey": passkey,
        "passkey_at_least_90_up_to_final": all(v is not None and v >= 0.9 for v in passkey.values()) if passkey else None,
        "short_ppl_original": original_native,
        "short_ppl_before_readjust": before,
        "short_ppl_after_readjust": after,
    }
    if original_native and after:
        out["short_ppl_after_vs_original"] = after / original_native - 1
        out["short_within_2_percent"] = abs(after / original_native - 1) <= 0.02
    return out


def write_table(cells: dict, lengths: list[int], path: Path) -> None:
    """report.md: the ppl and passkey tables, variants x lengths."""
    from ..io import atomic_write_text

    labels = list(dict.fromkeys(k[0] for k in cells))
    lines = []
    for kind, fmt in (("ppl", "{:.2f}"), ("passkey", "{:.0%}")):
        lines += [f"### {'perplexity' if kind == 'ppl' else 'passkey accuracy'}", "",
                  "| variant | " + " | ".join(str(n) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for label in labels:
            vals = [_value(cells, label, kind, n) for n in lengths]
            lines.append(f"| {label} | " + " | ".join("-" if v is None else fmt.format(v) for v in vals) + " |")
        lines.append("")
    atomic_write_text(path, "\n".join(lines))


def plot_report(cells: dict, lengths: list[int], native: int, path: Path, title: str = "") -> None:
    """report.png: perplexity (left) and passkey accuracy (right) against length, one line per variant."""
    from ..io import atomic_savefig
    from ..plots import pyplot

    plt = pyplot()
    labels = list(dict.fromkeys(k[0] for k in cells))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in labels:
        for ax, kind in ((a, "ppl"), (b, "passkey")):
            pts = [(n, _value(cells, label, kind, n)) for n in lengths]
            pts = [(n, v) for n, v in pts if v is not None and math.isfinite(v)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    for ax in (a, b):
        ax.axvline(native, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    a.set_yscale("log")
    a.set_ylabel("perplexity (held-out)")
    b.set_ylabel("passkey accuracy")
    b.set_ylim(-0.05, 1.05)
    a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


# -- the whole recipe ------------------------------------------------------------------------------------------
def run_recipe(recipe: Recipe, out: str | os.PathLike) -> dict[str, Any]:
    """Run every stage of `recipe` into `out`, skipping the complete ones. Returns the summary."""
    from ..methods import build_extension

    out = Path(out)
    spec = model_spec(recipe.model)
    check_recipe_against_model(recipe, spec)
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
    if recipe.search2 is not None:
        ext = stage_search2(recipe, out, spec, ext1, ft_dir)
        timings["search2"] = time.time() - t
        t = time.time()
    if recipe.finetune.mixed_context > 0:  # LongRoPE2: short sequences keep the original RoPE
        ext = ext.with_(short_factor=[1.0] * spec.half)
    no_readjust = ext
    if recipe.readjust is not None:
        ext = stage_readjust(recipe, out, spec, ext1, ext, ft_dir)
        timings["readjust"] = time.time() - t
        t = time.time()
    final_dir = stage_final(out, ext, ft_dir)
    summary: dict[str, Any] = {"final": str(final_dir), "extension": ext.to_dict()}

    if recipe.evaluate is not None:
        L = spec.original_max_position_embeddings
        longest = max(_lengths(recipe, L))
        variants = [("original", recipe.model, None, longest), ("stage1", str(ft_dir), None, longest),
                    ("final", str(final_dir), None, longest)]
        if recipe.readjust is not None:
            variants.append(("final-no-readjust", str(final_dir), no_readjust, L))
        for name in recipe.evaluate.baselines:  # same budget, same length, set for the final target
            base_ext = build_extension(name, spec, recipe.final_target)
            where = out / DIRS["baselines"] / name
            stage_finetune(recipe, base_ext, where, f"baseline {name}")
            variants.append((f"{name}-ft", str(where), None, longest))
        timings["baselines"] = time.time() - t
        t = time.time()
        report = stage_evaluate(recipe, out, spec, variants)
        timings["evaluate"] = time.time() - t
        summary["report"] = report["summary"]
    summary["seconds_this_run"] = {k: round(v, 1) for k, v in timings.items()}
    atomic_write_json(out / "summary.json", summary)
    return summary
