"""Context-extension methods, each a small pure function returning per-dimension factors.

Every method maps (RotarySpec, scale s) to rescale factors lambda (shape [d/2], float64,
all >= 1), so one builder (`longrope.rope`) turns any of them into frequencies. Formulas:
PI (arXiv 2306.15595), NTK-aware scaling, YaRN (arXiv 2309.00071), Llama-3.1's rule, and
transformers' rope utilities (the tests check every method against them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import UsageError
from .factors import RopeExtension
from .rope import RotarySpec, longrope_attention_factor, yarn_attention_factor


def none_factors(spec: RotarySpec, scale: float) -> torch.Tensor:
    """No interpolation: lambda_i = 1 (pure extrapolation)."""
    return torch.ones(spec.half, dtype=torch.float64)


def pi_factors(spec: RotarySpec, scale: float) -> torch.Tensor:
    """Position interpolation (Chen et al. 2023): lambda_i = s."""
    return torch.full((spec.half,), float(scale), dtype=torch.float64)


def ntk_factors(spec: RotarySpec, scale: float) -> torch.Tensor:
    """NTK-aware base change b' = b * s^(d/(d-2)), i.e. lambda_i = s^(2i/(d-2))."""
    i = torch.arange(spec.half, dtype=torch.float64)
    return float(scale) ** (2 * i / (spec.dim - 2))


def dynamic_ntk_scale(seq_len: int, original: int, alpha: float = 1.0) -> float:
    """The NTK scale at the current length, as transformers' `dynamic` computes it:
    s(T) = alpha*T/L - (alpha - 1) for T > L, else 1."""
    return max(1.0, alpha * seq_len / original - (alpha - 1.0))


def yarn_factors(spec: RotarySpec, scale: float, beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """YaRN 'NTK-by-parts' (Peng et al. 2023, eq. 17-18): extrapolate pairs that turn more than
    beta_fast times within L, interpolate by s those that turn less than beta_slow times, and
    ramp linearly in between; lambda_i = 1 / ((1 - gamma_i) + gamma_i / s)."""
    d, b, L = spec.dim, spec.base, spec.original_max_position_embeddings

    def dim_of(rotations: float) -> float:
        return d * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(b))

    low = max(math.floor(dim_of(beta_fast)), 0)
    high = min(math.ceil(dim_of(beta_slow)), d - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    gamma = ((torch.arange(spec.half, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return 1.0 / ((1 - gamma) + gamma / scale)


def llama3_factors(
    spec: RotarySpec, scale: float, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0
) -> torch.Tensor:
    """Llama-3.1 by-wavelength rule: keep short wavelengths, divide long ones by s, and blend
    in between with smooth = (L/w - low_ff) / (high_ff - low_ff)."""
    L = spec.original_max_position_embeddings
    w = spec.wavelengths()
    smooth = ((L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    # 1/lambda = (1-smooth)/s + smooth: smooth=1 keeps theta (w < L/high_ff), 0 divides by s
    lam = 1.0 / ((1 - smooth) / scale + smooth)
    lam = torch.where(w < L / high_freq_factor, torch.ones_like(lam), lam)
    return torch.where(w > L / low_freq_factor, torch.full_like(lam, float(scale)), lam)


@dataclass(frozen=True)
class Method:
    name: str
    factors: Callable[[RotarySpec, float], torch.Tensor] | None  # None: factors come from a file
    attention: Callable[[float, int], float]  # (s, L) -> default attention factor
    dynamic: bool = False  # factors depend on the current sequence length
    about: str = ""


def _one(scale: float, original: int) -> float:
    return 1.0


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("none", none_factors, _one, about="original RoPE, extrapolated"),
        Method("pi", pi_factors, _one, about="linear position interpolation, lambda = s"),
        Method("ntk", ntk_factors, _one, about="NTK-aware base change"),
        Method("dynamic-ntk", ntk_factors, _one, dynamic=True,
               about="NTK with s recomputed from the current length"),
        Method("yarn", yarn_factors, lambda s, L: yarn_attention_factor(s),
               about="YaRN NTK-by-parts, attention factor 0.1 ln s + 1"),
        Method("llama3", llama3_factors, _one, about="Llama-3.1 wavelength rule"),
        Method("longrope", None, longrope_attention_factor,
               about="searched per-dimension factors from a file, attention sqrt(1 + ln s / ln L)"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def attention_factor(ext: RopeExtension) -> float:
    """The attention factor in force: the extension's own, or its method's default.
    Unknown method names (e.g. from other tools' files) get the LongRoPE default."""
    if ext.attention_factor is not None:
        return ext.attention_factor
    method = METHODS.get(ext.method, METHODS["longrope"])
    return method.attention(ext.scale, ext.original_max_position_embeddings)


def attention_factor_at_length(ext: RopeExtension, seq_len: int) -> float:
    """The attention factor for a sequence of `seq_len` tokens: `short_attention_factor` while
    the short factors are in force (see `factors_at_length`), when the extension has one; past
    the native context, LongRoPE's factor for seq_len / L when `attention_by_length` is set."""
    L = ext.original_max_position_embeddings
    if ext.short_attention_factor is not None and seq_len <= L:
        return ext.short_attention_factor
    if ext.attention_by_length and seq_len > L:
        return METHODS["longrope"].attention(seq_len / L, L)  # LongRoPE's factor for the scale in force
    return attention_factor(ext)


def build_extension(name: str, spec: RotarySpec, target_length: int, **metadata) -> RopeExtension:
    """The extension a peer method gives for extending `spec` to `target_length` tokens."""
    method = get_method(name)
    if method.factors is None:
        raise UsageError(f"method {name!r} takes its factors from a file (--factors)")
    L = spec.original_max_position_embeddings
    if target_length <= L:
        raise UsageError(f"target length {target_length} must exceed the native context {L}")
    scale = target_length / L
    lam = method.factors(spec, scale).clamp_min(1.0)
    return RopeExtension(
        method=name,
        long_factor=lam.tolist(),
        original_max_position_embeddings=L,
        max_position_embeddings=int(target_length),
        attention_factor=method.attention(scale, L),
        metadata=dict(metadata),
    )


def factors_at_length(ext: RopeExtension, spec: RotarySpec, seq_len: int) -> torch.Tensor:
    """The factors to use for a sequence of `seq_len` tokens (float64, [d/2]).

    Static extensions switch from `short_factor` to `long_factor` once seq_len exceeds
    the native context (Phi-3 convention); without a short factor the long one is always
    used. A dynamic method recomputes its factors from the current length.
    """
    L = ext.original_max_position_embeddings
    method = METHODS.get(ext.method)
    if method is not None and method.dynamic:
        alpha = float(ext.metadata.get("alpha", 1.0))
        return method.factors(spec, dynamic_ntk_scale(seq_len, L, alpha))
    if ext.short_factor is not None and seq_len <= L:
        return torch.tensor(ext.short_factor, dtype=torch.float64)
    return torch.tensor(ext.long_factor, dtype=torch.float64)
