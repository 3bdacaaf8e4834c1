"""Give memory freed by a finished stage back to the operating system.

Tensors of a released model or of a training step's activations go back to the C allocator, which keeps
them for reuse (glibc raises its mmap threshold as large blocks are freed, so later large tensors come
from the heap and their pages stay resident). A stage that ends hands them back, so the next stage's
model does not stack on top of them: the process's peak is that of its largest stage, not their sum.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from functools import lru_cache
from pathlib import Path

import psutil


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def trim_allocator() -> None:
    """Hand the C allocator's free pages back (milliseconds; the next allocations fault fresh pages in)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def return_freed_memory() -> None:
    """Collect unreachable objects (models in reference cycles), then trim the allocator's free pages."""
    gc.collect()
    trim_allocator()


def resident_bytes() -> int:
    """This process's resident set size now."""
    return psutil.Process().memory_info().rss


def reset_peak_resident() -> bool:
    """Start a new peak of this process's resident set (Linux: /proc/self/clear_refs); False where the kernel
    cannot, and then `peak_resident_bytes` is not meaningful."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_resident_bytes() -> int:
    """The highest resident set size since `reset_peak_resident` (the kernel's VmHWM, exact between samples)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024
