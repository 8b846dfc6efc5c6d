"""Process-wide settings for the command line: the memory allocator. Private.

On Linux, glibc's allocator hands every large block back to the kernel when it is freed (blocks above the
dynamic mmap threshold, and heap tops above the trim threshold). A CNN allocates and frees tens of megabytes
of activations per forward pass, so every pass pays for fresh page faults: measured here, batched
EfficientNet-Lite0 inference spent 35-50% of its CPU time in the kernel (22-24 images/s). Raising the two
thresholds once, before torch allocates anything, keeps that memory in the process (90-94 images/s on the same
2 cores). ``shiftlab``'s CLI calls :func:`tune_allocator` first thing; ``dev.py`` sets the equivalent
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables for the processes it starts.
A library import never changes the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator", "ALLOCATOR_ENV"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # 1 GiB: blocks below this come from the heap and are reused
TRIM_THRESHOLD = 2 << 30  # 2 GiB: free heap memory up to this is kept rather than returned
#: the same settings as environment variables, read by glibc when a process starts
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_done = False


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); False where there is no glibc.

    Set ``SHIFTLAB_KEEP_ALLOCATOR=1`` to leave the allocator alone (e.g. to measure the difference).
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("SHIFTLAB_KEEP_ALLOCATOR") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _done = ok
    return ok
