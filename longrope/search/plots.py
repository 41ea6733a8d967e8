"""Figures of a search: perplexity per generation, and the found factor curve vs its peers."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_savefig
from ..plots import pyplot
from .evolution import SearchState


def plot_progress(state: SearchState, path: str | Path, title: str = "") -> Path:
    """Best and median perplexity of the population after each generation.

    The population of generation g is the top-k of everything scored before g plus the
    candidates of g (Algorithm 1); rejected candidates have no full score and are left out.
    """
    plt = pyplot()
    k = int(state.config.get("parents", 32))
    gens, best, median = [], [], []
    for g in range(state.generation + 1):
        before = sorted(r.evaluation.loss for r in state.history if r.generation < g and not r.evaluation.rejected)
        new = [r.evaluation.loss for r in state.history if r.generation == g and not r.evaluation.rejected]
        population = before[:k] + new
        if not population:
            continue
        gens.append(g)
        best.append(float(np.exp(min(population))))
        median.append(float(np.exp(np.median(population))))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gens, best, marker="o", ms=3, label="best")
    ax.plot(gens, median, marker=".", ms=3, alpha=0.7, label="median of the population")
    if max(median) > 3 * min(best):  # log scale only when the range is wide
        ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("perplexity")
    ax.set_title(title or "LongRoPE evolutionary search")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return out


def plot_factors(curves: dict[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Rescale factor lambda_i against pair index i, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, lam in curves.items():
        ax.plot(range(len(lam)), lam, lw=2.2 if name == "searched" else 1.2, label=name)
    ax.set_xlabel("pair index i (higher = lower frequency)")
    ax.set_ylabel("rescale factor lambda_i")
    ax.set_title(title or "rescale factors")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return out
