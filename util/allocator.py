"""The C allocator's policy for large CPU tensors.

glibc gives blocks above its mmap threshold (at most 32 MiB) back to the operating system when they are freed, so
the next tensor of that size is fresh memory whose every page faults on first touch. An R50 forward at 800x1333
makes tensors of up to tokens x d_ffn floats (about 180 MB) in every encoder layer, and each one paid those faults. Raising the mmap and trim thresholds keeps freed blocks for reuse (the process's resident
memory then stays near its peak instead of shrinking between images); this is what the tcmalloc / jemalloc
advice for PyTorch CPU inference buys, without another library. Measured in docs/benchmarks.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed


def keep_freed_memory() -> bool:
    """Make glibc keep freed large blocks for reuse; False (and nothing changed) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * KEEP_BYTES - 1))
