"""Settings dataclasses that declare their command-line flags once (as litgpt and torchtune do).

A field made with `option(default, help)` becomes a flag `--field-name` whose type, default
and help come from the field; `add_options` adds them to a parser and `build` makes the
dataclass back from the parsed arguments (or from any object with those attributes).

    population: int = option(64, "P, the population size", min=1)   # --population N (default: 64)
    early_reject: bool = option(True, "...", flag="--no-early-reject")   # store_false

Bounds (`min`, `max`, `above`, `below`) are checked when the flag is parsed and, through
`check_options`, whenever the dataclass is built from elsewhere (a recipe); a float must
always be finite. Messages name the flag; `rename_flags` turns them into another source's
key names (a recipe's `search.docs`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from typing import Any, Callable

from .errors import UsageError

_ARGPARSE_KEYS = ("choices", "metavar", "required")
_BOUNDS = ("min", "max", "above", "below")


def option(default: Any = dataclasses.MISSING, help: str = "", flag: str | None = None,
           default_help: str | None = None, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line flag. default_help: how the help names a
    default that is not a plain value (e.g. "1.25*s" for None). min/max: inclusive bounds,
    above/below: exclusive ones."""
    metadata = {"help": help, "flag": flag, "default_help": default_help, "min": min, "max": max,
                "above": above, "below": below, **argparse_kwargs}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def out_of_range(value: Any, min: float | None = None, max: float | None = None, above: float | None = None,
                 below: float | None = None) -> str | None:
    """What is wrong with a number (None: nothing): not finite, or outside the bounds."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    for bound, bad, word in ((min, lambda b: value < b, ">="), (max, lambda b: value > b, "<="),
                             (above, lambda b: value <= b, ">"), (below, lambda b: value >= b, "<")):
        if bound is not None and bad(bound):
            return f"must be {word} {bound}, got {value}"
    return None


def ranged(kind: type, min: float | None = None, max: float | None = None, above: float | None = None,
           below: float | None = None) -> Callable[[str], Any]:
    """An argparse `type` that parses `kind` (int or float) and checks its bounds, so a bad value
    is argparse's one-line error (exit 2) before anything runs."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        problem = out_of_range(value, min, max, above, below)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = kind.__name__
    return convert


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def check_options(obj: Any) -> None:
    """UsageError naming the flag of the first `option` field of `obj` out of its bounds (or a
    float that is not finite). Call it in `__post_init__`/`validate`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "help" not in f.metadata or value is None or isinstance(value, (bool, str, list, dict)):
            continue
        problem = out_of_range(value, **{k: f.metadata.get(k) for k in _BOUNDS})
        if problem:
            raise UsageError(f"{flag_name(f)} {problem}")


def rename_flags(message: str, cls, where: str) -> str:
    """`message` with the flags of `cls`'s fields written as `where.field` (a recipe's keys)."""
    names = {flag_name(f): f"{where}.{f.name}" for f in dataclasses.fields(cls) if "help" in f.metadata}
    return re.sub(r"--[a-z][a-z0-9-]*", lambda m: names.get(m.group(0), m.group(0)), message)


def _scalar_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, getattr(types, "UnionType", None)):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), **defaults: Any) -> None:
    """One flag per `option` field of dataclass `cls` (except `skip`); `defaults` override a
    field's default for this parser."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        meta = f.metadata
        default = defaults.get(f.name, f.default)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kwargs = {k: meta[k] for k in _ARGPARSE_KEYS if k in meta}
        kind = _scalar_type(hints[f.name])
        if kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
            parser.add_argument(flag, dest=f.name, help=meta["help"], **kwargs)
            continue
        if default is dataclasses.MISSING:
            kwargs["required"] = True
            shown = ""
        else:
            kwargs["default"] = default
            shown = meta["default_help"] or (None if default is None else default)
            shown = "" if shown is None else f" (default: {shown})"
        if kind in (int, float):
            kind = ranged(kind, **{k: meta.get(k) for k in _BOUNDS})
        parser.add_argument(flag, dest=f.name, type=kind, help=meta["help"] + shown, **kwargs)


def build(cls, source: Any, **overrides: Any):
    """`cls` from the attributes of `source` that are its fields (argparse args, another dataclass)."""
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if hasattr(source, f.name)}
    return cls(**{**values, **overrides})
