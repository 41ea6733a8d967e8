"""The one training loop of pretraining (train/pretrain.py) and fine-tuning (train/finetune.py).

    for step in start..end-1:                  # one progress bar over all the run's steps
        lr = schedule.at(step)                 # warm-up, then constant / linear / cosine decay
        loss = train_step(step)                # the run's own: micro-batches, backward, clipping, optimizer step
        stop unless the loss is finite         # one line, "training diverged at step N"; nothing more is saved
        record the loss (the curve and the bar every k-th step)
        every save_every steps: checkpoint
        Ctrl-C or SIGTERM pending: checkpoint, stop   # between steps only (`StepBoundary`)

Only the step differs: pretraining runs plain PyTorch in one process (bf16 autocast where the
CPU runs it fast), fine-tuning runs `accelerate` (gradient accumulation, DDP / FSDP / DeepSpeed,
clipping of sharded gradients).
"""
from __future__ import annotations

import math
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..errors import UsageError
from .toolkit import Schedule, set_lr


@dataclass
class TrainingLog:
    """The loss of every step, and (step, loss, lr) on the curve every `every` steps and at the last."""

    losses: list[float] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    every: int = 1

    def add(self, step: int, loss: float, lr: float, total: int, bar) -> None:
        self.losses.append(loss)
        if step % self.every == 0 or step == total - 1:
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")
            self.curve.append({"step": step, "loss": loss, "lr": lr})


@dataclass
class Saving:
    """A run's checkpoints: every `every` steps (0: none on the way) and when Ctrl-C or SIGTERM
    stops it between steps."""

    every: int
    save: Callable[[int], Any]  # save(done): a checkpoint holding the first `done` steps
    last_saved: Callable[[], int | None]  # the steps the newest checkpoint holds (None: none yet)
    folder: Path  # where they are, for the message on the way out
    hint: str  # how to continue
    say: Callable[[str], None]  # what an interrupted run tells (the main process: to stderr)
    sync: Callable[[bool], bool] | None = None  # any process asked to stop? (all stop after the same step)


def train_loop(train_step: Callable[[int], float], optimizer: torch.optim.Optimizer, schedule: Schedule,
               log: TrainingLog, steps: range, total: int, desc: str, progress: bool,
               saving: Saving | None = None) -> None:
    """Run `steps` of a run of `total`: each at the schedule's learning rate, `train_step(step)`
    returning its mean loss, recorded in `log`. UsageError (one line) once a loss is not finite.
    With `saving`: a checkpoint every `saving.every` steps, and Ctrl-C or SIGTERM stops the run
    after the step in progress with a checkpoint (a second one at once, keeping only the last
    periodic one); without it Ctrl-C stops at once. Either way KeyboardInterrupt goes on to the
    caller."""
    bar = tqdm(steps, initial=steps.start, total=total, desc=desc, disable=not progress, dynamic_ncols=True)

    def run(stop: StepBoundary | None) -> None:
        for step in bar:
            lr = schedule.at(step)
            set_lr(optimizer, lr)
            loss = train_step(step)
            if not math.isfinite(loss):
                bar.close()
                raise UsageError(f"training diverged at step {step}: loss {loss}; lower --lr (nothing was saved "
                                 f"from this run)")
            log.add(step, loss, lr, total, bar)
            if stop is not None:
                done = step + 1
                if saving.every and done % saving.every == 0 and done < total:
                    saving.save(done)
                stop.check(saving.sync)
        bar.close()

    if saving is None:
        run(None)
    else:
        stop_between_steps(run, saving, lambda: len(log.losses))


class StepInterrupted(KeyboardInterrupt):
    """Ctrl-C taken at a step boundary: the weights hold exactly the steps counted so far."""


class StepBoundary:
    """Ctrl-C (or SIGTERM, as a scheduler's preemption sends) during a training step waits for
    the step to end, so that a checkpoint written on the way out never holds an optimizer update
    its step count does not (a resumed run would train that batch twice). A second one stops
    at once, with no checkpoint.

        with StepBoundary() as stop:
            for step in ...:
                train(step); record(step)
                stop.check(sync)   # raises StepInterrupted once a stop is pending

    `sync(flag)` (optional) returns whether any process was asked to stop, so that every
    process stops after the same step. Outside the main thread it defers nothing, nor for a
    signal the process ignores (a job started with nohup).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> None:
        self.pending, self.old, self.say = False, {}, say

    def __enter__(self) -> "StepBoundary":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self.old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt  # the second one: mid-step, nothing may be saved
        self.pending = True
        self.say("\nstopping after this step (Ctrl-C again to stop at once, losing it)")

    def check(self, sync: Callable[[bool], bool] | None = None) -> None:
        if sync(self.pending) if sync is not None else self.pending:
            raise StepInterrupted

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def stop_between_steps(loop: Callable[[StepBoundary], None], saving: Saving, finished: Callable[[], int]) -> None:
    """Run a training loop, `loop(stop)` calling `stop.check()` after each step, so that Ctrl-C
    or SIGTERM ends it between steps: then the `finished()` steps are saved, unless the last
    checkpoint holds them, and the run says where they are; a second one stops mid-step and
    saves nothing. Either way KeyboardInterrupt goes on to the caller."""
    try:
        with StepBoundary(saving.say) as stop:
            loop(stop)
    except StepInterrupted:
        done = finished()  # steps finished, resumed ones included
        if done > (saving.last_saved() or 0):
            saving.save(done)
        saving.say(f"interrupted: step {done} is saved in {saving.folder}; {saving.hint}")
        raise
    except KeyboardInterrupt:  # mid-step: the weights match no step count
        last = saving.last_saved()
        saving.say(f"interrupted mid-step: {f'step {last} is saved' if last else 'nothing is saved'} in "
                   f"{saving.folder}; {saving.hint}")
        raise
