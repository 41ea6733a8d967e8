"""Device and dtype policy: bf16 where the hardware runs it fast, fp32 elsewhere."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..defaults import AUTO, DTYPES
from ..errors import UsageError


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16 (where bf16 matmuls beat fp32 several-fold)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """`device` when torch can run on it here, else UsageError naming --device."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available to this torch {torch.__version__}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here")
    return device


def auto_half_dtype(device: str | torch.device = "cpu") -> torch.dtype | None:
    """The reduced precision worth computing in on `device`, or None where fp32 is faster:
    bf16 (fp16 on GPUs without bf16) on CUDA, bf16 on AMX/AVX512-BF16 CPUs."""
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def resolve_dtype(dtype: str, device: str | torch.device = "cpu") -> torch.dtype:
    """'auto' picks bf16 where the hardware runs it fast (CUDA with bf16, or an AMX CPU)."""
    named = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype in named:
        return named[dtype]
    if dtype != AUTO:
        raise UsageError(f"unknown dtype {dtype!r}; choose {', '.join(DTYPES)}")
    return auto_half_dtype(device) or torch.float32


def auto_mixed_precision() -> str:
    """accelerate's `mixed_precision` for `--mixed-precision auto` on this machine."""
    half = auto_half_dtype(default_device())
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[half]
