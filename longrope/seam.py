"""The one seam between longrope and transformers models.

`install_rope(model, extension)` swaps every `rotary_emb` module of a loaded model for a
`ScaledRotaryEmbedding` built from a `RopeExtension`; search, evaluation, fine-tuning and
generation all go through it. Changing factors later only rebuilds small tables: weights
are never reloaded. This module imports the math only (torch, `rope`, `methods`, `factors`):
it reads a transformers model's config object but never imports transformers.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .factors import RopeExtension
from .methods import attention_factor, factors_at_length
from .rope import RotarySpec, rope_cos_sin, scaled_inv_freq


# -- reading a transformers config ----------------------------------------------------------
def _rope_params(config) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        raise UsageError("models with a different RoPE per layer type are not supported")
    return dict(params)


def rope_type_of(config) -> str:
    params = _rope_params(config)
    return params.get("rope_type") or params.get("type") or "default"


def rotary_spec_from_config(config) -> RotarySpec:
    """Base frequency, rotary dim and native context of a transformers config (4.x or 5.x keys)."""
    params = _rope_params(config)
    base = params.get("rope_theta", getattr(config, "rope_theta", None))
    if base is None:
        raise UsageError(f"{type(config).__name__} has no rope_theta: the model does not use rotary embeddings")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) or 1.0
    original = config.max_position_embeddings
    if rope_type_of(config) != "default":  # only scaled configs carry a pretraining length apart
        # (Phi-3 configs have original_max_position_embeddings=4096 even when unscaled)
        original = (
            params.get("original_max_position_embeddings")
            or getattr(config, "original_max_position_embeddings", None)
            or original
        )
    return RotarySpec(dim=int(head_dim * partial), base=float(base), original_max_position_embeddings=int(original))


# -- the rotary module -------------------------------------------------------------------------
class ScaledRotaryEmbedding(nn.Module):
    """Drop-in for transformers' `*RotaryEmbedding`: forward(x, position_ids) -> (cos, sin).

    x: any tensor whose dtype and device the tables take. position_ids: [B, T].
    Returns cos, sin: [B, T, d]. The factors in force are chosen from the largest position
    in the call (`max(position_ids) + 1`), as transformers does for `longrope`.
    """

    def __init__(self, spec: RotarySpec, extension: RopeExtension | None = None):
        super().__init__()
        self.spec = spec
        self.register_buffer("original_inv_freq", spec.inv_freq().float(), persistent=False)
        self._inv_freq_cache: dict[Any, torch.Tensor] = {}
        self.set_extension(extension)

    def set_extension(self, extension: RopeExtension | None) -> None:
        """Use new factors from the next forward on (no weights touched)."""
        if extension is not None:
            extension.check_fits(self.spec)
        self.extension = extension
        self.attention_factor = 1.0 if extension is None else attention_factor(extension)
        self._inv_freq_cache.clear()

    def inv_freq_at(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Rescaled inverse frequencies (float32, [d/2]) for a sequence of seq_len tokens."""
        if self.extension is None:
            return self.original_inv_freq.to(device)
        lam = factors_at_length(self.extension, self.spec, seq_len)
        key = (tuple(lam.tolist()), str(device))
        inv = self._inv_freq_cache.get(key)
        if inv is None:
            inv = scaled_inv_freq(self.spec, lam).float().to(device)
            self._inv_freq_cache[key] = inv
        return inv

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type=None):
        seq_len = int(position_ids.max()) + 1  # one host sync per forward
        inv = self.inv_freq_at(seq_len, x.device)
        start = 0 if self.extension is None else self.extension.start_token
        cos, sin = rope_cos_sin(position_ids, inv, self.original_inv_freq.to(x.device), start, self.attention_factor)
        return cos.to(x.dtype), sin.to(x.dtype)


# -- the seam --------------------------------------------------------------------------------
def rotary_slots(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, module) of every `rotary_emb` submodule."""
    slots = []
    for parent in model.modules():
        child = getattr(parent, "_modules", {}).get("rotary_emb")
        if child is not None:
            slots.append((parent, "rotary_emb", child))
    return slots


def rotary_spec(model: nn.Module) -> RotarySpec:
    """The RotarySpec of a loaded model (the installed one if longrope already owns its RoPE)."""
    for _, _, module in rotary_slots(model):
        if isinstance(module, ScaledRotaryEmbedding):
            return module.spec
    return rotary_spec_from_config(model.config)


def install_rope(model: nn.Module, extension: RopeExtension | None) -> ScaledRotaryEmbedding:
    """Make `model` use the rescaled RoPE of `extension` (None: the original RoPE).

    Replaces each `rotary_emb` submodule (transformers' Llama, Mistral, Qwen2, Phi-3, ...
    all compute cos/sin once per forward there) with one shared ScaledRotaryEmbedding.
    Installing again only swaps the factors. Raises UsageError for models without RoPE.
    """
    slots = rotary_slots(model)
    arch = type(model).__name__
    if not slots:
        raise UsageError(f"{arch} has no rotary embedding module (rotary_emb): it does not use RoPE")
    for _, _, module in slots:
        if isinstance(module, ScaledRotaryEmbedding):
            module.set_extension(extension)
            continue
        if not (type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq")):
            raise UsageError(f"{arch}.rotary_emb is a {type(module).__name__}, not a rotary embedding we can replace")
    if all(isinstance(m, ScaledRotaryEmbedding) for _, _, m in slots):
        return slots[0][2]
    spec = rotary_spec_from_config(model.config)
    old_inv = slots[0][2].inv_freq
    if old_inv.shape[-1] != spec.half:
        raise UsageError(f"{arch}: rotary table has {old_inv.shape[-1]} frequencies, config implies {spec.half}")
    device = old_inv.device
    rope = ScaledRotaryEmbedding(spec, extension).to(device)
    for parent, name, _ in slots:
        setattr(parent, name, rope)
    return rope
