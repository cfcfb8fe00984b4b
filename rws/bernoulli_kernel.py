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
batch 25. Here ``draw`` makes one pass over u that writes x, one that lists the tail
draws (``ar_kernels.tail_search``), then one loop over those; V is drawn from the
generator exactly as ``rng.tail_uniforms`` draws it, so both paths consume the same
random numbers and give the same x. (The float64 sigmoid is the library exponential
here and torch's vectorised one there; they may differ in the last bit, which changes a
draw only if u' falls within 1e-16 of its probability.)

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


def _compare(u, p, x):
    """x = [u < p] over u [A, n, R], p [A, 1 or n, R]."""
    A, n, R = u.shape
    per_draw = p.shape[1] != 1
    for a in range(A):
        for j in range(n):
            jp = j if per_draw else 0
            for r in range(R):
                x[a, j, r] = u[a, j, r] < p[a, jp, r]


def _refine(u, c, x, idx, v, from_logits):
    """Decide the flat draws idx [m] again with u' of ``ar_kernels.tail_uniform``
    (module docstring): c [A, 1 or n, R] holds the logits (from_logits) or p."""
    A, n, R = u.shape
    per_draw = c.shape[1] != 1
    for t in range(idx.shape[0]):
        f = idx[t]
        a, j, r = f // (n * R), (f // R) % n, f % R
        lo, hi = tail_uniform(u[a, j, r], v[t])                 # u', 1 - u'
        cc = np.float64(c[a, j if per_draw else 0, r])
        if from_logits:
            on = lo < 1.0 / (1.0 + np.exp(-cc)) if lo < 0.5 else hi > 1.0 / (1.0 + np.exp(cc))
        else:
            on = lo < cc if lo < 0.5 else hi > 1.0 - cc
        x[a, j, r] = 1.0 if on else 0.0


tail_uniform = ar_kernels.tail_uniform
if numba is not None:
    # no fastmath: the comparisons and the float64 arithmetic are IEEE, as in torch
    _compare = numba.njit(cache=True, nogil=True)(_compare)
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
        shape3 = (shape[0], shape[1], u.numel() // (shape[0] * shape[1]))
    elif p.shape == shape:
        shape3 = (1, 1, u.numel())
    else:
        return None
    if logits is not None and logits.shape != p.shape:
        return None
    u3 = u.numpy().reshape(shape3)
    pp = _as3(p, shape3)
    c = pp if logits is None else _as3(logits, shape3)
    if c is None or pp is None or pp.dtype != u3.dtype:
        return None
    x = np.empty_like(u3)
    _compare(u3, pp, x)
    idx = np.empty(u3.size, np.int64)
    tail = u3.dtype.type(rng.TAIL_CELLS * 2.0 ** -24)
    m = ar_kernels.tail_search(u3.reshape(-1), tail, 1 - tail, idx)
    # V as rng.tail_uniforms draws it, so both paths consume the same numbers
    v = torch.rand(m, generator=generator, dtype=torch.float64).numpy()
    _refine(u3, c, x, idx[:m], v, logits is not None)
    return torch.from_numpy(x).view(shape)
