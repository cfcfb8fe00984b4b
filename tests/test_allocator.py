"""Freed memory stays in the process: tensors of the same size reuse their pages."""
import platform
import subprocess
import sys

import pytest

CHURN = """
import resource, torch
from rws import allocator
print(allocator.retain_freed_memory())
torch.set_num_threads(1)
W = torch.randn(784, 200)
def churn():            # the int8 split's pattern: several live 600 KB temporaries
    for _ in range(100):
        r = W / W.abs().amax(1, keepdim=True)
        q = r.round()
        r.sub_(q).mul_(254.0)
        (q.to(torch.int8), r.round())
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value):
    env = {"RWS_KEEP_FREED_MEMORY": env_value, "PATH": ""}
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator only")
def test_retained_memory_removes_page_faults():
    applied, faults = _faults("1")
    assert applied
    # 100 churns touch ~15,000 pages of temporaries: with glibc's defaults about 8,000
    # of them fault again (measured), with the memory retained about 150
    assert faults < 1500, faults
    assert _faults("0")[0] is False                   # the opt-out leaves glibc alone
