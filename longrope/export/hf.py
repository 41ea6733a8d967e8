"""`longrope export --format hf`: a plain transformers model directory carrying the factors.

The config is written by `longrope.hf_config`; `check_rotary` then builds the architecture's
own rotary module from the written config and checks it reproduces our runtime.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..version import __version__
from ..errors import UsageError, gist
from ..factors import FACTORS_FILE, RopeExtension
from ..hf_config import PHI3_STYLE, check_exportable, hf_config_dict
from ..atomic import atomic_write_json, staged_dir
from ..outputs import check_destination, refuse_source
from ..methods import attention_factor
from ..models.load import check_config, check_weights, load_config
from ..models.presets import dequantized_copy, resolve_model
from ..rope import RotarySpec
from ..seam import ScaledRotaryEmbedding, rotary_spec_from_config

SIDECAR = "longrope_export.json"
# what a fine-tuning run leaves beside its model that an export must not carry: its training state
# and its own record (which describes the factors it was trained with, not the exported ones)
RUN_FILES = ("checkpoints", "finetune.json", "loss.png")


# -- export --------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    extension: RopeExtension  # as written (start token dropped if asked)
    notes: list[str] = field(default_factory=list)  # what the export loses, if anything
    checks: dict[str, Any] = field(default_factory=dict)


def _safetensors_dir(path: Path) -> bool:
    return any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin"))


def _rotary_class(config) -> tuple[type, str]:
    """transformers' own rotary embedding class for `config` (`<Arch>RotaryEmbedding` in the
    architecture's modeling module), found without building the model; and the model's name."""
    from transformers import AutoModelForCausalLM

    try:
        model_class = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise UsageError(f"transformers has no causal LM for {type(config).__name__}") from None
    arch = model_class.__name__
    rotary = getattr(sys.modules[model_class.__module__], arch.removesuffix("ForCausalLM") + "RotaryEmbedding", None)
    if rotary is None:
        raise UsageError(f"{arch} has no rotary embedding module: the hf format cannot carry its RoPE extension")
    return rotary, arch


def check_rotary(model_dir: Path, ext: RopeExtension, spec: RotarySpec) -> dict[str, float]:
    """Load `model_dir`'s config with plain transformers, build the architecture's own rotary
    module from it and check it uses our factors and attention factor on both sides of L.

    Raises UsageError when the architecture does not carry the extension (e.g. its RoPE
    module ignores `rope_scaling`). Returns the largest relative differences found.
    """
    config = load_config(model_dir)
    rotary_class, arch = _rotary_class(config)
    try:
        theirs = rotary_class(config=config)
    except Exception as e:  # any failure here means transformers does not take this config
        raise UsageError(f"{arch}: transformers cannot build its RoPE from the exported config ({e})") from None
    ours = ScaledRotaryEmbedding(spec, ext)
    L = spec.original_max_position_embeddings
    x = torch.zeros(1)
    worst = {"inv_freq": 0.0, "attention_factor": 0.0}
    for last in (L - 1, L):  # max(position_ids)+1 = L (short factors), L+1 (long factors)
        theirs(x, torch.tensor([[0, last]]))
        want = ours.inv_freq_at(last + 1, x.device).double()
        got = theirs.inv_freq.double()
        rel = float(((got - want).abs() / want).max()) if got.shape == want.shape else math.inf
        want_att = attention_factor(ext)  # transformers' one factor, at every length
        att = abs(float(theirs.attention_scaling) - want_att) / want_att
        worst = {"inv_freq": max(worst["inv_freq"], rel), "attention_factor": max(worst["attention_factor"], att)}
    if worst["inv_freq"] > 1e-5 or worst["attention_factor"] > 1e-6:
        raise UsageError(
            f"{arch}: transformers does not reproduce the extension from the exported config "
            f"(relative differences {worst}); the hf format cannot carry this architecture"
        )
    return worst


def export_hf(
    model: str, ext: RopeExtension, out: str | Path, *, force: bool = False, drop_start_token: bool = False
) -> ExportResult:
    """Write `model` with `ext` as a plain transformers model directory at `out`.

    A safetensors HF directory is copied file by file (weights byte-identical) with a new
    config.json; other sources (a .gguf file, .bin weights) are loaded in their own dtype and
    saved as safetensors. Nothing appears at `out` unless every step, including `check_rotary`,
    succeeds. Raises UsageError for bad input.
    """
    check_destination(out, force)
    ext, notes = check_exportable(ext, drop_start_token=drop_start_token)
    source = resolve_model(model)
    refuse_source(out, source.path)
    check_weights(source)  # a truncated weights file is copied nowhere
    config = load_config(source)
    check_config(source, config)  # nor weights their config does not describe
    spec = rotary_spec_from_config(config)
    ext, _ = check_exportable(ext, spec)
    with staged_dir(out, replace=force) as tmp:
        if source.gguf_file is None and _safetensors_dir(source.path):
            for item in source.path.iterdir():
                # the config (and a fine-tuned model's own factors file) carry the new factors instead
                if item.name in ("config.json", SIDECAR, FACTORS_FILE) or item.name.startswith("."):
                    continue
                if item.name in RUN_FILES:
                    notes.append(f"left out {item.name}: the fine-tuning run's own state or record")
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            config = json.loads((source.path / "config.json").read_text())
        else:
            _save_loaded(source, tmp)
            config = json.loads((tmp / "config.json").read_text())
        config = hf_config_dict(config, ext)
        if config.get("model_type") in PHI3_STYLE and "attention_factor" in config["rope_scaling"]:
            notes.append("Phi-3 config with a non-default attention factor: transformers 4.x's Phi3Config "
                         "refuses to load it (it accepts only type/short_factor/long_factor); 5.x and vLLM read it")
        atomic_write_json(tmp / "config.json", config)
        _lengthen_tokenizer(tmp, ext.max_position_embeddings, notes)
        checks = {"rotary_max_rel_diff": check_rotary(tmp, ext, spec)}
        atomic_write_json(tmp / SIDECAR, {
            "format": "hf",
            "source": str(model),
            "longrope_version": __version__,
            "extension": ext.to_dict(),
            "notes": notes,
            "checks": checks,
        })
    return ExportResult(Path(out), ext, notes, checks)


def _lengthen_tokenizer(folder: Path, length: int, notes: list[str]) -> None:
    """A tokenizer_config.json whose model_max_length is below the extended context would make
    `tokenizer(..., truncation=True)` cut every input to the old window: raise it to `length`."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    try:
        tok_config = json.loads(path.read_text())
    except ValueError:
        return  # not ours to repair; transformers will say what is wrong with it
    old = tok_config.get("model_max_length") if isinstance(tok_config, dict) else None
    if isinstance(old, (int, float)) and old < length:
        tok_config["model_max_length"] = length
        atomic_write_json(path, tok_config)
        notes.append(f"tokenizer model_max_length {old:g} -> {length} (the extended context)")


def _save_loaded(source, out_dir: Path) -> None:
    """Load a model that cannot be copied (GGUF, .bin) in its own dtype; save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    # GGUF weights are dequantized on load; fp32 holds them exactly
    dtype = torch.float32 if source.gguf_file else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot load model from {source.path}: {gist(e)}") from None
    if source.gguf_file:
        model = dequantized_copy(model)
    model.save_pretrained(str(out_dir))  # safetensors (the only format of transformers 5.x)
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if source.gguf_file is None and not any((source.path / f).is_file() for f in tokenizer_files):
        return  # nothing to carry over (transformers 5.x would invent an empty tokenizer)
    try:
        AutoTokenizer.from_pretrained(str(source.path), **kwargs).save_pretrained(str(out_dir))
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot load the tokenizer of {source.path}: {gist(e)}") from None
