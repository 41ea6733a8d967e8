"""Every document loss of a search, kept as it comes, so a stop loses at most one forward pass.

A generation of a real-model search can take hours (one 16k-token SmolLM2 forward is a
minute on a laptop CPU), while `state.json` records only complete generations. The objective
is therefore wrapped: each (factors, n_hat, document) loss it computes is appended to
`scored.jsonl` in the output folder (one fsync'd line each), and a loss found there is
returned instead of computed again. The objective is deterministic, so a remembered loss is
the value a new forward would give, and a resumed search repeats an uninterrupted one.

The file's first line is the fingerprint of the search (model, documents, chunking, ...): a
log written by other work is ignored and replaced. It is emptied after every checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..atomic import atomic_write_text

SCORED_FILE = "scored.jsonl"
Key = tuple[tuple[float, ...], int, int]  # (factors, start_token, document index)


def _key(factors, start_token, doc: int) -> Key:
    return tuple(float(x) for x in np.asarray(factors, dtype=np.float64)), int(start_token), int(doc)


def _line(key: Key, loss: float) -> str:
    factors, start, doc = key
    return json.dumps({"factors": list(factors), "start_token": start, "doc": doc, "loss": loss})


class ScoredLog:
    """The document losses of the generation in progress: loaded from, and appended to, a file."""

    def __init__(self, path: Path | None, fingerprint: dict[str, Any]):
        """path None: remember in memory only (processes other than the one writing --out)."""
        self.path, self.header = path, json.dumps({"search": fingerprint}, sort_keys=True, default=str)
        self.losses: dict[Key, float] = self._read()
        self._file = None

    def _read(self) -> dict[Key, float]:
        if self.path is None:
            return {}
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return {}
        if not lines or lines[0] != self.header:
            return {}  # another search's log (or none): start afresh
        losses = {}
        for line in lines[1:]:
            try:  # a line cut by a kill is the only one that can fail, and it is the last
                d = json.loads(line)
                losses[_key(d["factors"], d["start_token"], d["doc"])] = float(d["loss"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break
        return losses

    def get(self, factors, start_token, doc: int) -> float | None:
        return self.losses.get(_key(factors, start_token, doc))

    def add(self, factors, start_token, doc: int, loss: float) -> None:
        if self.path is None:
            self.losses[_key(factors, start_token, doc)] = float(loss)
            return
        if self._file is None:  # first loss of this process: the file rewritten clean (atomically), then appended to
            lines = [self.header] + [_line(key, value) for key, value in self.losses.items()]
            atomic_write_text(self.path, "\n".join(lines) + "\n")
            self._file = open(self.path, "a")
        key = _key(factors, start_token, doc)
        self.losses[key] = float(loss)
        self._file.write(_line(key, float(loss)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def clear(self) -> None:
        """Forget everything: called once the generation's losses are in state.json."""
        self.losses = {}
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Remembering:
    """The objective, answering from `log` where it can and adding every loss it computes."""

    def __init__(self, objective, log: ScoredLog):
        self._objective, self.log = objective, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objective, name)

    def __call__(self, factors, start_token) -> Iterator[float]:
        for doc in range(len(self._objective.docs)):
            yield self.losses([(factors, start_token, doc)])[0]

    def losses(self, rows: Sequence[tuple]) -> list[float]:
        """As the objective's `losses`, computing only the rows not in the log."""
        todo = [row for row in rows if self.log.get(*row) is None]
        if todo:
            for row, loss in zip(todo, self._objective.losses(todo)):
                self.log.add(*row, loss)
        return [self.log.get(*row) for row in rows]
