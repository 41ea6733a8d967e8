"""Parity of `longrope export --format hf` across transformers releases.

Exports tiny random Llama, Qwen2 and Phi-3 models with LongRoPE-shaped factors, loads each
exported directory with plain `AutoModelForCausalLM.from_pretrained` in a separate
interpreter (no longrope import), once with the installed transformers and once inside a
virtual environment holding another release (default: the latest 4.x), and compares the
logits with longrope's own runtime below and above the native context.

    python bench/export_parity.py [--venv DIR] [--transformers '<5'] [--out results.json]

The virtual environment is created on first use (`pip install torch==<ours> transformers<5
safetensors`; pinning torch to the installed version keeps pip from pulling another build).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longrope.export.hf import export_hf  # noqa: E402
from longrope.factors import RopeExtension  # noqa: E402
from longrope.atomic import atomic_write_json  # noqa: E402
from longrope.methods import build_extension  # noqa: E402
from longrope.seam import install_rope, rotary_spec  # noqa: E402

L, TARGET = 32, 128
LENGTHS = (24, 80)  # one below and one above L
ARCHS = {"llama": {}, "qwen2": {}, "phi3": {"partial_rotary_factor": 0.5}}

PLAIN_LOAD = textwrap.dedent("""
    import sys, torch, transformers
    from transformers import AutoModelForCausalLM
    major = int(transformers.__version__.split(".")[0])
    dtype = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    out = {"version": transformers.__version__}
    for arch, path in zip(sys.argv[3::2], sys.argv[4::2]):
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **dtype).eval()
        for T in map(int, sys.argv[2].split(",")):
            ids = torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(T))
            with torch.inference_mode():
                out[arch, T] = model(input_ids=ids).logits
    assert not any(m.split(".")[0] == "longrope" for m in sys.modules), "longrope must not be imported"
    torch.save(out, sys.argv[1])
""")


def tiny_model(arch: str, **overrides):
    from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=L,
                  tie_word_embeddings=False, **overrides)
    config = {"llama": lambda: LlamaConfig(**common), "qwen2": lambda: Qwen2Config(**common),
              "phi3": lambda: Phi3Config(**common, pad_token_id=0, original_max_position_embeddings=L)}[arch]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def searched_like(model) -> RopeExtension:
    spec = rotary_spec(model)
    long = build_extension("yarn", spec, TARGET).long_factor
    return RopeExtension("longrope", long, L, TARGET, short_factor=[1.0 + 0.02 * i for i in range(spec.half)])


def ensure_venv(venv: Path, spec: str) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with transformers{spec} (a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_pin = "torch==" + torch.__version__.split("+")[0]
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch_pin, f"transformers{spec}", "safetensors"],
                       check=True)
    return python


def plain_logits(python: Path | str, dirs: dict[str, Path], work: Path, tag: str) -> dict:
    out = work / f"logits-{tag}.pt"
    args = [str(out), ",".join(map(str, LENGTHS))] + [x for a, d in dirs.items() for x in (a, str(d))]
    subprocess.run([str(python), "-c", PLAIN_LOAD, *args], check=True, cwd=str(work), timeout=1200)
    return torch.load(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "longrope-transformers4"),
                   help="virtual environment for the other transformers release (created if missing)")
    p.add_argument("--transformers", default="<5", help="pip version spec of that release (default: <5)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="longrope-export-parity-"))
    models, dirs = {}, {}
    for arch, overrides in ARCHS.items():
        model = tiny_model(arch, **overrides)
        model.save_pretrained(work / f"{arch}-src")
        ext = searched_like(model)
        export_hf(str(work / f"{arch}-src"), ext, work / f"{arch}-hf")
        models[arch], dirs[arch] = (model, ext), work / f"{arch}-hf"

    runs = {"installed": plain_logits(sys.executable, dirs, work, "installed")}
    runs["venv"] = plain_logits(ensure_venv(Path(args.venv), args.transformers), dirs, work, "venv")

    rows = []
    for arch, (model, ext) in models.items():
        for T in LENGTHS:
            install_rope(model, ext)
            ids = torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(T))
            with torch.inference_mode():
                ours = model(input_ids=ids).logits
            for tag, logits in runs.items():
                diff = float((logits[arch, T] - ours).abs().max())
                rows.append({"arch": arch, "length": T, "factors": "long" if T > L else "short",
                             "transformers": logits["version"], "max_abs_logit_diff": diff})
    print(f"{'arch':<6} {'T':>4} {'factors':<7} {'transformers':<13} max|dlogit|")
    for r in rows:
        print(f"{r['arch']:<6} {r['length']:>4} {r['factors']:<7} {r['transformers']:<13} {r['max_abs_logit_diff']:.2e}")
    worst = max(r["max_abs_logit_diff"] for r in rows)
    if args.out:
        atomic_write_json(args.out, {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "native": L, "target": TARGET,
                                     "rows": rows, "worst": worst})
    print(f"worst {worst:.2e} ({'PASS' if worst < 1e-4 else 'FAIL'})")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
