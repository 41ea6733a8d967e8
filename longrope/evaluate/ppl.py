"""Perplexity of long documents, computed without materialising full-length logits.

The hot path runs the decoder once over the whole document (SDPA attention, no KV cache,
`inference_mode`) and then pushes the final hidden states through the LM head in chunks,
summing the token NLL chunk by chunk: peak memory is O(T * hidden + chunk * vocab)
instead of the O(T * vocab) of `model(input_ids, labels=...)`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import CHUNK_SIZE
from . import Progress, no_progress


@torch.inference_mode()
def sequence_nll(model: nn.Module, input_ids: torch.Tensor, chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """Summed next-token NLL of each row. input_ids: [B, T] -> [B] float32 (T-1 targets per row)."""
    return band_nll(model, input_ids, [0, input_ids.shape[1]], chunk_size)[:, 0]


@torch.inference_mode()
def band_nll(model: nn.Module, input_ids: torch.Tensor, edges: Sequence[int],
             chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """Summed next-token NLL of each row in each band of target positions, from one pass.

    Band j holds the tokens at positions [edges[j], edges[j+1]) (token t is predicted from
    tokens 0..t-1; token 0 is never a target); tokens at or past edges[-1] are not counted.
    input_ids: [B, T] -> [B, len(edges) - 1] float32.
    """
    B, T = input_ids.shape
    assert T >= 2, "need at least two tokens to score"
    assert len(edges) >= 2 and all(a < b for a, b in zip(edges, edges[1:])), f"bad band edges {edges}"
    device = input_ids.device
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state  # [B, T, H]
    head = model.get_output_embeddings()
    h, targets = hidden[:, :-1], input_ids[:, 1:]  # position t predicts token t+1
    bounds = torch.tensor(edges, device=device)
    n_bands = len(edges) - 1
    total = torch.zeros(B, n_bands + 1, dtype=torch.float32, device=device)  # last column: outside every band
    for s in range(0, T - 1, chunk_size):
        logits = head(h[:, s : s + chunk_size]).float()  # [B, c, V]
        c = logits.shape[1]
        # rows of [B*c, V]: cross_entropy over a transposed [B, V, c] view is several times slower
        nll = F.cross_entropy(logits.reshape(B * c, -1), targets[:, s : s + c].reshape(B * c), reduction="none")
        positions = torch.arange(s + 1, s + 1 + c, device=device)  # of the target tokens
        band = torch.bucketize(positions, bounds, right=True) - 1  # [c]; -1 below edges[0], n_bands past the end
        band = torch.where((band >= 0) & (band < n_bands), band, n_bands)
        total.index_add_(1, band, nll.view(B, c))
    return total[:, :n_bands]


def document_nll(model: nn.Module, input_ids: torch.Tensor, chunk_size: int = CHUNK_SIZE) -> tuple[float, int]:
    """Summed NLL of one document and the number of scored tokens. input_ids: [1, T] or [T]."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    device = next(model.parameters()).device
    total = sequence_nll(model, input_ids.to(device), chunk_size)
    return float(total.item()), input_ids.shape[1] - 1  # the one host sync per document


def sliding_window_nll(
    model: nn.Module, ids: torch.Tensor, window: int, stride: int, chunk_size: int = CHUNK_SIZE
) -> tuple[float, int]:
    """NLL of a document longer than `window`, scored in windows advancing by `stride`.

    Each window scores only the tokens the previous one did not (the last `stride` ones,
    all of them in the first window), so every token is scored at most once, with at least
    `window - stride` tokens of context; with stride == window the first token of each
    window has no context and is not scored (as in transformers' perplexity recipe). ids: [T].
    """
    assert 0 < stride <= window
    T = ids.shape[0]
    device = next(model.parameters()).device
    total, count, scored_to = 0.0, 0, 1  # token 0 is never a target
    for begin in range(0, max(T - window, 0) + stride, stride):
        end = min(begin + window, T)
        if end <= scored_to:
            break
        x = ids[begin:end][None].to(device)
        with torch.inference_mode():
            hidden = model.base_model(input_ids=x, use_cache=False).last_hidden_state[0]  # [w, H]
            # window-local index of the first new target; a window's first token has no context
            first = max(scored_to - begin, 1)
            h = hidden[first - 1 : end - begin - 1]
            targets = x[0, first : end - begin]
            head = model.get_output_embeddings()
            for s in range(0, h.shape[0], chunk_size):
                logits = head(h[s : s + chunk_size]).float()
                total += float(F.cross_entropy(logits, targets[s : s + chunk_size], reduction="sum"))
        count += end - begin - first
        scored_to = end
        if end == T:
            break
    return total, count


def perplexity(mean_nlls: list[float]) -> float:
    """ppl = exp(mean over documents of the mean token NLL), as LongRoPE reports it (section 4.1)."""
    return math.exp(sum(mean_nlls) / len(mean_nlls))


def position_bands(length: int, native: int) -> list[int]:
    """Edges of the position bands [0, L), [L, 2L), [2L, 4L), ... of native length L that
    a `length`-token sequence reaches; the last band is cut at `length`."""
    edges, hi = [0], native
    while edges[-1] < length:
        edges.append(min(hi, length))
        hi *= 2
    return edges


def band_mean_nlls(model: nn.Module, docs: Sequence[torch.Tensor], length: int, edges: Sequence[int],
                   chunk_size: int = CHUNK_SIZE, batch_size: int = 1,
                   progress: Progress = no_progress) -> tuple[list[list[float]], list[int]]:
    """Mean token NLL of each document [T] truncated to `length` tokens, in each band of
    positions given by `edges` (`band_nll`), and the tokens each band holds per document;
    `progress(documents done, documents)` after each batch.
    Returns ([document][band] mean NLL, [band] tokens per document)."""
    device = next(model.parameters()).device
    counts = [min(b, length) - max(a, 1) for a, b in zip(edges, edges[1:])]  # token 0 is never a target
    assert all(n > 0 for n in counts), f"band edges {list(edges)} reach past {length} tokens"
    out = []
    for s in range(0, len(docs), batch_size):
        x = torch.stack([d[:length] for d in docs[s : s + batch_size]]).to(device)  # [B, length]
        totals = band_nll(model, x, edges, chunk_size).tolist()  # one host sync per batch
        out += [[t / n for t, n in zip(row, counts)] for row in totals]
        progress(len(out), len(docs))
    return out, counts


def mean_nlls(model: nn.Module, docs: Sequence[torch.Tensor], length: int, chunk_size: int = CHUNK_SIZE,
              stride: int | None = None, batch_size: int = 1,
              progress: Progress = no_progress) -> tuple[list[float], int]:
    """Mean token NLL of each document [T], and the number of tokens scored.

    stride None: each document truncated to its first `length` tokens and scored in one pass,
    `batch_size` documents at a time. Otherwise whole documents, in windows of `length`
    tokens advancing by `stride` (`sliding_window_nll`). `progress(documents done, documents)`.
    """
    if stride is not None:
        scored = []
        for doc in docs:
            scored.append(sliding_window_nll(model, doc, length, stride, chunk_size))
            progress(len(scored), len(docs))
        return [nll / n for nll, n in scored], sum(n for _, n in scored)
    per_doc, counts = band_mean_nlls(model, docs, length, [0, length], chunk_size, batch_size, progress)
    return [d[0] for d in per_doc], counts[0] * len(docs)
