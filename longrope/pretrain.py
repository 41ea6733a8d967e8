"""The project's own tiny reference Llama: a BPE tokenizer and a few-million-parameter model
trained from scratch on the default corpus, at a native context of 128 tokens.

A model whose native window is 128 tokens makes context extension measurable on a CPU in
minutes: 8x is 1024 tokens, 64x is 8192. Training reads top to bottom, nanoGPT style:
tokenizer -> model -> batches (random 128-token windows of the training documents, plus
~30% in-window passkey prompts) -> AdamW with warm-up and cosine decay -> held-out
figures -> an HF directory written atomically, loadable by `AutoModelForCausalLM`.

The corpus split (`longrope.data.split_corpus`, seed 0) decides what the model sees: it
trains on "search" + "validation" and never on "test", so the held-out perplexity here,
and every figure later measured on the test split, is on unseen text.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from .errors import UsageError

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
TRAIN_SPLITS = ("search", "validation")
HELD_OUT_SPLIT = "test"


@dataclass
class PretrainConfig:
    # tokenizer and model
    vocab_size: int = 8192
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    head_dim: int = 64  # 32 rotary frequencies for the search to rescale
    intermediate_size: int = 768
    block_size: int = 128  # native context: max_position_embeddings
    rope_theta: float = 10000.0
    # optimisation
    steps: int = 1000
    batch_size: int = 24
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    passkey_fraction: float = 0.3  # share of rows that are in-window passkey prompts
    bf16: bool | None = None  # None: bf16 autocast where the CPU/GPU runs it fast
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None: torch's default (1 is faster on a busy machine)
    # data and evaluation
    corpus: str | None = None  # None: the default corpus (see longrope.data.load_corpus)
    split_seed: int = 0
    eval_docs: int = 200  # held-out documents scored at block_size tokens
    passkey_trials: int = 100

    @classmethod
    def smoke(cls, **overrides) -> "PretrainConfig":
        """A model and budget small enough for a test to train in seconds."""
        small = dict(vocab_size=384, n_layer=1, n_embd=64, n_head=2, head_dim=32, intermediate_size=128,
                     block_size=64, steps=5, batch_size=4, warmup_steps=2, eval_docs=4, passkey_trials=0)
        return replace(cls(), **{**small, **overrides})


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
    from .evaluate.passkey import MAX_KEY, passkey_text

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
    (REFERENCE 6) with a random number of filler blocks (up to as many as fit), the
    needle at a random depth, then the answer and EOS; the rest is padding that the
    loss ignores.
    """

    def __init__(self, stream: torch.Tensor, tokenizer, cfg: PretrainConfig, seed: int):
        from .evaluate.passkey import MAX_KEY, passkey_text

        self.stream, self.tok, self.cfg = stream, tokenizer, cfg
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)
        self.passkey_text, self.max_key = passkey_text, MAX_KEY
        self.max_filler = self._max_filler()

    def _passkey_ids(self, n_before: int, n_after: int, key: int) -> list[int]:
        prompt, answer = self.passkey_text(n_before, n_after, key)
        ids = self.tok(prompt).input_ids + self.tok(answer, add_special_tokens=False).input_ids
        return ids + [self.tok.eos_token_id]

    def _max_filler(self) -> int:
        n = 0  # the largest filler count whose longest-key prompt still fits the row
        while len(self._passkey_ids(0, n + 1, self.max_key)) <= self.cfg.block_size + 1:
            n += 1
        return n

    def _corpus_row(self) -> torch.Tensor:
        T = self.cfg.block_size
        i = int(torch.randint(len(self.stream) - T, (1,), generator=self.gen))
        return torch.cat([torch.tensor([self.tok.bos_token_id]), self.stream[i : i + T]])

    def _passkey_row(self) -> tuple[torch.Tensor, int]:
        n = self.rng.randint(0, self.max_filler)
        before = self.rng.randint(0, n)
        ids = self._passkey_ids(before, n - before, self.rng.randint(1, self.max_key))
        ids = ids[: self.cfg.block_size + 1]  # only a prompt without filler could overflow
        return torch.tensor(ids + [self.tok.pad_token_id] * (self.cfg.block_size + 1 - len(ids))), len(ids)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: [B, T] int64; y is -100 where a passkey row is padded."""
        rows, ys = [], []
        for _ in range(self.cfg.batch_size):
            if self.rng.random() < self.cfg.passkey_fraction:
                row, n = self._passkey_row()
                y = row[1:].clone()
                y[n - 1 :] = -100
            else:
                row = self._corpus_row()
                y = row[1:]
            rows.append(row[:-1])
            ys.append(y)
        return torch.stack(rows), torch.stack(ys)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr over the remaining steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


# -- held-out figures ------------------------------------------------------------------------
@torch.inference_mode()
def heldout_perplexity(model, token_docs, length: int, count: int, batch_size: int = 16) -> tuple[float, int]:
    """Perplexity of the first `length` tokens of up to `count` documents; (ppl, documents)."""
    from .data import documents_of_length

    docs = documents_of_length(token_docs, length, count)
    nll, n = 0.0, 0
    for s in range(0, len(docs), batch_size):
        x = torch.stack(docs[s : s + batch_size])  # [B, length]
        logits = model(input_ids=x).logits.float()  # [B, length, V]
        nll += F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="sum").item()
        n += x[:, 1:].numel()
    return math.exp(nll / n), len(docs)


def passkey_accuracy(model, tokenizer, length: int, trials: int, seed: int) -> float:
    """Share of in-window passkey trials answered correctly (longrope.evaluate.passkey)."""
    from .evaluate.passkey import run_trials

    results = run_trials(model, tokenizer, length, trials, random.Random(seed))
    return sum(r.correct for r in results) / len(results)


# -- training --------------------------------------------------------------------------------
def _use_bf16(cfg: PretrainConfig) -> bool:
    if cfg.bf16 is not None:
        return cfg.bf16
    from .model import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


def _optimizer(model, cfg: PretrainConfig) -> torch.optim.AdamW:
    # nanoGPT: decay the matrices, not the norms (the tied embedding is a matrix too)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"--out {out_dir} is not empty; choose another folder or pass --overwrite")
    from .io import check_writable_dir

    check_writable_dir(out_dir.parent)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished model folder into place; an old one is removed only afterwards."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pretrain_tiny(
    out_dir: str | os.PathLike,
    steps: int | None = None,
    seed: int = 0,
    corpus: str | None = None,
    config: PretrainConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train the tiny reference Llama and save it as an HF directory at `out_dir`.

    `config` defaults to PretrainConfig(); `steps`, `seed` and `corpus` override its
    fields. Writes model (safetensors), tokenizer and training.json into a temporary
    folder beside `out_dir`, then renames it. Returns `out_dir`.
    """
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    from .data import corpus_summary, load_corpus, split_corpus, tokenize_corpus

    cfg = config or PretrainConfig()
    cfg = replace(cfg, seed=seed, steps=cfg.steps if steps is None else steps,
                  corpus=corpus if corpus is not None else cfg.corpus)
    if cfg.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {cfg.steps}")
    out_dir = Path(out_dir).expanduser()
    _prepare_out_dir(out_dir, overwrite)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # data: train on the search + validation splits, hold out the test split
    splits = split_corpus(load_corpus(cfg.corpus), cfg.split_seed)
    train_docs = [d for s in TRAIN_SPLITS for d in splits[s]]
    if not train_docs or not splits[HELD_OUT_SPLIT]:
        raise UsageError("the corpus is too small to split into training and held-out documents (need >= 3)")
    n_passkey = int(len(train_docs) * cfg.passkey_fraction)  # the tokenizer sees the model's mix
    tokenizer = train_tokenizer([d.text for d in train_docs] + _passkey_samples(n_passkey, cfg.seed), cfg.vocab_size)
    train_tokens = tokenize_corpus(tokenizer, train_docs)
    heldout_tokens = tokenize_corpus(tokenizer, splits[HELD_OUT_SPLIT])
    stream = torch.cat([t.ids for t in train_tokens])
    if len(stream) <= cfg.block_size + 1:
        raise UsageError(f"the training documents hold only {len(stream)} tokens; need more than {cfg.block_size + 1}")
    log = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    log(f"train: {corpus_summary(train_tokens)}")
    log(f"held out: {corpus_summary(heldout_tokens)}")

    # model
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, native context {cfg.block_size}")
    model.train()
    opt = _optimizer(model, cfg)
    batches = Batches(stream, tokenizer, cfg, cfg.seed)
    bf16 = _use_bf16(cfg)

    # the loop
    losses: list[float] = []
    curve: list[dict[str, float]] = []
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batches.next()  # [B, T]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits  # [B, T, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.1e}")
            curve.append({"step": step, "loss": losses[-1], "lr": lr})
    train_seconds = time.time() - t_start
    final_loss = sum(losses[-20:]) / len(losses[-20:])

    # held-out figures at the native length
    model.eval()
    ppl, ppl_docs = heldout_perplexity(model, heldout_tokens, cfg.block_size, cfg.eval_docs)
    accuracy = None
    if cfg.passkey_trials > 0:
        try:
            accuracy = passkey_accuracy(model, tokenizer, cfg.block_size, cfg.passkey_trials, cfg.seed + 1)
        except ValueError as e:  # a small vocabulary's prompt may not fit the window at all
            log(f"passkey not measured: {e}")
    log(f"final loss {final_loss:.3f}; held-out ppl@{cfg.block_size} {ppl:.2f} ({ppl_docs} docs); "
        f"passkey@{cfg.block_size} {'-' if accuracy is None else f'{accuracy:.0%}'}; {train_seconds:.0f}s")

    # save atomically: a temporary folder beside out_dir, renamed when complete
    import transformers

    from . import __version__
    from .io import atomic_write_json

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record: dict[str, Any] = {
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
            "train_corpus": corpus_summary(train_tokens).to_dict(),
            "held_out_corpus": corpus_summary(heldout_tokens).to_dict(),
            "eval": {
                f"heldout_ppl_{cfg.block_size}": ppl,
                "heldout_ppl_docs": ppl_docs,
                f"passkey_accuracy_{cfg.block_size}": accuracy,
                "passkey_trials": cfg.passkey_trials,
            },
            "loss_curve": curve,
            "versions": {"longrope": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()},
            "threads": torch.get_num_threads(),
        }
        atomic_write_json(tmp / "training.json", record)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published folder is an ordinary one
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_training_record(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The training.json of a model trained by pretrain_tiny."""
    return json.loads((Path(model_dir) / "training.json").read_text())
