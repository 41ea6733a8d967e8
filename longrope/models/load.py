"""Loading a `--model` (preset name, HF model directory or .gguf file) in eval mode with SDPA.

A model directory written by `longrope finetune` / `extend` also carries its extension in
`longrope_factors.json` (which keeps the start token n_hat, which HF configs cannot):
`load_model` installs it through the seam.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UsageError, gist
from ..factors import FACTORS_FILE, RopeExtension
from ..hf_config import carried_extension, load_factors
from ..rope import RotarySpec
from ..seam import install_rope, rotary_slots, rotary_spec, rotary_spec_from_config
from ..defaults import AUTO
from .device import check_device, default_device, resolve_dtype
from .presets import ModelSource, resolve_model
from ..cache import cache_dir, file_lock
from ..atomic import atomic_write_json
from ..readback import read_json_or_none

@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    name: str
    spec: RotarySpec
    # the factors the model carries (our longrope_factors.json, or a longrope config), installed
    # at load; None for a model with plain RoPE (or a model-specific scaling we do not replace)
    own_extension: RopeExtension | None = None


def _offline_transformers():
    """transformers, told never to reach for a model hub (--model is a preset, directory or file)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our commands show their own progress
    return transformers


def load_config(name_or_path: str | os.PathLike | ModelSource):
    """The transformers config of a model, without its weights (UsageError if unreadable)."""
    source = name_or_path if isinstance(name_or_path, ModelSource) else resolve_model(str(name_or_path))
    return _from_pretrained("AutoConfig", source, f"read the config of {str(source.path)!r}")


def load_tokenizer(name_or_path: str):
    """The tokenizer of a model alone (cheap: no weights), UsageError if it has none."""
    return _from_pretrained("AutoTokenizer", resolve_model(name_or_path), f"load the tokenizer of {name_or_path!r}")


def _from_pretrained(auto: str, source: ModelSource, what: str):
    """transformers' Auto* class `auto` from a model folder (or its .gguf), offline; UsageError
    saying it cannot `what` when the files are not what it reads."""
    transformers = _offline_transformers()
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return getattr(transformers, auto).from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot {what}: {gist(e)}") from None
    except Exception as e:  # huggingface_hub's field validation errors derive from Exception alone
        if type(e).__module__.split(".")[0] != "huggingface_hub":
            raise
        raise UsageError(f"cannot {what}: {gist(e)}") from None


def model_spec(name_or_path: str) -> RotarySpec:
    """The RotarySpec of a model from its config only (cheap: no weights are loaded)."""
    return rotary_spec_from_config(load_config(name_or_path))


def load_model(
    name_or_path: str, dtype: str = AUTO, device: str | None = None, need_tokenizer: bool = True
) -> LoadedModel:
    """Load a model by preset name, HF model directory or .gguf file, in eval mode with SDPA.
    With need_tokenizer=False a directory without a tokenizer loads with tokenizer None."""
    transformers = _offline_transformers()
    device = check_device(device or default_device())
    source = resolve_model(name_or_path)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device), "attn_implementation": "sdpa"}
    if source.gguf_file is not None:
        kwargs["gguf_file"] = source.gguf_file
    tok_kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    check_weights(source)
    check_config(source, load_config(source))

    def fail(e: Exception, what: str = "model"):
        raise UsageError(f"cannot load {what} of {name_or_path!r}: {gist(e)}") from None

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(e)
    except RuntimeError as e:  # weights of other shapes than the config's; anything else is not the input's fault
        if "size mismatch" not in str(e) and "mismatched_sizes" not in str(e):
            raise
        fail(e)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.path), **tok_kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if need_tokenizer:
            fail(e, "tokenizer")
        tokenizer = None
    model.to(device).eval()
    if not rotary_slots(model):
        raise UsageError(f"{type(model).__name__} ({name_or_path}) does not use rotary embeddings")
    own = None
    if source.gguf_file is None and (source.path / FACTORS_FILE).is_file():  # our fine-tuned model
        own = load_factors(source.path / FACTORS_FILE)
    elif source.gguf_file is None:
        own = carried_extension(model.config)  # e.g. an export, a Phi-3-128k
    if own is not None:
        install_rope(model, own)  # the seam, with the model's own factors (n_hat included)
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(name_or_path), spec=rotary_spec(model),
                       own_extension=own)


def check_weights(source: ModelSource) -> None:
    """UsageError when a weights file is cut short (a copy or download that stopped): every
    safetensors header must fit its file and every tensor lie inside it; a GGUF file must parse."""
    if source.gguf_file is not None:
        path = source.path / source.gguf_file
        try:
            import gguf

            gguf.GGUFReader(str(path))
        except Exception as e:  # the reader raises anything from ValueError to IndexError on a bad file
            raise UsageError(f"{path} is not a readable GGUF file ({gist(e)})") from None
        return
    for path in sorted(source.path.glob("*.safetensors")):
        _check_safetensors(path)


def check_config(source: ModelSource, config: Any) -> None:
    """UsageError when a config cannot describe the weights beside it: rotary numbers that are
    not numbers, or a token embedding (a safetensors tensor named `*embed_tokens.weight`, as in
    Llama, Mistral, Qwen2, Phi-3; other names are not compared) of another shape than the
    [vocab_size, hidden_size] it gives (a config.json missing a size field describes another
    model). After `check_weights`."""
    rotary_spec_from_config(config)
    if source.gguf_file is not None:
        return
    headers = (_check_safetensors(p) for p in sorted(source.path.glob("*.safetensors")))
    embedding = next((v.get("shape") for header in headers for k, v in header.items()
                      if k.endswith("embed_tokens.weight") and isinstance(v, dict)), None)
    want = [getattr(config, "vocab_size", None), getattr(config, "hidden_size", None)]
    if embedding is not None and None not in want and embedding != want:
        raise UsageError(f"{source.path / 'config.json'} does not describe these weights: its vocab_size and "
                         f"hidden_size give an embedding of {want}, the weights hold {embedding}")


def _check_safetensors(path: Path) -> dict:
    size = path.stat().st_size
    problem = None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
    except (OSError, ValueError) as e:
        header, problem = None, str(e)
    if not isinstance(header, dict):
        raise UsageError(f"{path} is not a complete safetensors file ({problem or 'bad header'}): copy it again")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + n + end > size:
        raise UsageError(f"{path} is truncated ({size} bytes, its header describes {8 + n + end}): copy it again")
    return header


FINGERPRINT = "sha256:"  # marks a fingerprint of the whole content (a bare one sampled blocks of it)


def model_fingerprint(name_or_path: str) -> str:
    """What identifies a model for reusing results: the names and the full content of the files
    at the top of its folder (or its .gguf), hashed. Content, not modification times, so a state
    or result moves between machines with the same model; a weight edited in place changes it.
    Each file's digest is computed once and cached by path, inode, size and modification time."""
    h = hashlib.sha256()
    for name, path in _model_files(name_or_path):
        h.update(f"{name}\0".encode())
        h.update(file_digest(path).encode())
    return FINGERPRINT + h.hexdigest()[:16]


def _model_files(name_or_path: str) -> list[tuple[str, Path]]:
    source = resolve_model(name_or_path)
    if source.gguf_file:
        return [(source.gguf_file, source.path / source.gguf_file)]
    return [(p.name, p) for p in sorted(source.path.iterdir()) if p.is_file() and not p.name.startswith(".")]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, cached under <cache>/digests.json by (path, inode, size, mtime)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "digests.json"
    known = read_json_or_none(store)
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(key), str):
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with file_lock(cache_dir() / "digests.lock"):  # read again: another process may have added its own
        known = read_json_or_none(store)
        known = {k: v for k, v in (known if isinstance(known, dict) else {}).items() if k.split("|")[0] != key.split("|")[0]}
        atomic_write_json(store, {**known, key: digest})
    return digest


def fingerprint_matches(recorded: str | None, name_or_path: str) -> bool:
    """Whether a recorded fingerprint is this model's: a whole-content one (this release) or,
    for runs recorded before, the sampled one (`legacy_fingerprint`)."""
    if recorded is None:
        return True  # recorded before fingerprints were kept: taken as it is
    if recorded.startswith(FINGERPRINT):
        return recorded == model_fingerprint(name_or_path)
    return recorded == legacy_fingerprint(name_or_path)


def legacy_fingerprint(name_or_path: str, samples: int = 16, block: int = 1 << 16) -> str:
    """The fingerprint runs recorded before whole-content hashing: names, sizes and `samples`
    blocks of each file (subfolders included), for resuming what they wrote."""
    source = resolve_model(name_or_path)
    files = [source.path / source.gguf_file] if source.gguf_file else sorted(
        p for p in source.path.rglob("*") if p.is_file() and not p.name.startswith("."))
    h = hashlib.sha256()
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(source.path)}\0{size}\0".encode())
        with open(p, "rb") as f:
            for k in range(samples):
                f.seek(max(0, (size - block) * k // max(samples - 1, 1)))
                h.update(f.read(block))
    return h.hexdigest()[:16]
