"""Loading a `--model` (preset name, HF model directory or .gguf file) in eval mode with SDPA.

A model directory written by `longrope finetune` / `extend` also carries its extension in
`longrope_factors.json` (which keeps the start token n_hat, which HF configs cannot):
`load_model` installs it through the seam.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UsageError
from ..factors import FACTORS_FILE, RopeExtension
from ..rope import RotarySpec
from ..seam import install_rope, rotary_slots, rotary_spec, rotary_spec_from_config
from .device import default_device, resolve_dtype
from .presets import ModelSource, resolve_model

@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    name: str
    spec: RotarySpec


def _offline_transformers():
    """transformers, told never to reach for a model hub (--model is a preset, directory or file)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our commands show their own progress
    return transformers


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def load_config(name_or_path: str | os.PathLike | ModelSource):
    """The transformers config of a model, without its weights (UsageError if unreadable)."""
    source = name_or_path if isinstance(name_or_path, ModelSource) else resolve_model(str(name_or_path))
    transformers = _offline_transformers()
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return transformers.AutoConfig.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot read the config of {str(source.path)!r}: {_first_line(e)}") from None


def model_spec(name_or_path: str) -> RotarySpec:
    """The RotarySpec of a model from its config only (cheap: no weights are loaded)."""
    return rotary_spec_from_config(load_config(name_or_path))


def load_model(
    name_or_path: str, dtype: str = "auto", device: str | None = None, need_tokenizer: bool = True
) -> LoadedModel:
    """Load a model by preset name, HF model directory or .gguf file, in eval mode with SDPA.
    With need_tokenizer=False a directory without a tokenizer loads with tokenizer None."""
    transformers = _offline_transformers()
    device = device or default_device()
    source = resolve_model(name_or_path)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device), "attn_implementation": "sdpa"}
    if source.gguf_file is not None:
        kwargs["gguf_file"] = source.gguf_file
    tok_kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}

    def fail(e: Exception, what: str = "model"):
        raise UsageError(f"cannot load {what} of {name_or_path!r}: {_first_line(e)}") from None

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        fail(e)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.path), **tok_kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if need_tokenizer:
            fail(e, "tokenizer")
        tokenizer = None
    model.to(device).eval()
    if not rotary_slots(model):
        raise UsageError(f"{type(model).__name__} ({name_or_path}) does not use rotary embeddings")
    if (source.path / FACTORS_FILE).is_file():  # our fine-tuned model: load it with its factors
        install_rope(model, RopeExtension.load(source.path / FACTORS_FILE))
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(name_or_path), spec=rotary_spec(model))
