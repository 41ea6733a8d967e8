"""What vLLM reads from an exported config, and how to serve it.

vLLM's `get_rope` (model_executor/layers/rotary_embedding) builds a
`Phi3LongRoPEScaledRotaryEmbedding` for `rope_type == "longrope"` from:

- `rope_scaling["short_factor"]`, `rope_scaling["long_factor"]`,
  `rope_scaling["original_max_position_embeddings"]` (L; its Llama-family model code fills
  it from the top-level key, as Phi-3 configs have it) and `max_position_embeddings` (L');
- optional `rope_scaling["short_mscale"]` / `["long_mscale"]`, the factors cos and sin are
  multiplied by. vLLM ignores `attention_factor`; without the mscale keys it uses
  sqrt(1 + ln(L'/L) / ln(L)), the LongRoPE default (arXiv 2402.13753, section 3.3).

It picks ONE factor set for the whole server at start-up: `long_factor` for every request
when `--max-model-len` > L (so that a KV cache never mixes the two), else `short_factor`
(and requests are then limited to L tokens). transformers and longrope instead switch per
call on the sequence length, so with `--max-model-len` > L vLLM matches them on prompts
longer than L, and on shorter prompts only when short_factor == long_factor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..factors import RopeExtension
from ..methods import attention_factor_at_length
from ..rope import longrope_attention_factor


def default_mscale(max_position_embeddings: int, original_max_position_embeddings: int) -> float:
    """vLLM's mscale when the config has no short_mscale/long_mscale: LongRoPE's default."""
    scale = max_position_embeddings / original_max_position_embeddings
    return longrope_attention_factor(scale, original_max_position_embeddings)


@dataclass(frozen=True)
class VllmRope:
    """The RoPE a vLLM server would run for one config and `--max-model-len`."""

    max_model_len: int
    original_max_position_embeddings: int
    uses_long: bool
    factors: tuple[float, ...]  # [d/2], the set in force for every request
    mscale: float  # cos and sin are multiplied by this


def vllm_rope(config: dict[str, Any], max_model_len: int | None = None) -> VllmRope:
    """Read a config dict as vLLM does. `max_model_len` None = vLLM's default, max_position_embeddings."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if (rope.get("rope_type") or rope.get("type")) not in ("longrope", "su"):
        raise ValueError("config has no longrope rope_scaling")
    # vLLM's Llama-family models copy a top-level original_max_position_embeddings into
    # rope_scaling (Phi-3 configs keep it there), so either place works
    L = int(rope.get("original_max_position_embeddings") or config["original_max_position_embeddings"])
    max_pos = int(config["max_position_embeddings"])
    max_model_len = int(max_model_len or max_pos)
    uses_long = max_model_len > L
    mscale = default_mscale(max_pos, L)
    mscale = float(rope.get("long_mscale", mscale) if uses_long else rope.get("short_mscale", mscale))
    factors = rope["long_factor"] if uses_long else rope["short_factor"]
    return VllmRope(max_model_len, L, uses_long, tuple(float(v) for v in factors), mscale)


def vllm_mismatches(config: dict[str, Any], ext: RopeExtension) -> list[str]:
    """Where vLLM, served with `--max-model-len` = the target, would differ from `ext` on long
    prompts, and with `--max-model-len` = L on short ones. Empty when it agrees."""
    L = ext.original_max_position_embeddings
    problems = []
    long_run = vllm_rope(config, ext.max_position_embeddings)
    if long_run.factors != ext.long_factor:
        problems.append("long_factor differs")
    want = attention_factor_at_length(ext, L + 1)
    if not math.isclose(long_run.mscale, want, rel_tol=1e-9):
        problems.append(f"long mscale {long_run.mscale} != attention factor {want}")
    short_run = vllm_rope(config, ext.original_max_position_embeddings)
    if short_run.factors != (ext.short_factor or ext.long_factor):
        problems.append("short_factor differs")
    want = attention_factor_at_length(ext, L)
    if not math.isclose(short_run.mscale, want, rel_tol=1e-9):
        problems.append(f"short mscale {short_run.mscale} != attention factor {want}")
    return problems


def serve_hint(model_dir: str, ext: RopeExtension) -> str:
    """The vLLM command line for an exported directory (long factors for every request)."""
    return f"vllm serve {model_dir} --max-model-len {ext.max_position_embeddings}"
