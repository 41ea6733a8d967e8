"""The cache folder (`$LONGROPE_CACHE`, default `~/.cache/longrope`) and its lock files."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    """The cache folder: $LONGROPE_CACHE, else ~/.cache/longrope (created on demand)."""
    path = Path(os.environ.get("LONGROPE_CACHE") or Path.home() / ".cache" / "longrope").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on `path` (blocks until other holders release it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
