"""`longrope export`: write a model with its extension for plain transformers, vLLM or llama.cpp.

    longrope export --model M --factors F --out DIR [--format hf|gguf] [--force] [--drop-start-token]

`--format hf` writes DIR as a transformers model directory (safetensors, tokenizer, config
with a `longrope` rope_scaling); `--format gguf` writes DIR/model.gguf from a GGUF model.
Either way DIR appears only when complete, with `longrope_export.json` recording what was
written and checked.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..export.gguf import export_gguf
from ..export.hf import export_hf
from ..export.vllm import serve_hint
from ..hf_config import load_factors
from ..options import build, option
from ..outputs import check_destination, output_dir
from ..settings import FactorsOption, ModelOptions
from .common import OutputOptions, add_command


@dataclass(frozen=True)
class ExportOptions:
    """What an export writes."""

    format: str = option("hf", "hf: transformers and vLLM; gguf: llama.cpp", choices=("hf", "gguf"))
    drop_start_token: bool = option(False, "export factors searched with a start token n_hat > 0 without it "
                                    "(outputs then differ)")


EXAMPLES = """\
examples:
  longrope export --model smollm2-135m --factors smollm2-135m-16k --out runs/smollm2-16k-hf
  longrope export --model smollm2-135m --factors smollm2-135m-16k --format gguf \\
      --out runs/smollm2-16k-gguf
  vllm serve runs/smollm2-16k-hf --max-model-len 16384
"""


def register(sub) -> None:
    add_command(sub, "export", run,
                [(ModelOptions, dict(skip=("dtype", "device"), required=("model",))),
                 (FactorsOption, dict(required=("factors",))), ExportOptions, (OutputOptions, dict(skip=("resume",)))],
                help="export a model with its RoPE extension for transformers/vLLM (hf) or llama.cpp (gguf)",
                epilog=EXAMPLES)


def run(args) -> int:
    build(ModelOptions, args), build(ExportOptions, args)
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
