"""RoPE math: inverse frequencies from per-dimension rescale factors, and the cos/sin tables.

Notation follows LongRoPE (arXiv 2402.13753, section 2): rotary dim `d`, base `b`,
pair index `i = 0 .. d/2-1`, original frequency `theta_i = b^(-2i/d)`, rescale factor
`lambda_i >= 1` so that the angle at position `n` is `n * theta_i / lambda_i`.
This module imports torch only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RotarySpec:
    """What a model's RoPE looks like before any extension."""

    dim: int  # rotary dimensions per head (d); d/2 frequencies
    base: float  # rope_theta (b)
    original_max_position_embeddings: int  # native context L

    def __post_init__(self):
        if self.dim <= 0 or self.dim % 2:
            raise ValueError(f"rotary dim must be a positive even number, got {self.dim}")
        if not self.base > 1:
            raise ValueError(f"rope base must be > 1, got {self.base}")
        if self.original_max_position_embeddings < 1:
            raise ValueError("original_max_position_embeddings must be >= 1")

    @property
    def half(self) -> int:
        return self.dim // 2

    def exponents(self) -> torch.Tensor:
        """2i/d for i = 0 .. d/2-1, float64, shape [d/2]."""
        return torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim

    def inv_freq(self) -> torch.Tensor:
        """Original frequencies theta_i = b^(-2i/d), float64, shape [d/2]."""
        return 1.0 / (self.base ** self.exponents())

    def wavelengths(self) -> torch.Tensor:
        """Tokens per full turn of each pair, 2*pi/theta_i, shape [d/2]."""
        return 2 * math.pi / self.inv_freq()


def scaled_inv_freq(spec: RotarySpec, rescale_factors: torch.Tensor) -> torch.Tensor:
    """inv_freq_i = 1 / (lambda_i * b^(2i/d)); `rescale_factors` has shape [d/2]."""
    lam = torch.as_tensor(rescale_factors, dtype=torch.float64)
    assert lam.shape == (spec.half,), f"expected {spec.half} factors, got shape {tuple(lam.shape)}"
    return spec.inv_freq() / lam


def longrope_attention_factor(scale: float, original_max_position_embeddings: int) -> float:
    """The 'su' magnitude scaling sqrt(1 + ln(s)/ln(L)) applied to cos and sin (LongRoPE, arXiv 2402.13753; Phi-3's 'su')."""
    if scale <= 1.0:
        return 1.0
    return math.sqrt(1.0 + math.log(scale) / math.log(original_max_position_embeddings))


def yarn_attention_factor(scale: float) -> float:
    """YaRN's 0.1*ln(s) + 1 (YaRN paper, eq. 22)."""
    return 1.0 if scale <= 1.0 else 0.1 * math.log(scale) + 1.0


def rope_cos_sin(
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    original_inv_freq: torch.Tensor,
    start_token: int = 0,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables in the layout transformers' `apply_rotary_pos_emb` expects.

    position_ids: [B, T] integer positions. inv_freq, original_inv_freq: [d/2] float32.
    Positions n < start_token (n_hat) keep the original angle n*theta_i; later ones use
    the rescaled angle (LongRoPE section 3.2, start-token retention). Both tables are
    multiplied by `attention_factor`, so attention logits scale by its square.
    Returns cos, sin: [B, T, d] float32.
    """
    pos = position_ids[..., None].float()  # [B, T, 1]
    freqs = pos * inv_freq  # [B, T, d/2]
    if start_token > 0:
        keep = position_ids[..., None] < start_token
        freqs = torch.where(keep, pos * original_inv_freq, freqs)
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, d]
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rope_cos_sin_rows(
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    original_inv_freq: torch.Tensor,
    start_tokens: torch.Tensor,
    attention_factors: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_cos_sin` with its own factors in each batch row (several candidates in one forward).

    position_ids: [B, T]. inv_freq: [B, d/2] float32; original_inv_freq: [d/2] float32;
    start_tokens: [B] integer (n_hat of each row); attention_factors: [B] float32.
    Row b equals `rope_cos_sin(position_ids[b:b+1], inv_freq[b], ..., start_tokens[b],
    attention_factors[b])`. Returns cos, sin: [B, T, d] float32.
    """
    pos = position_ids[..., None].float()  # [B, T, 1]
    freqs = pos * inv_freq[:, None, :]  # [B, T, d/2]
    keep = position_ids[..., None] < start_tokens[:, None, None]  # [B, T, 1]
    freqs = torch.where(keep, pos * original_inv_freq, freqs)
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, d]
    factor = attention_factors[:, None, None]  # [B, 1, 1]
    return emb.cos() * factor, emb.sin() * factor
