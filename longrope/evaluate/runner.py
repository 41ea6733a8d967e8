"""One evaluation runner for `eval-ppl`, `passkey`, `tasks` and the recipe's report.

A comparison is a grid of cells: variants (a label, an extension, optionally a model of its
own) x context lengths x kinds of figure. Each kind is an `Evaluator`, a function that fills
one cell: `evaluator(loaded_model, variant, length, progress) -> dict`, calling
`progress(done, total)` as its documents or trials finish (a cell at long context can take
minutes; the bar shows them). Perplexity and passkey are two kinds; each task of the
synthetic suite is one more.

    for variant (or, by_length: for kind, for length, for variant):
        model = the shared one (extension installed), or its own (loaded when its first missing cell comes)
        cell = done.get(key) or evaluator(model, variant, length); on_cell(cells)
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from ..defaults import AUTO, CHUNK_SIZE
from ..factors import RopeExtension
from ..models.load import LoadedModel, load_model
from ..seam import install_rope
from . import Progress, no_progress
from .passkey import run_trials
from .ppl import band_mean_nlls, mean_nlls, perplexity, position_bands
from .tasks import TaskPrompt, run_prompt


@dataclass
class Variant:
    """One line of a comparison: a label and the extension to install (None = the model's RoPE).
    model: a model of its own (None: the runner's shared model, whose RoPE is set to `extension`).
    max_length: the longest length to evaluate it at (None: all of them)."""

    label: str
    extension: RopeExtension | None
    model: str | None = None
    max_length: int | None = None


Cell = dict[str, Any]
Key = tuple[str, str, int]  # (variant label, kind, length)
Evaluator = Callable[[LoadedModel, Variant, int, Progress], Cell]


def run_cells(
    variants: Sequence[Variant],
    lengths: Sequence[int],
    evaluators: dict[str, Evaluator],
    shared: LoadedModel | None = None,
    done: dict[Key, Cell] | None = None,
    on_cell: Callable[[dict[Key, Cell]], None] = lambda cells: None,
    dtype: str = AUTO,
    desc: str = "evaluate",
    by_length: bool = False,
) -> dict[Key, Cell]:
    """Fill every (variant, kind, length) cell, reusing those in `done`; `on_cell(cells)` runs
    after each new cell (to save results as they come). Returns the cells in grid order.
    by_length: compute kind by kind, shortest length first, each length for every variant (a
    long grid stopped halfway then holds whole columns); otherwise variant by variant."""
    done = done or {}
    grid = [(v.label, kind, n) for v in variants for n in lengths if v.max_length is None or n <= v.max_length
            for kind in evaluators]
    order = list(grid)
    if by_length:
        rank = {label: i for i, label in enumerate(v.label for v in variants)}
        kinds = list(evaluators)
        order.sort(key=lambda k: (kinds.index(k[1]), k[2], rank[k[0]]))
    variant = {v.label: v for v in variants}
    bar = tqdm(total=sum(k not in done for k in grid), desc=desc, unit="cell", dynamic_ncols=True)
    cells: dict[Key, Cell] = {k: done[k] for k in grid if k in done}
    current: tuple[str | None, LoadedModel | None] = (None, None)
    for key in order:
        if key in cells:
            continue
        v = variant[key[0]]
        if current[0] != v.label:  # the variant's model, with its extension installed
            current = (None, None)  # free the previous one first
            lm = shared if v.model is None else load_model(v.model, dtype)
            if v.model is None or v.extension is not None:
                install_rope(lm.model, v.extension)
            current = (v.label, lm)
        # the cell in progress (one may take minutes); its kind (the task) when there are several
        where = {"variant": v.label, **({"task": key[1]} if len(evaluators) > 1 else {}), "length": key[2]}
        bar.set_postfix(where)

        def progress(done: int, total: int, where=where) -> None:  # its documents or trials
            bar.set_postfix({**where, "done": f"{done}/{total}"})

        cells[key] = evaluators[key[1]](current[1], v, key[2], progress)
        on_cell({k: cells[k] for k in grid if k in cells})
        bar.update(1)
    bar.close()
    return {k: cells[k] for k in grid}


def ppl_figures(model: torch.nn.Module, docs: Sequence[torch.Tensor], length: int, chunk_size: int = CHUNK_SIZE,
                stride: int | None = None, native: int | None = None,
                progress: Progress = no_progress) -> dict[str, Any]:
    """Perplexity of documents at one length: ppl, mean NLL, each document's NLL, tokens, seconds.

    native: also the perplexity of the tokens in each band of positions [0, L), [L, 2L),
    [2L, 4L), ... of the native length L, from the same pass ("bands": start, end, tokens,
    ppl, mean_nll); one-pass mode only. An average over the whole prefix hides where a
    method fails: the first tokens of a document are the hardest to predict.
    """
    t0 = time.perf_counter()
    if native is None:
        nlls, tokens = mean_nlls(model, docs, length, chunk_size, stride, progress=progress)
        return {"ppl": perplexity(nlls), "mean_nll": sum(nlls) / len(nlls), "doc_nlls": nlls, "tokens": tokens,
                "seconds": time.perf_counter() - t0}
    assert stride is None, "bands of positions need one pass per document"
    edges = position_bands(length, native)
    per_doc, counts = band_mean_nlls(model, docs, length, edges, chunk_size, progress=progress)  # [doc][band], [band]
    nlls = [sum(m * n for m, n in zip(row, counts)) / sum(counts) for row in per_doc]
    bands = []
    for j, (lo, hi) in enumerate(zip(edges, edges[1:])):
        band = [row[j] for row in per_doc]
        bands.append({"start": lo, "end": hi, "tokens": counts[j] * len(docs), "ppl": perplexity(band),
                      "mean_nll": sum(band) / len(band)})
    return {"ppl": perplexity(nlls), "mean_nll": sum(nlls) / len(nlls), "doc_nlls": nlls,
            "tokens": sum(counts) * len(docs), "bands": bands, "seconds": time.perf_counter() - t0}


def passkey_figures(lm: LoadedModel, length: int, trials: int, rng: random.Random,
                    progress: Progress = no_progress, done: Sequence[dict] = (),
                    on_trial: Callable[[list[dict]], None] = lambda trials: None) -> dict[str, Any]:
    """Passkey accuracy of `trials` trials at one length, and the trials themselves (dicts).
    `done`: the first trials, already run (a cell resumed); `on_trial(trials so far)` after each.
    ValueError when no prompt fits `length`."""
    t0 = time.perf_counter()
    results = [dict(t) for t in done]
    for trial in run_trials(lm.model, lm.tokenizer, length, trials, rng, progress=progress, skip=len(results)):
        results.append(asdict(trial))
        on_trial(results)
    return {"accuracy": sum(r["correct"] for r in results) / len(results), "trials": results,
            "seconds": time.perf_counter() - t0}


def task_figures(lm: LoadedModel, prompts: Sequence[TaskPrompt], progress: Progress = no_progress) -> dict[str, Any]:
    """Exact-match figures of one task at one length: trial count, correct trials, accuracy,
    mean score, and the trials themselves (dicts, under "results")."""
    t0 = time.perf_counter()
    results = []
    for p in prompts:
        results.append(run_prompt(lm.model, lm.tokenizer, p))
        progress(len(results), len(prompts))
    correct = sum(r.correct for r in results)
    return {"trials": len(results), "correct": correct, "accuracy": correct / len(results),
            "mean_score": sum(r.score for r in results) / len(results), "results": [asdict(r) for r in results],
            "seconds": time.perf_counter() - t0}
