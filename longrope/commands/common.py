"""What the subcommands share beyond the settings (longrope.settings): where results go, and
the plain text table they print."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..options import add_options, option


@dataclass(frozen=True)
class OutputOptions:
    """Where a command writes, and what it does with what is there."""

    out: str = option(dataclasses.MISSING, "output directory", metavar="DIR")
    resume: bool = option(False, "continue the run saved in --out (after a crash, Ctrl-C or SIGKILL)")
    force: bool = option(False, "replace --out if it exists (never an input of the run nor the current folder)")


def add_command(sub, name: str, run: Callable, options: Sequence[Any], help: str, **parser_kwargs) -> None:
    """A subcommand whose flags all come from option dataclasses: `options` holds classes, or
    (class, add_options keywords) pairs; `parser_kwargs`: description, epilog."""
    p = sub.add_parser(name, help=help, **parser_kwargs)
    for item in options:
        cls, kwargs = item if isinstance(item, tuple) else (item, {})
        add_options(p, cls, **kwargs)
    p.set_defaults(func=run)


def print_table(rows: list[dict], row_key: str, col_key: str, value_key: str, fmt: str = "{:.2f}",
                col_name=str) -> str:
    """rows -> a plain text table (rows = methods, columns = lengths, headed `col_name(column)`);
    returned and printed."""
    row_labels = list(dict.fromkeys(r[row_key] for r in rows))
    cols = sorted({r[col_key] for r in rows})
    cell = {(r[row_key], r[col_key]): r[value_key] for r in rows}
    w = max(8, *(len(str(x)) for x in row_labels))
    cw = max(9, *(len(col_name(c)) for c in cols))
    lines = [f"{row_key:<{w}} " + " ".join(f"{col_name(c):>{cw}}" for c in cols)]
    for label in row_labels:
        vals = [cell.get((label, c)) for c in cols]
        lines.append(f"{label:<{w}} " + " ".join(f"{fmt.format(v) if v is not None else '-':>{cw}}" for v in vals))
    text = "\n".join(lines)
    print(text)
    return text
