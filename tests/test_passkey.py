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


def test_trials_sharing_their_filler_prefill_answer_as_trials_that_do_not():
    """Past the native context the filler before the needles is prefilled once per prompt length and
    each trial runs from its needle on (the merged attention over the cached prefix): the same greedy
    answers as a one-pass prefill per trial, and a prefix cached in a shorter forward whose keys are
    those of the full prompt's pass (the factors and magnitude of the full length in force)."""
    from conftest import tiny_model, tiny_tokenizer
    from longrope.evaluate.passkey import build_prompt, filler_tokens
    from longrope.evaluate.prefix import cache_arg, prefill
    from longrope.methods import build_extension
    from longrope.seam import install_rope

    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=256, initializer_range=0.2)
    from longrope.seam import rotary_spec

    ext = build_extension("yarn", rotary_spec(model), 4096).with_(method="longrope", attention_by_length=True)
    install_rope(model, ext)
    shared = list(run_trials(model, tok, 2304, 6, random.Random(3), share=True))
    alone = list(run_trials(model, tok, 2304, 6, random.Random(3), share=False))
    assert [t.output for t in shared] == [t.output for t in alone] and len({t.depth for t in shared}) == 6

    prompt = build_prompt(tok, 2304, 0.6, 12345, reserve=10)
    k, T = filler_tokens(tok, prompt), prompt.input_ids.shape[1]
    assert 100 < k < T
    with torch.inference_mode():
        full = getattr(model(input_ids=prompt.input_ids, use_cache=True, logits_to_keep=1), cache_arg(model))
    part = prefill(model, prompt.input_ids[:, :k], T)
    for layer in (0, 1):
        keys = [c.layers[layer].keys if hasattr(c, "layers") else c.key_cache[layer] for c in (full, part)]
        assert torch.allclose(keys[0][:, :, :k], keys[1], atol=1e-5)
