"""Fine-tuning a model at the extended length with its rescaled RoPE (LongRoPE section 3.3).

Reads top to bottom, nanoGPT style, on `accelerate` (one CPU process, or DDP / FSDP /
DeepSpeed on several GPUs through `accelerate launch --config_file ...`):

    model  = load_model(M) with the extension installed (the one seam, `install_rope`)
    stream = BOS doc EOS BOS doc EOS ... over the training splits        (paper: RedPajama
    rows   = consecutive N+1-token chunks of the stream, seeded order     cut into 128k chunks
    for step in steps:                                                    with BOS/EOS)
        lr = warm-up, then linear / cosine decay (paper: 2e-5, linear)
        grad_accum micro-batches -> loss.backward()      (bf16 autocast where supported)
        clip gradients -> AdamW step
        every save_every steps: checkpoint (model, optimizer, RNG, loss log)
    save an HF model directory whose config carries the factors

Micro-batch m is a pure function of (seed, m, rank), so `--resume` needs no data-loader
state: it loads the last checkpoint and repeats the uninterrupted run's loss sequence.

Mixed context window training (LongRoPE2, arXiv 2502.20082, section 3.3): a share of the
micro-batches are short sequences of the native length trained with the original RoPE,
the rest long sequences with the rescaled RoPE; the model then keeps `short_factor` = 1 and
`short_attention_factor` = 1 (the original RoPE within the native context).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import CORPUS_HELP, DEFAULT_CORPUS, load_corpus, split_corpus, tokenize_corpus
from ..errors import UsageError, gist
from ..evaluate.passkey import MAX_KEY, build_prompt
from ..factors import RopeExtension
from ..atomic import atomic_write_json
from ..readback import changed_keys
from ..version import versions
from ..models.device import auto_mixed_precision
from ..options import check_options, option
from ..models.load import load_model
from ..seam import install_rope
from .pretrain import TRAIN_SPLITS  # the tiny preset's pretraining data; "test" stays held out
from .loop import Saving, TrainingLog, train_loop
from .toolkit import (
    IGNORE, SCHEDULES, Checkpoints, Schedule, adamw, answer_weights, next_token_loss, padded_row, plot_losses,
    write_model_dir,
)

RECORD_FILE = "finetune.json"  # written last: its presence means the run is complete
PRECISIONS = ("auto", "no", "bf16", "fp16")
# a passkey row's prompt length: uniform in [N/4, N], log-uniform in [L, N], or either with equal chance
PASSKEY_LENGTHS = ("upper", "log", "mix")


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the `longrope finetune` flags and a recipe's `finetune`)."""

    length: int = option(help="tokens per training sequence (N)", min=2)
    steps: int = option(help="optimizer steps", min=1)
    batch_size: int = option(1, "sequences per micro-batch and process", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1)
    lr: float = option(2e-5, "peak learning rate (the paper's for LLaMA2)", above=0, max=10)
    schedule: str = option("linear", "decay after warm-up (linear: the paper's)", choices=SCHEDULES)
    warmup_steps: int = option(0, "linear warm-up steps", min=0)
    min_lr_ratio: float = option(0.0, "decay floor as a share of --lr", min=0, max=1)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0, max=10)
    grad_clip: float = option(1.0, "max global gradient norm, 0 = off", min=0)
    gradient_checkpointing: bool = option(False, "recompute activations in backward (memory for time)")
    mixed_precision: str = option("auto", "autocast; auto = bf16 on GPUs and AMX/AVX512-BF16 CPUs", choices=PRECISIONS)
    mixed_context: float = option(0.0, "LongRoPE2 mixed context window: share of micro-batches that are native-length "
                                  "sequences trained with the original RoPE (0 = off)", min=0, below=1)
    passkey_fraction: float = option(0.0, "share of rows replaced by passkey prompts of random length", min=0, max=1)
    passkey_lengths: str = option("upper", "their prompt lengths: upper = uniform in [N/4, N]; log = log-uniform from the "
                                  "native length to N (every scale trained with the long factors); mix = either, "
                                  "with equal chance",
                                  choices=PASSKEY_LENGTHS)
    answer_weight: float = option(1.0, "loss weight of a passkey row's answer tokens and the EOS that ends them "
                                  "(every other token weighs 1)", min=0, max=1e6)
    weigh_eos: bool = option(True, "--answer-weight on the answer's digits only, not on the EOS after them (as "
                             "the tiny preset was pretrained)", flag="--answer-digits-only")
    save_every: int = option(0, "checkpoint every this many steps (0: only at the end, or when stopped early "
                             "or interrupted)", min=0)
    keep_checkpoints: bool = option(False, "keep checkpoints/ after the run completes")
    seed: int = option(0, "seed of the data order and passkey rows", min=0)
    corpus: str | None = option(None, CORPUS_HELP, default_help=DEFAULT_CORPUS)
    split_seed: int = option(0, "seed of the corpus split", min=0)

    def validate(self) -> None:
        """UsageError on the first bad setting, naming its flag (cheap: call before loading anything)."""
        for name in ("length", "steps", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
        check_options(self)
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown --schedule {self.schedule!r}; choose {', '.join(SCHEDULES)}")
        if self.passkey_lengths not in PASSKEY_LENGTHS:
            raise UsageError(f"unknown --passkey-lengths {self.passkey_lengths!r}; choose {', '.join(PASSKEY_LENGTHS)}")
        if self.mixed_precision not in PRECISIONS:
            raise UsageError(f"unknown --mixed-precision {self.mixed_precision!r}; choose {', '.join(PRECISIONS)}")
        if self.warmup_steps > self.steps:
            raise UsageError(f"--warmup-steps {self.warmup_steps} exceeds --steps {self.steps}")

    def lr_schedule(self) -> Schedule:
        """Linear warm-up to lr over warmup_steps, then constant, linear or cosine decay to min_lr."""
        return Schedule(self.lr, self.steps, self.warmup_steps, self.schedule, self.lr * self.min_lr_ratio)


def original_rope_below_native(ext: RopeExtension) -> RopeExtension:
    """`ext` as a mixed-context run leaves it (LongRoPE2): within the native context the short
    micro-batches trained with the original RoPE, so short factor 1 and no magnitude scaling."""
    return ext.with_(short_factor=[1.0] * ext.half_dim, short_attention_factor=1.0)


def check_covers(ext: RopeExtension | None, length: int, native: int | None = None) -> None:
    """Fine-tuning past the length the factors were made for would train positions they do not
    cover: refuse it (UsageError)."""
    limit = ext.max_position_embeddings if ext is not None else native
    if limit is not None and length > limit:
        what = f"the factors cover {limit} tokens" if ext is not None else f"the native context is {limit}"
        raise UsageError(f"fine-tuning length {length} exceeds what the model can position: {what}")


# -- data ----------------------------------------------------------------------------------------
def packed_stream(tokenizer, corpus: str | None, split_seed: int = 0) -> torch.Tensor:
    """The training documents as one stream BOS doc EOS BOS doc EOS ..., [T_total] int64.

    Training splits: "search" + "validation" of the seeded split (the tiny preset's own
    pretraining data); "test" stays held out for the figures.
    """
    splits = split_corpus(load_corpus(corpus, split_seed), split_seed)
    docs = [d for s in TRAIN_SPLITS for d in splits[s]]
    token_docs = tokenize_corpus(tokenizer, docs, add_bos=False)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pieces = []
    for t in token_docs:
        pieces += [torch.tensor([bos] if bos is not None else [], dtype=torch.long), t.ids,
                   torch.tensor([eos] if eos is not None else [], dtype=torch.long)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


class PackedBatches:
    """Micro-batches cut from the packed stream; micro-batch m depends only on (seed, m, rank).

    Long rows are consecutive (length+1)-token chunks of the stream (x = chunk[:-1],
    y = chunk[1:]) in a seeded order that is reshuffled each epoch. With mixed context
    window training a micro-batch is short with probability `mixed_context`: then it holds
    batch_size * (length // native) rows of the native length, the same number of tokens.
    A row is replaced by a passkey prompt (`longrope.evaluate.passkey`) of random length and depth with
    probability `passkey_fraction`; its padding is ignored by the loss (-100) and its answer
    tokens weigh `answer_weight` in the loss. A micro-batch is cut after its longest row's last
    target (a long one never to the native length or below, which would select the short
    factors): padding at the end changes no loss (attention is causal), so a micro-batch of
    short prompts costs a short forward.
    """

    def __init__(self, stream: torch.Tensor, tokenizer, cfg: FinetuneConfig, native: int,
                 rank: int = 0, world: int = 1):
        self.stream, self.tok, self.cfg, self.native = stream, tokenizer, cfg, native
        self.rank, self.world = rank, world
        self._perms: dict[tuple[int, int], torch.Tensor] = {}
        for T in {cfg.length} | ({native} if cfg.mixed_context > 0 else set()):
            if (len(stream) - 1) // T < 1:
                raise UsageError(f"the training documents hold only {len(stream)} tokens; need more than {T + 1}")

    def is_long(self, m: int) -> bool:
        """Whether micro-batch m uses the long length and rescaled RoPE (same on every rank)."""
        if self.cfg.mixed_context <= 0:
            return True
        return random.Random(f"{self.cfg.seed}:mix:{m}").random() >= self.cfg.mixed_context

    def _chunk(self, T: int, r: int) -> torch.Tensor:
        n = (len(self.stream) - 1) // T  # chunks of T+1 tokens, stride T
        epoch, i = divmod(r, n)
        key = (T, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != T}  # one epoch per length
            self._perms[key] = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch))
        start = int(self._perms[key][i]) * T
        return self.stream[start : start + T + 1]

    def _passkey_row(self, T: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        key = rng.randint(1, MAX_KEY)
        answer = self.tok(f" {key}", add_special_tokens=False).input_ids + [self.tok.eos_token_id]
        budget = T + 1 - len(answer)
        mode = self.cfg.passkey_lengths
        if mode == "mix":
            mode = "log" if rng.random() < 0.5 else "upper"
        if mode == "log":
            lo = min(budget, self.native)
            target = min(budget, round(math.exp(rng.uniform(math.log(lo), math.log(budget)))))
        else:
            target = rng.randint(min(budget, max(budget // 4, 1)), budget)
        try:
            prompt = build_prompt(self.tok, target, rng.random(), key).input_ids[0].tolist()
        except ValueError:  # the window is too short for any prompt: a corpus row instead
            return None
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        x, y = padded_row(prompt + answer, T, pad)
        end = len(prompt) + len(answer) - (0 if self.cfg.weigh_eos else 1)  # the EOS is answer[-1]
        return x, y, answer_weights(T, len(prompt), end, self.cfg.answer_weight)

    def micro_batch(self, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """x, y: [B, T] int64 (y = -100 where ignored); w: [B, T] loss weights, None when every
        token weighs 1 (answer_weight 1); and whether it is a long micro-batch."""
        long = self.is_long(m)
        T = self.cfg.length if long else self.native
        B = self.cfg.batch_size if long else self.cfg.batch_size * max(1, self.cfg.length // self.native)
        xs, ys, ws = [], [], []
        for j in range(B):
            r = (m * self.world + self.rank) * B + j  # global row index: disjoint across ranks
            rng = random.Random(f"{self.cfg.seed}:row:{m}:{self.rank}:{j}")
            row = None
            if self.cfg.passkey_fraction > 0 and rng.random() < self.cfg.passkey_fraction:
                row = self._passkey_row(T, rng)
            if row is None:
                chunk = self._chunk(T, r)
                row = chunk[:-1], chunk[1:], torch.ones(T)
            xs.append(row[0])
            ys.append(row[1])
            ws.append(row[2])
        x, y, w = torch.stack(xs), torch.stack(ys), torch.stack(ws)
        kept = (y != IGNORE).any(dim=0).nonzero()
        end = int(kept[-1]) + 1 if len(kept) else T
        if long:  # past the native length, so the row still sees the long factors
            end = max(end, min(T, self.native + 1))
        x, y, w = x[:, :end], y[:, :end], w[:, :end]
        return x, y, (w if self.cfg.answer_weight != 1 else None), long


# -- the run ---------------------------------------------------------------------------------------
def is_complete(out: str | os.PathLike) -> bool:
    return (Path(out) / RECORD_FILE).is_file()


def _sharer(accelerator):
    """obj -> the main process's obj, in every process (one broadcast; nothing when alone)."""
    if accelerator.num_processes == 1:
        return lambda obj: obj
    from accelerate.utils import broadcast_object_list

    return lambda obj: broadcast_object_list([obj])[0]


def has_checkpoint(out: Path) -> bool:
    return bool(Checkpoints(out).list())


def _new_accelerator(cfg: FinetuneConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    precision = auto_mixed_precision() if cfg.mixed_precision == "auto" else cfg.mixed_precision
    # a second run in the same process (a recipe, tests) may use other settings: forget the
    # previous run's accelerator state, keeping the process group (PartialState) as it is
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # cpu=True lets several CPU processes (torchrun) train together over gloo (MULTI_CPU)
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                       cpu=not torch.cuda.is_available())


@dataclass
class FinetuneResult:
    out: Path
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step
    skipped: bool = False  # the run was already complete


def _holds_nothing(out: Path) -> bool:
    """No file anywhere under `out` but the runs' own records (a run killed before its first
    checkpoint leaves empty folders)."""
    return not any(p.is_file() for p in out.rglob("*") if not p.relative_to(out).parts[0].startswith(".longrope"))


def prepare_out(out: Path, resume: bool) -> None:
    """Refuse to mix runs: a fresh run needs an --out without files, --resume needs a checkpoint
    (or a folder a run killed before its first checkpoint left empty: that starts afresh)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if resume:
        if not is_complete(out) and not has_checkpoint(out) and not (out.is_dir() and _holds_nothing(out)):
            raise UsageError(f"nothing to resume: {out / Checkpoints.FOLDER} holds no checkpoint")
        return
    if out.is_dir() and not _holds_nothing(out):
        raise UsageError(f"--out {out} is not empty; pass --resume to continue the run there, or choose another")


FINETUNE_DEFAULTS = {f.name: f.default for f in fields(FinetuneConfig) if f.default is not MISSING}


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded `FinetuneConfig` dict with the settings added since it was recorded at their defaults."""
    return {**FINETUNE_DEFAULTS, **config}


def check_finished(out: Path, model: str, extension: RopeExtension | None, cfg: FinetuneConfig) -> None:
    """--resume of a complete run: refuse unless it was made with these settings (naming the keys)."""
    record = json.loads((out / RECORD_FILE).read_text())
    record["config"] = with_defaults(record.get("config", {}))
    want = {"config": asdict(cfg), "model": str(model), "extension": None if extension is None else extension.to_dict()}
    changed = changed_keys({k: record.get(k) for k in want}, want)
    if changed:
        raise UsageError(f"{out} holds a finished run with different settings ({', '.join(changed)}); "
                         f"choose another --out")


@dataclass
class Run:
    """One fine-tuning run in progress: what the loop, its checkpoints and the output share."""

    cfg: FinetuneConfig
    out: Path
    accelerator: Any
    net: Any  # the prepared (wrapped) model
    opt: Any
    rope: Any  # the installed ScaledRotaryEmbedding
    extension: RopeExtension | None
    batches: PackedBatches
    describe: dict[str, Any]
    note: Callable[[str], None]  # a progress message (nothing without progress, or off the main process)
    checkpoints: Checkpoints
    log: TrainingLog = field(default_factory=TrainingLog)  # loss and lr of every step

    def checkpoint(self, step: int) -> None:
        """accelerate's state (model, optimizer, RNG; sharded under FSDP/DeepSpeed) plus our log."""
        self.checkpoints.save(step, lambda folder: self.accelerator.save_state(str(folder)),
                              {"losses": self.log.losses, "curve": self.log.curve, "describe": self.describe})

    def resume(self) -> int:
        """Load the last checkpoint; returns the step to continue from (0 when there is none yet)."""
        if not self.checkpoints.list():
            self.note(f"no checkpoint in {self.out} yet: starting from step 0")
            return 0
        last, state = self.checkpoints.load_record()
        saved = {**state["describe"], "config": with_defaults(state["describe"].get("config", {}))}
        changed = changed_keys(saved, self.describe)
        if changed:
            raise UsageError(f"cannot resume {self.out} with different settings ({', '.join(changed)} changed)")
        try:
            self.accelerator.load_state(str(last))
        except Exception as e:  # torch, safetensors and accelerate each raise their own kind on a bad file
            raise UsageError(f"cannot resume from {last}: {gist(e)}; remove that folder to start again from "
                             f"step 0") from None
        self.log.losses, self.log.curve = state["losses"], state["curve"]
        self.note(f"resuming {self.out} at step {state['step']}/{self.cfg.steps}")
        return state["step"]


def _start(model: str, extension: RopeExtension | None, out: Path, cfg: FinetuneConfig, progress: bool) -> tuple[Run, Any]:
    """The accelerator, the model with its extension installed (fp32 master weights), the
    optimizer and the batches. Returns the run and the loaded model (for its tokenizer)."""
    accelerator = _new_accelerator(cfg)
    main = accelerator.is_main_process
    note = (lambda msg: print(msg, file=sys.stderr)) if progress and main else (lambda msg: None)
    lm = load_model(model, dtype="fp32", device="cpu")
    native = lm.spec.original_max_position_embeddings
    check_covers(extension, cfg.length, None if extension is not None else native)
    torch.manual_seed(cfg.seed)
    net = lm.model
    rope = install_rope(net, extension)  # also validates d/2 and the native context
    net.config.use_cache = False
    if cfg.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net.train()
    net, opt = accelerator.prepare(net, adamw(net, cfg.lr, cfg.weight_decay))
    stream = packed_stream(lm.tokenizer, cfg.corpus, cfg.split_seed)
    batches = PackedBatches(stream, lm.tokenizer, cfg, native, accelerator.process_index, accelerator.num_processes)
    describe = {"config": asdict(cfg), "model": str(model), "processes": accelerator.num_processes,
                "mixed_precision": str(accelerator.mixed_precision),
                "extension": None if extension is None else extension.to_dict()}
    checkpoints = Checkpoints(out, main, accelerator.wait_for_everyone, share=_sharer(accelerator))
    return Run(cfg, out, accelerator, net, opt, rope, extension, batches, describe, note, checkpoints), lm


def _train_step(run: Run, step: int) -> float:
    """One optimizer step over grad_accum micro-batches (the learning rate is set); the mean loss
    across processes."""
    cfg, acc = run.cfg, run.accelerator
    step_loss = torch.zeros((), device=acc.device)
    for a in range(cfg.grad_accum):
        x, y, w, long = run.batches.micro_batch(step * cfg.grad_accum + a)  # [B, T]
        # LongRoPE2 mixed context window: short micro-batches see the original RoPE
        run.rope.set_extension(run.extension if long else None)
        x, y = x.to(acc.device), y.to(acc.device)
        w = None if w is None else w.to(acc.device)
        with acc.accumulate(run.net):
            with acc.autocast():
                logits = run.net(input_ids=x).logits  # [B, T, V]
            loss = next_token_loss(logits, y, w)
            acc.backward(loss)  # divided by grad_accum inside accumulate
            if acc.sync_gradients and cfg.grad_clip > 0:
                acc.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
            run.opt.step()  # a no-op until the last micro-batch of the step
            run.opt.zero_grad(set_to_none=True)
        step_loss += loss.detach() / cfg.grad_accum
    return float(acc.reduce(step_loss, reduction="mean"))  # one host sync per step


def finetune(
    model: str,
    extension: RopeExtension | None,
    out: str | os.PathLike,
    cfg: FinetuneConfig,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    resume_hint: str = "continue with --resume",
) -> FinetuneResult:
    """Fine-tune `model` with `extension` installed and write an HF directory to `out`.

    resume: continue from the last checkpoint in `out` (a complete run is left as it is).
    stop_after: stop (with a checkpoint) once this many steps are done, as if interrupted.
    Ctrl-C stops after the step in progress, with a checkpoint (see train/loop.py).
    Returns the per-step losses of this call (all of them when the run completes).
    """
    cfg.validate()
    out = Path(out).expanduser()
    if resume and is_complete(out):
        check_finished(out, model, extension, cfg)
        return FinetuneResult(out, json.loads((out / RECORD_FILE).read_text())["losses"], skipped=True)
    prepare_out(out, resume)
    run, lm = _start(model, extension, out, cfg, progress)
    start = run.resume() if resume else 0
    t0 = time.time()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    # what an interrupted run must tell, progress bar or not (the main process speaks for all)
    say = (lambda msg: print(msg, file=sys.stderr)) if run.accelerator.is_main_process else (lambda msg: None)
    saving = Saving(cfg.save_every, run.checkpoint, run.checkpoints.last_step, run.checkpoints.folder, resume_hint,
                    say, sync=_any_process(run.accelerator))
    train_loop(lambda step: _train_step(run, step), run.opt, cfg.lr_schedule(), run.log, range(start, end), cfg.steps,
               "finetune", progress and run.accelerator.is_main_process, saving)
    run.rope.set_extension(extension)
    if end < cfg.steps:  # stopped early on purpose: leave a checkpoint to resume from
        if run.checkpoints.last_step() != end:
            run.checkpoint(end)
        return FinetuneResult(out, run.log.losses[start:])
    run.note(f"finetune: {cfg.steps} steps, loss {run.log.losses[0]:.3f} -> {run.log.losses[-1]:.3f} in "
             f"{time.time() - t0:.0f}s")
    _save(run, lm.tokenizer, start, t0)
    return FinetuneResult(out, run.log.losses)


def _any_process(acc):
    """flag -> whether any process's flag is set (one reduction; the flag itself when alone)."""

    def any_process(flag: bool) -> bool:
        if acc.num_processes == 1:
            return flag
        return bool(acc.reduce(torch.tensor(float(flag), device=acc.device), reduction="sum") > 0)

    return any_process


def _save(run: Run, tokenizer, start: int, t0: float) -> None:
    """The model directory, its config carrying the factors; checkpoints removed unless kept."""
    cfg, acc = run.cfg, run.accelerator
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(run.net)  # gathered from FSDP / DeepSpeed shards
    if acc.is_main_process:
        saved_ext = run.extension
        if saved_ext is not None and cfg.mixed_context > 0:
            saved_ext = original_rope_below_native(saved_ext)
        record = {**run.describe, "steps": cfg.steps, "losses": run.log.losses, "curve": run.log.curve,
                  "seconds_this_call": round(time.time() - t0, 1), "resumed_from": start or None,
                  "versions": versions("torch", "transformers", "accelerate"),
                  "tokens_per_step": cfg.batch_size * cfg.grad_accum * cfg.length * acc.num_processes}

        def finish(folder: Path, notes: list[str]) -> str:
            atomic_write_json(folder / RECORD_FILE, {**record, "notes": notes})
            plot_losses(record["curve"], folder / "loss.png",
                        title=f"fine-tuning {Path(str(record['model'])).name} at {cfg.length} tokens "
                              f"({cfg.steps} steps)")
            return RECORD_FILE

        write_model_dir(acc.unwrap_model(run.net), tokenizer, run.out, finish, saved_ext, state_dict)
        if not cfg.keep_checkpoints:
            run.checkpoints.remove()
    acc.wait_for_everyone()
