"""The project's own tiny reference Llamas: a BPE tokenizer and a small model trained from
scratch on the default corpus, at a native context of a few hundred tokens.

A model whose native window is 256 tokens (the `tiny` preset, `TINY`; `tiny-128` is the
flag defaults) makes context extension measurable on a CPU in minutes: 8x is 2048 tokens,
64x is 16384. Training reads top to bottom, nanoGPT style: tokenizer -> model -> batches
(random windows of the training documents, in-window passkey prompts and copy rows) ->
AdamW with warm-up and cosine decay -> held-out figures -> an HF directory written
atomically, loadable by `AutoModelForCausalLM`.

The corpus split (`longrope.data.split_corpus`, seed 0) decides what the model sees: it
trains on "search" + "validation" and never on "test", so the held-out perplexity here,
and every figure later measured on the test split, is on unseen text.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from ..data import TokenDoc, corpus_summary, documents_of_length, load_corpus, split_corpus, tokenize_corpus
from ..errors import UsageError, gist
from ..evaluate.passkey import MAX_KEY, passkey_text, run_trials
from ..evaluate.ppl import mean_nlls, perplexity
from ..atomic import atomic_write_json
from ..readback import changed_keys
from ..version import versions
from ..models.device import cpu_has_fast_bf16
from ..options import check_options, option
from .loop import Saving, TrainingLog, train_loop
from .toolkit import Checkpoints, Schedule, adamw, answer_weights, next_token_loss, padded_row, write_model_dir

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
TRAIN_SPLITS = ("search", "validation")
HELD_OUT_SPLIT = "test"


@dataclass
class PretrainConfig:
    # tokenizer and model
    vocab_size: int = option(8192, "BPE vocabulary size (256 bytes + merges)", min=300)
    n_layer: int = option(4, "transformer layers", flag="--layers", min=1, max=1000)
    n_embd: int = option(256, "hidden size", flag="--width", min=1)
    n_head: int = option(4, "attention heads", flag="--heads", min=1)
    head_dim: int = option(64, "head dim (head_dim/2 rotary frequencies for the search to rescale)", min=2)
    intermediate_size: int = option(768, "MLP hidden size", flag="--mlp", min=1)
    block_size: int = option(128, "native context in tokens (max_position_embeddings); every row is this long",
                             flag="--native-length", min=16)
    rope_theta: float = option(10000.0, "RoPE base", flag="--rope-base", above=1)
    # optimisation
    steps: int = option(1000, "optimizer steps", min=1)
    batch_size: int = option(24, "rows of --native-length tokens per step", min=1)
    lr: float = option(2e-3, "peak learning rate", above=0, max=10)
    min_lr: float = 2e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    passkey_fraction: float = option(0.3, "share of training rows that are in-window passkey prompts, 0..1", min=0, max=1)
    copy_fraction: float = option(0.0, "share of training rows that repeat a corpus span (copying), 0..1", min=0, max=1)
    copy_reach: float = option(0.5, "longest copy distance of a copy row, as a share of the native length", min=0.1,
                               max=0.95)
    answer_weight: float = option(1.0, "loss weight of a passkey row's answer tokens (every other token weighs 1)",
                                  min=0, max=1e6)
    bf16: bool | None = None  # None: bf16 autocast where the CPU/GPU runs it fast
    seed: int = option(0, "seed of initialisation and batches", min=0)
    threads: int | None = option(None, "torch CPU threads (1 is often faster on a busy machine)",
                                 default_help="torch's choice", min=1)
    # data and evaluation
    corpus: str | None = option(None, "directory of .txt files, a .txt file, or a .jsonl with a 'text' field",
                                default_help="the Python standard library sources and pydoc topics", metavar="PATH")
    split_seed: int = 0
    eval_docs: int = 200  # held-out documents scored at block_size tokens
    passkey_trials: int = option(100, "in-window passkey trials measured after training, 0 = skip", min=0)

    def __post_init__(self):
        check_options(self)
        if self.head_dim % 2:
            raise UsageError(f"--head-dim must be even (RoPE rotates pairs of dims), got {self.head_dim}")
        if self.n_embd % self.n_head:
            raise UsageError(f"--width {self.n_embd} is not a multiple of --heads {self.n_head}")
        if self.passkey_fraction + self.copy_fraction > 1:
            raise UsageError(f"--passkey-fraction {self.passkey_fraction:g} + --copy-fraction {self.copy_fraction:g} "
                             f"exceed 1 (they are shares of the same training rows)")

    def lr_schedule(self) -> Schedule:
        """Linear warm-up, then cosine decay from lr to min_lr over the remaining steps."""
        return Schedule(self.lr, self.steps, self.warmup_steps, "cosine", self.min_lr)

    @classmethod
    def smoke(cls, **overrides) -> "PretrainConfig":
        """A model and budget small enough for a test to train in seconds."""
        small = dict(vocab_size=384, n_layer=1, n_embd=64, n_head=2, head_dim=32, intermediate_size=128,
                     block_size=64, steps=5, batch_size=4, warmup_steps=2, eval_docs=4, passkey_trials=0)
        return replace(cls(), **{**small, **overrides})


# The `tiny` preset: native 256 tokens, a small vocabulary and four 32-dim heads per layer, trained
# on a mix that teaches copying (--copy-fraction) and retrieval (passkey rows whose answer weighs 10x).
# It uses its context, breaks past it without extension and retrieves in its window; the measurements
# that chose it are in docs/results/tiny-testbed.md.
TINY = dict(vocab_size=1024, n_embd=128, n_head=4, head_dim=32, intermediate_size=384, block_size=256,
            steps=2000, batch_size=16, lr=3e-3, min_lr=3e-4, passkey_fraction=0.4, copy_fraction=0.3,
            copy_reach=0.9, answer_weight=10.0,
            seed=1)  # seed 0 of the same settings retrieves 80% in its window, seed 1 100%


# -- tokenizer -------------------------------------------------------------------------------
def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE with every digit its own token (numbers read digit by digit, so a
    passkey is copied one digit at a time). Adds BOS to every encoded text, like Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=1 << 20
    )


def _passkey_samples(n: int, seed: int) -> list[str]:
    """Passkey prompts for the tokenizer to see in the proportion the model will."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, answer = passkey_text(rng.randint(0, 2), rng.randint(0, 2), rng.randint(1, MAX_KEY))
        out.append(prompt + answer)
    return out


# -- model -------------------------------------------------------------------------------------
def llama_config(cfg: PretrainConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.block_size,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )


# -- batches ---------------------------------------------------------------------------------
class Batches:
    """Rows of block_size + 1 tokens, each starting with BOS: x = row[:-1], y = row[1:].

    A corpus row is BOS + a random window of the concatenated training documents (each
    document itself BOS-prefixed). A passkey row is BOS + a standard passkey prompt
    (`longrope.evaluate.passkey`) with as many filler blocks as fit (half the rows) or a random
    number of them, the needle at a random depth, then the answer and EOS; the rest is padding
    that the loss ignores.
    """

    def __init__(self, stream: torch.Tensor, tokenizer, cfg: PretrainConfig, seed: int):
        self.stream, self.tok, self.cfg = stream, tokenizer, cfg
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)
        self.max_filler = self._max_filler()

    def state(self) -> dict[str, Any]:
        """Where the batch sequence stands (a checkpoint's; `restore` continues it exactly)."""
        return {"rng": self.rng.getstate(), "gen": self.gen.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.gen.set_state(state["gen"])

    def _passkey_ids(self, n_before: int, n_after: int, key: int) -> tuple[list[int], int, int]:
        """The row's ids (prompt, answer, EOS) and the answer's [start, end) in them."""
        prompt, answer = passkey_text(n_before, n_after, key)
        prompt_ids = self.tok(prompt).input_ids
        answer_ids = self.tok(answer, add_special_tokens=False).input_ids
        start = len(prompt_ids)
        return prompt_ids + answer_ids + [self.tok.eos_token_id], start, start + len(answer_ids)

    def _max_filler(self) -> int:
        n = 0  # the largest filler count whose longest-key prompt still fits the row
        while len(self._passkey_ids(0, n + 1, MAX_KEY)[0]) <= self.cfg.block_size + 1:
            n += 1
        return n

    def _corpus_row(self) -> torch.Tensor:
        T = self.cfg.block_size
        i = int(torch.randint(len(self.stream) - T, (1,), generator=self.gen))
        return torch.cat([torch.tensor([self.tok.bos_token_id]), self.stream[i : i + T]])

    def _copy_row(self) -> torch.Tensor:
        """BOS + a random corpus span repeated until the row is full: the repeats are predictable
        only by looking one span length back (induction / copying, at distances up to
        --copy-reach x T)."""
        T = self.cfg.block_size
        k = self.rng.randint(8, max(8, int(T * self.cfg.copy_reach)))
        i = int(torch.randint(len(self.stream) - k, (1,), generator=self.gen))
        span = self.stream[i : i + k]
        return torch.cat([torch.tensor([self.tok.bos_token_id]), span.repeat(T // k + 1)[:T]])

    def _passkey_row(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # half the rows fill the window, as an evaluation prompt does (the needle up to a window away)
        n = self.max_filler if self.rng.random() < 0.5 else self.rng.randint(0, self.max_filler)
        before = self.rng.randint(0, n)
        ids, start, end = self._passkey_ids(before, n - before, self.rng.randint(1, MAX_KEY))
        x, y = padded_row(ids, self.cfg.block_size, self.tok.pad_token_id)  # only a prompt without filler overflows
        return x, y, answer_weights(self.cfg.block_size, start, end, self.cfg.answer_weight)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y: [B, T] int64, y is -100 where a passkey row is padded; w: [B, T] loss weights
        (--answer-weight on passkey answers, else 1)."""
        xs, ys, ws = [], [], []
        for _ in range(self.cfg.batch_size):
            u = self.rng.random()
            if u < self.cfg.passkey_fraction:
                x, y, w = self._passkey_row()
            else:
                row = self._copy_row() if u < self.cfg.passkey_fraction + self.cfg.copy_fraction else self._corpus_row()
                x, y, w = row[:-1], row[1:], torch.ones(self.cfg.block_size)
            xs.append(x)
            ys.append(y)
            ws.append(w)
        return torch.stack(xs), torch.stack(ys), torch.stack(ws)


# -- held-out figures ------------------------------------------------------------------------
def heldout_perplexity(model, token_docs, length: int, count: int, batch_size: int = 16) -> tuple[float, int]:
    """Perplexity of the first `length` tokens of up to `count` documents; (ppl, documents)."""
    docs = documents_of_length(token_docs, length, count)
    return perplexity(mean_nlls(model, docs, length, batch_size=batch_size)[0]), len(docs)


def passkey_accuracy(model, tokenizer, length: int, trials: int, seed: int) -> float:
    """Share of in-window passkey trials answered correctly (longrope.evaluate.passkey)."""
    results = list(run_trials(model, tokenizer, length, trials, random.Random(seed)))
    return sum(r.correct for r in results) / len(results)


# -- training --------------------------------------------------------------------------------
def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"--out {out_dir} is not empty; choose another folder or pass --force")


@dataclass
class TrainingData:
    tokenizer: Any
    train: list[TokenDoc]
    held_out: list[TokenDoc]
    stream: torch.Tensor  # [T_total] the training documents, concatenated


def prepare_data(cfg: PretrainConfig) -> TrainingData:
    """Train on the search + validation splits, hold out the test split; the tokenizer is
    trained on the training documents plus passkey prompts in the proportion the model sees."""
    splits = split_corpus(load_corpus(cfg.corpus, cfg.split_seed), cfg.split_seed)
    train_docs = [d for s in TRAIN_SPLITS for d in splits[s]]
    if not train_docs or not splits[HELD_OUT_SPLIT]:
        raise UsageError("the corpus is too small to split into training and held-out documents (need >= 3)")
    n_passkey = int(len(train_docs) * cfg.passkey_fraction)
    tokenizer = train_tokenizer([d.text for d in train_docs] + _passkey_samples(n_passkey, cfg.seed), cfg.vocab_size)
    train_tokens = tokenize_corpus(tokenizer, train_docs)
    stream = torch.cat([t.ids for t in train_tokens])
    if len(stream) <= cfg.block_size + 1:
        raise UsageError(f"the training documents hold only {len(stream)} tokens; need more than {cfg.block_size + 1}")
    return TrainingData(tokenizer, train_tokens, tokenize_corpus(tokenizer, splits[HELD_OUT_SPLIT]), stream)


class Saves:
    """Checkpoints of one pretraining run in `folder` (`Checkpoints`: the newest kept), every
    `every` steps and when Ctrl-C stops the run between steps, so a rerun continues it and
    ends with the same weights as an uninterrupted run. A checkpoint made with other settings
    or another tokenizer is refused (restart=False) or discarded (restart=True)."""

    STATE = "state.pt"

    def __init__(self, folder: Path, cfg: PretrainConfig, tokenizer, bf16: bool, restart: bool, every: int = 100,
                 log=lambda msg: print(msg, file=sys.stderr), resume_hint: str = "continue with --resume"):
        self.checkpoints = Checkpoints.in_folder(folder)
        self.every, self.restart, self.log, self.resume_hint = every, restart, log, resume_hint
        vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
        # the precision in force, not "auto": resumed on other hardware, the run would change it midway
        self.describe = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("threads", "bf16")},
                         "bf16_autocast": bf16, "tokenizer": hashlib.sha256(vocab).hexdigest()[:16]}

    def load(self) -> dict[str, Any] | None:
        if not self.checkpoints.list():
            return None
        try:
            last, record = self.checkpoints.load_record()
            changed = changed_keys(record.get("describe", {}), self.describe)
            if changed and not self.restart:
                raise UsageError(f"{last} was trained with other settings ({', '.join(changed)}); remove "
                                 f"{self.checkpoints.folder} or train with those settings")
            if changed:
                raise UsageError(f"it was made with other settings ({', '.join(changed)})")
            try:
                state = torch.load(last / self.STATE, weights_only=True)
            except Exception as e:  # torch raises its own kinds on a damaged file
                raise UsageError(f"cannot resume from {last}: {gist(e)}; remove that folder") from None
        except UsageError as e:
            if not self.restart:
                raise
            self.log(f"discarding {self.checkpoints.folder}: {e}")  # a preset build starts again
            self.checkpoints.remove()
            return None
        self.log(f"resuming pretraining at step {record['step']} from {last}")
        return state

    def save(self, step: int, state: dict[str, Any]) -> None:
        if step == self.checkpoints.last_step():
            return
        self.checkpoints.save(step, lambda folder: (folder.mkdir(parents=True, exist_ok=True),
                                                    torch.save(state, folder / self.STATE)), {"describe": self.describe})

    def remove(self) -> None:
        self.checkpoints.remove()


def train(model, data: TrainingData, cfg: PretrainConfig, bf16: bool, progress: bool,
          saves: Saves | None = None) -> tuple[list[dict], float, float]:
    """AdamW with warm-up and cosine decay (`train_loop`), continued from the last of `saves` if
    any. Returns the loss curve (every 10th step and the last), the final loss (mean of the last
    20 steps) and the seconds spent training, sessions before a resume included."""
    model.train()
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    batches = Batches(data.stream, data.tokenizer, cfg, cfg.seed)
    log, before = TrainingLog(every=10), 0.0
    state = saves.load() if saves is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        batches.restore(state["batches"])
        log.losses, log.curve, before = state["losses"], state["curve"], state["seconds"]
    t0 = time.time()

    def save(done: int) -> None:
        saves.save(done, {"model": model.state_dict(), "optimizer": opt.state_dict(), "batches": batches.state(),
                          "losses": log.losses, "curve": log.curve, "seconds": before + time.time() - t0})

    saving = None if saves is None else Saving(saves.every, save, saves.checkpoints.last_step, saves.checkpoints.folder,
                                               saves.resume_hint, saves.log)
    train_loop(lambda step: _train_step(model, opt, batches, cfg, step, bf16), opt, cfg.lr_schedule(), log,
               range(len(log.losses), cfg.steps), cfg.steps, "pretrain", progress, saving)
    model.eval()
    return log.curve, sum(log.losses[-20:]) / len(log.losses[-20:]), before + time.time() - t0


def _train_step(model, opt, batches: Batches, cfg: PretrainConfig, step: int, bf16: bool) -> float:
    """One optimizer step on the next batch (the learning rate is set); returns its loss."""
    x, y, w = batches.next()  # [B, T]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=x).logits  # [B, T, V]
    loss = next_token_loss(logits, y, w)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss.item()


def pretrain_tiny(
    out_dir: str | os.PathLike,
    steps: int | None = None,
    seed: int | None = None,
    corpus: str | None = None,
    config: PretrainConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    checkpoints: str | os.PathLike | None = None,
    resume: bool | None = False,
) -> Path:
    """Train the tiny reference Llama and save it as an HF directory at `out_dir`.

    `config` defaults to PretrainConfig(); `steps`, `seed` and `corpus`, when given, override
    its fields. Writes model (safetensors), tokenizer and training.json into a temporary
    folder beside `out_dir`, then renames it. Returns `out_dir`.

    checkpoints: a folder for checkpoints (every 100 steps, and on Ctrl-C), removed once the
    model is written. A run finds its last checkpoint there with resume=True; without it, a
    folder holding one is refused (resume=None: continue a checkpoint made with the same
    settings, discard one made with others, as the preset build does).
    """
    from transformers import LlamaForCausalLM

    cfg = config or PretrainConfig()
    cfg = replace(cfg, seed=cfg.seed if seed is None else seed, steps=cfg.steps if steps is None else steps,
                  corpus=corpus if corpus is not None else cfg.corpus)
    if cfg.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {cfg.steps}")
    out_dir = Path(out_dir).expanduser()
    _prepare_out_dir(out_dir, overwrite)
    if checkpoints is not None and resume is False and Checkpoints.in_folder(Path(checkpoints)).list():
        raise UsageError(f"{checkpoints} holds an interrupted run: continue it with --resume, or remove it")
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    def say(msg: str) -> None:  # what a resumed or interrupted run must tell, progress bar or not
        print(msg, file=sys.stderr)

    log = say if progress else (lambda msg: None)
    log(f"train: {corpus_summary(data.train)}")
    log(f"held out: {corpus_summary(data.held_out)}")
    model = LlamaForCausalLM(llama_config(cfg, data.tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, native context {cfg.block_size}")
    bf16 = cfg.bf16 if cfg.bf16 is not None else cpu_has_fast_bf16()
    saves = None
    if checkpoints is not None:
        saves = Saves(Path(checkpoints), cfg, data.tokenizer, bf16, restart=resume is None, log=say,
                      resume_hint="run the same command again to continue" if resume is None else
                      "continue with --resume")
        if resume and not saves.checkpoints.list():
            say(f"no checkpoint in {checkpoints} yet: starting from step 0")
    t_prep = time.time() - t_start
    curve, final_loss, seconds = train(model, data, cfg, bf16, progress, saves)
    train_seconds = t_prep + seconds
    figures = heldout_figures(model, data, cfg, log)
    B, acc = cfg.block_size, figures[f"passkey_accuracy_{cfg.block_size}"]
    log(f"final loss {final_loss:.3f}; held-out ppl@{B} {figures[f'heldout_ppl_{B}']:.2f} "
        f"({figures['heldout_ppl_docs']} docs); passkey@{B} {'-' if acc is None else f'{acc:.0%}'}; {train_seconds:.0f}s")
    record = training_record(cfg, data, n_params, final_loss, train_seconds, bf16, figures, curve)
    write_model_dir(model, data.tokenizer, out_dir, lambda tmp, notes: _write_record(tmp, record), replace=True,
                    overwrite=overwrite)
    if saves is not None:
        saves.remove()
    return out_dir


def heldout_figures(model, data: TrainingData, cfg: PretrainConfig, log) -> dict[str, Any]:
    """Perplexity and passkey accuracy at the native length, on text the model never saw."""
    ppl, ppl_docs = heldout_perplexity(model, data.held_out, cfg.block_size, cfg.eval_docs)
    accuracy = None
    if cfg.passkey_trials > 0:
        try:
            accuracy = passkey_accuracy(model, data.tokenizer, cfg.block_size, cfg.passkey_trials, cfg.seed + 1)
        except ValueError as e:  # a small vocabulary's prompt may not fit the window at all
            log(f"passkey not measured: {e}")
    return {f"heldout_ppl_{cfg.block_size}": ppl, "heldout_ppl_docs": ppl_docs,
            f"passkey_accuracy_{cfg.block_size}": accuracy, "passkey_trials": cfg.passkey_trials}


def training_record(cfg: PretrainConfig, data: TrainingData, n_params: int, final_loss: float,
                    train_seconds: float, bf16: bool, figures: dict[str, Any], curve: list[dict]) -> dict[str, Any]:
    """training.json: settings, data, figures, loss curve and versions of one pretraining run."""
    return {
        "config": asdict(cfg),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "parameters": n_params,
        "final_loss": final_loss,
        "train_seconds": round(train_seconds, 1),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.block_size,
        "bf16_autocast": bf16,
        "train_splits": list(TRAIN_SPLITS),
        "held_out_split": HELD_OUT_SPLIT,
        "train_corpus": corpus_summary(data.train).to_dict(),
        "held_out_corpus": corpus_summary(data.held_out).to_dict(),
        "eval": figures,
        "loss_curve": curve,
        "versions": versions("torch", "transformers"),
        "threads": torch.get_num_threads(),
    }


def _write_record(folder: Path, record: dict[str, Any]) -> str:
    atomic_write_json(folder / "training.json", record)
    return "training.json"


def read_training_record(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The training.json of a model trained by pretrain_tiny."""
    return json.loads((Path(model_dir) / "training.json").read_text())
