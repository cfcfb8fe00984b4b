"""The Bernoulli sampler's comparison and its tail refinement as compiled CPU loops
(numba): the same draws as ``layers.bernoulli.bernoulli_draw``'s torch operations.

The sampler draws x = [u < p] with u = k / 2^24 on ``rng.uniform``'s lattice, then
decides again the draws whose k lies within ``rng.TAIL_CELLS`` cells of either end, with
u' = (k + V) / 2^24 (V ~ U(0, 1) in float64 from the torch generator):

    x = [u' < sigmoid(a)]          where u' < 1/2 (the low end)
    x = [1 - u' > sigmoid(-a)]     at the high end

in float64 from the logits a where given, else from p (``layers.bernoulli.exact_tails``).
In torch that is a comparison, a search for the tail draws and a dozen operations on the
few (about 0.2%) it finds: about 0.13 ms a call whatever the size, three calls in an
SBN's RWS step (the dreams' two layers and Q's proposals), a large share of a step at
batch 25. Here ``draw`` makes one pass over u that writes x and lists the tail draws,
then one loop over those; V is drawn from the generator exactly as ``rng.tail_uniforms``
draws it, so both paths consume the same random numbers and give the same x. (The
float64 sigmoid is the library exponential here and torch's vectorised one there; they
may differ in the last bit, which changes a draw only if u' falls within 1e-16 of its
probability.)

Shapes: u and x [A, n, R]; p and the logits [A, 1, R] (one row per n draws) or [A, n, R].
``available()`` is ``ar_kernels.available()``: without numba, on other devices and with
RWS_NUMBA=0 the torch operations serve.
"""
from __future__ import annotations

import numpy as np
import torch

from rws import ar_kernels, rng

numba = ar_kernels.numba
available = ar_kernels.available


def _draw(u, p, x, idx, lo, hi):
    """x = [u < p] over u [A, n, R], p [A, 1 or n, R]; the flat indices of the draws with
    u < lo or u >= hi into idx, in order. Returns how many there are."""
    A, n, R = u.shape
    per_draw = p.shape[1] != 1
    m = 0
    for a in range(A):
        for j in range(n):
            jp = j if per_draw else 0
            for r in range(R):
                x[a, j, r] = u[a, j, r] < p[a, jp, r]
            for r in range(R):                     # (a branch almost never taken)
                if u[a, j, r] < lo or u[a, j, r] >= hi:
                    idx[m] = (a * n + j) * R + r
                    m += 1
    return m


def _refine(u, c, x, idx, v, from_logits):
    """Decide the tail draws idx [m] again with u' = (k + v) / 2^24 (module docstring):
    c [A, 1 or n, R] holds the logits (from_logits) or the probabilities."""
    A, n, R = u.shape
    per_draw = c.shape[1] != 1
    for t in range(idx.shape[0]):
        f = idx[t]
        a, j, r = f // (n * R), (f // R) % n, f % R
        k = np.float64(u[a, j, r]) * 16777216.0
        lo_u = (k + v[t]) * 5.9604644775390625e-08            # u' (2^-24: exact scaling)
        hi_u = (16777216.0 - k - v[t]) * 5.9604644775390625e-08   # 1 - u'
        cc = np.float64(c[a, j if per_draw else 0, r])
        if from_logits:
            on = lo_u < 1.0 / (1.0 + np.exp(-cc)) if lo_u < 0.5 else hi_u > 1.0 / (1.0 + np.exp(cc))
        else:
            on = lo_u < cc if lo_u < 0.5 else hi_u > 1.0 - cc
        x[a, j, r] = 1.0 if on else 0.0


if numba is not None:
    # no fastmath: the comparisons and the float64 arithmetic are IEEE, as in torch
    _draw = numba.njit(cache=True, nogil=True)(_draw)
    _refine = numba.njit(cache=True, nogil=True)(_refine)


def _as3(t: torch.Tensor, shape3) -> np.ndarray | None:
    """t as a contiguous [A, 1 or n, R] numpy view for draws of ``shape3`` = (A, n, R)."""
    A, n, R = shape3
    if not t.is_contiguous() or t.numel() not in (A * R, A * n * R):
        return None
    return t.numpy().reshape(A, t.numel() // (A * R), R)


def draw(u: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None,
         logits: torch.Tensor | None = None) -> torch.Tensor | None:
    """x = [u < p] with the tail draws decided again (module docstring), for CPU float32
    or float64 u [N, ...] and p, logits broadcast to it as [N, 1, ...] or u's own shape;
    None where another layout needs the torch operations. Detached tensors."""
    shape = u.shape
    if u.numel() == 0:
        return None
    if u.dim() >= 2 and p.shape[0] == shape[0] and p.dim() == u.dim() and p.shape[1] == 1:
        shape3 = (shape[0], shape[1], u.numel() // max(shape[0] * shape[1], 1))
    elif p.shape == shape:
        shape3 = (1, 1, u.numel())
    else:
        return None
    if logits is not None and logits.shape != p.shape:
        return None
    c = _as3(p if logits is None else logits, shape3)
    pp = _as3(p, shape3)
    if c is None or pp is None or pp.dtype != u.numpy().dtype:
        return None
    u3 = u.numpy().reshape(shape3)
    x = np.empty_like(u3)
    idx = np.empty(u3.size, np.int64)
    tail = np.array(rng.TAIL_CELLS * 2.0 ** -24, u3.dtype)
    m = _draw(u3, pp, x, idx, tail, 1 - tail)
    # V as rng.tail_uniforms draws it, so both paths consume the same numbers
    v = torch.rand(m, generator=generator, dtype=torch.float64).numpy()
    _refine(u3, c, x, idx[:m], v, logits is not None)
    return torch.from_numpy(x).view(shape)
