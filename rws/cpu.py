"""The CPU's instruction-set flags (``/proc/cpuinfo``; empty where there is none)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())
