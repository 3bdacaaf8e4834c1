"""What the CPU computes natively, read from /proc/cpuinfo so that config loading stays free of torch."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 instructions that multiply bfloat16 in hardware


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags; empty where /proc/cpuinfo is absent (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether bfloat16 matrix products run in hardware; elsewhere torch emulates them, slower than float32."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def auto_dtype() -> str:
    """What `dtype: auto` means for training and answering: bfloat16 where it runs in hardware, else float32."""
    return "bfloat16" if native_bf16() else "float32"
