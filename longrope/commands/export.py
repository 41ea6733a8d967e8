"""`longrope export`: write a model with its extension for plain transformers, vLLM or llama.cpp.

    longrope export --model M --factors F --out DIR [--format hf|gguf] [--force] [--drop-start-token]

`--format hf` writes DIR as a transformers model directory (safetensors, tokenizer, config
with a `longrope` rope_scaling); `--format gguf` writes DIR/model.gguf from a GGUF model.
Either way DIR appears only when complete, with `longrope_export.json` recording what was
written and checked.
"""
from __future__ import annotations

from ..errors import UsageError
from ..export.gguf import export_gguf
from ..export.hf import export_hf
from ..export.vllm import serve_hint
from ..hf_config import load_factors
from ..outputs import check_destination, output_dir


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model with its RoPE extension for transformers/vLLM (hf) or llama.cpp (gguf)")
    p.add_argument("--model", required=True, help="preset, Hugging Face model directory, or .gguf file")
    p.add_argument("--factors", required=True, metavar="F",
                   help="longrope factors JSON, or an HF config.json / model directory carrying longrope factors")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist unless --force; never replaced without it, even if "
                        "it appears while the export runs)")
    p.add_argument("--format", default="hf", choices=["hf", "gguf"], help="hf: transformers and vLLM; gguf: llama.cpp (default: hf)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.add_argument("--drop-start-token", action="store_true",
                   help="export factors searched with a start token n_hat > 0 without it (outputs then differ)")
    p.set_defaults(func=run)


def run(args) -> int:
    inputs = {"the source model": args.model, "the factors file": args.factors}
    check_destination(args.out, args.force, inputs)  # before any loading: an existing DIR is an instant error
    ext = load_factors(args.factors)
    # DIR itself appears only when complete; --force replaces it, never an input of the run
    with output_dir(args.out, create=False, command="export", inputs=inputs.values(), replace=args.force):
        return export(args, ext)


def export(args, ext) -> int:
    if args.format == "hf":
        result = export_hf(args.model, ext, args.out, force=args.force, drop_start_token=args.drop_start_token)
        where = result.path
        hints = [
            f"transformers: AutoModelForCausalLM.from_pretrained('{where}')  (>= 4.51; Phi-3 from 4.43)",
            f"vLLM: {serve_hint(str(where), result.extension)}  "
            f"(long factors for every request; --max-model-len <= {ext.original_max_position_embeddings} uses the short ones)",
        ]
    elif args.format == "gguf":
        result = export_gguf(args.model, ext, args.out, force=args.force, drop_start_token=args.drop_start_token)
        where = result.path
        hints = [
            f"llama.cpp: llama-cli -m {where} -c {result.extension.max_position_embeddings}  "
            f"(a context above {ext.original_max_position_embeddings} selects the long factors)",
        ]
    else:  # argparse restricts the choices; kept for direct calls
        raise UsageError(f"unknown format {args.format!r}")
    e = result.extension
    print(f"wrote {where}: longrope {e.original_max_position_embeddings} -> {e.max_position_embeddings} tokens "
          f"({e.half_dim} factors, method {e.method})")
    for note in result.notes:
        print(f"note: {note}")
    for hint in hints:
        print(hint)
    return 0
