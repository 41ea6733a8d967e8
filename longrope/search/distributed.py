"""Scoring a generation across processes started by torchrun.

Every rank holds a model replica and runs the same search loop with the same seed. The
candidates of a generation are dealt round-robin to the ranks (candidate i to rank
i % world_size), each rank scores its share, and all ranks gather every score, so their
populations and random generators stay identical; rank 0 alone writes files. Because a
generation's rejection thresholds are fixed before it starts, a candidate scores the
same on any rank: the result equals a single-process run with the same seed, given
bit-identical scores (same kind of device, same threads per process: torchrun sets
OMP_NUM_THREADS=1; one candidate per forward pass, since which candidates share a pass can
change the last bits of their scores). With `candidates_per_forward` > 1 each rank batches
its own share.

    torchrun --standalone --nproc-per-node 8 -m longrope search --model M ...  # one node, 8 GPUs
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m longrope search ...  # two nodes

The backend is NCCL when CUDA is available (rank r uses cuda:LOCAL_RANK), else gloo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .scoring import Rule, Scoring, evaluate_serial
from .state import Evaluation


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group torchrun describes in the environment (no-op when alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's `obj` on every rank (pickled; small objects such as a search state)."""
    if d.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def min_over_ranks(value: int, d: Dist) -> int:
    """The smallest of every rank's `value` (e.g. the candidates per forward pass all can hold)."""
    if d.world_size == 1:
        return value
    gathered: list[Any] = [None] * d.world_size
    dist.all_gather_object(gathered, value)
    return min(gathered)


def distributed_evaluator(d: Dist):
    """An `evaluate_batch` for `search.loop.run_search` that splits candidates across ranks."""

    def evaluate_batch(scoring: Scoring, factors: list[np.ndarray], starts: list[int],
                       rule: Rule | None) -> list[Evaluation]:
        share = range(d.rank, len(factors), d.world_size)  # each rank batches its own share
        evals = evaluate_serial(scoring, [factors[i] for i in share], [starts[i] for i in share], rule)
        mine = dict(zip(share, evals))
        if d.world_size == 1:
            return [mine[i] for i in range(len(factors))]
        gathered: list[Any] = [None] * d.world_size
        dist.all_gather_object(gathered, mine)
        merged: dict[int, Evaluation] = {}
        for part in gathered:
            merged.update(part)
        return [merged[i] for i in range(len(factors))]

    return evaluate_batch
