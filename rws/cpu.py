"""The CPU's instruction-set flags and model name (``/proc/cpuinfo``; empty where there is
none)."""
from __future__ import annotations

import functools


def _field(name: str) -> str:
    """The text after the colon of /proc/cpuinfo's first line starting with ``name``."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(name)), "")
    except OSError:
        return ""
    return line.partition(":")[2].strip()


@functools.lru_cache(maxsize=1)
def flags() -> frozenset[str]:
    return frozenset(_field("flags").split())


def model_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), for the records' timings:
    the same step runs at other ratios on another CPU (benchmarks/NOTES.md)."""
    return _field("model name")
