"""Where a `--model` argument points: a preset name, an HF model directory, or a .gguf file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UsageError


@dataclass(frozen=True)
class ModelSource:
    path: Path  # an HF model directory, or the folder holding `gguf_file`
    gguf_file: str | None = None


# name -> function that returns the HF directory of the preset, building it on first use
PRESETS: dict[str, Callable[[], Path]] = {}


def resolve_model(name_or_path: str) -> ModelSource:
    if name_or_path in PRESETS:
        return ModelSource(PRESETS[name_or_path]())
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UsageError(f"GGUF file not found: {p}")
        return ModelSource(p.parent, p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(f"{p} is not a Hugging Face model directory (no config.json)")
        return ModelSource(p)
    names = ", ".join(PRESETS) or "none"
    raise UsageError(f"model not found: {name_or_path!r} is neither a preset ({names}), a directory nor a .gguf file")
