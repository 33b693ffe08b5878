"""Process-wide settings a long-running torch job on CPU needs: returning freed tensor memory to the system, and
how many threads torch may use beside the polling thread. :func:`configure_process` applies the process-wide
ones, once, where a process starts (the CLI, a benchmark's child process); importing a module changes nothing.

glibc's malloc serves allocations above its mmap threshold with ``mmap`` and hands them back on ``free``, but
the threshold is dynamic: each freed mmapped block raises it (up to 32 MB), after which tensors of that size
come from the heap, where a few long-lived small objects pin freed space. A training loop that allocates and
frees tens-of-megabyte activations every step then grows with every step until it is killed. Fixing the
threshold turns the adjustment off: tensors above it live in their own mappings, returned when freed, and the
heap holds only smaller ones. Where to fix it is a trade: every mapping's pages fault in afresh, so a low
threshold makes each activation pay for its memory again. The measurements behind the 16 MB chosen are in
docs/benchmarks.md ("Process-wide settings").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LARGE_ALLOCATION_BYTES = 16 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def return_free_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``): tensors under the mmap threshold
    leave freed holes inside the heap that only the top of it would otherwise give back (docs/benchmarks.md,
    "Process-wide settings"). ``False`` where the C library is not glibc."""
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


def configure_process() -> None:
    """The process-wide settings of a dynalign process, in one place: freed tensors go back to the system
    (:func:`release_freed_tensors`), and torch's "beta" notice on every sparse CSR tensor (the encoder's
    propagation and the plan's structure bonus use them) is silenced: it says nothing a user can act on. The
    service sets its own thread count and GIL switch interval when it starts, and restores the latter."""
    release_freed_tensors()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def aligner_threads(configured: int, cores: int | None = None) -> int:
    """Torch intra-op threads for the aligner: ``configured``, or (0) every core but the one the polling thread uses.

    The main thread keeps polling and ingesting while the aligner thread trains; letting torch's OpenMP pool
    take every core then oversubscribes them, and spinning OpenMP workers that wait for a preempted sibling
    slow alignment down several times on a small machine (docs/benchmarks.md, "Process-wide settings").

    >>> [aligner_threads(0, cores=2), aligner_threads(0, cores=16), aligner_threads(3, cores=2)]
    [1, 15, 3]
    """
    if configured > 0:
        return configured
    return max(1, (cores or os.cpu_count() or 1) - 1)
