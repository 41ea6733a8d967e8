"""What pretraining and fine-tuning share: the learning-rate schedule, AdamW, the loss,
padded passkey rows, checkpoints and the atomic model-folder writer."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..factors import FACTORS_FILE, RopeExtension
from ..hf_config import check_exportable, hf_config_dict
from ..atomic import atomic_write_json, ordinary_modes, staged_dir, staged_files
from ..plots import label_axes, pyplot, save_and_close

IGNORE = -100  # label of a position the loss skips (passkey padding)
SCHEDULES = ("constant", "linear", "cosine")


# -- optimisation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Linear warm-up to `lr` over `warmup_steps`, then constant, linear or cosine decay to `min_lr`."""

    lr: float
    steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr: float = 0.0

    def at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(1, self.steps - self.warmup_steps), 1.0)
        if self.kind == "constant":
            return self.lr
        if self.kind == "linear":
            return self.min_lr + (self.lr - self.min_lr) * (1 - progress)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


def lr_at(step: int, cfg) -> float:
    """The learning rate of `step` for a training config with an `lr_schedule()`."""
    return cfg.lr_schedule().at(step)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as nanoGPT sets it up: decay the matrices, not the norms and biases (a tied
    embedding is a matrix too); betas (0.9, 0.95)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def next_token_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T, V] against targets y [B, T] (IGNORE skipped), fp32;
    with `weight` [B, T], the weighted mean over the targets that are not IGNORE."""
    if weight is None:
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="none")
    w = weight.flatten().float() * (y.flatten() != IGNORE)
    return (ce * w).sum() / w.sum()


# -- data ----------------------------------------------------------------------------------------
def padded_row(ids: list[int], T: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt-and-answer row of token ids as (x, y), each [T]: cut to T+1 tokens, padded with
    `pad_id`; the loss ignores the padding."""
    ids = ids[: T + 1]
    row = torch.tensor(ids + [pad_id] * (T + 1 - len(ids)))
    y = row[1:].clone()
    y[len(ids) - 1 :] = IGNORE
    return row[:-1], y


def answer_weights(T: int, start: int, end: int, weight: float) -> torch.Tensor:
    """Loss weights [T] of a row whose ids[start:end] are a passkey's answer: `weight` on the targets
    that predict them (y[j] is ids[j + 1]), 1 elsewhere."""
    w = torch.ones(T)
    w[start - 1 : end - 1] = weight
    return w


# -- checkpoints -----------------------------------------------------------------------------------
class Checkpoints:
    """`out/checkpoints/step-N` folders, each complete or absent; the newest alone is kept.

    `save(step, write_state, record)`: write_state(folder) writes the framework's state (e.g.
    accelerate's `save_state`) into a temporary folder; `record` (JSON) is added, then the
    folder is renamed into place. `is_main` and `barrier` make it safe across processes.
    """

    FOLDER = "checkpoints"
    STATE_FILE = "trainer_state.json"

    def __init__(self, out: Path, is_main: bool = True, barrier: Callable[[], None] = lambda: None,
                 share: Callable[[Any], Any] = lambda obj: obj):
        """The checkpoints of a run writing `out`: out/checkpoints (`in_folder` for another place).
        `share(obj)` returns the main process's `obj` in every process (where a checkpoint is staged)."""
        self.folder, self.is_main, self.barrier, self.share = out / self.FOLDER, is_main, barrier, share

    @classmethod
    def in_folder(cls, folder: Path) -> "Checkpoints":
        """Checkpoints kept in `folder` itself (a run whose output appears only when complete)."""
        made = cls(folder)
        made.folder = folder
        return made

    def list(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        done = [p for p in self.folder.glob("step-*") if (p / self.STATE_FILE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def last_step(self) -> int | None:
        found = self.list()
        return int(found[-1].name.split("-")[1]) if found else None

    def load_record(self) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint and its record (UsageError when the record is unreadable)."""
        last = self.list()[-1]
        try:
            record = json.loads((last / self.STATE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot resume from {last}: its {self.STATE_FILE} is unreadable ({e}); remove that "
                             f"folder") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise UsageError(f"cannot resume from {last}: its {self.STATE_FILE} holds no step; remove that folder")
        return last, record

    def save(self, step: int, write_state: Callable[[Path], None], record: dict[str, Any]) -> None:
        """Stage step-N (the run's own temporary, see `staged_dir`), every process writing its part,
        then rename it into place and drop the older ones."""
        final = self.folder / f"step-{step:06d}"
        if not self.is_main:
            write_state(Path(self.share(None)))
            self.barrier()
            self.barrier()
            return
        with staged_dir(final, create=False, replace=True) as tmp:
            write_state(Path(self.share(str(tmp))))
            self.barrier()
            ordinary_modes(tmp)  # safetensors writes its file private
            atomic_write_json(tmp / self.STATE_FILE, {"step": step, **record})
        for old in self.list()[:-1]:  # keep the newest only
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# -- model folders -------------------------------------------------------------------------------
Finish = Callable[[Path, list[str]], str]  # (folder, export notes) -> name of the file written last


def write_model_dir(model, tokenizer, out: Path, finish: Finish, extension: RopeExtension | None = None,
                    state_dict: dict | None = None, replace: bool = False, overwrite: bool = False) -> None:
    """Write an HF model directory: weights, tokenizer, a config.json carrying `extension`
    (transformers' longrope keys) and our factors file (it also keeps the start token, which
    HF configs cannot express); `finish(folder, notes)` adds the run's own record files.

    replace=True: the whole folder is staged beside `out` and renamed into place (an `out` holding
    files is replaced only with overwrite=True, see `staged_dir`). Otherwise
    `out` may already hold other files (checkpoints): the files are staged in a temporary
    folder inside it and moved in one by one, config.json and the record last, so a
    half-written directory never looks complete.
    """
    if replace:
        with staged_dir(out, replace=overwrite) as tmp:
            _write_model_files(model, tokenizer, tmp, finish, extension, state_dict)
        return
    out.mkdir(parents=True, exist_ok=True)
    with staged_files(out) as (tmp, move_in):
        last = ("config.json", _write_model_files(model, tokenizer, tmp, finish, extension, state_dict))
        move_in(sorted(p.name for p in tmp.iterdir() if p.name not in last) + list(last))


def _write_model_files(model, tokenizer, tmp: Path, finish: Finish, extension: RopeExtension | None,
                       state_dict: dict | None) -> str:
    model.config.use_cache = True
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    notes = []
    if extension is not None:
        portable, notes = check_exportable(extension, drop_start_token=True)
        config = json.loads((tmp / "config.json").read_text())
        atomic_write_json(tmp / "config.json", hf_config_dict(config, portable))
        extension.save(tmp / FACTORS_FILE)
    return finish(tmp, notes)


def plot_losses(curve: list[dict], path: Path, title: str = "training loss") -> None:
    """loss.png: the loss per step of a training run (nothing when the curve is empty)."""
    if not curve:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["step"] for c in curve], [c["loss"] for c in curve], lw=1.2)
    label_axes(ax, "step", "training loss", title, legend=False)
    save_and_close(fig, path, dpi=110)
