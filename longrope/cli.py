"""`longrope` command line: one command, one module per subcommand under `longrope.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func`. Bad input raises UsageError, printed as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UsageError

COMMAND_MODULES = [
    "longrope.commands.info",
    "longrope.commands.pretrain",
    "longrope.commands.eval_ppl",
    "longrope.commands.passkey",
    "longrope.commands.tasks",
    "longrope.commands.search",
    "longrope.commands.finetune",
    "longrope.commands.extend",
    "longrope.commands.export",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longrope", description="Extend the context window of RoPE language models (LongRoPE).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UsageError as e:
        print(f"longrope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"longrope {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
