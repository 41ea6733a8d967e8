"""The searches of a progressive recipe, as thin wrappers around `longrope.search`.

The evolutionary search (`run_search`) takes its objective as an argument; each stage only
decides what a candidate vector means, through a `make(factors, start_token) -> RopeExtension`:

- stage 1 (`search`): the candidate is the long factor itself (LongRoPE Algorithm 1);
- stage 2 (`search2`): the candidate lambda2 multiplies the stage-1 factor the model was
  fine-tuned with, long_factor = lambda1 * lambda2 element-wise (paper section 3.3: "the
  final factor is the product of the two stages"), start token kept from stage 1;
- readjustment: the candidate is `short_factor` of the final extension, scored on
  documents of the native length, where the runtime uses it (section 3.3, Table 10).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..factors import RopeExtension
from ..io import atomic_write_json

MakeExtension = Callable[[np.ndarray, int], RopeExtension]
STAGE_FILE = "stage.json"  # written last in a stage folder: the stage is complete


class ExtensionObjective:
    """objective(factors [d/2], start_token) -> yields the mean token NLL of each document.

    docs: K token tensors [T]; `make` turns a candidate into the extension to install.
    Fitness = exp(mean over documents of these values) (REFERENCE 2).
    """

    def __init__(self, model: nn.Module, docs: Sequence[torch.Tensor], make: MakeExtension, chunk_size: int = 1024):
        from ..model import install_rope

        self.model, self.docs, self.make, self.chunk_size = model, list(docs), make, chunk_size
        self.rope = install_rope(model, None)  # the one seam; candidates only swap the factors

    def __call__(self, factors: np.ndarray, start_token: int) -> Iterator[float]:
        from ..evaluate.ppl import document_nll

        self.rope.set_extension(self.make(factors, start_token))
        for ids in self.docs:
            nll, count = document_nll(self.model, ids[None], self.chunk_size)
            yield nll / count


def run_search_stage(
    model: nn.Module,
    docs: Sequence[torch.Tensor],
    make: MakeExtension,
    space,
    config,
    seeds: Sequence[np.ndarray],
    out: Path,
    describe: dict[str, Any],
    chunk_size: int = 1024,
    progress: bool = True,
    title: str = "",
) -> RopeExtension:
    """Run (or resume from out/state.json) one search; write state, history, factors.json and
    search.png to `out`; return the best candidate's extension."""
    from tqdm import tqdm

    from ..search.evolution import STATE_FILE, SearchState, run_search, write_history
    from ..search.plots import plot_progress

    out.mkdir(parents=True, exist_ok=True)
    objective = ExtensionObjective(model, docs, make, chunk_size)
    state = SearchState.load(out) if (out / STATE_FILE).is_file() else None
    bar = tqdm(total=config.iterations + 1, desc=title or "search", unit="gen", disable=not progress,
               initial=0 if state is None else state.generation + 1, dynamic_ncols=True)

    def on_generation(st: SearchState) -> None:
        write_history(out, st, space)
        st.save(out)  # last: state.json records a completed generation
        bar.set_postfix(best_ppl=f"{st.best.evaluation.perplexity:.3f}", scored=len(st.history))
        bar.update(st.generation + 1 - bar.n)

    state = run_search(space, config, objective, len(docs), seeds, state=state, describe=describe,
                       on_generation=on_generation)
    bar.close()
    best = state.best
    ext = make(space.factors(best.genome), best.genome.start_token)
    ext = ext.with_(metadata={**ext.metadata, **describe, "search_perplexity": best.evaluation.perplexity,
                              "generations": state.generation, "candidates": len(state.history)})
    ext.save(out / "factors.json")
    plot_progress(state, out / "search.png", title=title)
    objective.rope.set_extension(None)
    return ext


def write_stage(out: Path, record: dict[str, Any]) -> None:
    atomic_write_json(out / STAGE_FILE, record)


def read_stage(out: Path) -> dict[str, Any] | None:
    import json

    path = out / STAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
