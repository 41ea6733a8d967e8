"""The documents of LongRoPE2's needle-driven objective (arXiv 2502.20082, section 3.2; the
objective itself is `fitness.NeedleObjective`): the loss of the answer tokens only, in long
documents with needles inserted at several depths.

Plain perplexity is dominated by tokens a short context predicts well; the needle loss measures
what a longer context is for, recalling a fact from far away. Each search document (the same K
documents of the corpus' search split as the perplexity objective) becomes:

    [filler][needle 1][filler][needle 2] ... [filler][question 1 answer 1] ... [question n answer n]

    needle:   " The special magic number for {key} is {value}."
    question: " What is the special magic number for {key}? The special magic number for {key} is"
    answer:   " {value}"                                   # 7 digits; only these tokens are scored

with n needles per document (default 3), all of them asked at the end in a shuffled order:
n answers of several tokens each make the loss of one document much less noisy than one digit
string. The K * n depths are evenly spaced in (0, 1) and dealt so that document k holds depths
k, k + K, k + 2K, ... of them: every document spans the whole length, and together they cover
K * n depths. The filler is the document's own text, cut to leave exactly `target_length`
tokens; keys, values and the order of the questions come from one seeded generator.
Segments are tokenized separately and concatenated, so the answer span is exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..evaluate.passkey import FILLER, MAX_KEY, build_prompt

KEYS = ("apple", "river", "falcon", "copper", "meadow", "lantern", "harbor", "violet", "glacier", "pepper",
        "canyon", "orchid", "thunder", "marble", "willow", "ember", "saddle", "comet", "basil", "quartz",
        "juniper", "anchor", "cobalt", "tundra", "walnut", "beacon", "lagoon", "maple", "sparrow", "cinder")
NEEDLE = " The special magic number for {key} is {value}."
QUESTION = " What is the special magic number for {key}? The special magic number for {key} is"
ANSWER = " {value}"


@dataclass(frozen=True)
class NeedleDocument:
    """ids: [target_length] tokens; answers: (start, end) token spans of the answers, scored;
    keys/values/depths of the needles in document order (depth: fraction of the filler)."""

    ids: torch.Tensor
    answers: tuple[tuple[int, int], ...]
    keys: tuple[str, ...]
    values: tuple[str, ...]
    depths: tuple[float, ...]

    @property
    def positions(self) -> torch.Tensor:
        """Indices of the answer tokens in ids, [P] int64."""
        return torch.cat([torch.arange(a, b) for a, b in self.answers])


def needle_documents(tokenizer, fillers: Sequence[torch.Tensor], target_length: int, needles: int = 3,
                     seed: int = 0) -> list[NeedleDocument]:
    """One needle document of exactly `target_length` tokens per filler document [>= T] (its
    first token, BOS where the tokenizer adds one, stays first)."""
    if needles < 1 or needles > len(KEYS):
        raise UsageError(f"--needles must be in [1, {len(KEYS)}], got {needles}")
    rng = np.random.default_rng(seed)
    K = len(fillers)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for k, filler in enumerate(fillers):
        keys = [KEYS[i] for i in rng.choice(len(KEYS), size=needles, replace=False)]
        values = [str(v) for v in rng.integers(1_000_000, 10_000_000, size=needles)]
        depths = [(j * K + k + 0.5) / (K * needles) for j in range(needles)]  # increasing in j
        asked = [int(i) for i in rng.permutation(needles)]
        needle_ids = [encode(NEEDLE.format(key=key, value=v)) for key, v in zip(keys, values)]
        qa = [(encode(QUESTION.format(key=keys[i])), encode(ANSWER.format(value=values[i]))) for i in asked]
        room = target_length - sum(map(len, needle_ids)) - sum(len(q) + len(a) for q, a in qa)
        if room < needles + 1:
            raise UsageError(f"needles and questions take {target_length - room} tokens, too many for "
                             f"--target-length {target_length}; use fewer --needles")
        if filler.shape[0] < room:
            raise UsageError(f"a filler document has {filler.shape[0]} tokens, fewer than the {room} needed")
        fill = filler[:room].tolist()
        cuts = [0] + [min(max(round(d * room), 1), room) for d in depths]  # token 0 (BOS) stays first
        ids: list[int] = []
        for j in range(needles):
            ids += fill[cuts[j] : cuts[j + 1]] + needle_ids[j]
        ids += fill[cuts[needles] :]
        spans = []
        for q, a in qa:
            ids += q
            spans.append((len(ids), len(ids) + len(a)))
            ids += a
        assert len(ids) == target_length
        out.append(NeedleDocument(torch.tensor(ids, dtype=torch.long), tuple(spans), tuple(keys), tuple(values),
                                  tuple(depths)))
    return out


@torch.inference_mode()
def positions_nll(model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Summed NLL of the tokens at `positions` only. input_ids: [1, T]; positions: [P] (>= 1).

    The decoder runs once over the whole sequence; the LM head sees only the P hidden states
    that predict those tokens, so no [T, vocab] logits exist. Returns a 0-dim float32 tensor.
    """
    B, T = input_ids.shape
    assert B == 1 and int(positions.min()) >= 1 and int(positions.max()) < T
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state  # [1, T, H]
    positions = positions.to(input_ids.device)
    logits = model.get_output_embeddings()(hidden[0, positions - 1]).float()  # [P, V]: t-1 predicts t
    return F.cross_entropy(logits, input_ids[0, positions], reduction="sum")


@torch.inference_mode()
def rows_positions_nll(model: nn.Module, input_ids: torch.Tensor, positions: Sequence[torch.Tensor]) -> torch.Tensor:
    """`positions_nll` of each row at its own positions, from one pass. input_ids: [B, T];
    positions: B tensors [P_b] (>= 1). Returns [B] float32."""
    B, T = input_ids.shape
    assert len(positions) == B
    device = input_ids.device
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state  # [B, T, H]
    row = torch.cat([torch.full((p.numel(),), b) for b, p in enumerate(positions)]).to(device)  # [sum P]
    pos = torch.cat(list(positions)).to(device)  # [sum P]
    logits = model.get_output_embeddings()(hidden[row, pos - 1]).float()  # [sum P, V]: t-1 predicts t
    nll = F.cross_entropy(logits, input_ids[row, pos], reduction="none")  # [sum P]
    return torch.zeros(B, device=device).index_add_(0, row, nll)


def passkey_documents(tokenizer, count: int, target_length: int, seed: int = 0) -> list[NeedleDocument]:
    """`count` passkey prompts (LongRoPE section 4.2: the prompt `longrope passkey` asks), the
    needle at depths (k + 1/2) / count, each followed by its answer " {key}" (the scored tokens)
    and then by filler up to exactly `target_length` tokens (after the answer, so no scored
    token sees it). Keys are drawn in [1, 50000] by a seeded generator."""
    rng = np.random.default_rng(seed)
    filler = tokenizer(" " + FILLER, add_special_tokens=False)["input_ids"]
    out = []
    for k in range(count):
        key = int(rng.integers(1, MAX_KEY + 1))
        answer = tokenizer(f" {key}", add_special_tokens=False)["input_ids"]
        try:
            prompt = build_prompt(tokenizer, target_length - len(answer), (k + 0.5) / count, key)
        except ValueError as e:
            raise UsageError(f"--objective passkey: {e}") from None
        ids = prompt.input_ids[0].tolist() + answer
        start = prompt.input_ids.shape[1]
        ids += (filler * (1 + target_length // len(filler)))[: target_length - len(ids)]
        out.append(NeedleDocument(torch.tensor(ids, dtype=torch.long), ((start, start + len(answer)),),
                                  ("pass key",), (str(key),), (prompt.depth,)))
    return out
