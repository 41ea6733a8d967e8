"""Settings dataclasses that declare their command-line flags once (as litgpt and torchtune do).

A field made with `option(default, help)` becomes a flag `--field-name` whose type, default
and help come from the field; `add_options` adds them to a parser and `build` makes the
dataclass back from the parsed arguments (or from any object with those attributes).

    population: int = option(64, "P, the population size")   # --population N (default: 64)
    early_reject: bool = option(True, "...", flag="--no-early-reject")   # store_false
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

_ARGPARSE_KEYS = ("choices", "metavar", "required")


def option(default: Any = dataclasses.MISSING, help: str = "", flag: str | None = None,
           default_help: str | None = None, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line flag. default_help: how the help names a
    default that is not a plain value (e.g. "1.25*s" for None)."""
    metadata = {"help": help, "flag": flag, "default_help": default_help, **argparse_kwargs}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


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
        parser.add_argument(flag, dest=f.name, type=kind, help=meta["help"] + shown, **kwargs)


def build(cls, source: Any, **overrides: Any):
    """`cls` from the attributes of `source` that are its fields (argparse args, another dataclass)."""
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if hasattr(source, f.name)}
    return cls(**{**values, **overrides})
