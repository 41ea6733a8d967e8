"""The one seam between longrope and transformers models.

`install_rope(model, extension)` swaps every `rotary_emb` module of a loaded model for a
`ScaledRotaryEmbedding` built from a `RopeExtension`; search, evaluation, fine-tuning and
generation all go through it. Changing factors later only rebuilds small tables: weights
are never reloaded. This module imports the math only (torch, `rope`, `methods`, `factors`):
it reads a transformers model's config object but never imports transformers.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .errors import UsageError
from .factors import RopeExtension
from .methods import attention_factor_at_length, factors_at_length
from .rope import RotarySpec, rope_cos_sin, rope_cos_sin_rows, scaled_inv_freq


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
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise UsageError(f"the model's config has rope_theta {base!r}: it must be a number > 1")
    for key in ("hidden_size", "num_attention_heads", "max_position_embeddings", "head_dim"):
        value = getattr(config, key, None)
        if (value is not None or key != "head_dim") and (isinstance(value, bool) or not isinstance(value, int)
                                                          or value < 1):
            raise UsageError(f"the model's config has {key} {value!r}: it must be a positive integer")
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
    in the call (`max(position_ids) + 1`), as transformers does for `longrope`. One extension
    (`set_extension`) serves every row; `set_row_extensions` gives each row its own.
    """

    CACHED_TABLES = 16  # frequency tables kept (short, long, and the last lengths dynamic NTK saw)

    def __init__(self, spec: RotarySpec, extension: RopeExtension | None = None):
        super().__init__()
        self.spec = spec
        self.register_buffer("original_inv_freq", spec.inv_freq().float(), persistent=False)
        self._inv_freq_cache: dict[Any, torch.Tensor] = {}
        self._rows_cache: dict[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # the sequence length the factors and the magnitude are chosen for when a forward covers only its
        # start (a prefix computed once for several sequences of that length; `longrope.evaluate.prefix`)
        self.length_in_force = 0
        self.set_extension(extension)

    def set_extension(self, extension: RopeExtension | None) -> None:
        """Use new factors, the same in every batch row, from the next forward on (no weights touched)."""
        if extension is not None:
            extension.check_fits(self.spec)
        self.extension = extension
        self.rows: list[RopeExtension | None] | None = None
        self._inv_freq_cache.clear()
        self._rows_cache.clear()

    def set_row_extensions(self, extensions: Sequence[RopeExtension | None]) -> None:
        """Give batch row b the factors of extensions[b] from the next forward on, so one pass
        scores several search candidates; a forward then needs exactly len(extensions) rows.
        `set_extension` goes back to one extension for every row."""
        if not extensions:
            raise ValueError("set_row_extensions needs at least one extension")
        for ext in extensions:
            if ext is not None:
                ext.check_fits(self.spec)
        self.set_extension(None)
        self.rows = list(extensions)
        self._row_starts = torch.tensor([0 if e is None else e.start_token for e in self.rows])  # [B]

    def _inv_freq_of(self, extension: RopeExtension | None, seq_len: int, device: torch.device) -> torch.Tensor:
        if extension is None:
            return self.original_inv_freq.to(device)
        lam = factors_at_length(extension, self.spec, seq_len)
        key = (tuple(lam.tolist()), str(device))
        inv = self._inv_freq_cache.get(key)
        if inv is None:
            inv = scaled_inv_freq(self.spec, lam).float().to(device)
            if len(self._inv_freq_cache) >= self.CACHED_TABLES:  # dynamic NTK: a table per length
                self._inv_freq_cache.pop(next(iter(self._inv_freq_cache)))  # the oldest
            self._inv_freq_cache[key] = inv
        return inv

    def attention_factor_at(self, seq_len: int) -> float:
        """The factor cos and sin are multiplied by for a sequence of seq_len tokens."""
        return 1.0 if self.extension is None else attention_factor_at_length(self.extension, seq_len)

    def inv_freq_at(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Rescaled inverse frequencies (float32, [d/2]) for a sequence of seq_len tokens."""
        return self._inv_freq_of(self.extension, seq_len, device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type=None):
        if self.rows is not None:
            return self._forward_rows(x, position_ids)
        seq_len = max(int(position_ids.max()) + 1, self.length_in_force)  # one host sync per forward
        inv = self.inv_freq_at(seq_len, x.device)
        start = 0 if self.extension is None else self.extension.start_token
        cos, sin = rope_cos_sin(position_ids, inv, self.original_inv_freq.to(x.device), start,
                                self.attention_factor_at(seq_len))
        return cos.to(x.dtype), sin.to(x.dtype)

    def _forward_rows(self, x: torch.Tensor, position_ids: torch.Tensor):
        """forward with row extensions: x [B, T, ...], position_ids [B or 1, T] -> cos, sin [B, T, d];
        each row picks short or long factors from its own max(position_ids) + 1."""
        B = x.shape[0]
        if B != len(self.rows) or position_ids.shape[0] not in (1, B):
            raise ValueError(f"a forward with {B} rows (position_ids {tuple(position_ids.shape)}) but "
                             f"{len(self.rows)} row extensions set")
        position_ids = position_ids.expand(B, -1)  # [B, T]
        seq_lens = tuple((position_ids.amax(dim=-1) + 1).tolist())  # one host sync per forward
        key = (seq_lens, str(x.device))
        tables = self._rows_cache.get(key)
        if tables is None:  # once per set of rows (and lengths)
            inv = torch.stack([self._inv_freq_of(e, n, x.device) for e, n in zip(self.rows, seq_lens)])  # [B, d/2]
            factors = torch.tensor([1.0 if e is None else attention_factor_at_length(e, n)
                                    for e, n in zip(self.rows, seq_lens)], dtype=torch.float32)  # [B]
            tables = inv, self._row_starts.to(x.device), factors.to(x.device)
            self._rows_cache[key] = tables
        inv, starts, factors = tables
        cos, sin = rope_cos_sin_rows(position_ids, inv, self.original_inv_freq.to(x.device), starts, factors)
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
