"""Keep freed tensor memory in the process instead of handing it back to the OS (glibc only).

PyTorch's CPU allocator asks malloc for every tensor. glibc serves large blocks with mmap and returns
them to the OS when freed, so each training step's multi-MB temporaries (pre-activations, gradients,
bf16 copies of the weights) arrive as fresh pages, and the kernel faults and zeroes every one of them.
Raising the mmap and trim thresholds lets malloc reuse the same heap memory step after step: ~18% less
time per TopK step here (576 -> 4608, batch 1024). Peak memory is unchanged; memory freed after the peak
stays with the process until it exits, as with jemalloc or tcmalloc, which PyTorch's CPU tuning guides
recommend for the same reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 2**30  # free heap memory stays with the process up to 1 GiB


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
