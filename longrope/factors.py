"""`RopeExtension`: a RoPE context extension as validated data, saved and loaded as JSON.

The JSON file has these top-level keys, so other tools can write one:
`method`, `long_factor`, `short_factor` (null when absent), `start_token`,
`attention_factor` (null = the method's default), `original_max_position_embeddings`,
`max_position_embeddings`, `metadata`, and `short_attention_factor` only when set and
`attention_by_length` only when true.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError
from .atomic import atomic_write_json

# A model directory written by `longrope finetune` / `extend` carries its extension in this file
from .readback import read_json_file

# A model directory written by `longrope finetune` / `extend` carries its extension in this file
# as well as in config.json: the file also keeps the start token n_hat, which HF configs cannot.
FACTORS_FILE = "longrope_factors.json"
JSON_KEYS = (
    "method",
    "long_factor",
    "short_factor",
    "start_token",
    "attention_factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "metadata",
    "short_attention_factor",  # written only when set, so files without it read and digest as before
    "attention_by_length",  # written only when true, likewise
)


# cos and sin are both scaled, so attention logits grow by its square: past 10 (logits x100) no
# method's magnitude correction lies (YaRN and LongRoPE stay below 2 up to 2048x), only overflow
MAX_ATTENTION_FACTOR = 10.0


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_factor_vector(name: str, values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise UsageError(f"{name} must be a list of numbers, got {values!r}")
    values = list(values)
    for i, v in enumerate(values):
        if not _is_number(v):  # "2.0", true: a file that says something else than it seems
            raise UsageError(f"{name}[{i}] must be a number, got {v!r}")
    vals = tuple(float(v) for v in values)
    if not vals:
        raise UsageError(f"{name} is empty")
    for i, v in enumerate(vals):
        if not math.isfinite(v):
            raise UsageError(f"{name}[{i}] is not finite ({v})")
        if v < 1.0 - 1e-9:
            raise UsageError(f"{name}[{i}] = {v} is below 1 (a rescale factor must be >= 1)")
    return vals


def is_monotone(values: Sequence[float]) -> bool:
    """True when values are non-decreasing (LongRoPE's constraint lambda_i <= lambda_{i+1})."""
    return all(a <= b + 1e-12 for a, b in zip(values, values[1:]))


@dataclass(frozen=True)
class RopeExtension:
    """Per-dimension rescale factors lambda (length d/2) and what goes with them.

    `long_factor` is used when the sequence is longer than the native context (or always,
    when `short_factor` is None); `short_factor` while it fits. `start_token` (n_hat) is
    the number of leading positions that keep the original RoPE. `attention_factor` None
    means the method's default (see `longrope.methods.attention_factor`); it applies at every
    length unless `short_attention_factor` is set, which replaces it while `short_factor` is
    in force (1.0 leaves short contexts exactly as trained when `short_factor` is all 1).
    `attention_by_length` replaces the long attention factor, past the native context, by
    LongRoPE's sqrt(1 + ln s / ln L) with s = the sequence's length / L: a magnitude that grows
    with the length in force instead of one fixed for the target (longrope's runtime only;
    exports keep `attention_factor`).
    """

    method: str
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    max_position_embeddings: int
    short_factor: tuple[float, ...] | None = None
    start_token: int = 0
    attention_factor: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    short_attention_factor: float | None = None
    attention_by_length: bool = False

    def __post_init__(self):
        object.__setattr__(self, "long_factor", _check_factor_vector("long_factor", self.long_factor))
        if self.short_factor is not None:
            short = _check_factor_vector("short_factor", self.short_factor)
            if len(short) != len(self.long_factor):
                raise UsageError(
                    f"short_factor has {len(short)} values but long_factor has {len(self.long_factor)}"
                )
            object.__setattr__(self, "short_factor", short)
        if not isinstance(self.method, str) or not self.method:
            raise UsageError("method must be a non-empty string")
        for name in ("original_max_position_embeddings", "max_position_embeddings", "start_token"):
            if not _is_integer(getattr(self, name)):
                raise UsageError(f"{name} must be an integer, got {getattr(self, name)!r}")
        object.__setattr__(self, "original_max_position_embeddings", int(self.original_max_position_embeddings))
        object.__setattr__(self, "max_position_embeddings", int(self.max_position_embeddings))
        if self.original_max_position_embeddings < 1:
            raise UsageError("original_max_position_embeddings must be >= 1")
        if self.max_position_embeddings <= self.original_max_position_embeddings:
            raise UsageError(
                f"target context max_position_embeddings={self.max_position_embeddings} must exceed "
                f"the original context {self.original_max_position_embeddings}"
            )
        if not 0 <= self.start_token < self.max_position_embeddings:
            raise UsageError(f"start_token must be a non-negative integer below max_position_embeddings="
                             f"{self.max_position_embeddings}, got {self.start_token}")
        object.__setattr__(self, "start_token", int(self.start_token))
        for name in ("attention_factor", "short_attention_factor"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value):
                raise UsageError(f"{name} must be a number or null, got {value!r}")
            if not math.isfinite(float(value)) or not 0 < value <= MAX_ATTENTION_FACTOR:
                raise UsageError(f"{name} must be a number in (0, {MAX_ATTENTION_FACTOR:g}], got {value}")
            object.__setattr__(self, name, float(value))
        if self.short_attention_factor is not None and self.short_factor is None:
            raise UsageError("short_attention_factor needs a short_factor (without one, long_factor and "
                             "attention_factor apply at every length)")
        if not isinstance(self.metadata, dict):
            raise UsageError("metadata must be a JSON object")
        if not isinstance(self.attention_by_length, bool):
            raise UsageError(f"attention_by_length must be true or false, got {self.attention_by_length!r}")

    @property
    def scale(self) -> float:
        """s = L' / L."""
        return self.max_position_embeddings / self.original_max_position_embeddings

    @property
    def half_dim(self) -> int:
        return len(self.long_factor)

    def check_monotone(self) -> None:
        """Raise UsageError unless long_factor is non-decreasing (required of searched factors)."""
        if not is_monotone(self.long_factor):
            raise UsageError("long_factor is not non-decreasing (lambda_i <= lambda_{i+1} is required)")

    def check_fits(self, spec) -> None:
        """Raise UsageError unless these factors fit a model's RoPE (`RotarySpec`): d/2 values,
        the same native context, and the same rope base when the metadata records one
        (shipped and searched factors do)."""
        model = self.metadata.get("model")
        made_for = f" (made for {model})" if model else ""
        if self.half_dim != spec.half:
            raise UsageError(f"factors do not fit this model{made_for}: they hold {self.half_dim} values, and a "
                             f"rotary dim of {spec.dim} takes {spec.half} (one per pair of rotary dims)")
        if self.original_max_position_embeddings != spec.original_max_position_embeddings:
            raise UsageError(f"factors are for a native context of {self.original_max_position_embeddings} "
                             f"tokens{made_for} but the model's is {spec.original_max_position_embeddings}")
        base = self.metadata.get("rope_theta")
        if isinstance(base, (int, float)) and not math.isclose(float(base), spec.base, rel_tol=1e-6):
            raise UsageError(f"factors were searched for a model with rope base {base:g}{made_for}; "
                             f"this model's base is {spec.base:g}")

    def with_(self, **changes) -> "RopeExtension":
        return replace(self, **changes)

    # -- JSON border -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["long_factor"] = list(self.long_factor)
        d["short_factor"] = None if self.short_factor is None else list(self.short_factor)
        optional = {"short_attention_factor": None, "attention_by_length": False}  # written only when set
        return {k: d[k] for k in JSON_KEYS if k not in optional or d[k] != optional[k]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "factors") -> "RopeExtension":
        if not isinstance(d, dict):
            raise UsageError(f"{source}: expected a JSON object")
        missing = [k for k in ("method", "long_factor", "original_max_position_embeddings",
                               "max_position_embeddings") if k not in d]
        if missing:
            raise UsageError(f"{source}: missing key(s) {', '.join(missing)}")
        unknown = sorted(set(d) - set(JSON_KEYS))
        if unknown:
            raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)}")
        if not isinstance(d["long_factor"], list) or (
            d.get("short_factor") is not None and not isinstance(d["short_factor"], list)
        ):
            raise UsageError(f"{source}: long_factor and short_factor must be lists of numbers")
        start = d.get("start_token")
        try:
            return cls(
                method=d["method"],
                long_factor=d["long_factor"],
                short_factor=d.get("short_factor"),
                start_token=0 if start is None else start,
                attention_factor=d.get("attention_factor"),
                short_attention_factor=d.get("short_attention_factor"),
                attention_by_length=d.get("attention_by_length", False),
                original_max_position_embeddings=d["original_max_position_embeddings"],
                max_position_embeddings=d["max_position_embeddings"],
                metadata=d.get("metadata") or {},
            )
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise UsageError(f"{source}: malformed value ({e})") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "RopeExtension":
        return cls.from_dict(read_json_file(path, "factors file"), source=str(path))
