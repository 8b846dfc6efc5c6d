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

__all__ = ["tune_allocator", "loader_worker_allocator", "release_free_memory", "HeapTrimmer", "ALLOCATOR_ENV"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # 1 GiB: blocks below this come from the heap and are reused
TRIM_THRESHOLD = 2 << 30  # 2 GiB: free heap memory up to this is kept rather than returned
#: the same settings as environment variables, read by glibc when a process starts
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_done = False
_LIBC = None


def _libc():
    """glibc, loaded once. (``ctypes.util.find_library`` runs ``ldconfig`` in a forked child, which must not
    happen in a large process: the fork would double its resident memory for a moment.)"""
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        _LIBC = libc
    return _LIBC


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
        mallopt = _libc().mallopt
        _libc().malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _done = ok
    return ok


def loader_worker_allocator(_worker_id: int = 0) -> None:
    """In a DataLoader worker (which only decodes and resizes): hand large blocks back to the kernel again.

    A worker inherits the main process's thresholds through fork, but its allocations (decoded images of every
    size, then copies into shared memory) fragment a heap that never shrinks: measured, a worker's resident
    memory grew from 0.9 to 1.5 GiB over 5,000 photos. Blocks of 1 MiB and more are mapped and unmapped
    instead (what a decode costs in page faults is small next to the decode).
    """
    if not _done:
        return
    _libc().mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    _libc().mallopt(_M_TRIM_THRESHOLD, 2 << 20)


def release_free_memory() -> None:
    """``malloc_trim(0)``: give the free pages inside the heap back to the kernel (only when tuned).

    With the thresholds raised the heap never shrinks by itself, and the many large tensors of a long audit
    leave free holes in it that fragmentation keeps from being reused: measured, the heap of an audit of
    6,400 photos grew from 0.3 to 0.9 GiB. Every page it frees is faulted in again when it is next used, so
    calling it after every batch costs as much kernel time as the thresholds saved (measured: 7.8 s of system
    time in a 21 s ``report --quick``); :class:`HeapTrimmer` calls it only when the memory has grown.
    """
    if _done:
        _libc().malloc_trim(0)


class HeapTrimmer:
    """Gives the free heap pages of a long loop back to the kernel after every step (a step: a batch).

    With the thresholds raised the heap grows by fragmentation over a long audit; :func:`release_free_memory`
    after every batch keeps it flat (measured: an audit of 20,000 images peaked at 0.99-1.12x one of 1,000,
    ``benchmarks/bench_streaming_memory.py``; trimming only every 4 or 8 batches, or only after the first 32,
    let it grow by 20-35%). But every page it frees is faulted in again by the next batch: 7.8 s of system
    time in a 21 s ``report --quick``, whose many audits each see the same 9 photos in many copies, 1.2 s
    without. So only a loop over at least ``many`` images trims, where memory growth matters and the data
    dwarfs the model. Does nothing unless :func:`tune_allocator` raised the thresholds.
    """

    def __init__(self, images: int, many: int = 256):
        self.enabled = _done and int(images) >= int(many)
        self.trims = 0

    def step(self) -> None:
        if self.enabled:
            release_free_memory()
            self.trims += 1
