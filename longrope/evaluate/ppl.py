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


@torch.inference_mode()
def sequence_nll(model: nn.Module, input_ids: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Summed next-token NLL of each row. input_ids: [B, T] -> [B] float32 (T-1 targets per row)."""
    B, T = input_ids.shape
    assert T >= 2, "need at least two tokens to score"
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state  # [B, T, H]
    head = model.get_output_embeddings()
    h, targets = hidden[:, :-1], input_ids[:, 1:]  # position t predicts token t+1
    total = torch.zeros(B, dtype=torch.float32, device=input_ids.device)
    for s in range(0, T - 1, chunk_size):
        logits = head(h[:, s : s + chunk_size]).float()  # [B, c, V]
        c = logits.shape[1]
        # rows of [B*c, V]: cross_entropy over a transposed [B, V, c] view is several times slower
        nll = F.cross_entropy(logits.reshape(B * c, -1), targets[:, s : s + c].reshape(B * c), reduction="none")
        total += nll.view(B, c).sum(dim=1)
    return total


def document_nll(model: nn.Module, input_ids: torch.Tensor, chunk_size: int = 1024) -> tuple[float, int]:
    """Summed NLL of one document and the number of scored tokens. input_ids: [1, T] or [T]."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    device = next(model.parameters()).device
    total = sequence_nll(model, input_ids.to(device), chunk_size)
    return float(total.item()), input_ids.shape[1] - 1  # the one host sync per document


def sliding_window_nll(
    model: nn.Module, ids: torch.Tensor, window: int, stride: int, chunk_size: int = 1024
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


def mean_nlls(model: nn.Module, docs: Sequence[torch.Tensor], length: int, chunk_size: int = 1024,
              stride: int | None = None, batch_size: int = 1) -> tuple[list[float], int]:
    """Mean token NLL of each document [T], and the number of tokens scored.

    stride None: each document truncated to its first `length` tokens and scored in one pass,
    `batch_size` documents at a time. Otherwise whole documents, in windows of `length`
    tokens advancing by `stride` (`sliding_window_nll`).
    """
    if stride is not None:
        scored = [sliding_window_nll(model, doc, length, stride, chunk_size) for doc in docs]
        return [nll / n for nll, n in scored], sum(n for _, n in scored)
    device = next(model.parameters()).device
    out, tokens = [], 0
    for s in range(0, len(docs), batch_size):
        x = torch.stack([d[:length] for d in docs[s : s + batch_size]]).to(device)  # [B, length]
        totals = sequence_nll(model, x, chunk_size).tolist()  # one host sync per batch
        out += [t / (x.shape[1] - 1) for t in totals]
        tokens += x.numel() - x.shape[0]
    return out, tokens
