"""What one 131k-token forward of the tiny model costs on a CPU, and whether passkey trials can
share their filler's prefill without changing a result.

    OMP_NUM_THREADS=1 python bench/long_context_cost.py --lengths 16384,32768,65536,131072

For each length: one `document_nll` of a random sequence through a tiny-shaped Llama (4 layers,
width 128, four heads of 32: the `tiny` preset's shape) and one passkey trial on the `tiny`
preset (its prompt built to the length, greedy decoding with a KV cache), each with wall time
and the process's peak memory. Then the question of sharing a prefill: trials of one length
share the filler before their needle, so its keys and values could be computed once; what is
left per trial is the suffix from the needle on, attending to the whole cached prefix. Causal
SDPA has no such case (a query block shorter than its keys needs an explicit mask), so the
suffix runs masked: the script times one masked 4096-query chunk over all keys against the
share of the causal kernel's time those queries take in one pass. Printed side by side and
written to --out.
"""
from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope.atomic import atomic_write_json  # noqa: E402


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def forward_cost(length: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from longrope.evaluate.ppl import document_nll

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=128, num_attention_heads=4, num_key_value_heads=4, head_dim=32,
                      intermediate_size=384, num_hidden_layers=4, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 1024, (1, length))
    t0 = time.perf_counter()
    document_nll(model, ids)
    return {"forward_s": time.perf_counter() - t0, "peak_gib": peak_gib()}


def passkey_cost(length: int) -> dict:
    from longrope.evaluate.passkey import run_trials
    from longrope.methods import build_extension
    from longrope.models.load import load_model
    from longrope.seam import install_rope

    lm = load_model("tiny", "fp32")
    install_rope(lm.model, build_extension("yarn", lm.spec, length))
    t0 = time.perf_counter()
    [trial] = list(run_trials(lm.model, lm.tokenizer, length, 1, random.Random(0)))
    return {"passkey_trial_s": time.perf_counter() - t0, "peak_gib": peak_gib(), "prompt_tokens": trial.prompt_tokens}


def shared_prefix_ratio(length: int, chunk: int = 4096, heads: int = 4, dim: int = 32) -> dict:
    """A masked chunk of the last `chunk` queries over all keys, against the time the causal kernel
    spends on those queries in one pass ((T^2 - (T-C)^2) / T^2 of it)."""
    q, k, v = (torch.randn(1, heads, length, dim) for _ in range(3))
    t0 = time.perf_counter()
    F.scaled_dot_product_attention(q, k, v, is_causal=True)
    causal = time.perf_counter() - t0
    share = (length**2 - (length - chunk) ** 2) / length**2
    mask = torch.ones(chunk, length, dtype=torch.bool).tril(diagonal=length - chunk)[None, None]
    t0 = time.perf_counter()
    F.scaled_dot_product_attention(q[:, :, -chunk:], k, v, attn_mask=mask)
    masked = time.perf_counter() - t0
    return {"causal_sdpa_s": causal, "masked_chunk_s": masked, "masked_over_causal_share": masked / (causal * share)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="16384,32768,65536")
    p.add_argument("--out", default="runs/long-context-cost.json")
    args = p.parse_args()
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        row = {"length": n, "threads": torch.get_num_threads(), **forward_cost(n), **passkey_cost(n),
               **shared_prefix_ratio(n)}
        rows.append(row)
        print(f"{n:>7}: forward {row['forward_s']:7.1f} s, passkey trial {row['passkey_trial_s']:7.1f} s, "
              f"peak {row['peak_gib']:.2f} GiB; a masked suffix chunk costs {row['masked_over_causal_share']:.2f}x "
              f"its share of the causal pass", flush=True)
    atomic_write_json(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
