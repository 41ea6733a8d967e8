"""Atomic writes: a result file or folder is either complete or absent, never half-written.
Also the two helpers every resumable run needs: reading JSON back and naming changed settings."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UsageError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically (format taken from the suffix of `path`)."""
    buf = io.BytesIO()
    fmt = Path(path).suffix.lstrip(".") or "png"
    fig.savefig(buf, format=fmt, **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and make sure files can be written there (UsageError if not)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"output directory {path} is not writable: {e.strerror or e}") from None
    return path


def read_json_file(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a missing or malformed file is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path} is not valid JSON: {e}") from None


def read_json_or_none(path: str | os.PathLike) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a cache to rebuild)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings whose values differ between a saved run and this one (sorted)."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


# -- whole folders ---------------------------------------------------------------------------
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
def staged_dir(out: str | os.PathLike, create: bool = True) -> Iterator[Path]:
    """Yield a folder to fill, in a private temporary folder beside `out`; on normal exit it
    replaces `out` (a previous `out` is moved aside first and deleted after the rename), on
    error it is removed. create=False yields the path without making it (the caller builds it).
    """
    out = Path(out).expanduser()
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    tmp = holder / out.name
    try:
        if create:
            tmp.mkdir()
        yield tmp
        os.chmod(tmp, 0o755)  # an ordinary folder, not mkdtemp's private one
        old = None
        if out.exists():  # move the previous output aside, put it back if the rename fails
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
    finally:
        shutil.rmtree(holder, ignore_errors=True)
