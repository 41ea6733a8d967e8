"""`longrope info`: the RoPE facts of a model."""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..hf_config import describe_rope_config
from ..models.load import load_model
from ..models.presets import resolve_model
from ..seam import rope_type_of, rotary_spec
from ..shipped import shipped_for
from ..options import option
from ..settings import ModelOptions
from .common import add_command


@dataclass(frozen=True)
class InfoOptions:
    json: bool = option(False, "print as JSON")


EXAMPLES = "examples:\n  longrope info --model smollm2-135m\n  longrope info --model runs/tiny-64x/final --json"


def register(sub) -> None:
    add_command(sub, "info", run, [(ModelOptions, dict(skip=("dtype", "device"))), InfoOptions],  # computes nothing
                help="print a model's path, stored dtype and RoPE facts (architecture, head dim, base, context, "
                "rope type, carried factors)", epilog=EXAMPLES)


def describe(model) -> dict:
    cfg = model.config
    spec = rotary_spec(model)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    facts = {
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "layers": cfg.num_hidden_layers,
        "head_dim": head_dim,
        "rotary_dim": spec.dim,
        "rope_theta": spec.base,
        "original_context": spec.original_max_position_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_type": rope_type_of(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    facts.update(describe_rope_config(cfg) or {})
    facts["shipped_factors"] = ", ".join(shipped_for(spec)) or "none"
    return facts


def run(args) -> int:
    loaded = load_model(args.model, "fp32", "cpu", need_tokenizer=False)
    source = resolve_model(args.model)
    stored = getattr(loaded.model.config, "dtype", None) or getattr(loaded.model.config, "torch_dtype", None)
    facts = {"path": str((source.path / source.gguf_file) if source.gguf_file else source.path.resolve()),
             "dtype": str(stored or "unknown").removeprefix("torch."), **describe(loaded.model)}
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        w = max(len(k) for k in facts)
        for k, v in facts.items():
            print(f"{k:<{w}}  {v}")
    return 0
