"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

By default glibc serves every block over a (dynamic, at most 32 MB) threshold with its own mmap
and unmaps it on free, and trims the heap's free top: a CPU student's activations are such
blocks, so each training step faults the same pages in again, zeroed by the kernel. On 2 cores
up to a third of a student's CPU time went to the kernel; kept, students train 1.03-1.45x
faster (student-speed.json, `allocator`). The entry points that train (the CLI, a cell's
worker, the benchmarks) call `keep_freed_memory` once; importing the library changes nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30  # blocks below this come from the heap, and up to this much free heap is kept


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to KEEP_BYTES; False where the C library is not
    glibc (no mallopt, e.g. macOS) or refuses, and nothing changed."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
