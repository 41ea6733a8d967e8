"""Our perplexity evaluator vs the plain transformers path, side by side in one run.

  python bench/eval_speed.py --model smollm2-135m --length 8192 --docs 2

(a) throughput: `document_nll` (chunked LM head, SDPA, inference_mode, dtype auto = bf16
    on AMX CPUs) against `model(input_ids=x, labels=x)` in fp32 with autograd on, the way
    most scripts call it; both on the same documents, alternating, in this process.
(b) peak memory: each path runs in its own fresh process; the forward's peak resident
    memory above what the process held just before it (a 5 ms sampling thread) and the
    process's total peak are reported.
(c) perplexity of both paths (they should agree to within 1%).
(d) achieved FLOP/s of our forward as a fraction of this machine's measured bf16 matmul peak.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time

import torch


def load(model_name: str, dtype: str):
    from longrope.models.load import load_model

    return load_model(model_name, dtype, "cpu")


def docs_for(loaded, length: int, count: int):
    from longrope.data import split_documents

    return split_documents(loaded.tokenizer, None, "validation", length, count)


def ours(loaded, doc):
    from longrope.evaluate.ppl import document_nll

    nll, n = document_nll(loaded.model, doc)
    return nll / n


def plain(loaded, doc):
    x = doc[None]
    out = loaded.model(input_ids=x, labels=x)  # grad mode on, full [T, V] logits, as in most scripts
    return float(out.loss)


class PeakRSS:
    """Samples the resident set size every 5 ms while active."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def memory_child(model: str, path: str, length: int) -> None:
    """Runs in a fresh process: one forward of one path, prints JSON with the peaks."""
    import resource

    loaded = load(model, "auto" if path == "ours" else "fp32")
    doc = docs_for(loaded, length, 1)[0]
    with PeakRSS() as m:
        (ours if path == "ours" else plain)(loaded, doc)
    print(json.dumps({"forward_peak_mb": (m.peak - m.start) / 2**20,
                      "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def matmul_peak(dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def forward_flops(model, T: int) -> float:
    """2 * (non-embedding params + LM head) * T, plus causal attention 2 * T^2 * H * hd per layer."""
    cfg = model.config
    emb = model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in model.parameters()) - emb + model.get_output_embeddings().weight.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 2 * T * T * cfg.num_attention_heads * head_dim * cfg.num_hidden_layers
    return 2 * params * T + attn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--docs", type=int, default=2)
    ap.add_argument("--child", choices=["ours", "plain"])
    args = ap.parse_args()
    if args.child:
        return memory_child(args.model, args.child, args.length)

    mem = {}
    for path in ("ours", "plain"):
        res = subprocess.run([sys.executable, __file__, "--model", args.model, "--length", str(args.length),
                              "--child", path], capture_output=True, text=True, check=True)
        mem[path] = json.loads(res.stdout.strip().splitlines()[-1])

    fast, slow = load(args.model, "auto"), load(args.model, "fp32")
    docs = docs_for(fast, args.length, args.docs)
    times = {"ours": 0.0, "plain": 0.0}
    nlls = {"ours": [], "plain": []}
    ours(fast, docs[0][: args.length // 8])  # warm-up
    for doc in docs:  # alternate so machine noise hits both
        for name, fn, m in (("ours", ours, fast), ("plain", plain, slow)):
            t0 = time.perf_counter()
            nlls[name].append(fn(m, doc))
            times[name] += time.perf_counter() - t0
    ppl = {k: math.exp(sum(v) / len(v)) for k, v in nlls.items()}
    tokens = args.length * len(docs)
    peak = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    achieved = forward_flops(fast.model, args.length) * len(docs) / times["ours"]
    dtype = str(next(fast.model.parameters()).dtype).replace("torch.", "")
    report = {
        "model": args.model, "length": args.length, "docs": len(docs), "threads": torch.get_num_threads(),
        "ours_dtype": dtype,
        "tokens_per_s": {k: tokens / v for k, v in times.items()},
        "throughput_ratio": times["plain"] / times["ours"],
        "memory_mb": mem,
        "forward_memory_ratio": mem["ours"]["forward_peak_mb"] / max(mem["plain"]["forward_peak_mb"], 1e-9),
        "process_memory_ratio": mem["ours"]["process_peak_mb"] / mem["plain"]["process_peak_mb"],
        "ppl": ppl, "ppl_rel_diff": abs(ppl["ours"] / ppl["plain"] - 1),
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peak.items()},
        "achieved_gflops": achieved / 1e9,
        "fraction_of_bf16_peak": achieved / peak["bf16"],
    }
    print(json.dumps(report, indent=2))
    print(f"\nthroughput ours/plain: {report['throughput_ratio']:.2f}x   "
          f"forward peak memory ours/plain: {report['forward_memory_ratio']:.2f}   "
          f"process peak ours/plain: {report['process_memory_ratio']:.2f}   "
          f"ppl {ppl['ours']:.3f} vs {ppl['plain']:.3f} ({report['ppl_rel_diff']:.2%})   "
          f"{report['achieved_gflops']:.0f} GFLOP/s = {report['fraction_of_bf16_peak']:.0%} of bf16 matmul peak")


if __name__ == "__main__":
    main()
