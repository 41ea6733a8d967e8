"""Greedy decoding with a KV cache that stays correct across the short/long factor switch.

With separate short and long factors, keys cached while the sequence fitted in the native
context were rotated with the short factors; once the sequence grows past it the long
factors are in force, and those cached keys are stale.
`greedy_generate` re-prefills the whole sequence at the step that crosses the boundary,
so every token is produced exactly as a fresh long-factor forward would produce it.
(`dynamic-ntk` keeps transformers' `dynamic` behaviour: cached keys keep the scale in
force when they were computed; so do they keep the magnitude of `attention_by_length`, which
moves by less than 2e-4 per token past twice the native length for L = 256, and
less for longer L.)
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from .seam import ScaledRotaryEmbedding


def _switch_length(model: nn.Module) -> int | None:
    """The length past which the factors change, or None when they never do."""
    for module in model.modules():
        if isinstance(module, ScaledRotaryEmbedding):
            ext = module.extension
            if ext is not None and ext.short_factor is not None:
                return ext.original_max_position_embeddings
            return None
    return None


@torch.inference_mode()
def greedy_generate(
    model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
    stop: Callable[[torch.Tensor], bool] | None = None, past=None,
) -> torch.Tensor:
    """Greedy continuation of input_ids [1, T]; returns the new token ids [n <= max_new_tokens].
    Decoding ends after EOS, or after the token for which stop(new token ids [n]) is true (a
    stop string appeared). past: a KV cache that holds the first tokens of input_ids already
    (a shared prefix, `longrope.evaluate.prefix`): the first forward runs on the rest."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"greedy_generate decodes one sequence: input_ids must be [1, T], got {list(input_ids.shape)}")
    device = next(model.parameters()).device
    seq = input_ids.to(device)
    switch = _switch_length(model)
    new: list[torch.Tensor] = []
    step_input = seq if past is None else seq[:, past.get_seq_length():]
    # transformers 5.x names the KV cache argument `cache`, 4.x `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input, use_cache=True, logits_to_keep=1, **{cache_arg: past})
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # [1, 1]
        new.append(token[0])
        seq = torch.cat([seq, token], dim=1)
        if eos_token_id is not None and int(token) == eos_token_id:
            break
        if stop is not None and stop(torch.cat(new)):
            break
        past, step_input = getattr(out, cache_arg), token
        if switch is not None and seq.shape[1] - 1 <= switch < seq.shape[1]:
            # the next forward covers position `switch` (length switch + 1): re-prefill all
            past, step_input = None, seq
    return torch.cat(new) if new else torch.empty(0, dtype=torch.long, device=device)
