"""How low can an extension go? The perplexity of the tokens past the native window, scored by the
unextended model with only the context it was trained on.

A context-extension method scores the tokens at [L, N) of an N-token document with up to N-1 tokens
of context. The same tokens scored in native windows (the L-1 tokens before each, cut as training
rows are: BOS first where the documents start with it; each window scores its last L/2 tokens, so
every token has L/2 .. L-1 tokens of context) show what the model does with the context it learnt.
An extension beats that floor only if the model puts the distant tokens to use; a baseline already
near it leaves little for searched factors to gain without fine-tuning.

    python bench/window_floor.py --model tiny --length 2048 --split test --docs 16
    python bench/window_floor.py --model smollm2-135m --length 32768 --corpus stdlib-packages --docs 2

Prints the floor in each band [L, 2L), [2L, 4L), ... of the native length L, for the same documents
`longrope eval-ppl --split S --docs K --lengths N --by-position` scores (the longest first), so the
bands line up with its table.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from longrope.data import split_documents  # noqa: E402
from longrope.evaluate.ppl import band_nll  # noqa: E402
from longrope.models.load import load_model  # noqa: E402
from longrope.seam import install_rope  # noqa: E402


def leading_bos(tokenizer, docs) -> int | None:
    """The BOS id when every document starts with it (training rows then start with it too)."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and all(int(d[0]) == bos for d in docs) else None


def window_floor_nll(model, docs, L: int, lo: int, hi: int, bos: int | None = None) -> tuple[float, int]:
    """Summed NLL and count of the tokens at [lo, hi) of each document, each scored in a native
    window: `bos` (if given) + the L-1 (or L) tokens before the window's end, last L/2 scored."""
    device = next(model.parameters()).device
    prefix = torch.tensor([] if bos is None else [bos], dtype=torch.long)
    width = L - len(prefix)  # document tokens per window
    nll, n = 0.0, 0
    for d in docs:
        for end in range(lo + L // 2, hi + 1, L // 2):
            x = torch.cat([prefix, d[end - width : end]])[None].to(device)
            nll += float(band_nll(model, x, [L - L // 2, L])[0, 0])  # the window's last L/2 tokens
            n += L // 2
    return nll, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--length", type=int, required=True, help="document length N (a multiple of 2L)")
    ap.add_argument("--corpus")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--docs", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    lm = load_model(args.model, dtype=args.dtype)
    install_rope(lm.model, None)
    L = lm.spec.original_max_position_embeddings
    docs = split_documents(lm.tokenizer, args.corpus, args.split, args.length, args.docs)
    bos = leading_bos(lm.tokenizer, docs)
    lo = L
    while lo < args.length:
        hi = min(2 * lo, args.length)
        t0 = time.time()
        nll, n = window_floor_nll(lm.model, docs, L, lo, hi, bos)
        print(f"positions {lo}-{hi - 1}: ppl {math.exp(nll / n):.2f} in native windows of {L} "
              f"({n} tokens, {len(docs)} docs, {time.time() - t0:.0f}s)", flush=True)
        lo = hi


if __name__ == "__main__":
    main()
