"""Uniform random numbers for Bernoulli sampling, fast on a CPU.

torch's CPU generator (mt19937) fills a float tensor one number at a time, at about
2 ns a number here: with K samples of a few hundred units per point it costs a sixth
of an evaluation. For large CPU requests ``uniform`` instead draws a 64-bit seed from
the torch generator (so the torch generator still holds the whole random state, and
checkpoints resume bit for bit) and fills the tensor from NumPy's SFC64 raw output,
two 24-bit uniforms per 64-bit word, at well under 1 ns a number (where numba is
installed, from the same stream compiled, ``rws.sfc64``: no NumPy objects a call).

The values are k / 2^24 for k uniform on {0, ..., 2^24 - 1} on every path (the same
lattice as ``torch.rand`` in float32 on a CPU), so P(u < p) = ceil(p 2^24) / 2^24:
``tail_uniforms`` gives the draws whose k lies near either end 53 more bits, and the
samplers decide those again (``layers.bernoulli.exact_tails``, ``tail_thresholds``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rws import jit, sfc64

# below this many numbers, seeding costs more than it saves: with the compiled stream
# (rws.sfc64) a request of 1,000 numbers took 7.3 us from torch.rand and 8.5 streamed,
# one of 5,000 18.5 against 11.6 (one thread, AMD EPYC; a Bernoulli draw of 5,000,
# the batch-25 dreams' top layer, 44 -> 26 us). NumPy's seeding, without numba, is
# dearer: the threshold was 1 << 14 for it.
FAST_MIN = 1 << 11
_MASK = (1 << 24) - 1
_SCALE = 2.0 ** -24
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
CPU = torch.device("cpu")


def uniform(shape, generator: torch.Generator | None = None, device=None,
            dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) numbers of ``shape`` from ``generator`` (None: torch's default)."""
    shape = tuple(shape)
    n = math.prod(shape)
    device = CPU if device is None else torch.device(device)
    if not streamed(n, device, dtype):
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
        if device.type == "cpu":     # torch's CPU float32 draws are k / 2^24 already
            return u.to(dtype)
        # other devices' onto the lattice, which ``layers.bernoulli.exact_tails`` relies on
        return u.mul_(2.0 ** 24).floor_().clamp_(max=_MASK).mul_(_SCALE).to(dtype)
    seed = stream_seed(generator)
    if jit.kernels_on():                 # numba there, RWS_NUMBA not "0"
        u = np.empty(n, _NUMPY[dtype])               # the same numbers, compiled (rws.sfc64)
        sfc64.lattice_uniforms(seed, u)
        return torch.from_numpy(u).view(shape)
    raw = np.random.SFC64(seed).random_raw((n + 1) // 2)          # [ceil(n/2)] uint64
    bits = raw.view(np.int32)[:n]                                 # [n] int32, 32 random bits
    # k = bits & (2^24 - 1), then k / 2^24 (both exact), in NumPy: on these tensors of
    # a few 10^4 numbers torch's three passes took several times as long
    u = np.bitwise_and(bits, _MASK).astype(_NUMPY[dtype])
    u *= _SCALE
    return torch.from_numpy(u).view(shape)


def streamed(n: int, device: torch.device, dtype) -> bool:
    """True where ``uniform`` takes n numbers from an SFC64 stream (a CPU, float32 or
    float64, at least ``FAST_MIN`` of them) rather than from torch's generator."""
    return device.type == "cpu" and n >= FAST_MIN and dtype in (torch.float32, torch.float64)


def stream_seed(generator: torch.Generator | None) -> int:
    """The seed of a streamed request's SFC64 stream, drawn from ``generator``."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator, dtype=torch.int64))


TAIL_CELLS = 1 << 14     # the lattice cells at either end whose draws are refined


def tail_uniforms(u: torch.Tensor, generator: torch.Generator | None = None):
    """The draws of u (values k / 2^24) within ``TAIL_CELLS`` cells of 0 or 1, with 53
    more bits: (flat indices [m], u' = (k + V) / 2^24 and 1 - u' in float64, each [m]),
    V ~ U(0, 1) a float64 from ``generator``. On the lattice alone, every probability in
    (0, 2^-24] is drawn at 2^-24 and none above 1 - 2^-24 ever gives 0; with u' the
    floor is 2^-77 (a logit of -53), which no evaluation's 1e12 draws reach. Every
    Bernoulli sampler decides these draws with u' (``layers.bernoulli.exact_tails``,
    ``layers.bernoulli.tail_thresholds``)."""
    u = u.reshape(-1)
    tail = TAIL_CELLS * _SCALE
    if u.device.type == "cpu":   # in NumPy: torch's search and its dozen operations on
        flat = u.numpy()         # the few tail draws took several times as long
        idx = np.flatnonzero((flat < tail) | (flat >= 1 - tail))
        k = flat[idx].astype(np.float64) * 2.0 ** 24              # [m], integers
        v = torch.rand(idx.shape[0], generator=generator, dtype=torch.float64).numpy()
        wrap = torch.from_numpy
    else:
        idx = torch.nonzero((u < tail).logical_or_(u >= 1 - tail)).view(-1)
        k = u[idx].double() * 2.0 ** 24
        v = torch.rand(idx.shape[0], generator=generator, device=u.device, dtype=torch.float64)
        wrap = torch.as_tensor
    return wrap(idx), wrap((k + v) * 2.0 ** -24), wrap(((1 << 24) - k - v) * 2.0 ** -24)
