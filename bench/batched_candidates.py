"""Several search candidates per forward pass: seconds per candidate-document for B = 1, 2, 4
(and the automatic size on a GPU), side by side in one run, on a random model shaped like the
`tiny-128` preset (4 layers, 256 wide, head dim 64, vocabulary 8192, native context 128) or a
loaded `--model`.

    OMP_NUM_THREADS=1 python bench/batched_candidates.py --target-length 1024 --dtype fp32
    python bench/batched_candidates.py --model smollm2-135m --target-length 8192   # on a GPU

Each B scores the same candidates (PI/NTK/YaRN and mutations of them) on the same documents
through `score_rows`, as the search does with --candidates-per-forward B, and reports the
largest relative difference of its losses from B = 1. On a CPU a batch row costs about as much
as a pass of its own, so B > 1 gains little; on a GPU one pass of B rows takes little more
than one row until the GPU is busy. Results print as a table and are written to --out as JSON.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope.atomic import atomic_write_json  # noqa: E402
from longrope.models.device import resolve_dtype  # noqa: E402
from longrope.search.loop import peer_seeds  # noqa: E402
from longrope.search.scoring import Scoring, score_rows  # noqa: E402
from longrope.search.fitness import PerplexityObjective, auto_candidates_per_forward, long_factor_candidate  # noqa: E402
from longrope.search.genes import SearchSpace  # noqa: E402
from longrope.seam import rotary_spec  # noqa: E402


def random_tiny(device: str, dtype: torch.dtype):
    """A seeded random Llama of the `tiny-128` preset's shape (no training, no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=64, max_position_embeddings=128,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a --model to load (default: a random tiny-shaped Llama)")
    p.add_argument("--target-length", type=int, default=1024)
    p.add_argument("--docs", type=int, default=2)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--sizes", default="1,2,4", help="candidates per forward pass to compare")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/bench_batched_candidates.json")
    args = p.parse_args()

    dtype = resolve_dtype(args.dtype, args.device)
    if args.model:
        from longrope.models.load import load_model

        model = load_model(args.model, dtype=args.dtype, device=args.device).model
    else:
        model = random_tiny(args.device, dtype)
    spec, N = rotary_spec(model), args.target_length
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, vocab, (N,), generator=g) for _ in range(args.docs)]
    objective = PerplexityObjective(model, docs, long_factor_candidate(spec, N))
    scale = N / spec.original_max_position_embeddings
    space = SearchSpace(half=spec.half, scale=scale, max_factor=1.25 * scale)
    rng = np.random.default_rng(0)
    seeds = [space.from_factors(s) for s in peer_seeds(spec, scale)]
    genomes = (seeds + [space.mutate(seeds[i % 3], rng, 0.3) for i in range(args.candidates)])[: args.candidates]
    factors, starts = [space.factors(x) for x in genomes], [x.start_token for x in genomes]

    sizes = [int(b) for b in args.sizes.split(",")]
    if args.device.startswith("cuda"):
        sizes.append(auto_candidates_per_forward(objective, (factors[0], starts[0])))
    objective.losses([(factors[0], starts[0], 0)])  # warm-up
    rows, reference = {}, None
    for B in sizes:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        evals = score_rows(Scoring(objective, len(docs)), factors, starts, None, B)
        seconds = time.perf_counter() - t0
        losses = np.array([e.doc_losses for e in evals])
        reference = losses if reference is None else reference
        rows[B] = {"seconds_per_candidate_doc": seconds / losses.size,
                   "max_rel_diff_vs_first": float(np.max(np.abs(losses - reference) / np.abs(reference)))}
    base = rows[sizes[0]]["seconds_per_candidate_doc"]
    print(f"{args.model or 'random tiny-shaped Llama'}, {N} tokens, {args.candidates} candidates x {len(docs)} docs, "
          f"{dtype}, {args.device}, {torch.get_num_threads()} threads")
    print(f"    {'B':>4s} {'s/candidate-doc':>16s} {'speed-up':>9s} {'max rel diff':>13s}")
    for B, r in rows.items():
        print(f"    {B:4d} {r['seconds_per_candidate_doc']:16.4f} {base / r['seconds_per_candidate_doc']:8.2f}x "
              f"{r['max_rel_diff_vs_first']:13.2e}")
    atomic_write_json(args.out, {"model": args.model or "random-tiny", "target_length": N, "dtype": str(dtype),
                                 "device": args.device, "threads": torch.get_num_threads(),
                                 "candidates": args.candidates, "docs": len(docs),
                                 "rows": {str(b): r for b, r in rows.items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
