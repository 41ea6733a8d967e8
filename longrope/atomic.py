"""Atomic writes: a result file or folder is either complete or absent, never half-written.

Every writer goes through a temporary and a rename. Inside the output folder of a run
(`longrope.outputs.output_dir`) the temporary is the run's own: named with its id, at the top of
the folder and listed in its record before it is made, so a later run removes exactly what a
killed one left and nothing else. Elsewhere (the cache) it sits beside the file. Files and
folders get the modes the umask asks for.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, Protocol

from .errors import UsageError


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it: set, then put it back
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700; results get what an ordinary open/mkdir would give
UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


class Owner(Protocol):
    """The run that owns an output folder (`longrope.outputs.Run`), as the writers see it."""

    def temporary(self, path: Path) -> Path | None:
        """A fresh temporary path for writing `path` (recorded first), or None when `path` is
        not inside the run's folder."""

    def wrote(self, path: Path) -> None:
        """`path` (inside the folder) now holds this run's output."""


_owner: ContextVar[Owner | None] = ContextVar("longrope_output_owner", default=None)


def own_writes(owner: Owner | None):
    """Route the writers' temporaries through `owner` until the returned token is reset."""
    return _owner.set(owner)


def release_writes(token) -> None:
    _owner.reset(token)


def ordinary_modes(root: str | os.PathLike) -> None:
    """Give `root` and everything under it the modes the umask asks for (files FILE_MODE, folders
    DIR_MODE): libraries write some files private (safetensors through a 0600 temporary), and a
    copy keeps its source's mode, yet an export must be readable by a serving container."""
    root = Path(root)
    if root.is_dir() and not root.is_symlink():
        for path in root.rglob("*"):
            if not path.is_symlink():
                os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)
        os.chmod(root, DIR_MODE)
    elif root.is_file():
        os.chmod(root, FILE_MODE)


def _temporary(path: Path, folder: bool) -> Path:
    """Where to build `path`: the owning run's temporary, or a fresh one beside it."""
    owner = _owner.get()
    tmp = owner.temporary(path) if owner is not None else None
    if tmp is not None:
        if folder:
            tmp.mkdir(mode=0o700)
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return tmp
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _wrote(path: Path) -> None:
    owner = _owner.get()
    if owner is not None:
        owner.wrote(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, folder=False)
    try:
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        _remove(tmp)
        raise
    _wrote(path)
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


@contextmanager
def staged_dir(out: str | os.PathLike, create: bool = True, replace: bool = False) -> Iterator[Path]:
    """Yield a folder to fill, in a temporary (the run's own inside its output folder, else
    private and beside `out`); on normal exit it becomes `out`, on error it is removed. An empty
    `out` is taken over; an `out` that holds files is replaced only with replace=True (moved
    aside, deleted after the rename), otherwise it is left untouched and UsageError is raised
    (something else created it meanwhile). create=False yields the path without making it
    (the caller builds it)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = _temporary(out, folder=True)
    tmp = holder / out.name
    try:
        if create:
            tmp.mkdir()
        yield tmp
        ordinary_modes(tmp)  # not mkdtemp's private folder, nor what a library or a copied cache file had
        _take_place(tmp, out, replace)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    _wrote(out)


def _take_place(tmp: Path, out: Path, replace: bool) -> None:
    """Rename `tmp` to `out` (see staged_dir); a replaced `out` waits in the temporary holding
    `tmp` until the rename is done, and comes back if it fails."""
    if out.is_dir() and not out.is_symlink():
        try:
            out.rmdir()  # empty: nothing of anyone's is lost (fails if it holds anything)
        except OSError:
            pass
    previous = tmp.parent / f"{out.name}.previous"
    if out.exists() or out.is_symlink():
        if not replace:
            raise UsageError(f"{out} appeared while this run was writing it; it was left untouched and "
                             f"nothing was written (remove it, or pass --force to replace it)")
        os.replace(out, previous)
    try:
        os.replace(tmp, out)
    except OSError:
        if previous.exists() or previous.is_symlink():
            os.replace(previous, out)
        raise


@contextmanager
def staged_files(out: str | os.PathLike) -> Iterator[tuple[Path, Any]]:
    """Yield (tmp, move_in): a temporary folder to fill, and `move_in(names)`, which renames
    those files of it into the existing folder `out` one by one, in that order (the file that
    marks `out` complete last). For a folder that already holds other files (checkpoints)."""
    out = Path(out)
    holder = _temporary(out / ".staged", folder=True)

    def move_in(names) -> None:
        ordinary_modes(holder)
        for name in names:
            os.replace(holder / name, out / name)
            _wrote(out / name)

    try:
        yield holder, move_in
    finally:
        shutil.rmtree(holder, ignore_errors=True)
