"""Does a small model make a testbed for context extension? The four measurements of a tiny-preset
candidate, on the test split (text the tiny preset never trains on), with its native length L:

    longrope pretrain --out runs/cand ...        # a candidate
    longrope search --model runs/cand --target-length 2048 --optimizer cma --docs 5 --out runs/cand-search
    python bench/tiny_bars.py --model runs/cand --factors runs/cand-search/factors.json

(a) uses its context: perplexity of positions [0, L/8) against [L/2, L), method none, at L tokens,
    from the start of each document and from a window in its middle (BOS + tokens L+1 .. 2L-1);
(b) breaks without extension: perplexity of positions [2L, 4L) against [0, L), method none, at 4L;
(c) retrieves: in-window passkey accuracy at L tokens, overall and in each fifth of depth;
(d) leaves room for the method (with --factors, searched for 8L): perplexity of positions
    [4L, 8L) at 8L, the factors against the best of PI, NTK and YaRN, and the same tokens scored
    by the unextended model inside its native window (what the model does with the context it learnt).

Prints one line per measurement and writes the figures as JSON to --out (optional).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from longrope.data import split_documents  # noqa: E402
from longrope.evaluate.passkey import run_trials  # noqa: E402
from longrope.evaluate.ppl import band_mean_nlls, perplexity  # noqa: E402
from longrope.hf_config import load_factors  # noqa: E402
from longrope.atomic import atomic_write_json  # noqa: E402
from longrope.methods import build_extension  # noqa: E402
from longrope.models.load import load_model  # noqa: E402
from longrope.seam import install_rope, rotary_spec_from_config  # noqa: E402
from window_floor import leading_bos, window_floor_nll  # noqa: E402


def band_ppls(model, docs, length: int, edges: list[int]) -> list[float]:
    per_doc, _ = band_mean_nlls(model, docs, length, edges)
    return [perplexity([row[j] for row in per_doc]) for j in range(len(edges) - 1)]


def passkey_by_depth(lm, length: int, trials: int, seed: int) -> dict:
    results = list(run_trials(lm.model, lm.tokenizer, length, trials, random.Random(seed)))
    bins: list[list[bool]] = [[] for _ in range(5)]
    for r in results:
        bins[min(int(r.depth * 5), 4)].append(r.correct)
    return {"accuracy": sum(r.correct for r in results) / len(results), "trials": len(results),
            "by_depth_fifth": [None if not b else sum(b) / len(b) for b in bins],
            "trials_by_depth_fifth": [len(b) for b in bins]}


def room_for_method(lm, docs, L: int, factors: str) -> dict:
    """ppl at [4L, 8L) of 8L-token documents: each of PI/NTK/YaRN (set for 8L) and the factors."""
    spec = rotary_spec_from_config(lm.model.config)
    edges = [0, 4 * L, 8 * L]
    out = {}
    for name in ("pi", "ntk", "yarn"):
        install_rope(lm.model, build_extension(name, spec, 8 * L))
        out[name] = band_ppls(lm.model, docs, 8 * L, edges)[1]
    install_rope(lm.model, load_factors(factors))
    out["searched"] = band_ppls(lm.model, docs, 8 * L, edges)[1]
    install_rope(lm.model, None)
    nll, n = window_floor_nll(lm.model, docs, L, 4 * L, 8 * L, leading_bos(lm.tokenizer, docs))
    out["window_floor"] = math.exp(nll / n)
    best = min(("pi", "ntk", "yarn"), key=out.get)
    out["best_baseline"] = best
    out["gain_over_best"] = 1 - out["searched"] / out[best]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--factors", help="factors searched for 8L (adds measurement d)")
    ap.add_argument("--docs", type=int, default=16, help="test-split documents (default: 16)")
    ap.add_argument("--trials", type=int, default=100, help="passkey trials (default: 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the figures to this JSON file")
    args = ap.parse_args()
    lm = load_model(args.model)
    install_rope(lm.model, None)
    L = lm.model.config.max_position_embeddings
    figures: dict = {"model": args.model, "native": L}
    docs = split_documents(lm.tokenizer, None, "test", 4 * L, args.docs)
    early, late = band_ppls(lm.model, docs, L, [0, L // 8, L // 2, L])[::2]
    # the same from mid-document windows (BOS + tokens L+1 .. 2L-1, as the training rows are cut):
    # the first tokens of a file (licence, docstring) are a different kind of text from the rest
    bos = docs[0][:1]
    windows = [torch.cat([bos, d[L + 1 : 2 * L]]) for d in docs]
    mid_early, mid_late = band_ppls(lm.model, windows, L, [0, L // 8, L // 2, L])[::2]
    figures["a"] = {"ppl_first_eighth": early, "ppl_second_half": late, "ratio": late / early,
                    "mid_document": {"ppl_first_eighth": mid_early, "ppl_second_half": mid_late,
                                     "ratio": mid_late / mid_early}}
    print(f"(a) none at {L}: ppl [0,{L // 8}) {early:.2f}, [{L // 2},{L}) {late:.2f}, ratio {late / early:.2f}; "
          f"mid-document windows {mid_early:.2f}, {mid_late:.2f}, ratio {mid_late / mid_early:.2f}")
    bands = band_ppls(lm.model, docs, 4 * L, [0, L, 2 * L, 4 * L])
    figures["b"] = {"ppl_bands": bands, "ratio": bands[2] / bands[0], "docs": len(docs)}
    print(f"(b) none at {4 * L}: ppl [0,L) {bands[0]:.2f}, [L,2L) {bands[1]:.2f}, [2L,4L) {bands[2]:.2f}, "
          f"ratio {bands[2] / bands[0]:.2f} ({len(docs)} docs)")
    pk = passkey_by_depth(lm, L, args.trials, args.seed)
    figures["c"] = pk
    fifths = " ".join("-" if a is None else f"{a:.0%}" for a in pk["by_depth_fifth"])
    print(f"(c) passkey at {L}: {pk['accuracy']:.0%} of {pk['trials']}; by depth fifth {fifths} "
          f"(trials {pk['trials_by_depth_fifth']})")
    if args.factors:
        docs8 = split_documents(lm.tokenizer, None, "test", 8 * L, args.docs)
        room = room_for_method(lm, docs8, L, args.factors)
        figures["d"] = {**room, "docs": len(docs8)}
        print(f"(d) ppl [4L,8L) at {8 * L}: PI {room['pi']:.2f}, NTK {room['ntk']:.2f}, YaRN {room['yarn']:.2f}, "
              f"searched {room['searched']:.2f}: {room['gain_over_best']:+.1%} below {room['best_baseline']}; "
              f"the same tokens inside the native window (none): {room['window_floor']:.2f}")
    if args.out:
        atomic_write_json(Path(args.out), figures)


if __name__ == "__main__":
    main()
