"""Does plain transformers run an exported directory the way longrope's runtime runs the factors?

    longrope export --model smollm2-135m --factors smollm2-135m-16k --out runs/export-16k
    python bench/hf_reload_check.py --model smollm2-135m --factors smollm2-135m-16k --export runs/export-16k \
        --length 16384
    python bench/hf_reload_check.py --model smollm2-135m --factors smollm2-135m-32k --export runs/export-32k \
        --length 32768 --corpus stdlib-packages

Takes the first validation-split document of `--length` tokens, scores it with longrope's
evaluator (the model with the factors installed) and then, in a separate interpreter that never
imports longrope, with `AutoModelForCausalLM.from_pretrained(--export)`, and prints both mean
token NLLs and their relative difference. Both run in bf16 by default.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longrope.data import split_documents  # noqa: E402
from longrope.evaluate.ppl import document_nll  # noqa: E402
from longrope.hf_config import load_factors  # noqa: E402
from longrope.models.load import load_model  # noqa: E402
from longrope.seam import install_rope  # noqa: E402

PLAIN = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    export, ids_path, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(export, dtype=dtype).eval()
    assert not any(m.startswith("longrope") for m in sys.modules)
    ids = torch.load(ids_path)[None]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float()
    print(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
""")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--factors", required=True, help="the factors the directory was exported with")
    p.add_argument("--export", required=True, help="the exported HF directory")
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--corpus", default=None, help="corpus of the document (default: stdlib; stdlib-packages for 32k)")
    args = p.parse_args()

    lm = load_model(args.model, dtype={"bfloat16": "bf16", "float32": "fp32"}[args.dtype])
    ids = split_documents(lm.tokenizer, args.corpus, "validation", args.length, 1)[0].clone()
    install_rope(lm.model, load_factors(args.factors))
    total, count = document_nll(lm.model, ids)
    ours = total / count
    del lm
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ids.pt"
        torch.save(ids, path)
        out = subprocess.run([sys.executable, "-c", PLAIN, args.export, str(path), args.dtype],
                             capture_output=True, text=True, check=True)
    plain = float(out.stdout.strip().splitlines()[-1])
    print(f"{args.length} tokens, {args.dtype}: mean NLL longrope {ours:.5f}, plain transformers {plain:.5f} "
          f"({(plain - ours) / ours:+.3%})")


if __name__ == "__main__":
    main()
