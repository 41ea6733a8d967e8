"""Searched factors shipped with the package, usable by name wherever `--factors` is taken.

Each `NAME.json` here is a factors file (docs/factors-file.md) whose `metadata`
names the model it was searched for (`model`, `rope_theta`, `rotary_dim`) and how it was
found (search settings, candidates, cost). `--factors smollm2-135m-16k` resolves to
`smollm2-135m-16k.json`; a model whose RoPE differs is refused when the factors are
installed (`longrope.seam`).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..factors import RopeExtension

SHIPPED_DIR = Path(__file__).resolve().parent


def shipped_names() -> list[str]:
    """Names of the shipped factors files, sorted."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def shipped_path(name: str) -> Path | None:
    """The file of shipped factors `name`, or None when no such factors ship."""
    path = SHIPPED_DIR / f"{name}.json"
    return path if name in shipped_names() else None


def looks_like_name(text: str) -> bool:
    """A bare name (no folder, no .json suffix) is meant as shipped factors, not a path."""
    return "/" not in text and "\\" not in text and not text.endswith(".json") and not text.startswith(".")


def shipped_for(spec) -> list[str]:
    """Names of the shipped factors that fit a model's RoPE (`RotarySpec`)."""
    fits = []
    for name in shipped_names():
        try:
            RopeExtension.load(SHIPPED_DIR / f"{name}.json").check_fits(spec)
        except UsageError:
            continue
        fits.append(name)
    return fits
