"""What a search scores: its candidates, their genome space and its seeds. One builder for
`longrope search` and for every search stage of a recipe:

    long_plan     LongRoPE Algorithm 1 (section 3.2): the long factors for a target, seeded with
                  PI, NTK, YaRN and any factors carried from a shorter search
    on_top_plan   the paper's second search on a fine-tuned model (section 3.3): a factor on
                  top of the one it was fine-tuned with, seeded with PI/NTK/YaRN for the rest
    short_plan    the short-context readjustment (section 3.3): short factors for fixed long ones
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..factors import MAX_ATTENTION_FACTOR, RopeExtension
from ..methods import attention_factor
from ..options import check_options, option
from ..rope import RotarySpec
from ..settings import TargetOptions
from .loop import PEER_SEED_NAMES, carried_seed, peer_seeds
from .fitness import MakeExtension, long_factor_candidate, short_factor_candidate
from .genes import START_TOKENS, VARIANTS, SearchSpace, critical_dimension, rescaled_critical_dimension


@dataclass(frozen=True)
class SpaceOptions(TargetOptions):
    """Which factors a search varies and how (`longrope search` flags; a recipe search stage's
    keys, less those a recipe derives: critical_dim, init_factors, short_for)."""

    variant: str = option("longrope", "search every dim (longrope), a band between 1 and s (piecewise), or only "
                          "dims >= the critical dim, LongRoPE2 (critical)", choices=VARIANTS)
    start_tokens: list[int] | None = option(None, "n_hat candidates, each below the target: one value fixes n_hat",
                                            default_help="the paper's, 0 to 256", flag="--start-token", min=0)
    critical_dim: int | None = option(None, "cd for --variant critical", default_help="ceil(d/2 * log_b(L / 2pi))",
                                      min=1)
    attention_factor: float | None = option(
        None, "fix the attention (magnitude) factor multiplied into cos and sin; 1 keeps attention logits as trained, "
        "so with short factors of 1 a short context is unchanged", default_help="LongRoPE's sqrt(1 + ln s / ln L), "
        "which also applies below L; on a fine-tuned model the one it was fine-tuned with", above=0,
        max=MAX_ATTENTION_FACTOR)
    init_factors: list[str] = option(
        [], "also start from these factors (a factors file, HF config or shipped name; repeat the flag for more), "
        "e.g. a search at a shorter target: their long factors, searched for scale s0, are carried to this search's "
        "scale s as lambda**(ln s / ln s0), which keeps unscaled dims at 1 and takes s0 to s; joins PI/NTK/YaRN in "
        "generation 0", repeat=True, metavar="FACTORS")
    short_for: str | None = option(
        None, "readjust instead (LongRoPE section 3.3): search short_factor, used up to the native context, for these "
        "long factors (kept, with their n_hat and attention factor), at --target-length <= the native context, "
        "lambda in [1, --max-factor (default: their scale s)]; seeded with 1 (the original RoPE) and the long "
        "factors; writes both", metavar="FACTORS")

    def __post_init__(self):
        check_options(self)


RECIPE_DERIVES = ("critical_dim", "init_factors", "short_for")  # SpaceOptions fields a recipe does not set


@dataclass
class Plan:
    """What a search scores: candidates (`make`), their genome space, the seeds and their names."""

    make: MakeExtension
    space: SearchSpace
    seeds: list[np.ndarray]
    names: list[str]
    title: str
    peers: RotarySpec | None = None  # plot the found factors against PI/NTK/YaRN for this RoPE
    finalize: Callable[[RopeExtension], RopeExtension] | None = None  # adjusts the factors file written


def _space(half: int, scale: float, opts: SpaceOptions, step: float, max_factor: float | None,
           starts: Sequence[int], target: int, critical_dim: int = 0) -> SearchSpace:
    starts = tuple(t for t in starts if t < target) or (0,)
    return SearchSpace(half=half, scale=scale, max_factor=max_factor or 1.25 * scale, step=step,
                       start_tokens=starts, variant=opts.variant, critical_dim=critical_dim)


def long_plan(spec: RotarySpec, opts: SpaceOptions, step: float, max_factor: float | None, label: str,
              carried: Sequence[tuple[str, RopeExtension]] = ()) -> Plan:
    """Long factors for `opts.target_length` on a model of RoPE `spec` (Algorithm 1), seeded with
    PI/NTK/YaRN and `carried` factors (name, extension) of other scales."""
    L, N = spec.original_max_position_embeddings, opts.target_length
    scale = N / L
    cd = opts.critical_dim or critical_dimension(spec.dim, spec.base, L) if opts.variant == "critical" else 0
    space = _space(spec.half, scale, opts, step, max_factor, opts.start_tokens or START_TOKENS, N, cd)
    seeds = [carried_seed(ext.long_factor, ext.scale, scale) for _, ext in carried]
    return Plan(long_factor_candidate(spec, N, opts.attention_factor), space, peer_seeds(spec, scale) + seeds,
                list(PEER_SEED_NAMES) + [name for name, _ in carried], f"search at {N} tokens ({label})", peers=spec)


def on_top_plan(spec: RotarySpec, opts: SpaceOptions, step: float, max_factor: float | None, base: RopeExtension,
                searched: str, title: str, extra_seeds: Sequence[np.ndarray] = (), by_length: bool = False) -> Plan:
    """A factor lambda on top of `base`, the extension a model was fine-tuned with, for
    `opts.target_length`: candidates carry long_factor = base * lambda, base's n_hat and its
    attention factor (unless `opts` sets one; with `by_length` it follows the length in force).
    `searched`: the metadata key that records lambda. The critical variant searches from the
    critical dim of the fine-tuned frequencies on (the first whose period 2 pi b^(2i/d) base_i
    reaches the fine-tuned length), with lambda_cd^(i/cd) below it: a ramp from 1."""
    L, N1, N2 = spec.original_max_position_embeddings, base.max_position_embeddings, opts.target_length
    scale = N2 / N1
    lam1 = np.asarray(base.long_factor, dtype=np.float64)
    # the weights adapted to the fine-tuned attention magnitude: keep it unless told otherwise
    af = opts.attention_factor if opts.attention_factor is not None else attention_factor(base)
    cd = rescaled_critical_dimension(spec.dim, spec.base, N1, lam1) if opts.variant == "critical" else 0
    space = _space(spec.half, scale, opts, step, max_factor, (base.start_token,), N2, cd)
    recorded = "stage1_factor" if searched == "stage2_factor" else "base_factor"

    def make(factors: np.ndarray, start_token: int) -> RopeExtension:
        return RopeExtension(method="longrope", long_factor=(lam1 * factors).tolist(),
                             original_max_position_embeddings=L, max_position_embeddings=N2,
                             start_token=int(start_token), attention_factor=af, attention_by_length=by_length,
                             metadata={recorded: lam1.tolist(), searched: [float(x) for x in factors]})

    # the fine-tuned model's context is N1 now: PI/NTK/YaRN seeds for N1 -> N2
    seeds = peer_seeds(RotarySpec(spec.dim, spec.base, N1), scale) + list(extra_seeds)
    return Plan(make, space, seeds, list(PEER_SEED_NAMES) + ["carried"] * len(extra_seeds), title)


def short_plan(ext: RopeExtension, step: float, bound: float, seeds: dict[str, np.ndarray], title: str,
               finalize: Callable[[RopeExtension], RopeExtension] | None = None) -> Plan:
    """Short factors in [1, bound] for the fixed long factors of `ext` (their n_hat and attention
    factor kept), seeded with 1 (the original RoPE) and `seeds` ({name: factors})."""
    space = SearchSpace(half=ext.half_dim, scale=bound, max_factor=bound, step=step, start_tokens=(ext.start_token,))
    return Plan(short_factor_candidate(ext), space, [np.ones(ext.half_dim), *seeds.values()],
                ["original", *seeds], title, finalize=finalize)
