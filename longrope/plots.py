"""Plots people would rather look at than read. matplotlib loads here only, lazily."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .atomic import atomic_savefig


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def wrap_title(title: str, fig) -> str:
    """`title` broken into lines that fit the figure's width (about 9 characters an inch at the default font)."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 9))
    return "\n".join(textwrap.fill(line, width) for line in title.splitlines())


def label_axes(ax, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    """Axis labels, title, a light grid and the legend: the finish every line plot shares."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap_title(title, ax.figure))
    ax.grid(True, which="both", alpha=0.3)
    if legend:  # beside the axes, where it cannot hide a line
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def length_axis(ax, lengths) -> None:
    """A log2 x axis whose ticks are exactly the context lengths evaluated, as plain numbers."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths))
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def save_and_close(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out `fig`, save it atomically and free it."""
    fig.tight_layout()
    out = atomic_savefig(fig, path, dpi=dpi)
    pyplot().close(fig)
    return out


def plot_ppl_vs_length(rows: list[dict], path: str | Path, title: str = "", native: int | None = None) -> Path:
    """One line per method: perplexity (log scale) against context length (log2 scale).
    rows: dicts with keys method, length, ppl."""
    plt = pyplot()
    series = defaultdict(list)
    for r in rows:
        series[r["method"]].append((r["length"], r["ppl"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    if native:
        ax.axvline(native, color="grey", linestyle=":", linewidth=1, label=f"native context ({native})")
    length_axis(ax, [r["length"] for r in rows])
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    label_axes(ax, "context length (tokens)", "perplexity (log scale)", title or "Perplexity vs context length")
    return save_and_close(fig, path)


def plain_log_axis(axis) -> None:
    """Tick labels of a log axis as plain numbers (20, 50, 100), not powers of ten."""
    from matplotlib.ticker import LogLocator, ScalarFormatter

    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)
    lo, hi = axis.get_view_interval()
    # within one decade 2 and 5 alone leave two labels: label more of the minor ticks then
    subs = (2.0, 3.0, 4.0, 6.0, 8.0) if lo > 0 and hi / lo < 10 else (2.0, 5.0)
    axis.set_minor_locator(LogLocator(subs=subs))
    axis.set_minor_formatter(fmt)


def band_label(start: int, end: int) -> str:
    """A band of positions as people read it: "256-511"."""
    return f"{start}-{end - 1}"


def plot_ppl_by_position(rows: list[dict], path: str | Path, title: str = "", native: int | None = None) -> Path:
    """One line per method: perplexity (log scale) of the tokens in each band of positions, the
    end of the native window dotted. rows: dicts with keys method and bands (dicts with start,
    end, ppl), all of one length."""
    plt = pyplot()
    edges = sorted({(b["start"], b["end"]) for r in rows for b in r["bands"]})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        pts = sorted((edges.index((b["start"], b["end"])), b["ppl"]) for b in r["bands"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r["method"])
    ax.set_xticks(range(len(edges)), [band_label(*e) for e in edges])
    past = [i for i, (start, _) in enumerate(edges) if native is not None and start >= native]
    if past:
        ax.axvline(past[0] - 0.5, color="grey", linestyle=":", linewidth=1.2, label=f"end of the native {native}")
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    label_axes(ax, "positions of the scored tokens", "perplexity (log scale)", title or "Perplexity by position")
    return save_and_close(fig, path)


def plot_depth_heatmap(trials: list[dict], path: str | Path, depth_bins: int = 5, title: str = "",
                       ylabel: str = "needle depth") -> Path:
    """Accuracy per (depth bin, length), one panel per method; each cell shows the accuracy
    and its trial count n, cells without a trial say so. trials: dicts with method, length,
    depth (in [0, 1]) and correct. Passkey retrieval and every task of the suite use it."""
    plt = pyplot()
    methods = list(dict.fromkeys(t["method"] for t in trials))
    lengths = sorted({t["length"] for t in trials})
    height = max(3.8, 2.2 + 0.42 * depth_bins)  # room for every depth label
    fig, axes = plt.subplots(1, len(methods), figsize=(2.4 + 1.2 * len(lengths) * len(methods), height),
                             squeeze=False)
    for ax, method in zip(axes[0], methods):
        hits = np.zeros((depth_bins, len(lengths)))
        counts = np.zeros_like(hits)
        for t in trials:
            if t["method"] != method:
                continue
            b = min(int(t["depth"] * depth_bins), depth_bins - 1)
            j = lengths.index(t["length"])
            counts[b, j] += 1
            hits[b, j] += t["correct"]
        acc = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
        im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        for b in range(depth_bins):
            for j in range(len(lengths)):
                label = f"{acc[b, j]:.0%}\nn={int(counts[b, j])}" if counts[b, j] else "no trial"
                ax.text(j, b, label, ha="center", va="center", fontsize=7, color="black" if counts[b, j] else "grey")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
        depths = [f"{b / depth_bins:.2g}-{(b + 1) / depth_bins:.2g}" for b in range(depth_bins)]
        # the depth labels once, on the first panel: on the others they ran into the panel before
        ax.set_yticks(range(depth_bins), depths if ax is axes[0][0] else [], fontsize=8)
        ax.set_xlabel("context length (tokens)")
        per_length = sorted({int(n) for n in counts.sum(axis=0) if n}) or [0]  # as the figure's title counts
        each = str(per_length[0]) if len(per_length) == 1 else f"{per_length[0]}-{per_length[-1]}"
        ax.set_title(f"{method} ({each} trial{'' if per_length[-1] == 1 else 's'} per length)")
    axes[0][0].set_ylabel(ylabel)
    fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
    if title:
        fig.suptitle(wrap_title(title, fig))
    out = atomic_savefig(fig, path, dpi=120, bbox_inches="tight")  # keep the axis labels of a narrow figure
    plt.close(fig)
    return out
