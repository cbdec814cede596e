"""The memory regime latencies are measured under: freed memory stays in the process and is reused.

glibc's malloc hands large blocks (an activation of a 256 px input is megabytes) to the kernel on `free` and maps
fresh pages on the next call, and whether it does depends on the process's history (its mmap threshold adapts
to what was freed before). Each fresh page costs a page fault: on the reference host (a Firecracker VM) the 256 px
stem op took 8-9 ms with 4,588 faults per call and 1.3 ms with none, and which of the two a LUT recorded
depended on which ops the build had timed before it. CPU inference deployments usually run an allocator that keeps
freed memory (jemalloc, tcmalloc), and ONNX Runtime's arena always does; pinning torch's CPU allocations to that
regime makes op timings, end-to-end timings and repeated builds agree. The setting is process-wide and sticky: measuring
processes keep the memory they peak at.
"""

from __future__ import annotations

from functools import cache

from ..libc import libc_function

ALLOCATORS = ("reuse", "system")
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1


@cache
def reuse_freed_memory() -> bool:
    """Tell glibc malloc never to map large blocks separately nor to trim the heap; False where not glibc."""
    mallopt = libc_function("mallopt")
    return mallopt is not None and bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def apply_allocator(requested: str) -> str:
    """Put the process in the `requested` regime (one of `ALLOCATORS`) where the C library allows; returns the
    regime in force, which the backend records in its protocol."""
    if requested == "reuse" and reuse_freed_memory():
        return "reuse"
    return "system"
