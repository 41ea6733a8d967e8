"""Figures of a search: perplexity per generation, and the found factor curve vs its peers."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..plots import label_axes, plain_log_axis, pyplot, save_and_close


def plot_progress(curve: list[tuple[int, float, float]], path: str | Path, title: str = "") -> Path:
    """Best and median perplexity of the population after each generation.
    curve: (generation, best, median) rows (`state.population_curve`)."""
    plt = pyplot()
    gens, best, median = [c[0] for c in curve], [c[1] for c in curve], [c[2] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gens, best, marker="o", ms=3, label="best")
    ax.plot(gens, median, marker=".", ms=3, alpha=0.7, label="median of the population")
    if max(median) > 3 * min(best):  # log scale only when the range is wide
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    else:  # candidates near convergence differ in the 4th digit: print it, not "+1.023e2" offsets
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # generations are whole numbers
    label_axes(ax, "generation", "perplexity", title or "LongRoPE evolutionary search")
    return save_and_close(fig, path)


def plot_factors(curves: dict[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Rescale factor lambda_i against pair index i, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, lam in curves.items():
        ax.plot(range(len(lam)), lam, lw=2.2 if name == "searched" else 1.2, label=name)
    label_axes(ax, "pair index i (higher = lower frequency)", "rescale factor lambda_i", title or "rescale factors")
    return save_and_close(fig, path)
