"""Passkey scoring: the answer ends where the model ends it."""
import random
from types import SimpleNamespace

import torch
from torch import nn

from longrope.evaluate.passkey import MAX_KEY, run_trials


class Scripted(nn.Module):
    """A stand-in model that emits `script` one token per forward, whatever the input."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.step = script, vocab, 0
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=True, logits_to_keep=1, past_key_values=None):
        logits = torch.full((1, 1, self.vocab), -1e9)
        logits[0, 0, self.script[min(self.step, len(self.script) - 1)]] = 0.0
        self.step += 1
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_tokens_after_eos_are_not_part_of_the_answer(tiny_model_dir):
    """A model that answers the key, then EOS, then more digits is right: decoding without
    special tokens would otherwise glue the digits after EOS onto the key."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    key = random.Random(0).randint(1, MAX_KEY)  # run_trials draws the key first
    answer = tok(f" {key}", add_special_tokens=False).input_ids
    trailing = tok("11", add_special_tokens=False).input_ids
    model = Scripted(answer + [tok.eos_token_id] + trailing, len(tok))
    [trial] = list(run_trials(model, tok, 256, 1, random.Random(0), max_new_tokens=len(answer) + 4))
    assert trial.key == key and trial.correct and trial.output.strip() == str(key)
    model = Scripted(answer + trailing, len(tok))  # no EOS: the digits run on, a wrong answer
    [trial] = list(run_trials(model, tok, 256, 1, random.Random(0), max_new_tokens=len(answer) + 4))
    assert not trial.correct
