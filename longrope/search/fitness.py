"""The search objective: perplexity of the model on K documents of the target length.

The model is loaded once and its rotary module installed once; a candidate only swaps
the factors, which rebuilds a [d/2] inverse-frequency vector and the cos/sin tables of the
next forward pass (benchmarked in bench/search_speed.py). Documents are scored one at a
time, in a fixed order, so the search can stop a hopeless candidate after the first ones.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..factors import RopeExtension
from ..rope import RotarySpec


def search_documents(tokenizer, corpus: str | None, length: int, count: int, split_seed: int = 0) -> list[torch.Tensor]:
    """K documents of the corpus' "search" split with at least `length` tokens, each cut to
    [length] (the validation and test splits stay held out for eval-ppl)."""
    from ..data import documents_of_length, load_corpus, split_corpus, tokenize_corpus

    docs = split_corpus(load_corpus(corpus), split_seed)["search"]
    return documents_of_length(tokenize_corpus(tokenizer, docs), length, count)


class PerplexityObjective:
    """objective(factors [d/2], start_token) -> yields the mean token NLL of each document.

    docs: K token tensors, each [T] with T = target_length (paper: 5 PG19 books truncated
    to L'). Fitness = exp(mean over documents of these values), REFERENCE section 2.
    """

    def __init__(self, model: nn.Module, spec: RotarySpec, docs: Sequence[torch.Tensor], target_length: int,
                 chunk_size: int = 1024):
        from ..model import install_rope

        self.model, self.spec, self.docs = model, spec, list(docs)
        self.target_length, self.chunk_size = int(target_length), chunk_size
        self.rope = install_rope(model, None)  # the one seam; later candidates only swap factors
        for d in self.docs:
            assert d.dim() == 1 and d.shape[0] == self.target_length, "documents must be [target_length]"

    def extension(self, factors: np.ndarray, start_token: int) -> RopeExtension:
        """The RopeExtension a candidate stands for (attention factor: the longrope default)."""
        return RopeExtension(
            method="longrope",
            long_factor=[float(x) for x in factors],
            original_max_position_embeddings=self.spec.original_max_position_embeddings,
            max_position_embeddings=self.target_length,
            start_token=int(start_token),
        )

    def __call__(self, factors: np.ndarray, start_token: int) -> Iterator[float]:
        from ..evaluate.ppl import document_nll

        self.rope.set_extension(self.extension(factors, start_token))
        for ids in self.docs:
            nll, count = document_nll(self.model, ids[None], self.chunk_size)
            yield nll / count
