"""Reading back what a run or a user wrote: one place that turns a file into data or into a
one-line UsageError naming it (missing, not UTF-8, not JSON, nested past any sane depth), and
names the settings that changed between a saved run and this one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UsageError


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file's content; UsageError naming it when it cannot be read or is not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {display(path)} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"cannot read {what} {display(path)}: {e.strerror or e}") from None


def display(path: str | os.PathLike) -> str:
    """A path as a message can print it (a name that is not UTF-8 shows its bytes escaped)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def parse_json(text: str, what: str) -> Any:
    """JSON text as data; UsageError for malformed JSON, nesting too deep for the parser, or a
    string holding a lone surrogate (text that cannot be encoded again)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply to be a longrope file") from None
    _check_strings(data, what)
    return data


def _check_strings(data: Any, what: str) -> None:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"{what} holds a string that is not valid Unicode ({item[:40]!r})") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def read_json_file(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a missing or malformed file is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} not found: {display(path)}")
    return parse_json(read_text(path, what), f"{what} {display(path)}")


def read_json_or_none(path: str | os.PathLike) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a cache to rebuild)."""
    try:
        return read_json_file(path)
    except UsageError:
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
