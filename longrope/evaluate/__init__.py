"""Evaluation: perplexity vs length (ppl.py), passkey retrieval (passkey.py), the RULER-style
task suite (tasks.py), and the runner that fills a grid of variants x lengths x kinds of
figure for every command (runner.py)."""
from typing import Callable

Progress = Callable[[int, int], None]  # (items done, items in all): the documents or trials of one cell


def no_progress(done: int, total: int) -> None:
    """A `Progress` that shows nothing (library calls outside a runner)."""
