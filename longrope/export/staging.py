"""Write an output folder so that it is either complete or absent (never half-written).

Everything goes into a temporary folder next to the destination; the folder is renamed
into place only once all files are written and checked. With `force`, an existing
destination is moved aside first and deleted after the rename.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UsageError


def check_destination(out: str | os.PathLike, force: bool) -> Path:
    """Fail early (before any heavy work) if `out` exists without `force`, or cannot be made."""
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {parent}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write into {parent}")
    return out


@contextmanager
def staged_dir(out: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on normal exit it becomes `out`, on error it is removed."""
    out = check_destination(out, force)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if out.exists():  # --force: move the previous output aside, put it back if the rename fails
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "previous")
        try:
            os.replace(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old / "previous", out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
