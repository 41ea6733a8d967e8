"""Settings dataclasses that declare every setting once (as litgpt and torchtune do): its type,
bounds, choices, default and help. The command-line flags and the recipe keys are both built
from them.

A field made with `option(default, help)` becomes a flag `--field-name` whose type, default
and help come from the field; `add_options` adds them to a parser and `build` makes the
dataclass back from the parsed arguments (or from any object with those attributes);
`from_mapping` makes it from a recipe's mapping, checking every value against the same
declaration.

    population: int = option(64, "P, the population size", min=1)   # --population N (default: 64)
    early_reject: bool = option(True, "...", flag="--no-early-reject")   # store_false
    lengths: list[int] | None = option(None, "...", min=2)           # --lengths 256,512 / lengths: [256, 512]
    factors: list[str] = option([], "...", repeat=True)             # --factors A --factors B

Bounds (`min`, `max`, `above`, `below`, for every item of a list) and `choices` are checked
when the flag is parsed and, through `check_options`, whenever the dataclass is built from
elsewhere; a float must always be finite. Messages name the flag; `rename_flags` turns them
into another source's key names (a recipe's `search.docs`).
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
OPTION_TAG = "option_of"  # set on every parser action made from an option field: its dataclass


def option(default: Any = dataclasses.MISSING, help: str = "", flag: str | None = None,
           default_help: str | None = None, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, repeat: bool = False, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line flag. default_help: how the help names a
    default that is not a plain value (e.g. "1.25*s" for None). min/max: inclusive bounds,
    above/below: exclusive ones. A list field is one comma-separated flag, or with repeat=True
    a flag given once per item."""
    metadata = {"help": help, "flag": flag, "default_help": default_help, "min": min, "max": max,
                "above": above, "below": below, "repeat": repeat, **argparse_kwargs}
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
    """UsageError naming the flag of the first `option` field of `obj` out of its bounds or its
    choices (or a float that is not finite). Call it in `__post_init__`/`validate`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "help" not in f.metadata or value is None:
            continue
        choices = f.metadata.get("choices")
        for item in value if isinstance(value, list) else [value]:
            if choices is not None and item not in choices:
                raise UsageError(f"{flag_name(f)} must be one of {', '.join(map(str, choices))}, got {item!r}")
            if isinstance(item, (bool, str, dict)):
                continue
            problem = out_of_range(item, **{k: f.metadata.get(k) for k in _BOUNDS})
            if problem:
                raise UsageError(f"{flag_name(f)} {problem}")


def rename_flags(message: str, cls, where: str) -> str:
    """`message` with the flags of `cls`'s fields written as `where.field` (a recipe's keys)."""
    names = {flag_name(f): f"{where}.{f.name}" if where else f.name for f in dataclasses.fields(cls) if "help" in f.metadata}
    return re.sub(r"--[a-z][a-z0-9-]*", lambda m: names.get(m.group(0), m.group(0)), message)


def _scalar_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, getattr(types, "UnionType", None)):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _item_type(hint: Any) -> tuple[Any, bool]:
    """(the type of one value, whether the field is a list of them)."""
    kind = _scalar_type(hint)
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0], True
    return kind, False


def _comma_list(kind: Any, flag: str, meta: dict) -> Callable[[str], list]:
    """An argparse `type` for a comma-separated list (a trailing comma allowed), each item checked."""
    item = ranged(kind, **{k: meta.get(k) for k in _BOUNDS}) if kind in (int, float) else kind
    plural = {int: "integers", float: "numbers"}.get(kind, "values")

    def convert(text: str) -> list:
        if not text.strip():
            return []  # --methods "": none of them (the field's own check says whether that is allowed)
        items = [v.strip() for v in text.split(",")]
        if len(items) > 1 and not items[-1]:
            items.pop()
        if not all(items):
            raise argparse.ArgumentTypeError(f"must be comma-separated {plural}, got {text!r}")
        try:
            values = [kind(v) for v in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated {plural}, got {text!r}") from None
        values = [item(v) for v in items]
        choices = meta.get("choices")
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {flag.lstrip('-').rstrip('s')} {bad[0]!r}; choose from "
                                             f"{', '.join(map(str, choices))}")
        return values

    convert.__name__ = f"comma-separated {getattr(kind, '__name__', 'value')}s"
    return convert


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), required: tuple[str, ...] = (),
                **defaults: Any) -> None:
    """One flag per `option` field of dataclass `cls` (except `skip`); `required`: fields this
    parser needs given; `defaults` override a field's default for this parser."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        meta = f.metadata
        default = defaults.get(f.name, f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        flag = flag_name(f)
        kwargs = {k: meta[k] for k in _ARGPARSE_KEYS if k in meta}
        kind, many = _item_type(hints[f.name])
        if kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
            _tag(parser.add_argument(flag, dest=f.name, help=meta["help"], **kwargs), cls)
            continue
        if default is dataclasses.MISSING or f.name in required:
            kwargs["required"] = True
            shown = ""
        else:
            kwargs["default"] = default
            shown = meta["default_help"] or (None if default is None or default == [] else
                                             ",".join(map(str, default)) if many else default)
            shown = "" if shown is None else f" (default: {shown})"
        if many and meta.get("repeat"):
            kwargs.update(action="append", default=list(kwargs.get("default") or []))
            kind = ranged(kind, **{k: meta.get(k) for k in _BOUNDS}) if kind in (int, float) else kind
        elif many:
            kind = _comma_list(kind, flag, meta)
            kwargs.pop("choices", None)
        elif kind in (int, float):
            kind = ranged(kind, **{k: meta.get(k) for k in _BOUNDS})
        _tag(parser.add_argument(flag, dest=f.name, type=kind, help=meta["help"] + shown, **kwargs), cls)


def _tag(action: argparse.Action, cls) -> None:
    setattr(action, OPTION_TAG, cls)


def from_mapping(cls, data: Any, where: str, exclude: tuple[str, ...] = (), **fixed: Any):
    """`cls` from a recipe's mapping: only its fields (less `exclude`) as keys, each value of the
    declared type (an int where an int is declared, a list where a list is), in its bounds and
    choices; UsageError naming `where.key` otherwise. `fixed`: values set by the caller."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"recipe: {where} must be a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in exclude and f.init]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise UsageError(f"recipe: unknown key(s) {', '.join(map(str, unknown))} in {where or 'the recipe'}; "
                         f"allowed: {', '.join(allowed)}")
    values = {k: check_value(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**values, **fixed)
        if hasattr(obj, "validate"):
            obj.validate()
        return obj
    except UsageError as e:  # a setting the dataclass itself refuses: named by its recipe key
        raise UsageError(f"recipe: {rename_flags(str(e), cls, where)}") from None
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and f.name in allowed
                   and f.default is f.default_factory is dataclasses.MISSING]
        raise UsageError(f"recipe: {where or 'the recipe'} needs {', '.join(missing) or str(e)}") from None


def check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` (from YAML) as the annotated type, or UsageError naming `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"recipe: {where} must be a list, got {value!r}")
        return [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    wrong = {bool: lambda v: not isinstance(v, bool), str: lambda v: not isinstance(v, str),
             int: lambda v: isinstance(v, bool) or not isinstance(v, int),
             float: lambda v: isinstance(v, bool) or not isinstance(v, (int, float))}
    if hint not in wrong:
        raise TypeError(f"unsupported annotation {hint!r}")
    if wrong[hint](value):
        what = {bool: "true or false", str: "a string", int: "an integer", float: "a number"}[hint]
        raise UsageError(f"recipe: {where} must be {what}, got {value!r}")
    return float(value) if hint is float else value


def build(cls, source: Any, **overrides: Any):
    """`cls` from the attributes of `source` that are its fields (argparse args, another dataclass)."""
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if hasattr(source, f.name)}
    return cls(**{**values, **overrides})
