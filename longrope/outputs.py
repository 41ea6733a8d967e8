"""The output folder of a run: owned for the run's length, and only what the run wrote.

Every command that writes goes through `output_dir`. The run holds a lock, keeps a record of
what it writes, and deletes nothing it did not create:

- the lock is `.longrope.lock` inside the folder, keyed on the resolved path: the same folder
  reached through a symlink or another spelling is the same lock, and an existing folder in a
  read-only parent can be locked (a folder that appears whole, such as an export, is locked
  beside it as `.NAME.lock`, and inside too when it exists already);
- the record `.longrope-run.json` (beside the folder for one that appears whole) names the run
  (id, pid, command), the files it wrote and its temporaries. A temporary is named with the
  run's id, lives at the top of the folder, and is recorded before it is made;
- a later run removes a dead run's temporaries by those recorded names, never by a pattern;
- a run's outputs are one set: the first time a run writes, the files an earlier run recorded
  and this run does not continue from (`keep`) are removed, so a folder never mixes two runs;
  a file the run would write that no record owns is the user's, and the run is refused;
- on failure a run removes its temporaries and the folders it created that stayed empty.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .atomic import FILE_MODE, own_writes, release_writes
from .errors import UsageError

RECORD = ".longrope-run.json"
LOCK = ".longrope.lock"
EVERYTHING = ("*",)  # keep=EVERYTHING: a run that continues all an earlier one wrote (a recipe, a resumed fine-tuning)


def _rank() -> int:
    """This process's rank in a torchrun / accelerate launch (0 when alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def resolved(path: str | os.PathLike) -> Path:
    """`path` made absolute with every symlink resolved (as far as it exists): what two
    spellings of the same folder have in common."""
    return Path(path).expanduser().resolve()


def holds(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether replacing `folder` would take `path` with it (it is `path` or one of its parents)."""
    return resolved(path).is_relative_to(resolved(folder))


def refuse_current_folder(out: Path) -> None:
    """UsageError when `out`, a folder to be replaced, is the current folder or holds it."""
    if out.exists() and holds(out, Path.cwd()):
        raise UsageError(f"output {out} is the current folder or holds it: choose a folder of its own")


def refuse_inputs(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """UsageError when the folder `out`, to be replaced, is or holds one of `inputs` ({what: path},
    e.g. the source model, the factors file): replacing it would delete what the run reads."""
    for what, given in inputs.items():
        if given is not None and Path(given).expanduser().exists() and holds(out, given):
            raise UsageError(f"--out {out} holds {what} {given}: writing there would delete it; choose another "
                             f"folder")


def refuse_source(out: str | os.PathLike, source: str | os.PathLike) -> None:
    refuse_inputs(out, {"the source model": source})


def check_destination(out: str | os.PathLike, force: bool, inputs: dict[str, str | os.PathLike | None] | None = None
                      ) -> Path:
    """Fail early (before any heavy work) if `out` exists without `force`, cannot be made, would
    replace the current folder or one that holds it, or holds an input of the run."""
    if not str(out).strip():
        raise UsageError("--out is empty: name the folder to write")
    out = Path(out).expanduser()
    refuse_current_folder(out)
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    refuse_inputs(out, inputs or {})
    _make_dirs(resolved(out).parent)
    if not os.access(resolved(out).parent, os.W_OK):
        raise UsageError(f"cannot write into {resolved(out).parent}")
    return out


# -- the lock ------------------------------------------------------------------------------------------
class _Lock:
    """A lock file held with flock (released by the kernel when the process dies, so a stale
    file never blocks) and holding the owner's pid for the message."""

    def __init__(self, path: Path, folder: Path):
        self.path, self.folder, self.fd = path, folder, None

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            except OSError as e:
                raise UsageError(f"cannot write into {self.path.parent}: {e.strerror or e}") from None
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
        if p.is_symlink():
            raise UsageError(f"cannot create {path}: {p} is a broken symbolic link")
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"cannot create {path}: {p} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # /proc/x: the parent exists yet refuses a folder, which errno calls "no such file"
        why = "that folder does not take new folders" if e.errno == 2 and p.is_dir() else (e.strerror or e)
        raise UsageError(f"cannot create {path} in {p}: {why}") from None
    return missing[::-1]


# -- the record ----------------------------------------------------------------------------------------
def _safe_name(name: Any) -> bool:
    """A recorded path: relative, inside the folder, no '..' (a damaged record deletes nothing)."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _read_record(path: Path) -> dict[str, Any] | None:
    """A run record, or None when absent or not one (a damaged record is ignored, and so deletes nothing)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run"), str):
        return None
    files = data.get("files", [])
    temps = data.get("temporaries", [])
    if not isinstance(files, list) or not isinstance(temps, list):
        return None
    prefix = f"{data.get('prefix', '.longrope')}-{data['run']}-"
    return {**data, "files": [f for f in files if _safe_name(f)],
            "temporaries": [t for t in temps if _safe_name(t) and "/" not in t and t.startswith(prefix)]}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Run:
    """One run's ownership of its output folder (see the module docstring).

    `home` holds the lock, the record and the temporaries: the folder itself, or its parent
    for a folder that appears whole (`whole`), whose run then owns `NAME` and `NAME.*` there.
    """

    folder: Path  # resolved
    whole: bool
    command: str
    keep: tuple[str, ...] = ()
    inputs: tuple[Path, ...] = ()  # resolved: never removed, whatever a record says
    replace: bool = False  # a folder that appears whole may replace what is there (--force)
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    files: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    earlier: dict[str, Any] | None = None
    claimed: bool = False
    recorded: bool = False
    counter: int = 0

    @property
    def home(self) -> Path:
        return self.folder.parent if self.whole else self.folder

    @property
    def prefix(self) -> str:
        return f".{self.folder.name}.longrope" if self.whole else ".longrope"

    @property
    def record_path(self) -> Path:
        return self.home / (f".{self.folder.name}{RECORD}" if self.whole else RECORD)

    def _name(self, path: Path) -> str | None:
        """`path` relative to home when it is an output of this run, else None (outside the
        folder, or inside one of the run's own temporaries: gone with it)."""
        try:
            rel = resolved(path).relative_to(self.home)
        except ValueError:
            return None
        if not rel.parts or rel.parts[0].startswith(f"{self.prefix}-{self.id}-"):
            return None
        if self.whole and not (rel.parts[0] == self.folder.name or rel.parts[0].startswith(self.folder.name + ".")):
            return None
        return rel.as_posix()

    # -- what an earlier run left ----------------------------------------------------------------------
    def start(self, outputs: Iterable[str], marker: str | None) -> None:
        """Read the earlier record, remove that run's temporaries, and refuse outputs no record owns."""
        self.earlier = _read_record(self.record_path)
        (self.home / f"{self.record_path.name}.tmp").unlink(missing_ok=True)  # a record write cut short
        if self.earlier is not None and self.earlier.get("command", self.command) != self.command \
                and any((self.home / f).exists() for f in self.earlier["files"]):
            raise UsageError(f"--out {self.folder} holds the results of a `{self.earlier['command']}` run: choose "
                             f"another folder (nothing was changed)")
        if self.earlier is not None:
            for name in self.earlier["temporaries"]:
                _remove(self.home / name)
            owned = set(self.earlier["files"])
        elif marker is not None and (self.folder / marker).is_file():
            # a folder written before runs kept records: its outputs are what that run wrote
            names = [p.name for p in self.folder.iterdir()] if outputs == EVERYTHING else outputs
            owned = {name for name in names if (self.folder / name).exists() and not name.startswith(".longrope")}
            self.earlier = {"run": "", "files": sorted(owned), "temporaries": []}
        else:
            owned = set()
        strangers = [n for n in outputs if n != "*" and n not in owned and (self.folder / n).exists()]
        if strangers:
            raise UsageError(f"--out {self.folder} holds {', '.join(strangers)}, not written by a longrope run "
                             f"there: choose another folder (nothing was changed)")

    def claim(self) -> None:
        """On the first write: the earlier run's outputs this run does not continue from are removed."""
        if self.claimed:
            return
        self.claimed = True
        if self.earlier is None:
            return
        for name in self.earlier["files"]:
            if self.keep == EVERYTHING or name in self.keep or self._is_input(self.home / name):
                if (self.home / name).exists() and name not in self.files:
                    self.files.append(name)
            else:
                _remove(self.home / name)

    # -- the writers' side (longrope.atomic.Owner) -----------------------------------------------------
    def temporary(self, path: Path) -> Path | None:
        name = self._name(path)
        if name is None:
            return None
        target = self.home / name
        if self._is_input(target):
            raise UsageError(f"{target} is an input of this run; it was left untouched (choose another --out)")
        if target.exists() and not (self.replace and target == self.folder) and name not in self.files \
                and not self._owned_earlier(name):
            raise UsageError(f"{target} exists and was not written by this run or an earlier one; it was left "
                             f"untouched (choose another --out)")
        self.claim()
        tmp = f"{self.prefix}-{self.id}-{self.counter}.tmp"
        self.counter += 1
        self.temporaries.append(tmp)
        self.save()  # recorded before it exists
        return self.home / tmp

    def _is_input(self, path: Path) -> bool:
        return any(i.is_relative_to(resolved(path)) for i in self.inputs)

    def _owned_earlier(self, name: str) -> bool:
        earlier = set(self.earlier["files"]) if self.earlier else set()
        return name in earlier or any(name.startswith(e + "/") for e in earlier)

    def wrote(self, path: Path) -> None:
        name = self._name(path)
        if name is None:
            return
        self.temporaries = [t for t in self.temporaries if (self.home / t).exists()]
        if name not in self.files and not any(name.startswith(f + "/") for f in self.files):
            self.files.append(name)
        self.save()

    def save(self) -> None:
        """Write the record (a plain write and rename: the writers' owner is this run itself)."""
        record = {"run": self.id, "pid": os.getpid(), "command": self.command, "prefix": self.prefix,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": self.files, "temporaries": self.temporaries}
        tmp = self.home / f"{self.record_path.name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.record_path)
        self.recorded = True

    def finish(self) -> None:
        """Remove this run's temporaries; the record stays while the folder holds the run's files
        (beside a folder that appears whole there is nothing left to record)."""
        for name in self.temporaries:
            _remove(self.home / name)
        self.temporaries = []
        self.files = [f for f in self.files if (self.home / f).exists()]
        if self.whole or (self.recorded and not self.files):
            if self.recorded or self.earlier is not None:
                self.record_path.unlink(missing_ok=True)
        elif self.recorded:
            self.save()


@contextmanager
def output_dir(path: str | os.PathLike, create: bool = True, *, command: str = "run", outputs: Iterable[str] = (),
               keep: Iterable[str] = (), marker: str | None = None,
               inputs: Iterable[str | os.PathLike | None] = (), replace: bool = False) -> Iterator[Path]:
    """Own the output folder `path` for one run (every command that writes uses this).

    Refuses a folder another run holds (naming its pid), checks that it can be written before
    any work starts, removes the temporaries a killed run recorded, and refuses `outputs` (names
    at the top of the folder) that exist without a run's record (`marker`: the file that marks a
    folder written before records were kept), and a folder holding another command's results.
    The run's first write removes the files an earlier run of the command recorded, except those
    named in `keep` (EVERYTHING: keep all) and its `inputs` (files it reads: never removed nor
    replaced). replace=True lets a folder that appears whole replace what is at `path` (--force).
    On failure it leaves
    nothing it created: its temporaries go, and so do the folders it made that stayed empty.
    create=False: the folder appears whole (the caller stages it with `staged_dir`); only its
    parent is made, and the lock, record and temporaries live there. In a multi-process launch
    only rank 0 owns the folder.
    """
    if not str(path).strip():
        raise UsageError("--out is empty: name the folder to write")
    given = Path(path).expanduser()
    if given.exists() and not given.is_dir():
        raise UsageError(f"--out {given} exists and is not a directory")
    if _rank() != 0:
        yield given
        return
    folder = resolved(given)
    made = _make_dirs(folder.parent)
    if create:
        made += _make_dirs(folder)
    run = Run(folder, whole=not create, command=command, keep=tuple(keep), replace=replace,
              inputs=tuple(resolved(i) for i in inputs if i is not None and Path(i).expanduser().exists()))
    locks = [_Lock(run.home / (f".{folder.name}.lock" if run.whole else LOCK), given)]
    if run.whole and folder.is_dir():  # a run writing into the folder that this one would replace
        locks.append(_Lock(folder / LOCK, given))
    token = None
    try:
        for lock in locks:
            lock.acquire()  # also the check that the folder can be written, before any work
        run.start(outputs, marker)
        token = own_writes(run)
        yield given
        run.finish()
    except BaseException:
        run.finish()
        for lock in locks:
            lock.release()
        for folder_made in reversed(made):  # innermost first; only while empty
            try:
                folder_made.rmdir()
            except OSError:
                break
        raise
    finally:
        if token is not None:
            release_writes(token)
        for lock in locks:
            lock.release()

