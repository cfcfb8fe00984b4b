"""Keep freed memory in the process, so that large tensors do not page-fault on reuse.

Training and evaluation allocate and free the same megabyte-sized tensors (logits of
[rows, D], int32 products) thousands of times. glibc's malloc serves blocks above its
mmap threshold with fresh ``mmap`` calls and returns freed memory at the top of the heap
to the system once it exceeds its trim threshold; either way the next tensor of that
size touches new pages, and on a virtual machine a page fault costs microseconds. On 2
Zen 5 cores, evaluating SBN 200 at K = 1000 took 250-475 page faults and 3.1-4.1 ms per
point with glibc's defaults and none and 2.4-2.7 ms with the settings below.

``retain_freed_memory()`` raises the mmap threshold to its maximum (32 MiB: larger blocks
are still mapped and unmapped) and keeps up to 1 GiB of freed heap. It changes only
glibc's allocator settings for this process (``mallopt``), once; elsewhere (macOS,
musl, Windows) it does nothing. The CLI, ``train`` and ``estimate.log_likelihood`` call
it; ``RWS_KEEP_FREED_MEMORY=0`` leaves the allocator as it is.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20     # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Apply the settings once per process; True if glibc accepted them."""
    if os.environ.get("RWS_KEEP_FREED_MEMORY") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                mallopt(_M_TOP_PAD, TOP_PAD)])
