"""Keep freed tensor memory in the process on CPU, instead of returning it to the kernel.

glibc serves large allocations with ``mmap`` and gives freed memory back (``munmap``,
heap trimming), so every training step faults in and zeroes its (B, N) activations
afresh. Raising the mmap and trim thresholds (``mallopt``) makes the heap keep those
pages for the next step, the glibc counterpart of the tcmalloc/jemalloc preload that CPU
training recipes use (its effect on samples/s and kernel time is measured in
``benchmarks/README.md``). Memory freed stays reserved by the process (its peak resident
set is unchanged). Called by ``init_distributed``.
"""

import ctypes
import logging

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX / 2 = 32 MiB).
_MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MiB from the heap and never trim it; True if applied.

    A no-op (False) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded in this process
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    if not ok:
        logger.debug("mallopt refused the thresholds")
    return ok
