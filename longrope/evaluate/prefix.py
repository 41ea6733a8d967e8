"""Passkey trials of one length share the filler before their needle: its keys and values are
computed once, and each trial runs only from its needle on.

The prefix runs with the factors and the attention magnitude of the full prompt length (the
seam's `length_in_force`), so its keys are those of the trial's own one-pass prefill. The suffix
attends to the cached prefix and causally to itself. Causal SDPA has no case for queries that
start past their keys' start (an explicit [suffix, T] mask would run slower than the whole pass),
so the suffix is two flash-attention calls, over the prefix without a mask and over itself
causally, merged by their log-sum-exp: softmax over the union of the keys, nothing of size
[suffix, T] built. The merge reorders a sum, so outputs can differ from one pass in the last
bits; the greedy answers are checked to be the same (tests/test_passkey.py).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..seam import rotary_slots

NAME = "longrope_prefix_sdpa"  # the attention implementation's name in transformers' registry


def _merged_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers' attention interface: query [B, H, q, D], key/value [B, Hkv, kv, D] with the
    q queries the last q of the kv positions. Returns [B, q, H, D] and no weights."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len in (1, kv_len) or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    p = kv_len - q_len
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    o1, lse1 = flash(query, key[:, :, :p], value[:, :, :p], 0.0, False, scale=scaling)  # the whole prefix
    o2, lse2 = flash(query, key[:, :, p:], value[:, :, p:], 0.0, True, scale=scaling)  # itself, causally
    top = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - top).unsqueeze(-1), torch.exp(lse2 - top).unsqueeze(-1)
    out = (o1.float() * w1 + o2.float() * w2) / (w1 + w2)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def available(model: nn.Module) -> bool:
    """Whether a model can run a shared prefix here: on the CPU, with transformers' attention and
    mask registries (transformers 4.53 and later)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return False
    del AttentionInterface, AttentionMaskInterface  # present: that is all this asks
    return next(model.parameters()).device.type == "cpu" and hasattr(model.config, "_attn_implementation")


@contextmanager
def merged_attention(model: nn.Module) -> Iterator[None]:
    """Run `model`'s attention through `_merged_attention` (and build no mask) inside the block."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _merged_attention)
    AttentionMaskInterface.register(NAME, lambda *args, **kwargs: None)  # no [q, kv] mask: the kernel is causal
    old = model.config._attn_implementation
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = old


@contextmanager
def length_in_force(model: nn.Module, length: int) -> Iterator[None]:
    """Factors and attention magnitude for a sequence of `length` tokens, whatever the forward covers."""
    rope = rotary_slots(model)[0][2]
    old, rope.length_in_force = rope.length_in_force, length
    try:
        yield
    finally:
        rope.length_in_force = old


def cache_arg(model: nn.Module) -> str:
    """transformers 5.x names the KV cache argument `cache`, 4.x `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def prefill(model: nn.Module, ids: torch.Tensor, length: int):
    """The KV cache of ids [1, K], computed as the first K tokens of a `length`-token sequence."""
    with length_in_force(model, length):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return getattr(out, cache_arg(model))


def first_tokens(cache, k: int):
    """A copy of `cache` holding its first k positions (the shared prefix stays as it is)."""
    import inspect

    mine = copy.deepcopy(cache)
    extra = mine.get_seq_length() - k
    if extra > 0:  # transformers 5.x crops by a negative count of tokens removed, 4.x to a length kept
        mine.crop(-extra if "tokens_to_remove" in inspect.signature(mine.crop).parameters else k)
    return mine
