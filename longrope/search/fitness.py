"""The search objectives: what a candidate vector means and how it is scored.

The model is loaded once and its rotary module installed once; a candidate only swaps
the factors, which rebuilds a [d/2] inverse-frequency vector and the cos/sin tables of the
next forward pass (benchmarked in bench/search_speed.py). Documents are scored one at a
time, in a fixed order, so the search can stop a hopeless candidate after the first ones.
`losses` scores several (candidate, document) pairs in one forward pass, one batch row each
with its own factors (`candidates_per_forward` of them; bench/batched_candidates.py).

`OBJECTIVES` picks an objective class by name (`--objective`): `cls(model, docs, make,
chunk_size)`, with `docs` made by `cls.documents` from the K search documents:

    ppl     perplexity of every token (LongRoPE section 4.1)
    tail    perplexity of the last half of each document's tokens, [N/2, N): the positions only
            the extended window reaches, where methods differ most (the first half's loss, the
            same for any reasonable factors, only dilutes the differences)
    needle  loss of the answer tokens only, needles at several depths (LongRoPE2 section 3.2)
    passkey the same loss on LongRoPE's passkey prompts (section 4.2), for models that know them
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..data import split_documents
from ..evaluate.ppl import band_nll
from ..factors import RopeExtension
from ..rope import RotarySpec
from ..seam import install_rope
from .needle import NeedleDocument, needle_documents, passkey_documents, positions_nll, rows_positions_nll

# what a candidate stands for: (factors [d/2] float64, start_token) -> the extension to install
MakeExtension = Callable[[np.ndarray, int], RopeExtension]
# one batch row of `losses`: (factors [d/2], start_token, index of the document)
Row = tuple[np.ndarray, int, int]


def search_documents(tokenizer, corpus: str | None, length: int, count: int, split_seed: int = 0,
                     objective: str = "ppl", needles: int = 3, split: str = "search") -> list:
    """K documents of the corpus' "search" split (or `split`) with at least `length` tokens, each
    cut to [length] (the validation and test splits stay held out for eval-ppl), as `objective`
    scores them (needle: with `needles` needles each, placed with `split_seed`)."""
    docs = split_documents(tokenizer, corpus, split, length, count, split_seed)
    return OBJECTIVES[objective].documents(tokenizer, docs, length, needles, split_seed)


def long_factor_candidate(spec: RotarySpec, target_length: int, attention_factor: float | None = None) -> MakeExtension:
    """LongRoPE Algorithm 1: the candidate is the long factor itself (attention factor: the
    longrope default unless given)."""

    def make(factors: np.ndarray, start_token: int) -> RopeExtension:
        return RopeExtension(method="longrope", long_factor=[float(x) for x in factors],
                             original_max_position_embeddings=spec.original_max_position_embeddings,
                             max_position_embeddings=int(target_length), start_token=int(start_token),
                             attention_factor=attention_factor)

    return make


def short_factor_candidate(ext: RopeExtension) -> MakeExtension:
    """LongRoPE section 3.3's readjustment: the candidate is `ext` with this short_factor (its
    long factors, n_hat and attention factor kept); searched at a length within the native
    context, where the short factor is the one in use."""

    def make(factors: np.ndarray, start_token: int) -> RopeExtension:
        return ext.with_(short_factor=[float(x) for x in factors])

    return make


class PerplexityObjective:
    """objective(factors [d/2], start_token) -> yields the mean token NLL of each document.

    docs: K token tensors [T] (paper: 5 PG19 books truncated to L'); `make` turns a candidate
    into the extension to install. Fitness = exp(mean over documents of these values)
    (LongRoPE section 4.1).
    """

    candidates_per_forward = 1  # rows per `losses` call the search makes (search.scoring.score_rows)
    scored_from = 0.0  # share of each document before its first scored token (TailObjective: 1/2)

    def __init__(self, model: nn.Module, docs: Sequence[torch.Tensor], make: MakeExtension, chunk_size: int = 1024):
        self.model, self.docs, self.make, self.chunk_size = model, list(docs), make, chunk_size
        self.rope = install_rope(model, None)  # the one seam; later candidates only swap factors

    @staticmethod
    def documents(tokenizer, docs: list[torch.Tensor], length: int, needles: int, seed: int) -> list[torch.Tensor]:
        """The documents this objective scores, made from K search documents [length]: themselves."""
        return docs

    def _scored(self, T: int) -> tuple[list[int], int]:
        """The band of scored positions in a document [T] (band_nll edges) and its token count."""
        first = int(T * self.scored_from)
        return [first, T], T - max(first, 1)  # token 0 is never a target

    def __call__(self, factors: np.ndarray, start_token: int) -> Iterator[float]:
        self.rope.set_extension(self.make(factors, start_token))
        device = next(self.model.parameters()).device
        for ids in self.docs:
            edges, count = self._scored(ids.shape[0])
            nll = band_nll(self.model, ids[None].to(device), edges, self.chunk_size)
            yield float(nll.item()) / count  # the one host sync per document

    def _install_rows(self, rows: Sequence[Row]) -> torch.Tensor:
        """Row b's factors into the rotary module; its document as row b of the input [B, T]."""
        self.rope.set_row_extensions([self.make(factors, start) for factors, start, _ in rows])
        device = next(self.model.parameters()).device
        return torch.stack([self.docs[doc] for _, _, doc in rows]).to(device)

    def losses(self, rows: Sequence[Row]) -> list[float]:
        """The value `__call__` yields for each (factors, start_token, document) row, all rows
        in one forward pass [B, T] (equal up to float rounding). The LM head's chunk is divided
        by B, so its logits take the memory of one row's."""
        x = self._install_rows(rows)
        edges, count = self._scored(x.shape[1])
        nll = band_nll(self.model, x, edges, max(1, self.chunk_size // len(rows)))[:, 0].tolist()  # one host sync
        return [v / count for v in nll]


class NeedleObjective(PerplexityObjective):
    """objective(factors [d/2], start_token) -> yields the mean NLL of the answer tokens of each
    needle document (fitness = exp of their mean: the answers' perplexity). docs: NeedleDocuments."""

    def __init__(self, model: nn.Module, docs: Sequence[NeedleDocument], make: MakeExtension, chunk_size: int = 1024):
        super().__init__(model, [d.ids for d in docs], make, chunk_size)
        self.positions = [d.positions for d in docs]  # [P] answer tokens of each document

    @staticmethod
    def documents(tokenizer, docs: list[torch.Tensor], length: int, needles: int, seed: int) -> list[NeedleDocument]:
        """One needle document of exactly `length` tokens per search document (its filler)."""
        return needle_documents(tokenizer, docs, length, needles, seed)

    def __call__(self, factors: np.ndarray, start_token: int) -> Iterator[float]:
        self.rope.set_extension(self.make(factors, start_token))
        device = next(self.model.parameters()).device
        for ids, pos in zip(self.docs, self.positions):
            nll = positions_nll(self.model, ids[None].to(device), pos)
            yield float(nll.item()) / pos.numel()  # the one host sync per document

    def losses(self, rows: Sequence[Row]) -> list[float]:
        """The value `__call__` yields for each (factors, start_token, document) row, all rows
        in one forward pass [B, T] (equal up to float rounding)."""
        x = self._install_rows(rows)
        positions = [self.positions[doc] for _, _, doc in rows]
        nll = rows_positions_nll(self.model, x, positions).tolist()  # one host sync
        return [v / p.numel() for v, p in zip(nll, positions)]


class PasskeyObjective(NeedleObjective):
    """`NeedleObjective` on passkey prompts (`needle.passkey_documents`), one per search document
    (which only sets their number): the answer loss of the prompt `longrope passkey` scores, for
    a model that knows that prompt (the tiny presets, a model fine-tuned with passkey rows)."""

    @staticmethod
    def documents(tokenizer, docs: list[torch.Tensor], length: int, needles: int, seed: int) -> list[NeedleDocument]:
        return passkey_documents(tokenizer, len(docs), length, seed)


class TailObjective(PerplexityObjective):
    """objective(factors [d/2], start_token) -> yields the mean NLL of the tokens at positions
    [T/2, T) of each document [T] (fitness = their perplexity)."""

    scored_from = 0.5


OBJECTIVES = {"ppl": PerplexityObjective, "tail": TailObjective, "needle": NeedleObjective,
              "passkey": PasskeyObjective}


def auto_candidates_per_forward(objective: PerplexityObjective, probe: tuple[np.ndarray, int], limit: int = 64,
                                headroom: float = 0.8) -> int:
    """How many candidates one forward pass can score: on CUDA, as many rows as `headroom` of
    the free memory holds, from the measured peak of a 1-row and a 2-row pass (the difference
    is one row's activations) of the candidate `probe` (factors [d/2], start_token); at most
    `limit`. 1 on other devices, where a batch row costs about as much as a pass of its own."""
    device = next(objective.model.parameters()).device
    if device.type != "cuda":
        return 1

    def peak(rows: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        objective.losses([(*probe, 0)] * rows)
        return torch.cuda.max_memory_allocated(device) - base

    one, two = peak(1), peak(2)
    objective.rope.set_extension(None)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    row = max(two - one, 1)
    return int(max(1, min(limit, 1 + (headroom * free - one) // row)))
