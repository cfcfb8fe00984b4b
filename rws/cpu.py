"""The CPU's instruction-set flags and model name (``/proc/cpuinfo``; empty where there is
none)."""
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


@functools.lru_cache(maxsize=1)
def model_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), for the records' timings:
    the same step runs at other ratios on another CPU (benchmarks/NOTES.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        return ""
    return line.partition(":")[2].strip()
