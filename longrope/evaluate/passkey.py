"""Passkey retrieval: the prompt of landmark-attention / LongLoRA / YaRN / LongRoPE (section 4.2)."""
from __future__ import annotations

import random
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch

from ..generate import greedy_generate
from . import Progress, no_progress

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
MAX_KEY = 50000


def passkey_text(n_filler_before: int, n_filler_after: int, key: int) -> tuple[str, str]:
    """The prompt with the needle after `n_filler_before` filler blocks, and the expected answer."""
    parts = [INSTRUCTION, *[FILLER] * n_filler_before, NEEDLE.format(key=key), *[FILLER] * n_filler_after, QUESTION]
    return " ".join(parts), f" {key}"


@dataclass
class PasskeyPrompt:
    input_ids: torch.Tensor  # [1, T], T <= the requested length
    key: int
    depth: float  # fraction of the filler placed before the needle, in [0, 1]
    before: int = 0  # filler blocks before the needle


def build_prompt(tokenizer, length: int, depth: float, key: int, reserve: int = 0) -> PasskeyPrompt:
    """The longest standard prompt of at most `length - reserve` tokens with the needle at `depth`
    (`reserve`: room kept for the answer); ValueError when even the shortest one does not fit."""
    room = length - reserve

    def encode(n_before, n_after):
        return tokenizer(passkey_text(n_before, n_after, key)[0], return_tensors="pt").input_ids

    base = encode(0, 0).shape[1]
    per_filler = (encode(0, 8).shape[1] - base) / 8
    n = max(int((room - base) / per_filler), 0)
    while True:
        before = round(depth * n)
        ids = encode(before, n - before)
        if ids.shape[1] <= room or n == 0:
            break
        n -= 1
    if ids.shape[1] > room:
        need = (f"a passkey trial needs at least {ids.shape[1] + reserve} tokens (the shortest prompt, "
                f"{ids.shape[1]}, and {reserve} for the answer)" if reserve
                else f"a passkey prompt needs at least {ids.shape[1]} tokens")
        raise ValueError(f"{need}; {length} is too short")
    return PasskeyPrompt(ids, key, before / n if n else 0.0, before)


def filler_tokens(tokenizer, prompt: PasskeyPrompt) -> int:
    """How many leading tokens `prompt` shares with every prompt of its length: the instruction and
    the filler before its needle (0 when the tokenizer joins them to the needle's first word)."""
    prefix = tokenizer(" ".join([INSTRUCTION, *[FILLER] * prompt.before]), return_tensors="pt").input_ids[0]
    k = len(prefix)
    return k if k <= prompt.input_ids.shape[1] and torch.equal(prompt.input_ids[0, :k], prefix) else 0


def wilson_interval(correct: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of an accuracy (95% by default): sound at 0 and 1 and for few
    trials, where the normal approximation is not."""
    if trials <= 0:
        return 0.0, 1.0
    p = correct / trials
    den = 1 + z * z / trials
    mid = (p + z * z / (2 * trials)) / den
    half = z * ((p * (1 - p) / trials + z * z / (4 * trials * trials)) ** 0.5) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def first_integer(text: str) -> int | None:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


@dataclass
class Trial:
    length: int
    prompt_tokens: int
    depth: float
    key: int
    output: str
    correct: bool


def run_trials(model, tokenizer, length: int, trials: int, rng: random.Random, max_new_tokens: int = 10,
               progress: Progress = no_progress, skip: int = 0, share: bool = True) -> Iterator[Trial]:
    """`trials` passkey trials at `length` tokens (prompt + answer), random key and depth from `rng`,
    yielded one by one; the first `skip` are drawn but not run (done before). `progress(done,
    trials)` after each. share: past the native context, the filler before the needles is
    prefilled once for the trials of one prompt length (`longrope.evaluate.prefix`)."""
    draws = [(rng.randint(1, MAX_KEY), rng.random()) for _ in range(trials)]
    prompts = [build_prompt(tokenizer, length, depth, key, reserve=max_new_tokens) for key, depth in draws[skip:]]
    shared = SharedFiller(model, tokenizer, prompts) if share and _worth_sharing(model, length) else None
    with shared.attention() if shared is not None else nullcontext():
        for i, prompt in enumerate(prompts, start=skip + 1):
            past = None if shared is None else shared.cache_for(prompt)
            # the answer ends at EOS: tokens after it would be decoded onto the digits (EOS is skipped)
            out = greedy_generate(model, prompt.input_ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                  past=past)
            text = tokenizer.decode(out.tolist(), skip_special_tokens=True)
            yield Trial(length, prompt.input_ids.shape[1], prompt.depth, prompt.key, text,
                        first_integer(text) == prompt.key)
            progress(i, trials)


def _worth_sharing(model, length: int) -> bool:
    """Long prompts on a model that runs a shared prefix (past the short/long switch, so every
    forward of a trial uses the same factors)."""
    from ..generate import _switch_length
    from .prefix import available

    switch = _switch_length(model)
    return length >= 2048 and (switch is None or length > switch + 1) and available(model)


class SharedFiller:
    """The filler's keys and values, computed once per prompt length for the trials of a length
    (up to the latest needle among them), and a copy cut at each trial's needle."""

    def __init__(self, model, tokenizer, prompts: list[PasskeyPrompt]):
        self.model, self.caches = model, {}
        self.shared = {id(p): filler_tokens(tokenizer, p) for p in prompts}
        self.longest: dict[int, PasskeyPrompt] = {}  # prompt length -> the prompt with the latest needle
        for p in prompts:
            T = p.input_ids.shape[1]
            if T not in self.longest or self.shared[id(p)] > self.shared[id(self.longest[T])]:
                self.longest[T] = p

    def attention(self):
        """The model's attention for a suffix after a cached prefix (and as before otherwise)."""
        from .prefix import merged_attention

        return merged_attention(self.model)

    def cache_for(self, prompt: PasskeyPrompt):
        """A KV cache of the prompt's filler before its needle (None: nothing to share)."""
        from .prefix import first_tokens, prefill

        k, T = self.shared[id(prompt)], prompt.input_ids.shape[1]
        if k < 2:
            return None
        if T not in self.caches:
            source = self.longest[T]
            self.caches[T] = prefill(self.model, source.input_ids[:, : self.shared[id(source)]], T)
        return first_tokens(self.caches[T], k)
