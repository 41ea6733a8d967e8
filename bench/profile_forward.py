"""Where the evaluator's forward spends its time: one `document_nll` under torch.profiler.

    python bench/profile_forward.py --model smollm2-135m --lengths 8192,16384

For each length, one document of the validation split is scored once (after a short warm-up)
with the profiler on. Every outermost aten op is put in one category, by the module it ran in
(tagged with forward hooks: RMSNorm, the rotary module, the LM head; and transformers'
`apply_rotary_pos_emb`, wrapped for the run) or else by its name:

    linear        aten::linear / mm / addmm / matmul of the decoder's projections
    attention     scaled_dot_product_attention (the SDPA kernel, masks included)
    rope tables   the cos/sin tables (the rotary module, once per forward)
    rope apply    applying them to q and k in every layer (`apply_rotary_pos_emb`)
    norm          RMSNorm
    casts/copies  aten::to / _to_copy / copy_ / contiguous / clone outside the tags above
    lm head + CE  the LM head's chunks, their fp32 cast, cross-entropy and the band sums
    other         everything else (embedding, SiLU, residual adds, views, ...)
    untracked     wall time outside any aten op (Python, hooks, dispatch)

Shares are of the forward's wall time. Achieved GFLOP/s (whole forward; the decoder's
projections; attention) is set against the bf16 matmul peak measured in the same run on
2048^2 matrices, and against the peak of the model's own projection shapes run alone.
Results print as a table and are written to --out as JSON.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import docs_for, forward_flops, load, matmul_peak  # noqa: E402
from longrope.evaluate.ppl import document_nll  # noqa: E402
from longrope.atomic import atomic_write_json  # noqa: E402

CATEGORIES = ("linear", "attention", "rope tables", "rope apply", "norm", "casts/copies", "lm head + CE", "other",
              "untracked")
TAG = "tag:"
LINEAR = {"aten::linear", "aten::mm", "aten::addmm", "aten::matmul", "aten::bmm"}
CASTS = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone"}
HEAD_OPS = ("cross_entropy", "log_softmax", "nll_loss", "bucketize", "index_add", "logsumexp")


class Tagger:
    """Forward hooks that wrap chosen modules in a profiler range `tag:<category>`, and
    transformers' `apply_rotary_pos_emb` in `tag:rope apply`, until `remove()`."""

    def __init__(self, model):
        self.handles, self.patched = [], []
        for module in model.modules():
            name = type(module).__name__
            category = ("norm" if "RMSNorm" in name else "rope tables" if "Rotary" in name else None)
            if category:
                self._hook(module, category)
        self._hook(model.get_output_embeddings(), "lm head + CE")
        for mod in {sys.modules[type(m).__module__] for m in model.modules()}:
            fn = getattr(mod, "apply_rotary_pos_emb", None)
            if fn is not None:
                self.patched.append((mod, fn))
                mod.apply_rotary_pos_emb = self._wrapped(fn)

    def _hook(self, module, category):
        ranges = []

        def pre(mod, args):
            ranges.append(torch.profiler.record_function(TAG + category))
            ranges[-1].__enter__()

        def post(mod, args, out):
            ranges.pop().__exit__(None, None, None)

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    @staticmethod
    def _wrapped(fn):
        def apply(*args, **kwargs):
            with torch.profiler.record_function(TAG + "rope apply"):
                return fn(*args, **kwargs)
        return apply

    def remove(self):
        for h in self.handles:
            h.remove()
        for mod, fn in self.patched:
            mod.apply_rotary_pos_emb = fn


def category_of(event) -> str:
    """The category of an outermost aten op: its innermost tag, else its name."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(TAG):
            return parent.name[len(TAG):]
        parent = parent.cpu_parent
    name = event.name
    if name in LINEAR:
        return "linear"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name in CASTS:
        return "casts/copies"
    if any(k in name for k in HEAD_OPS):
        return "lm head + CE"
    return "other"


def outermost_ops(events):
    """aten ops with no aten op above them (their time includes everything they called)."""
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            yield e


def shape_peaks(model, T: int, dtype) -> dict[str, float]:
    """GFLOP/s of the model's own projection matmuls [T, in] x [in, out], each run alone."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shapes = {"q/o [T,h]x[h,h]": (cfg.hidden_size, cfg.hidden_size),
              "k/v [T,h]x[h,kv]": (cfg.hidden_size, cfg.num_key_value_heads * hd),
              "gate/up [T,h]x[h,ffn]": (cfg.hidden_size, cfg.intermediate_size),
              "down [T,ffn]x[ffn,h]": (cfg.intermediate_size, cfg.hidden_size)}
    out = {}
    for name, (k, n) in shapes.items():
        a, w = torch.randn(T, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        torch.nn.functional.linear(a, w)
        reps, t0 = 3, time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(a, w)
        out[name] = 2 * T * k * n * reps / (time.perf_counter() - t0) / 1e9
    return out


def linear_flops(model, T: int) -> float:
    """2 * (decoder projection weights) * T: the FLOPs of the `linear` category."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    n = sum(m.weight.numel() for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not head and m is not emb)
    return 2 * n * T


def profile_length(loaded, length: int) -> dict:
    model = loaded.model
    doc = docs_for(loaded, length, 1)[0]
    document_nll(model, doc[: max(length // 8, 2)])  # warm-up
    tagger = Tagger(model)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            nll, n = document_nll(model, doc)
            wall = time.perf_counter() - t0
    finally:
        tagger.remove()
    seconds = defaultdict(float)
    for e in outermost_ops(prof.events()):
        seconds[category_of(e)] += e.cpu_time_total / 1e6
    seconds["untracked"] = max(wall - sum(seconds.values()), 0.0)
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn_flops = 2 * length * length * cfg.num_attention_heads * hd * cfg.num_hidden_layers  # causal QK^T + PV
    return {"length": length, "wall_s": wall, "ppl": float(torch.tensor(nll / n).exp()),
            "seconds": {c: seconds.get(c, 0.0) for c in CATEGORIES},
            "share": {c: seconds.get(c, 0.0) / wall for c in CATEGORIES},
            "gflops": {"forward": forward_flops(model, length) / wall / 1e9,
                       "linear": linear_flops(model, length) / max(seconds["linear"], 1e-9) / 1e9,
                       "attention": attn_flops / max(seconds["attention"], 1e-9) / 1e9}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", default="8192")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default="runs/bench_profile_forward.json")
    args = p.parse_args()
    loaded = load(args.model, args.dtype)
    dtype = next(loaded.model.parameters()).dtype
    rows = [profile_length(loaded, int(n)) for n in args.lengths.split(",")]
    peak = matmul_peak(torch.bfloat16) / 1e9
    shapes = shape_peaks(loaded.model, rows[0]["length"], dtype)
    print(f"{args.model}, {dtype}, {torch.get_num_threads()} threads; bf16 matmul peak (2048^2) {peak:.0f} GFLOP/s; "
          f"the model's projections alone at T={rows[0]['length']}: "
          + ", ".join(f"{k} {v:.0f}" for k, v in shapes.items()))
    print(f"  {'share of wall time':20s}" + "".join(f"{r['length']:>10d}" for r in rows))
    for c in CATEGORIES:
        print(f"  {c:20s}" + "".join(f"{r['share'][c]:10.1%}" for r in rows))
    print(f"  {'wall seconds':20s}" + "".join(f"{r['wall_s']:10.2f}" for r in rows))
    for k in ("forward", "linear", "attention"):
        shares = ", ".join(f"{r['gflops'][k] / peak:.0%}" for r in rows)
        print(f"  {k + ' GFLOP/s':20s}" + "".join(f"{r['gflops'][k]:10.0f}" for r in rows)
              + f"   ({shares} of the bf16 peak)")
    atomic_write_json(args.out, {"model": args.model, "dtype": str(dtype), "threads": torch.get_num_threads(),
                                 "bf16_matmul_peak_gflops": peak, "projection_shape_gflops": shapes, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
