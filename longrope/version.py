"""The version of longrope (the one place it is written: pyproject.toml reads it from here) and
what every result file records of the software that made it."""
from __future__ import annotations

__version__ = "0.2.0"


def versions(*packages: str) -> dict[str, str]:
    """longrope's, Python's and the installed `packages`' versions (read from their metadata:
    nothing is imported)."""
    import platform
    from importlib.metadata import version

    return {"longrope": __version__, **{p: version(p) for p in packages}, "python": platform.python_version()}
