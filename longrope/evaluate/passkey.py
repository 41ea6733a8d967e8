"""Passkey retrieval: the prompt of landmark-attention / LongLoRA / YaRN / LongRoPE (section 4.2)."""
from __future__ import annotations

import random
import re
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
    return PasskeyPrompt(ids, key, before / n if n else 0.0)


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
               progress: Progress = no_progress, skip: int = 0) -> Iterator[Trial]:
    """`trials` passkey trials at `length` tokens (prompt + answer), random key and depth from `rng`,
    yielded one by one; the first `skip` are drawn but not run (done before). `progress(done,
    trials)` after each."""
    draws = [(rng.randint(1, MAX_KEY), rng.random()) for _ in range(trials)]
    for i, (key, depth) in enumerate(draws[skip:], start=skip + 1):
        prompt = build_prompt(tokenizer, length, depth, key, reserve=max_new_tokens)
        # the answer ends at EOS: tokens after it would be decoded onto the digits (EOS is skipped)
        out = greedy_generate(model, prompt.input_ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out.tolist(), skip_special_tokens=True)
        yield Trial(length, prompt.input_ids.shape[1], prompt.depth, key, text, first_integer(text) == key)
        progress(i, trials)
