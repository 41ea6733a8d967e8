"""`longrope export --format gguf`: a copy of a GGUF model that llama.cpp runs with our factors.

llama.cpp's longrope (src/llama-model.cpp, `get_rope_factors`; ggml `rope_ext`) reads:

- `{arch}.rope.scaling.type = "longrope"`: makes the loader look for the factor tensors
  (for `llama` it does so only with this type; `phi3`-family loaders always look);
- `{arch}.rope.scaling.original_context_length` = L (`n_ctx_orig_yarn`): the context
  size above which `rope_factors_long` is used instead of `rope_factors_short`;
- tensors `rope_factors_long.weight`, `rope_factors_short.weight`: float32 [d/2]; ggml
  divides each pair's frequency by its factor, i.e. they are our lambda_i;
- `{arch}.rope.scaling.attn_factor`: multiplied into the YaRN attention factor, which ggml
  applies to cos and sin; with longrope YaRN's own 0.1 ln(s) correction is off
  (ext_factor = 0), so the value written is our attention factor m itself;
- `{arch}.context_length` = L' (the trained context, n_ctx_train).

Checked with llama-cpp-python 0.3.36 on the smollm2-135m GGUF (bench/llamacpp_parity.py):
the `llama` loader picks the tensors up, and perplexity moves with the attention factor as
longrope's does (so attn_factor is applied to cos and sin, not on top of another mscale).

We do not write `rope.scaling.factor`: llama.cpp would turn it into a frequency scale on
top of the factors. llama.cpp chooses long vs short ONCE from the configured context size
(`-c` / `n_ctx`), not per sequence: run with a context above L to get the long factors.

The `gguf` package has no HF -> GGUF converter (that is llama.cpp's convert_hf_to_gguf.py),
so the source must already be a GGUF file: every key and tensor is copied unchanged
(quantized tensors byte for byte) and the keys and tensors above are added.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..version import __version__
from ..errors import UsageError
from ..factors import RopeExtension
from ..hf_config import check_exportable
from ..atomic import atomic_write_json, staged_dir
from ..outputs import check_destination, refuse_source
from ..methods import attention_factor
from ..models import presets
from ..models.load import check_weights
from ..models.presets import ModelSource
from ..rope import RotarySpec
from .hf import SIDECAR

GGUF_NAME = "model.gguf"
# Architectures whose llama.cpp loader reads rope_factors_long/short: the gguf package lists
# them for phi3, phimoe, minicpm and minicpm3 (gguf.constants.MODEL_TENSORS); llama.cpp's
# `llama` loader (shared with minicpm) reads them when rope.scaling.type is longrope.
LONGROPE_ARCHS = ("llama", "phi3", "phimoe", "minicpm", "minicpm3")


@dataclass(frozen=True)
class GgufRope:
    """The RoPE facts of a GGUF file, read from its keys."""

    arch: str
    spec: RotarySpec
    context_length: int
    scaling_type: str
    has_rope_tensors: list[str]


def _names():
    """Exact key and tensor names from the gguf package (gguf.constants)."""
    import gguf

    tensor = gguf.TENSOR_NAMES
    return {
        "long": tensor[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
        "short": tensor[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight",
        "freqs": tensor[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
        "scaling_type": gguf.Keys.Rope.SCALING_TYPE,
        "orig_ctx": gguf.Keys.Rope.SCALING_ORIG_CTX_LEN,
        "attn_factor": gguf.Keys.Rope.SCALING_ATTN_FACTOR,
        "factor": gguf.Keys.Rope.SCALING_FACTOR,
        "context_length": gguf.Keys.LLM.CONTEXT_LENGTH,
        "dim": gguf.Keys.Rope.DIMENSION_COUNT,
        "freq_base": gguf.Keys.Rope.FREQ_BASE,
    }


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    return default if f is None else f.contents()


def read_gguf_rope(reader) -> GgufRope:
    """Rotary dim, base and native context of a GGUF model (a gguf.GGUFReader)."""
    import gguf

    n = _names()
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if not arch:
        raise UsageError("GGUF file has no general.architecture")
    key = lambda name: n[name].format(arch=arch)  # noqa: E731
    heads = _field(reader, gguf.Keys.Attention.HEAD_COUNT.format(arch=arch))
    head_dim = _field(reader, gguf.Keys.Attention.KEY_LENGTH.format(arch=arch))
    embd = _field(reader, gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch))
    if head_dim is None and heads and embd:
        head_dim = embd // (heads if isinstance(heads, int) else max(heads))
    dim = _field(reader, key("dim"), head_dim)
    ctx = _field(reader, key("context_length"))
    if not dim or not ctx:
        raise UsageError(f"GGUF ({arch}) lacks {key('dim')} / {key('context_length')}: not a RoPE model we can read")
    scaling = _field(reader, key("scaling_type"), "none")
    original = _field(reader, key("orig_ctx")) if scaling == "longrope" else None
    spec = RotarySpec(int(dim), float(_field(reader, key("freq_base"), 10000.0)), int(original or ctx))
    rope_tensors = [t.name for t in reader.tensors if t.name in (n["long"], n["short"], n["freqs"])]
    return GgufRope(arch, spec, int(ctx), scaling, rope_tensors)


def _source_gguf(model: str) -> Path:
    """The GGUF file behind --model: a .gguf path, or a preset that keeps its original GGUF."""
    p = Path(model).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UsageError(f"GGUF file not found: {p}")
        return p
    if model == "smollm2-135m":  # the preset keeps its original GGUF
        return presets.smollm2_gguf_path()
    raise UsageError(
        f"--format gguf needs a GGUF model (a .gguf file or the smollm2-135m preset), got {model!r}; "
        f"convert an HF model with llama.cpp's convert_hf_to_gguf.py first"
    )


@dataclass
class GgufExportResult:
    path: Path  # the .gguf file
    extension: RopeExtension
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


def rope_metadata(arch: str, ext: RopeExtension) -> dict[str, Any]:
    """The keys we set, with their values (what llama.cpp reads, see the module docstring)."""
    n = _names()
    return {
        n["context_length"].format(arch=arch): ext.max_position_embeddings,
        n["scaling_type"].format(arch=arch): "longrope",
        n["orig_ctx"].format(arch=arch): ext.original_max_position_embeddings,
        n["attn_factor"].format(arch=arch): attention_factor(ext),
    }


def rope_tensors(ext: RopeExtension):
    """name -> float32 numpy array [d/2]; short = long when the extension has no short factor
    (longrope then uses the long factors at every length)."""
    n = _names()
    short = ext.short_factor if ext.short_factor is not None else ext.long_factor
    return {n["long"]: np.asarray(ext.long_factor, dtype=np.float32), n["short"]: np.asarray(short, dtype=np.float32)}


def export_gguf(
    model: str, ext: RopeExtension, out: str | Path, *, force: bool = False, drop_start_token: bool = False
) -> GgufExportResult:
    """Write `out`/model.gguf: the source GGUF plus longrope keys and factor tensors, then read it
    back and check every key and tensor. Raises UsageError for bad input; nothing is left at
    `out` on failure."""
    import gguf

    check_destination(out, force)
    ext, notes = check_exportable(ext, drop_start_token=drop_start_token, target="llama.cpp")
    src = _source_gguf(model)
    refuse_source(out, src)
    check_weights(ModelSource(src.parent, src.name))  # one line for a truncated or foreign file
    reader = gguf.GGUFReader(str(src))
    rope = read_gguf_rope(reader)
    if rope.arch not in LONGROPE_ARCHS:
        raise UsageError(
            f"llama.cpp reads longrope factor tensors only for {', '.join(LONGROPE_ARCHS)}; "
            f"this GGUF is {rope.arch!r}"
        )
    if rope.scaling_type not in ("none", "linear", "longrope"):
        raise UsageError(f"source GGUF already uses {rope.scaling_type} RoPE scaling; export from an unscaled model")
    n = _names()
    factor = _field(reader, n["factor"].format(arch=rope.arch))
    if n["freqs"] in rope.has_rope_tensors or (rope.scaling_type == "linear" and factor not in (None, 1.0)):
        raise UsageError("source GGUF already rescales its RoPE (rope_freqs or a linear factor); export from an unscaled model")
    ext, _ = check_exportable(ext, rope.spec, target="llama.cpp")

    new_keys = rope_metadata(rope.arch, ext)
    dropped = {n["factor"].format(arch=rope.arch)}
    new_tensors = rope_tensors(ext)
    with staged_dir(out, replace=force) as tmp:
        path = tmp / GGUF_NAME
        writer = gguf.GGUFWriter(str(path), arch=rope.arch, endianess=reader.endianess)
        alignment = _field(reader, gguf.Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = alignment
        for f in reader.fields.values():  # copy every key but the ones we set (as gguf_new_metadata does)
            if f.name.startswith("GGUF.") or f.name == gguf.Keys.General.ARCHITECTURE:
                continue
            if f.name in new_keys or f.name in dropped:
                continue
            sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub_type)
        writer.add_context_length(new_keys[n["context_length"].format(arch=rope.arch)])
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        writer.add_rope_scaling_orig_ctx_len(ext.original_max_position_embeddings)
        writer.add_rope_scaling_attn_factors(new_keys[n["attn_factor"].format(arch=rope.arch)])

        kept = [t for t in reader.tensors if t.name not in new_tensors]
        for t in kept:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        for name, values in new_tensors.items():
            writer.add_tensor_info(name, values.shape, values.dtype, values.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in kept:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        for values in new_tensors.values():
            writer.write_tensor_data(values)
        writer.close()

        checks = verify_gguf(src, path, ext)
        atomic_write_json(tmp / SIDECAR, {
            "format": "gguf",
            "source": str(src),
            "longrope_version": __version__,
            "extension": ext.to_dict(),
            "notes": notes,
            "checks": checks,
        })
    return GgufExportResult(Path(out) / GGUF_NAME, ext, notes, checks)


def verify_gguf(src: str | Path, exported: str | Path, ext: RopeExtension) -> dict[str, Any]:
    """Read both files back: every source key and tensor must be unchanged (except the keys we
    set), and the longrope keys and float32 factor tensors must hold `ext`. Raises UsageError."""
    import gguf

    a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(exported))
    arch = _field(a, gguf.Keys.General.ARCHITECTURE)
    n = _names()
    want_keys = rope_metadata(arch, ext)
    dropped = {n["factor"].format(arch=arch)}
    problems = []
    for f in a.fields.values():
        if f.name.startswith("GGUF.") or f.name in want_keys or f.name in dropped:
            continue
        g = b.get_field(f.name)
        if g is None or g.types != f.types or g.contents() != f.contents():
            problems.append(f"key {f.name} changed")
    for key, value in want_keys.items():
        got = _field(b, key)
        ok = got is not None and (math.isclose(got, value, rel_tol=1e-6) if isinstance(value, float) else got == value)
        if not ok:
            problems.append(f"key {key} = {got!r}, expected {value!r}")
    if _field(b, n["factor"].format(arch=arch)) is not None:
        problems.append("rope.scaling.factor must not be set")
    new_tensors = rope_tensors(ext)
    theirs = {t.name: t for t in b.tensors}
    for t in a.tensors:
        if t.name in new_tensors:
            continue
        u = theirs.get(t.name)
        if u is None or u.tensor_type != t.tensor_type or list(u.shape) != list(t.shape) or \
                not np.array_equal(np.asarray(u.data).view(np.uint8), np.asarray(t.data).view(np.uint8)):
            problems.append(f"tensor {t.name} changed")
    for name, values in new_tensors.items():
        u = theirs.get(name)
        if u is None or u.tensor_type != gguf.GGMLQuantizationType.F32 or not np.array_equal(np.asarray(u.data), values):
            problems.append(f"tensor {name} does not hold the factors")
    if problems:
        raise UsageError("exported GGUF failed its read-back check: " + "; ".join(problems[:5]))
    return {"keys_checked": len(b.fields), "tensors_checked": len(b.tensors), "arch": arch}
