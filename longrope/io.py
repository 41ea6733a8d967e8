"""Atomic writes: a result file or folder is either complete or absent, never half-written.
The one output-folder helper every command that writes uses (`output_dir`: a lock with the
pid, writability checked before work starts, temporaries of killed runs cleaned, nothing left
behind by a failed run). Also the two helpers every resumable run needs: reading JSON back
and naming changed settings. Files and folders get the modes the umask asks for."""
from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UsageError


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it: set, then put it back
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700; results get what an ordinary open/mkdir would give
UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
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


def changed_keys(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings whose values differ between a saved run and this one (sorted); nested
    settings are named by their dotted path ("config.lr", not "config")."""
    out = []
    for k in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def versions(*packages: str) -> dict[str, str]:
    """What every result file records of the software that made it: longrope, Python and the
    installed `packages` (read from their metadata: nothing is imported)."""
    import platform
    from importlib.metadata import version

    from . import __version__

    return {"longrope": __version__, **{p: version(p) for p in packages}, "python": platform.python_version()}


# -- whole folders ---------------------------------------------------------------------------
def _holds(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether replacing `folder` would take `path` with it (it is `path` or one of its parents)."""
    return Path(path).expanduser().resolve().is_relative_to(Path(folder).expanduser().resolve())


def refuse_current_folder(out: Path) -> None:
    """UsageError when `out`, a folder to be replaced, is the current folder or holds it."""
    if out.exists() and _holds(out, Path.cwd()):
        raise UsageError(f"output {out} is the current folder or holds it: choose a folder of its own")


def refuse_source(out: str | os.PathLike, source: str | os.PathLike) -> None:
    """UsageError when the folder `out` is, or holds, `source` (a model read to write it):
    replacing `out` would delete what is being read."""
    if _holds(out, source):
        raise UsageError(f"--out {out} holds the source model {source}: writing there would replace it; "
                         f"choose another folder")


def check_destination(out: str | os.PathLike, force: bool) -> Path:
    """Fail early (before any heavy work) if `out` exists without `force`, or cannot be made, or
    would replace the current folder or one that holds it."""
    if not str(out).strip():
        raise UsageError("--out is empty: name the folder to write")
    out = Path(out).expanduser()
    refuse_current_folder(out)
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
def staged_dir(out: str | os.PathLike, create: bool = True, replace: bool = False) -> Iterator[Path]:
    """Yield a folder to fill, in a private temporary folder beside `out`; on normal exit it
    becomes `out`, on error it is removed. An empty `out` is taken over; an `out` that holds
    files is replaced only with replace=True (moved aside, deleted after the rename), otherwise
    it is left untouched and UsageError is raised (something else created it meanwhile).
    create=False yields the path without making it (the caller builds it)."""
    out = Path(out).expanduser()
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    tmp = holder / out.name
    try:
        if create:
            tmp.mkdir()
        yield tmp
        ordinary_modes(tmp)  # not mkdtemp's private folder, nor what a library or a copied cache file had
        _take_place(tmp, out, parent, replace)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _take_place(tmp: Path, out: Path, parent: Path, replace: bool) -> None:
    """Rename `tmp` to `out` (see staged_dir)."""
    if out.is_dir() and not out.is_symlink():
        try:
            out.rmdir()  # empty: nothing of anyone's is lost (fails if it holds anything)
        except OSError:
            pass
    old = None
    if out.exists() or out.is_symlink():
        if not replace:
            raise UsageError(f"{out} appeared while this run was writing it; it was left untouched and "
                             f"nothing was written (remove it, or pass --force to replace it)")
        old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / "previous")  # put back if the rename fails
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old / "previous", out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the output folder of a run ----------------------------------------------------------------
# Temporaries our writers leave when a process is killed: atomic writes and staged folders
# (.NAME.XXXX.tmp), folders moved aside (.NAME.XXXX.old), model folders (.model.XXXX),
# checkpoints in progress (.tmp-step-N) and writability probes (.probe.XXXX).
_TEMP_PATTERNS = (re.compile(r"^\..+\.tmp$"), re.compile(r"^\..+\.old$"), re.compile(r"^\.model\..+"),
                  re.compile(r"^\.tmp-step-\d+$"), re.compile(r"^\.probe\..+"))


def _is_temporary(name: str) -> bool:
    return any(p.match(name) for p in _TEMP_PATTERNS)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_temporaries(folder: Path) -> int:
    """Remove the temporaries killed runs left anywhere under `folder`; returns how many."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if _is_temporary(name):
                found.append(Path(root) / name)
        dirs[:] = [d for d in dirs if not _is_temporary(d)]
    for path in found:
        _remove(path)
    return len(found)


def _rank() -> int:
    """This process's rank in a torchrun / accelerate launch (0 when alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _Lock:
    """`.NAME.lock` beside a folder, held with flock (released by the kernel when the process
    dies, so a stale file never blocks) and holding the owner's pid for the message."""

    def __init__(self, folder: Path):
        self.path = folder.parent / f".{folder.name}.lock"
        self.folder, self.fd = folder, None

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise UsageError(f"cannot write into {self.folder.parent}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UsageError(f"{self.folder} is in use by another longrope run (pid {pid}); wait for it "
                                 f"to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous owner unlinked while we waited for it
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)
        raise UsageError(f"cannot lock {self.folder}: its lock file keeps changing")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it
            os.close(self.fd)
            self.fd = None


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p; the folders it created, outermost first (UsageError if it cannot)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"cannot create {path}: {p} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {path}: {e.strerror or e}") from None
    return missing[::-1]


def _probe(folder: Path) -> None:
    """Write and remove a file in `folder` (UsageError if it cannot be written)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"output directory {folder} is not writable: {e.strerror or e}") from None


@contextmanager
def output_dir(path: str | os.PathLike, create: bool = True) -> Iterator[Path]:
    """Own the output folder `path` for one run (every command that writes uses this).

    Refuses a folder another run holds (lock file `.NAME.lock` beside it, with the pid),
    checks that it can be written before any work starts, removes the temporaries a killed
    run left in it, and on failure leaves nothing it created: an empty folder it made is
    removed again (so are the parents it made). It never deletes a file it did not write.
    create=False: the caller writes `path` itself, whole (a staged folder); only its parent
    is made and probed. In a multi-process launch only rank 0 owns the folder.
    """
    if not str(path).strip():
        raise UsageError("--out is empty: name the folder to write")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} exists and is not a directory")
    if _rank() != 0:
        yield path
        return
    made = _make_dirs(path.absolute().parent)
    lock = _Lock(path.absolute())
    try:
        lock.acquire()
        if create:
            made += _make_dirs(path)
        _probe(path if create else path.absolute().parent)
        if path.is_dir():
            clean_temporaries(path)
        for leftover in path.absolute().parent.glob(f".{glob_escape(path.name)}.*"):
            if _is_temporary(leftover.name):
                _remove(leftover)
        yield path
    except BaseException:
        if path.is_dir():
            clean_temporaries(path)
        lock.release()
        for folder in reversed(made):  # innermost first; only while empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    finally:
        lock.release()


def glob_escape(name: str) -> str:
    """`name` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)
