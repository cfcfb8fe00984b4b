"""rws.jit: numba's loops at the CPU's full vector width on AVX-512, unless the user
chose numba's target."""
import os
import subprocess
import sys

import pytest

from rws import cpu, jit

pytest.importorskip("llvmlite")


@pytest.fixture
def no_target(monkeypatch):
    for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "RWS_NUMBA_WIDTH"):
        monkeypatch.delenv(name, raising=False)


def test_avx512_gets_the_host_features_without_the_256_bit_preference(no_target, monkeypatch):
    monkeypatch.setattr(cpu, "flags", lambda: frozenset({"avx2", "avx512f"}))
    features = jit.full_width_features()
    assert features.endswith(",-prefer-256-bit")
    assert features.count("prefer-256-bit") == 1 and "+" in features.split(",")[0]


@pytest.mark.parametrize("setting", [{"NUMBA_CPU_NAME": "generic"},
                                     {"NUMBA_CPU_FEATURES": "+sse2"},
                                     {"RWS_NUMBA_WIDTH": "256"}])
def test_the_users_choice_and_other_cpus_keep_llvms_target(no_target, monkeypatch, setting):
    monkeypatch.setattr(cpu, "flags", lambda: frozenset({"avx512f"}))
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert jit.full_width_features() is None
    monkeypatch.undo()
    monkeypatch.setattr(cpu, "flags", lambda: frozenset({"avx2", "fma"}))
    assert jit.full_width_features() is None


def test_numba_compiles_with_the_features_jit_chose():
    pytest.importorskip("numba")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "RWS_NUMBA_WIDTH")}
    code = ("import rws.jit, numba\n"
            "from numba.core.registry import cpu_target\n"
            "print(cpu_target.target_context.codegen()._tm_features)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    if "avx512f" in cpu.flags():
        assert out.endswith(",-prefer-256-bit") and "+avx512f" in out
    else:
        assert "prefer-256-bit" not in out


def test_the_kernels_switch_follows_the_environment(monkeypatch):
    """``kernels_on`` reads the mapping behind os.environ: every change to the
    environment through os.environ shows at once, as os.environ.get would."""
    from rws import ar_kernels
    if jit.numba is None:
        assert not jit.kernels_on()
        return
    monkeypatch.delenv("RWS_NUMBA", raising=False)
    assert jit.kernels_on() and ar_kernels.available()
    monkeypatch.setenv("RWS_NUMBA", "0")
    assert not jit.kernels_on() and not ar_kernels.available()
    monkeypatch.setenv("RWS_NUMBA", "1")
    assert jit.kernels_on()
    monkeypatch.setenv("RWS_NUMBA", "0")
    monkeypatch.delenv("RWS_NUMBA")
    assert jit.kernels_on()
