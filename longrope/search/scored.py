"""Every document loss of a search, kept as it comes, so a stop loses at most one forward pass.

A generation of a real-model search can take hours (one 16k-token SmolLM2 forward is a
minute on a laptop CPU), while `state.json` records only complete generations. Scoring
(search/scoring.py `row_losses`) therefore looks each (factors, n_hat, document) loss up here
first, and appends each one it computes to `scored.jsonl` in the output folder (one fsync'd
line each). The objective is deterministic, so a remembered loss is the value a new forward
would give, and a resumed search repeats an uninterrupted one.

The file's first line is the fingerprint of the search (model, documents, chunking, ...): a
log written by other work is ignored and replaced. It is emptied after every checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
