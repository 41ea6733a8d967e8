"""The search objectives: what a candidate vector means and how it is scored.

The model is loaded once and its rotary module installed once; a candidate only swaps
the factors, which rebuilds a [d/2] inverse-frequency vector and the cos/sin tables of the
next forward pass (benchmarked in bench/search_speed.py). Documents are scored one at a
time, in a fixed order, so the search can stop a hopeless candidate after the first ones.

`OBJECTIVES` picks an objective class by name (`--objective`): `cls(model, docs, make,
chunk_size)`, with `docs` made by `cls.documents` from the K search documents:

    ppl     perplexity of every token (LongRoPE section 4.1)
    needle  loss of the answer tokens only, needles at several depths (LongRoPE2 section 3.2)
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..data import documents_of_length, load_corpus, split_corpus, tokenize_corpus
from ..evaluate.ppl import document_nll
from ..factors import RopeExtension
from ..rope import RotarySpec
from ..seam import install_rope
from .needle import NeedleDocument, needle_documents, positions_nll

# what a candidate stands for: (factors [d/2] float64, start_token) -> the extension to install
MakeExtension = Callable[[np.ndarray, int], RopeExtension]


def search_documents(tokenizer, corpus: str | None, length: int, count: int, split_seed: int = 0,
                     objective: str = "ppl", needles: int = 3) -> list:
    """K documents of the corpus' "search" split with at least `length` tokens, each cut to
    [length] (the validation and test splits stay held out for eval-ppl), as `objective`
    scores them (needle: with `needles` needles each, placed with `split_seed`)."""
    docs = split_corpus(load_corpus(corpus), split_seed)["search"]
    docs = documents_of_length(tokenize_corpus(tokenizer, docs), length, count)
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


class PerplexityObjective:
    """objective(factors [d/2], start_token) -> yields the mean token NLL of each document.

    docs: K token tensors [T] (paper: 5 PG19 books truncated to L'); `make` turns a candidate
    into the extension to install. Fitness = exp(mean over documents of these values)
    (LongRoPE section 4.1).
    """

    def __init__(self, model: nn.Module, docs: Sequence[torch.Tensor], make: MakeExtension, chunk_size: int = 1024):
        self.model, self.docs, self.make, self.chunk_size = model, list(docs), make, chunk_size
        self.rope = install_rope(model, None)  # the one seam; later candidates only swap factors

    @staticmethod
    def documents(tokenizer, docs: list[torch.Tensor], length: int, needles: int, seed: int) -> list[torch.Tensor]:
        """The documents this objective scores, made from K search documents [length]: themselves."""
        return docs

    def __call__(self, factors: np.ndarray, start_token: int) -> Iterator[float]:
        self.rope.set_extension(self.make(factors, start_token))
        for ids in self.docs:
            nll, count = document_nll(self.model, ids[None], self.chunk_size)
            yield nll / count


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


OBJECTIVES = {"ppl": PerplexityObjective, "needle": NeedleObjective}
