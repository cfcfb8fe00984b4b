"""numba (or None without it), set to compile the suite's loops at the CPU's full vector
width, and the switch of the compiled kernels (``kernels_on``: RWS_NUMBA=0 turns them off
and the torch operations serve).

LLVM tunes Intel's AVX-512 cores to prefer 256-bit vectors (its ``prefer-256-bit``
tuning, chosen against the clock drop of Skylake-SP's 512-bit units), so numba's loops
used half the width of the registers. Where the CPU has AVX-512 and the user has not set
numba's target (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``), numba gets the host's own
features with that preference turned off, through ``NUMBA_CPU_FEATURES``: numba reads it
on import and again at each compilation, and its cache keys compiled code by the
features, so no stale code is loaded. On an AVX-512 Xeon (Sapphire Rapids class, one
thread; benchmarks/NOTES.md) the NADE kernels on 125 MNIST rows ran x1.08-1.17 faster
(logits 2.03 -> 1.80 ms, backward 4.81 -> 4.27, sampler 5.35 -> 4.70) and a NADE/NADE
RWS step x1.04-1.05 (batch 25 and 100). ``RWS_NUMBA_WIDTH=256`` keeps LLVM's choice.
"""
from __future__ import annotations

import os

from rws import cpu


def full_width_features() -> str | None:
    """The host's LLVM feature string with the 256-bit preference off, or None where
    that does not apply (no AVX-512, numba's target set by the user, or no llvmlite)."""
    if ("avx512f" not in cpu.flags() or os.environ.get("RWS_NUMBA_WIDTH") == "256"
            or "NUMBA_CPU_NAME" in os.environ or "NUMBA_CPU_FEATURES" in os.environ):
        return None
    try:
        from llvmlite import binding
        return binding.get_host_cpu_features().flatten() + ",-prefer-256-bit"
    except (ImportError, RuntimeError):
        return None


_features = full_width_features()
if _features is not None:
    os.environ["NUMBA_CPU_FEATURES"] = _features

try:
    import numba
except ImportError:
    numba = None


# ``os.environ.get`` takes about 0.85 us where the variable is not set (a KeyError raised
# and caught inside the mapping), and the kernels' switch is read some 10 to 25 times a
# training step; the dictionary behind ``os.environ``, which every change to it updates,
# answers the same question in 0.06 us.
_ENVIRON = getattr(os.environ, "_data", None)
_SWITCH = (os.environ.encodekey("RWS_NUMBA"), os.environ.encodevalue("0")) \
    if _ENVIRON is not None else None


def kernels_on() -> bool:
    """numba is there and RWS_NUMBA is not "0" (read at each call, as ``os.environ``)."""
    if numba is None:
        return False
    if _SWITCH is not None:
        return _ENVIRON.get(_SWITCH[0]) != _SWITCH[1]
    return os.environ.get("RWS_NUMBA", "1") != "0"
