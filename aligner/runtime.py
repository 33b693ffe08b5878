"""Process-wide settings a long-running torch job on CPU needs: returning freed tensor memory to the system, and
how many threads torch may use beside the polling thread.

glibc's malloc serves allocations above its mmap threshold with ``mmap`` and hands them back on ``free``, but
the threshold is dynamic: each freed mmapped block raises it (up to 32 MB), after which tensors of that size
come from the heap, where a few long-lived small objects pin freed space. A training loop that allocates and
frees tens-of-megabyte activations every step then grows by ~100 MB a step: 200 fast-adaptation steps on
acm-dblp (10k-node networks) reached 24 GB and were killed. Fixing the threshold turns the adjustment off:
tensors above it live in their own mappings, returned when freed, and the heap holds only smaller ones.

Where to fix it is a trade: every mapping's pages fault in afresh, so a low threshold makes each activation
pay for its memory again (at 1 MB a meta-iteration on acm-dblp took 4.3 s; at 16 MB 2.1 s). Measured on
acm-dblp, 24 meta-iterations and 60 adaptation steps: resident memory flat at 0.87-0.98 GB with 16 MB and
0.83-0.84 GB with 4 MB; growing by ~100 MB a step with the dynamic threshold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LARGE_ALLOCATION_BYTES = 16 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def return_free_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``): tensors under the mmap threshold
    leave freed holes inside the heap that only the top of it would otherwise give back. Measured on acm-dblp:
    after 200 training steps resident memory stayed 1.5 GB above the live tensors until this ran. ``False``
    where the C library is not glibc."""
    libc = _libc()
    try:
        return bool(libc.malloc_trim(0)) if libc is not None else False
    except AttributeError:
        return False


def release_freed_tensors() -> bool:
    """Fix glibc's mmap threshold at 16 MB (see the module docstring). ``False`` where the C library is not
    glibc (nothing to do there)."""
    libc = _libc()
    try:
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES)) if libc is not None else False
    except (AttributeError, TypeError):
        return False


def aligner_threads(configured: int, cores: int | None = None) -> int:
    """Torch intra-op threads for the aligner: ``configured``, or (0) every core but the one the polling thread uses.

    The main thread keeps polling and ingesting while the aligner thread trains; letting torch's OpenMP pool
    take every core then oversubscribes them, and spinning OpenMP workers that wait for a preempted sibling made
    alignment 5x slower on a 2-core machine (demo meta-training 58 s vs 11 s with a second core kept busy;
    14 s with one torch thread).

    >>> [aligner_threads(0, cores=2), aligner_threads(0, cores=16), aligner_threads(3, cores=2)]
    [1, 15, 3]
    """
    if configured > 0:
        return configured
    return max(1, (cores or os.cpu_count() or 1) - 1)
