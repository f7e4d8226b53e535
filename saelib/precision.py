"""Which float format the matmuls run in: bfloat16 where the hardware multiplies it natively, else float32.

`precision="auto"` (the default of `load_lm` and `TrainConfig`) picks bfloat16 on a CPU with bf16
dot-product instructions (`amx_bf16` or `avx512_bf16` in /proc/cpuinfo) or a GPU that supports bf16,
and float32 elsewhere: without such instructions bf16 is emulated and slower than float32. `collect`
and `evaluate` run the LM at the precision it was loaded in and record it (manifest, metrics).
Weights that are trained stay float32 (master weights and Adam state); only the products are bf16.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from saelib.errors import BadArgument

PRECISIONS = ("auto", "float32", "bfloat16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # instructions that multiply bf16 natively
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def native_bf16(device_type: str = "cpu") -> bool:
    """Does this device multiply bfloat16 natively (detected once per process)?"""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """ "float32" or "bfloat16": what `precision` ("auto", "float32", "bfloat16") means on `device`."""
    if precision not in PRECISIONS:
        raise BadArgument(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        return "bfloat16" if native_bf16(torch.device(device).type) else "float32"
    return precision


def matmul_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision ("float32" or "bfloat16")."""
    return DTYPES[resolve_precision(precision)]
