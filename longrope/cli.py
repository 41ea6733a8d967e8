"""`longrope` command line: one command, one module per subcommand under `longrope.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func`. Bad input raises UsageError, printed as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import re
import signal
import sys
import threading

from .errors import UsageError
from .readback import display
from .version import __version__

COMMAND_MODULES = [
    "longrope.commands.info",
    "longrope.commands.pretrain",
    "longrope.commands.eval_ppl",
    "longrope.commands.passkey",
    "longrope.commands.tasks",
    "longrope.commands.lm_eval",
    "longrope.commands.search",
    "longrope.commands.finetune",
    "longrope.commands.extend",
    "longrope.commands.export",
]


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; a paragraph with an indented line (command examples)
    kept as written."""

    def _fill_text(self, text, width, indent):
        out = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(super()._fill_text(" ".join(line.strip() for line in lines), width, indent))
        return "\n\n".join(out)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = _Formatter
        super().__init__(*args, **kwargs)

    def error(self, message):  # argparse's own errors: one line, exit 2
        # "argument --docs: must be >= 1, got 0" -> "--docs must be >= 1, got 0", as our own checks say it
        message = re.sub(r"^argument (--[\w-]+): (must |expected )", r"\1 \2", message)
        message = re.sub(r"^argument (--[\w-]+): ", r"\1: ", message)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _close_progress_bars() -> None:
    """End any progress bar still open, so the error that follows starts on its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longrope", description="Extend the context window of RoPE language models (LongRoPE).")
    parser.add_argument("--version", action="version", version=f"longrope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class _KnownNoise(logging.Filter):
    """Library warnings that say nothing to a longrope user: transformers on the vLLM keys
    (`short_mscale`, `long_mscale`) an export carries on purpose, and accelerate on the tied
    output embedding it leaves out of every checkpoint (reloading ties it again)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if re.match(r"Unrecognized keys in `rope_(parameters|scaling)`", msg) and "mscale" in msg:
            return not set(re.findall(r"'(\w+)'", msg.split(":", 1)[1])) <= {"short_mscale", "long_mscale"}
        return "Removed shared tensor {'lm_head.weight'}" not in msg


def _quiet_known_noise() -> None:
    for name in ("transformers.modeling_rope_utils", "accelerate.utils.other"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _KnownNoise) for f in logger.filters):
            logger.addFilter(_KnownNoise())


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up (temporaries, locks) as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a command started (while its modules load)
        _close_progress_bars()
        print("longrope: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    _quiet_known_noise()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's one-line error (--help exits 0 as usual)
        if not e.code:
            raise
        return e.code if isinstance(e.code, int) else 2
    try:
        result = args.func(args)
    except UsageError as e:
        _close_progress_bars()
        print(f"longrope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that could not be read or written once work started (disk full, permissions)
        _close_progress_bars()
        where = f" {display(e.filename)}" if e.filename else ""
        print(f"longrope {args.command}: error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"longrope {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
