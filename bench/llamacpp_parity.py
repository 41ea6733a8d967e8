"""Does llama.cpp run an exported GGUF the way longrope's runtime runs the extension?

Takes the smollm2-135m preset (its original Q4_1 GGUF for llama.cpp, the dequantized HF
directory for longrope), extends it from its native 8192 tokens to 16384 with YaRN-shaped
LongRoPE factors, exports the GGUF (`longrope.export.gguf`) and, on one document longer
than the native context, compares:

- the perplexity of the last `--scored` tokens (llama-cpp-python, token by token after a
  batched prefix, vs one forward pass of longrope's runtime);
- a greedy continuation of `--generate` tokens;
- both against the same model without the extension (the factors must matter);
- with `--attention-check`, a short document at attention factors default/1.0/1.5 (does
  llama.cpp multiply cos/sin by rope.scaling.attn_factor as we do?).

Measured on 2 CPU cores (8448 tokens, last 128 scored): ppl 4.228 (longrope) vs 4.313
(llama.cpp), greedy continuations equal for the first 10 of 16 tokens; unscaled model
3.583 vs 3.600. Attention check (640 tokens): 14.85/15.00, 14.52/14.65, 34.6/38.1.

    python bench/llamacpp_parity.py [--tokens 8448] [--scored 128] [--generate 16] [--out results.json]
    python bench/llamacpp_parity.py --factors smollm2-135m-32k --tokens 32000 --skip-unscaled

Needs `llama_cpp` (pip install llama-cpp-python, which compiles llama.cpp from source).
The GGUF is Q4_1 and llama.cpp quantizes activations in its matmuls, so perplexities agree
to about a percent, not to float precision.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longrope.export.gguf import export_gguf  # noqa: E402
from longrope.factors import RopeExtension  # noqa: E402
from longrope.hf_config import load_factors  # noqa: E402
from longrope.atomic import atomic_write_json  # noqa: E402
from longrope.methods import build_extension  # noqa: E402
from longrope.models.load import load_model  # noqa: E402
from longrope.seam import install_rope  # noqa: E402
from longrope.models.presets import smollm2_gguf_path, smollm2_model_dir  # noqa: E402


def document_tokens(tokenizer, n: int) -> list[int]:
    """At least n tokens of Python standard-library source, in a fixed order."""
    import os

    text, ids = "", []
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        text += path.read_text(errors="ignore")
        if len(text) > 6 * n:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= n:
                return ids[:n]
    raise RuntimeError("not enough text")


@torch.inference_mode()
def ours(model, ids: list[int], scored: int, generate: int) -> tuple[float, list[int]]:
    """Mean NLL of the last `scored` tokens and a greedy continuation, longrope's runtime."""
    x = torch.tensor([ids])
    hidden = model.model(input_ids=x).last_hidden_state[0, -scored - 1:-1]  # [scored, C]
    logits = model.lm_head(hidden).float()
    nll = torch.nn.functional.cross_entropy(logits, x[0, -scored:]).item()
    out = model.generate(x, max_new_tokens=generate, do_sample=False, min_new_tokens=generate)
    return nll, out[0, len(ids):].tolist()


def llama_cpp_run(gguf_path: Path, ids: list[int], scored: int, generate: int, n_ctx: int) -> tuple[float, list[int]]:
    """The same with llama-cpp-python: prefix in batches, then one token at a time."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    # Weight repacking into "extra" buffers (AMX on this CPU) crashed in llama_decode on our VM;
    # Llama() has no switch for it, so its default model params are wrapped once here.
    if not getattr(low, "_longrope_plain_buffers", False):
        default = low.llama_model_default_params

        def plain_buffers():
            params = default()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params, low._longrope_plain_buffers = plain_buffers, True
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=512, n_threads=2, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).astype(np.float64)

    def nll_of(logits: np.ndarray, target: int) -> float:
        m = logits.max()
        return float(m + math.log(np.exp(logits - m).sum()) - logits[target])

    llm.eval(ids[: len(ids) - scored])
    total = 0.0
    for t in ids[len(ids) - scored:]:
        total += nll_of(last_logits(), t)
        llm.eval([t])
    continuation = []
    for _ in range(generate):
        nxt = int(last_logits().argmax())
        continuation.append(nxt)
        llm.eval([nxt])
    return total / scored, continuation


def attention_factor_check(loaded, gguf_src: Path, base: RopeExtension, work: Path, n: int = 640) -> dict:
    """Does llama.cpp apply rope.scaling.attn_factor like longrope (cos and sin times m)?
    A short document with long factors in force in both runtimes (no short factor, n_ctx > L),
    scored at several attention factors: the perplexities must move together."""
    ids = document_tokens(loaded.tokenizer, n)
    rows = {}
    for m in (None, 1.0, 1.5):
        ext = base.with_(attention_factor=m)
        install_rope(loaded.model, ext)
        nll_ours, _ = ours(loaded.model, ids, 128, 1)
        path = export_gguf(str(gguf_src), ext, work / f"attn-{m}").path
        nll_cpp, _ = llama_cpp_run(path, ids, 128, 0, n_ctx=base.max_position_embeddings)
        rows[str(m)] = {"ppl_longrope_runtime": math.exp(nll_ours), "ppl_llama_cpp": math.exp(nll_cpp)}
        print(f"attention factor {m}: ppl ours {math.exp(nll_ours):.3f}  llama.cpp {math.exp(nll_cpp):.3f}", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8448, help="document length, above the native 8192 (default 8448)")
    p.add_argument("--scored", type=int, default=128, help="tokens at the end whose perplexity is compared")
    p.add_argument("--generate", type=int, default=16, help="greedy tokens compared")
    p.add_argument("--factors", default=None,
                   help="factors to export and compare (a file or shipped name; default: YaRN-shaped factors for 2x)")
    p.add_argument("--skip-unscaled", action="store_true", help="do not also compare the unextended model")
    p.add_argument("--attention-check", action="store_true",
                   help="also compare a short document at attention factors default, 1.0 and 1.5")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    gguf_src, hf_dir = smollm2_gguf_path(), smollm2_model_dir()
    loaded = load_model(str(hf_dir), "fp32", "cpu")
    spec = loaded.spec
    L, target = spec.original_max_position_embeddings, 2 * spec.original_max_position_embeddings
    ext = RopeExtension("longrope", build_extension("yarn", spec, target).long_factor, L, target,
                        metadata={"label": "yarn-shaped longrope factors"})
    if args.factors:
        ext = load_factors(args.factors)
        target = ext.max_position_embeddings
        if args.tokens > target:
            p.error(f"--tokens {args.tokens} exceeds the factors' context {target}")
    work = Path(tempfile.mkdtemp(prefix="longrope-llamacpp-"))
    exported = export_gguf(str(gguf_src), ext, work / "gguf").path
    ids = document_tokens(loaded.tokenizer, args.tokens)
    print(f"native {L}, target {target}, document {len(ids)} tokens, scoring the last {args.scored}", flush=True)

    rows = {}
    runs = (("longrope", ext, exported),) + (() if args.skip_unscaled else (("unscaled", None, gguf_src),))
    for label, extension, gguf_path in runs:
        t0 = time.time()
        install_rope(loaded.model, extension)
        nll_ours, gen_ours = ours(loaded.model, ids, args.scored, args.generate)
        t1 = time.time()
        nll_cpp, gen_cpp = llama_cpp_run(gguf_path, ids, args.scored, args.generate, n_ctx=target)
        t2 = time.time()
        same = sum(a == b for a, b in zip(gen_ours, gen_cpp))
        first_diff = next((i for i, (a, b) in enumerate(zip(gen_ours, gen_cpp)) if a != b), None)
        rows[label] = {"ppl_longrope_runtime": math.exp(nll_ours), "ppl_llama_cpp": math.exp(nll_cpp),
                       "greedy_equal_tokens": same, "greedy_first_difference": first_diff,
                       "greedy_longrope_runtime": loaded.tokenizer.decode(gen_ours),
                       "greedy_llama_cpp": loaded.tokenizer.decode(gen_cpp),
                       "seconds": {"longrope": round(t1 - t0, 1), "llama_cpp": round(t2 - t1, 1)}}
        r = rows[label]
        print(f"{label:<9} ppl ours {r['ppl_longrope_runtime']:.3f}  llama.cpp {r['ppl_llama_cpp']:.3f}  "
              f"greedy {same}/{args.generate} equal  ({r['seconds']})", flush=True)
        print(f"          ours:      {r['greedy_longrope_runtime']!r}\n          llama.cpp: {r['greedy_llama_cpp']!r}")
    attention = attention_factor_check(loaded, gguf_src, ext, work) if args.attention_check else None
    if args.out:
        atomic_write_json(args.out, {"native": L, "target": target, "tokens": len(ids), "scored": args.scored,
                                     "extension": ext.to_dict(), "rows": rows, "attention_factor_check": attention})
    return 0


if __name__ == "__main__":
    sys.exit(main())
