"""`RopeExtension` <-> Hugging Face config dicts: the one module that reads and writes them.

Used by `longrope export`, by fine-tuning (its model directories carry the factors in
config.json) and by every `--factors` flag. The exported config uses transformers' own
`longrope` rope type (docs/export.md):

    "rope_scaling": {"rope_type": "longrope", "short_factor": [d/2], "long_factor": [d/2],
                     "factor": s, "original_max_position_embeddings": L,
                     "attention_factor": m},
    "rope_theta": b, "max_position_embeddings": L', "original_max_position_embeddings": L

We write the legacy `rope_scaling` key with `rope_theta` beside it: transformers 5.x still
reads it (and converts it to `rope_parameters`), while 4.x silently ignores a 5.x-only
`rope_parameters`. `original_max_position_embeddings` is written twice because 4.x reads
only the top-level one (4.57 `_compute_longrope_parameters`) and 5.x prefers it
(`standardize_rope_params`); `attention_factor` is always explicit so no runtime falls back
to a default computed from a different `factor`.

Semantics that must survive the trip (transformers `dynamic_rope_update`): short_factor
while max(position_ids)+1 <= L, long_factor beyond, cos/sin times attention_factor.
longrope without a short_factor uses long_factor at every length, so it is exported as
short_factor = long_factor. A start token n_hat > 0 and dynamic methods have no
transformers equivalent: export refuses them (n_hat can be dropped with an explicit flag).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import UsageError
from .factors import RopeExtension
from .readback import read_json_file
from .methods import METHODS, attention_factor
from .rope import RotarySpec, longrope_attention_factor
from .shipped import looks_like_name, shipped_names, shipped_path

ROPE_TYPE = "longrope"
LONGROPE_TYPES = ("longrope", "su")  # "su" is the name early Phi-3 configs used
# transformers 4.x Phi3Config (and Phi-4-multimodal's) rejects a rope_scaling with other keys
# than exactly `type`, `short_factor`, `long_factor` (4.57 `_rope_scaling_validation`).
PHI3_STYLE = ("phi3", "phi4_multimodal")


# -- what can be exported ------------------------------------------------------------------------
def check_exportable(
    ext: RopeExtension, spec: RotarySpec | None = None, *, drop_start_token: bool = False, target: str = "transformers"
) -> tuple[RopeExtension, list[str]]:
    """The extension as it will be written, and notes on what the export loses (empty: nothing).

    Raises UsageError for what `target` cannot express: dynamic methods, a start token n_hat > 0
    (unless `drop_start_token`), factors of the wrong length or native context for `spec`.
    """
    method = METHODS.get(ext.method)
    if method is not None and method.dynamic:
        raise UsageError(
            f"method {ext.method!r} recomputes its factors at every length; {target} has no exact equivalent "
            f"(transformers' 'dynamic' keeps the largest scale seen and needs max_position_embeddings = L): "
            f"export a static method (e.g. ntk) instead"
        )
    notes = []
    if ext.start_token > 0:
        if not drop_start_token:
            raise UsageError(
                f"start token n_hat={ext.start_token} cannot be expressed in {target} (its longrope rescales every "
                f"position); pass --drop-start-token to export without it, knowing outputs then differ from longrope's"
            )
        notes.append(
            f"start token n_hat={ext.start_token} dropped: positions < {ext.start_token} use the rescaled angles, "
            f"so outputs differ from longrope's runtime"
        )
        ext = ext.with_(start_token=0)
    if ext.attention_by_length:
        notes.append(
            f"{target} has one attention factor past the native context: it applies {attention_factor(ext):g} "
            f"where longrope's attention_by_length applies sqrt(1 + ln(n/L) / ln L) at n tokens, so outputs "
            f"differ from longrope's (most at lengths far from the one that factor suits)"
        )
        ext = ext.with_(attention_by_length=False)
    if has_own_short_attention(ext):
        vllm = " (vLLM reads it: short_mscale)" if target == "transformers" else ""
        notes.append(
            f"{target} has one attention factor for every length: below the native context it applies "
            f"{attention_factor(ext):g} where longrope applies short_attention_factor {ext.short_attention_factor:g}, "
            f"so outputs there differ from longrope's{vllm}"
        )
    if spec is not None:
        ext.check_fits(spec)
    return ext, notes


def has_own_short_attention(ext: RopeExtension) -> bool:
    """True when the short factors come with an attention factor of their own (not the long one)."""
    return ext.short_attention_factor is not None and not math.isclose(
        ext.short_attention_factor, attention_factor(ext), rel_tol=1e-12)


# -- RopeExtension -> config dicts ----------------------------------------------------------------
def to_rope_scaling(ext: RopeExtension) -> dict[str, Any]:
    """The `rope_scaling` dict (legacy key, read by transformers 4.43+ and 5.x, and by vLLM).

    `short_mscale`/`long_mscale` are added only when vLLM's default mscale (it ignores
    `attention_factor`) would differ from ours, e.g. for PI (1.0) or YaRN (0.1 ln s + 1), or the
    short factors have their own attention factor; transformers logs them as unrecognised keys and
    otherwise ignores them (it applies `attention_factor`, the long one, at every length).
    """
    m = attention_factor(ext)
    short = ext.short_factor if ext.short_factor is not None else ext.long_factor
    d: dict[str, Any] = {
        "rope_type": ROPE_TYPE,
        "short_factor": list(short),
        "long_factor": list(ext.long_factor),
        "factor": float(ext.scale),
        "original_max_position_embeddings": ext.original_max_position_embeddings,
        "attention_factor": float(m),
    }
    vllm_m = longrope_attention_factor(ext.scale, ext.original_max_position_embeddings)  # vLLM's default
    if not math.isclose(vllm_m, m, rel_tol=1e-12) or has_own_short_attention(ext):
        d["short_mscale"] = d["long_mscale"] = float(m)
        if ext.short_attention_factor is not None:
            d["short_mscale"] = float(ext.short_attention_factor)
    return d


def to_rope_parameters(ext: RopeExtension, rope_theta: float, partial_rotary_factor: float | None = None) -> dict:
    """The same in transformers 5.x form (`rope_parameters`, with rope_theta inside)."""
    d = to_rope_scaling(ext)
    d["rope_theta"] = float(rope_theta)
    if partial_rotary_factor not in (None, 1.0):
        d["partial_rotary_factor"] = float(partial_rotary_factor)
    return d


def _single_rope_params(params: Any, source: str) -> dict:
    if not params:
        return {}
    if not isinstance(params, dict):
        raise UsageError(f"{source}: rope parameters are not a JSON object")
    if all(isinstance(v, dict) for v in params.values()):
        raise UsageError(f"{source}: a different RoPE per layer type cannot be carried by one longrope config")
    return params


def phi3_rope_scaling(ext: RopeExtension) -> dict[str, Any] | None:
    """Phi-3's own three-key form, when it means the same as ours: all runtimes then take L from the
    top-level original_max_position_embeddings and the default attention factor from L'/L.
    None when the attention factor is not that default (only the full form can say it)."""
    default = longrope_attention_factor(ext.scale, ext.original_max_position_embeddings)
    if not math.isclose(attention_factor(ext), default, rel_tol=1e-12) or has_own_short_attention(ext):
        return None
    short = ext.short_factor if ext.short_factor is not None else ext.long_factor
    return {"type": ROPE_TYPE, "short_factor": list(short), "long_factor": list(ext.long_factor)}


def hf_config_dict(config: dict[str, Any], ext: RopeExtension) -> dict[str, Any]:
    """A model's config dict (4.x or 5.x style) rewritten to carry `ext` in the portable form.

    Phi-3-style models get Phi-3's three-key rope_scaling where it is exact (4.x accepts
    nothing else); otherwise the full form, which 4.x's Phi3Config refuses to load (loudly).
    """
    d = dict(config)
    params = _single_rope_params(d.pop("rope_parameters", None), "config")
    d.pop("rope_scaling", None)  # replaced, like longrope's runtime replaces the model's RoPE
    theta = params.get("rope_theta", d.get("rope_theta"))
    if theta is None:
        raise UsageError("config has no rope_theta: the model does not use rotary embeddings")
    d["rope_theta"] = float(theta)
    partial = params.get("partial_rotary_factor", d.get("partial_rotary_factor"))
    if partial is not None:
        d["partial_rotary_factor"] = float(partial)
    phi3 = phi3_rope_scaling(ext) if d.get("model_type") in PHI3_STYLE else None
    d["rope_scaling"] = phi3 or to_rope_scaling(ext)
    d["max_position_embeddings"] = ext.max_position_embeddings
    d["original_max_position_embeddings"] = ext.original_max_position_embeddings
    if d.get("dtype") and not d.get("torch_dtype"):
        d["torch_dtype"] = d["dtype"]  # transformers < 4.56 reads only torch_dtype
    return d


# -- config dicts -> RopeExtension ----------------------------------------------------------------
def _config_dict(config_or_dict: Any) -> dict[str, Any]:
    if isinstance(config_or_dict, dict):
        return config_or_dict
    if hasattr(config_or_dict, "to_dict"):
        return config_or_dict.to_dict()
    raise UsageError(f"expected an HF config or dict, got {type(config_or_dict).__name__}")


def _rope_dict(d: dict[str, Any], source: str) -> dict:
    """The longrope parameter dict of a config (5.x `rope_parameters` or legacy `rope_scaling`)."""
    candidates = [_single_rope_params(d.get(k), source) for k in ("rope_parameters", "rope_scaling")]
    for params in candidates:
        if (params.get("rope_type") or params.get("type")) in LONGROPE_TYPES:
            return params
    found = next((p.get("rope_type") or p.get("type") for p in candidates if p), "default")
    raise UsageError(f"{source}: rope type is {found!r}, not longrope: there are no longrope factors to import")


def _factor_list(values: Any, name: str, source: str) -> list:
    if not isinstance(values, list) or not values:
        raise UsageError(f"{source}: {name} must be a non-empty list of numbers")
    if any(isinstance(v, list) for v in values):
        raise UsageError(
            f"{source}: {name} is per layer; transformers, vLLM and llama.cpp carry one vector shared by all layers"
        )
    return values


def extension_from_hf_config(config_or_dict: Any, source: str = "config") -> RopeExtension:
    """Read the longrope factors an HF config carries (Phi-3 style or our export) as a RopeExtension.

    Follows transformers 5.x: the top-level original_max_position_embeddings wins over the one
    in the rope dict; a missing attention_factor defaults from `factor` when given, else from
    max_position_embeddings / L. short_factor equal to long_factor becomes None (same behaviour).
    """
    d = _config_dict(config_or_dict)
    params = _rope_dict(d, source)
    long = _factor_list(params.get("long_factor"), "long_factor", source)
    short = params.get("short_factor")
    short = None if short is None else _factor_list(short, "short_factor", source)
    original = d.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    target = d.get("max_position_embeddings")
    if not original or not target:
        raise UsageError(
            f"{source}: needs original_max_position_embeddings and max_position_embeddings "
            f"(without them transformers never switches to long_factor)"
        )
    scale = target / original
    af = params.get("attention_factor")
    if af is None and params.get("factor") is not None:
        af_hf = longrope_attention_factor(float(params["factor"]), int(original))
        if not math.isclose(af_hf, longrope_attention_factor(scale, int(original)), rel_tol=1e-12):
            af = af_hf  # transformers computes the default from `factor`; keep what it would use
    metadata: dict[str, Any] = {"source": source, "imported_from": "hf_config"}
    for key in ("short_mscale", "long_mscale"):  # vLLM-only keys, recorded for `info`
        if key in params:
            metadata[f"vllm_{key}"] = params[key]
    short_af = _own_short_mscale(params, af)
    try:
        return RopeExtension(
            method=ROPE_TYPE,
            long_factor=long,
            short_factor=None if short == long and short_af is None else short,
            attention_factor=af,
            short_attention_factor=short_af,
            original_max_position_embeddings=original,
            max_position_embeddings=target,
            metadata=metadata,
        )
    except UsageError as e:
        raise UsageError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"{source}: malformed value ({e})") from None


def _own_short_mscale(params: dict, af: Any) -> float | None:
    """The short factors' own attention factor, as our export writes it for vLLM: `short_mscale`
    when it differs from a `long_mscale` equal to `attention_factor` (None otherwise)."""
    short, long = params.get("short_mscale"), params.get("long_mscale")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (short, long, af)):
        return None
    if math.isclose(long, af, rel_tol=1e-9) and not math.isclose(short, long, rel_tol=1e-9):
        return float(short)
    return None


def load_factors(path_or_dir: str | Path) -> RopeExtension:
    """`--factors` for every command: our factors JSON, an HF config.json, or an HF model
    directory whose config carries longrope factors (e.g. Phi-3-mini-128k, or our export), or the
    name of factors shipped with the package (`longrope.shipped`, e.g. smollm2-135m-16k)."""
    p = Path(path_or_dir).expanduser()
    if not p.exists() and looks_like_name(str(path_or_dir)):
        shipped = shipped_path(str(path_or_dir))
        if shipped is None:
            known = ", ".join(shipped_names()) or "none"
            raise UsageError(f"factors {str(path_or_dir)!r} not found: no such file, and not the name of "
                             f"shipped factors (shipped: {known})")
        ext = RopeExtension.load(shipped)
        return ext.with_(metadata={**ext.metadata, "label": ext.metadata.get("label") or shipped.stem})
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(f"{p} is a directory without config.json (expected a factors file or an HF model)")
        p = p / "config.json"
    d = read_json_file(p, "factors file")
    if not isinstance(d, dict):
        raise UsageError(f"{p}: expected a JSON object")
    if any(k in d for k in ("rope_scaling", "rope_parameters", "model_type")):
        return extension_from_hf_config(d, source=str(p))
    if "method" in d or "long_factor" in d:  # our own format (longrope.factors.JSON_KEYS)
        if "long_factor" in d:
            _factor_list(d["long_factor"], "long_factor", str(p))
        return _check_file_method(RopeExtension.from_dict(d, source=str(p)), str(p))
    raise UsageError(f"{p}: neither a longrope factors file (method, long_factor, ...) nor an HF config")


def _check_file_method(ext: RopeExtension, source: str) -> RopeExtension:
    """A factors file holds fixed factors: its method must be longrope or a static peer."""
    method = METHODS.get(ext.method)
    if method is None:
        raise UsageError(f"{source}: method {ext.method!r} is unknown; a factors file is one of "
                         f"{', '.join(n for n, m in METHODS.items() if not m.dynamic)}")
    if method.dynamic:
        raise UsageError(f"{source}: method {ext.method!r} recomputes its factors at every length, which a "
                         f"factors file cannot hold; evaluate it with --methods {ext.method}")
    return ext


def carried_extension(config: Any) -> RopeExtension | None:
    """The longrope factors an HF config carries (None when its RoPE is not longrope)."""
    d = _config_dict(config)
    params = [d.get(k) for k in ("rope_parameters", "rope_scaling")]
    if not any(isinstance(p, dict) and (p.get("rope_type") or p.get("type")) in LONGROPE_TYPES for p in params):
        return None
    return extension_from_hf_config(d)


def describe_rope_config(config: Any) -> dict[str, Any]:
    """The longrope facts of an HF config, for `longrope info` (empty for unscaled RoPE)."""
    d = _config_dict(config)
    try:
        ext = extension_from_hf_config(d)
    except UsageError as e:
        params = {}
        for key in ("rope_parameters", "rope_scaling"):
            if isinstance(d.get(key), dict):
                params = d[key]
                break
        kind = params.get("rope_type") or params.get("type") or "default"
        if kind in LONGROPE_TYPES:
            return {"longrope_error": str(e)}
        if kind == "default":
            return {}
        return {"rope_scaling": {k: v for k, v in params.items() if not isinstance(v, list)}}
    facts: dict[str, Any] = {
        "scale": round(ext.scale, 6),
        "attention_factor": round(attention_factor(ext), 6),
        "long_factor": [round(v, 4) for v in ext.long_factor],
        "short_factor": "same as long_factor" if ext.short_factor is None else [round(v, 4) for v in ext.short_factor],
    }
    for key in ("vllm_short_mscale", "vllm_long_mscale"):
        if key in ext.metadata:
            facts[key] = ext.metadata[key]
    return facts
