"""The recipe's report: held-out perplexity and passkey accuracy of every stage and baseline
at each length (the evaluation runner), as report.json, report.md and report.png."""
from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data import documents_of_length, load_corpus, select_split, tokenize_corpus
from ..evaluate.passkey import wilson_interval
from ..evaluate.frontend import Store
from ..evaluate.runner import Variant, passkey_figures, ppl_figures, run_cells
from ..factors import FACTORS_FILE, RopeExtension
from ..atomic import atomic_write_json, atomic_write_text
from ..readback import read_json_or_none
from ..plots import band_label, length_axis, plain_log_axis, pyplot, save_and_close, wrap_title
from ..rope import RotarySpec
from ..settings import default_lengths
from .config import Recipe


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# evaluate keys added after reports were first written: in the settings only when not these
ADDED = {"corpus": None, "peers": [], "passkey_long_trials": None, "passkey_long_length": None}
PARTIAL_FILE = "passkey-in-progress.json"


def report_settings(recipe: Recipe, ev) -> dict[str, Any]:
    """What the report's cells depend on besides their variant (with the lengths and native
    context): its evaluate keys less the baselines (a variant's identity), the corpus, split
    seed and dtype. Keys added later are left out at their defaults, so reports of earlier
    runs are reused."""
    keys = {k: v for k, v in asdict(ev).items() if k != "baselines" and (k not in ADDED or ADDED[k] != v)}
    return {**keys, "corpus": ev.corpus or recipe.corpus, "split_seed": recipe.split_seed, "dtype": recipe.dtype}


def trials_at(ev, n: int) -> int:
    """Passkey trials at length n (passkey_long_trials from passkey_long_length on)."""
    if ev.passkey_long_length is not None and n >= ev.passkey_long_length:
        return ev.passkey_long_trials
    return ev.passkey_trials


class Partial:
    """The finished trials of the passkey cells in progress, kept in a file as they come (a cell
    at a long length takes hours), for the same report settings only."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path, self.settings = path, settings
        saved = read_json_or_none(path)
        ok = isinstance(saved, dict) and saved.get("settings") == settings and isinstance(saved.get("cells"), list)
        self.cells = {json.dumps(c["key"]): c["trials"] for c in saved["cells"]} if ok else {}

    def get(self, key) -> list[dict]:
        return self.cells.get(json.dumps(list(key)), [])

    def put(self, key, trials: list[dict]) -> None:
        self.cells[json.dumps(list(key))] = trials
        atomic_write_json(self.path, {"settings": self.settings,
                                      "cells": [{"key": json.loads(k), "trials": t} for k, t in self.cells.items()]})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# -- the cells ----------------------------------------------------------------------------------------------
def report_lengths(recipe: Recipe, native: int) -> list[int]:
    """evaluate.lengths, or 1x, 2x, 4x, ... the native context up to the final target."""
    if recipe.evaluate.lengths:
        return sorted(set(recipe.evaluate.lengths))
    return default_lengths(native, up_to=recipe.final_target)


def variant_identity(model: str, ext: RopeExtension | None, out: Path) -> dict[str, Any]:
    """What a variant's figures depend on: its model (relative to `out` when inside it), the
    extension installed, and for our model directories their factors file and training record.
    A rerun, or a recipe changing only later stages, reuses the cells of unchanged variants."""
    p = Path(model)
    inside = p.is_dir() and p.resolve().is_relative_to(out.resolve())
    ident: dict[str, Any] = {"model": str(p.resolve().relative_to(out.resolve())) if inside else model,
                             "extension": None if ext is None else ext.to_dict()}
    if (p / FACTORS_FILE).is_file():
        ident["factors_file"] = json.loads((p / FACTORS_FILE).read_text())
    if (p / "finetune.json").is_file():
        ident["finetune_losses"] = json.loads((p / "finetune.json").read_text())["losses"]
    return ident


def stage_evaluate(recipe: Recipe, where: Path, spec: RotarySpec, variants: list[Variant]) -> dict[str, Any]:
    """Perplexity (held-out documents, truncated, one pass) and passkey accuracy at each length,
    into `where`/report.json, report.md and report.png. Each variant is a model directory or
    preset (its own RoPE, or `extension` installed) evaluated up to its `max_length`. Cells
    already in report.json, for the same settings and variant identity, are reused."""
    ev = recipe.evaluate
    where.mkdir(parents=True, exist_ok=True)
    L = spec.original_max_position_embeddings
    lengths = report_lengths(recipe, L)
    settings = {**report_settings(recipe, ev), "lengths": lengths, "by_position": L}
    ids = {v.label: variant_identity(v.model, v.extension, where.parent) for v in variants}
    path = where / "report.json"
    previous = read_json_or_none(path)
    extra: dict = {}  # what the finished report adds to its cells
    store = Store(path, settings, layout=lambda cells: {"settings": settings, "cells": list(cells.values()), **extra},
                  cells_of=lambda content: content.get("cells", []), key_of=lambda content: content.get("settings"))
    done = store.reusable(variants, cell_key=lambda c: (c["variant"], c["kind"], c["length"]),
                          identity=lambda v: ids[v.label], recorded="identity")
    docs: list = []  # the same held-out documents for every variant, tokenized on first use

    def ppl(lm, variant, n, progress):
        if not docs:
            corpus = load_corpus(settings["corpus"], recipe.split_seed)
            tokens = tokenize_corpus(lm.tokenizer, select_split(corpus, ev.split, recipe.split_seed, "evaluate.split:"))
            docs.extend(documents_of_length(tokens, max(lengths), ev.docs))
            if len(docs) < ev.docs:
                log(f"note: only {len(docs)} {ev.split} documents reach {max(lengths)} tokens")
        f = ppl_figures(lm.model, docs, n, ev.chunk_size, native=L, progress=progress)
        return {"variant": variant.label, "identity": ids[variant.label], "kind": "ppl", "length": n,
                "value": f["ppl"], "doc_nlls": f["doc_nlls"], "bands": f["bands"], "seconds": round(f["seconds"], 1)}

    partial = Partial(where / PARTIAL_FILE, settings)  # the trials of a cell in progress: a kill loses one

    def passkey(lm, variant, n, progress):
        rng = random.Random(f"{ev.split}:{n}")  # the same keys and depths for every variant
        key = (variant.label, n, ids[variant.label])
        try:
            f = passkey_figures(lm, n, trials_at(ev, n), rng, progress, done=partial.get(key),
                                on_trial=lambda trials: partial.put(key, trials))
        except ValueError:  # the prompt does not fit this length
            f = {"accuracy": None, "trials": [], "seconds": 0.0}
        return {"variant": variant.label, "identity": ids[variant.label], "kind": "passkey", "length": n,
                "value": f["accuracy"], "trials": f["trials"], "seconds": round(f["seconds"], 1)}

    evaluators = {"ppl": ppl, **({"passkey": passkey} if ev.passkey_trials > 0 else {})}
    cells = run_cells(variants, lengths, evaluators, done=done, on_cell=store.save, dtype=recipe.dtype, desc="report",
                      by_length=True)
    partial.clear()
    summary = summarize(cells, lengths, L, recipe.final_target)
    n_docs = len(docs) if docs else (previous or {}).get("documents")  # every cell reused: as recorded
    extra.update(lengths=lengths, native=L, final_target=recipe.final_target, summary=summary, documents=n_docs)
    report = store.save(cells)
    trials = (f"{ev.passkey_trials}" if ev.passkey_long_length is None else
              f"{ev.passkey_trials} (from {ev.passkey_long_length} tokens {ev.passkey_long_trials})")
    plot_report(cells, lengths, L, where / "report.png",
                title=f"{recipe.model}: {L} -> {recipe.final_target} tokens; perplexity of {n_docs} {ev.split} "
                      f"document(s), passkey {trials} trial(s) per length")
    write_table(cells, lengths, where / "report.md", max(n for n in lengths if n <= recipe.final_target))
    return report


def _value(cells, label, kind, n):
    c = cells.get((label, kind, n))
    return None if c is None else c["value"]


def _bands(cells, label, n) -> dict[str, float]:
    """{"lo-hi": ppl} of the tokens in each band of positions of one ppl cell (empty if none)."""
    c = cells.get((label, "ppl", n))
    return {band_label(b["start"], b["end"]): b["ppl"] for b in (c or {}).get("bands", [])}


def _interval(cells, label, n) -> tuple[float, float] | None:
    """The 95% Wilson interval of one passkey cell (None: no such cell)."""
    c = cells.get((label, "passkey", n))
    if c is None or not c.get("trials"):
        return None
    return wilson_interval(sum(bool(t["correct"]) for t in c["trials"]), len(c["trials"]))


def summarize(cells: dict, lengths: list[int], native: int, final_target: int) -> dict[str, Any]:
    """The recipe's claims as numbers: passkey >= 90% at every length (with 95% Wilson intervals),
    perplexity of the last band of positions against the original's in its own window (1.1x for
    a fine-tuned target, 1.25x past it), short ppl at most 1% above the original's; with a third
    step, the searched factors against each peer applied instead on the last band and at the target."""
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
        "final_passkey_95": {n: _interval(cells, "final", n) for n in upto},
        "passkey_at_least_90_up_to_final": all(v is not None and v >= 0.9 for v in passkey.values()) if passkey else None,
        "short_ppl_original": original_native,
        "short_ppl_before_readjust": before,
        "short_ppl_after_readjust": after,
    }
    longest = max(upto) if upto else None
    final_bands, original_bands = _bands(cells, "final", longest), _bands(cells, "original", native)
    if final_bands and original_bands:
        last, first = list(final_bands.values())[-1], list(original_bands.values())[0]
        out["final_ppl_by_position"] = final_bands
        out["final_last_band_over_original_native"] = last / first
        out["last_band_within_1_1x"] = last / first <= 1.1
        out["last_band_within_1_25x"] = last / first <= 1.25
    if original_native and after:
        out["short_ppl_after_vs_original"] = after / original_native - 1
        out["short_at_most_1_percent_worse"] = after / original_native - 1 <= 0.01  # lower is no regression
    if ("stage2", "ppl", longest) in cells:
        out["last_step"] = _last_step(cells, longest)
    return out


def _last_step(cells: dict, target: int) -> dict[str, Any]:
    """search3 against what the last step could have been instead (stage2: nothing; stage2+NAME: a
    peer's factors): perplexity of the last band of positions and passkey at the target."""
    labels = [k[0] for k in cells if k[1] == "ppl" and k[2] == target and k[0].startswith("stage2")]
    band = {label: list(_bands(cells, label, target).values())[-1] for label in ["final", *labels]
            if _bands(cells, label, target)}
    acc = {label: _value(cells, label, "passkey", target) for label in ["final", *labels]}
    peers = {label: v for label, v in band.items() if label != "final"}
    out: dict[str, Any] = {"last_band_ppl": band, "passkey_at_target": acc,
                           "passkey_at_target_95": {label: _interval(cells, label, target) for label in acc}}
    if peers and "final" in band:
        best = min(peers, key=peers.get)
        out["best_peer_last_band"] = best
        out["final_vs_best_peer_last_band"] = band["final"] / peers[best] - 1
        out["beats_best_peer_by_10_percent"] = band["final"] <= 0.9 * peers[best]
        known = [v for label, v in acc.items() if label != "final" and v is not None]
        if known and acc.get("final") is not None:
            out["passkey_at_least_best_peer"] = acc["final"] >= max(known)
    return out


def write_table(cells: dict, lengths: list[int], path: Path, band_length: int | None = None) -> None:
    """report.md: the ppl and passkey tables, variants x lengths, and the perplexity of each
    band of positions at `band_length`, variants x bands."""
    labels = list(dict.fromkeys(k[0] for k in cells))
    lines = []
    for kind in ("ppl", "passkey"):
        lines += [f"### {'perplexity' if kind == 'ppl' else 'passkey accuracy (95% Wilson interval, trials)'}", "",
                  "| variant | " + " | ".join(str(n) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(_shown(cells, label, kind, n) for n in lengths) + " |")
        lines.append("")
    bands = {label: _bands(cells, label, band_length) for label in labels}
    names = max(bands.values(), key=len, default={})
    if names:
        lines += [f"### perplexity by position at {band_length} tokens", "",
                  "| variant | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(f"{bands[label][b]:.2f}" if b in bands[label] else "-"
                                                     for b in names) + " |")
        lines.append("")
    atomic_write_text(path, "\n".join(lines))


def _shown(cells: dict, label: str, kind: str, n: int) -> str:
    """One table cell: a perplexity, or an accuracy with its interval and trial count."""
    v = _value(cells, label, kind, n)
    if v is None:
        return "-"
    if kind == "ppl":
        return f"{v:.2f}"
    lo, hi = _interval(cells, label, n)
    return f"{v:.0%} ({lo:.0%}-{hi:.0%}, {len(cells[label, kind, n]['trials'])})"


def plot_report(cells: dict, lengths: list[int], native: int, path: Path, title: str = "") -> None:
    """report.png: perplexity against length, passkey accuracy against length (95% Wilson
    intervals as bars), and perplexity by band of positions at the longest length, one line per
    variant (the native window dotted)."""
    plt = pyplot()
    labels = list(dict.fromkeys(k[0] for k in cells))
    longest = max(lengths)
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, label in enumerate(labels):
        color = f"C{i % 10}"
        pts = [(n, _value(cells, label, "ppl", n)) for n in lengths]
        pts = [(n, v) for n, v in pts if v is not None and math.isfinite(v)]
        if pts:
            a.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=label)
        acc = [(n, _value(cells, label, "passkey", n), _interval(cells, label, n)) for n in lengths]
        acc = [(n, v, ci) for n, v, ci in acc if v is not None and ci is not None]
        if acc:
            b.errorbar([n for n, _, _ in acc], [v for _, v, _ in acc], capsize=3, marker="o", color=color, label=label,
                       yerr=[[v - ci[0] for _, v, ci in acc], [ci[1] - v for _, v, ci in acc]])
        bands = (cells.get((label, "ppl", longest)) or {}).get("bands") or []
        if bands:
            c.plot([bd["start"] for bd in bands], [bd["ppl"] for bd in bands], marker="o", color=color, label=label)
    for ax in (a, b):
        length_axis(ax, lengths)
        ax.set_xlabel("context length (tokens)")
    c.set_xscale("log", base=2)
    c.set_xlabel(f"first position of the band [n, 2n) at {longest} tokens")
    for ax in (a, b, c):
        ax.axvline(native, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, which="both", alpha=0.3)
    for ax in (a, c):
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    a.set_ylabel("perplexity (held-out, log scale)")
    c.set_ylabel("perplexity of the band (log scale)")
    b.set_ylabel("passkey accuracy (95% Wilson interval)")
    b.set_ylim(-0.05, 1.05)
    a.legend(fontsize=8)
    fig.suptitle(wrap_title(title, fig))
    save_and_close(fig, path)


