"""The Bernoulli sampler's uniforms, comparison and tail refinement as compiled CPU loops
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
random numbers and give the same x. Where ``rng.uniform`` would take u from an SFC64
stream (``rng.streamed``: 2^14 numbers or more), the stream's numbers are made inside
the comparison loop, which lists the tail draws too (``_stream_compare``): u is never
written out, and the three passes are one. Against the three passes (A/B in one
process, one thread, the same draws): an SBN 200 RWS step x1.02-1.03 at batch 25 and
x1.05-1.075 at batch 100, a K = 5,000 evaluation of SBN 200 x1.10 and of the deep SBN
x1.04. (The float64 sigmoid is the library exponential here and torch's vectorised one
there; they may differ in the last bit, which changes a draw only if u' falls within
1e-16 of its probability.)

Shapes: u and x [A, n, R]; p and the logits [A, 1, R] (one row per n draws) or [A, n, R];
``draw`` takes the draws' shape and returns x in it.
``available()`` is ``ar_kernels.available()``: without numba, on other devices and with
RWS_NUMBA=0 the torch operations serve.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rws import ar_kernels, rng, sfc64

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


def _stream_compare(seed, p, x, idx, ut):
    """x = [u < p] over x [A, n, R], p [A, 1 or n, R], for u the SFC64 stream of
    ``seed`` that ``rng.uniform`` would return (two lattice values a word, in flat
    order), made and used in the same loop; the tail draws' flat indices go to idx and
    their u to ut, in order. Returns their count."""
    A, n, R = x.shape
    per_draw = p.shape[1] != 1
    scale = x.dtype.type(2.0 ** -24)
    lo, hi = np.int32(rng.TAIL_CELLS), np.int32((1 << 24) - rng.TAIL_CELLS)
    a, b, c, w = sfc64.start(seed)
    k1 = np.int32(0)
    f = m = 0
    for i in range(A):
        for j in range(n):
            jp = j if per_draw else 0
            for r in range(R):
                if f % 2 == 0:                   # a word gives the next two values
                    word, a, b, c, w = sfc64.next_word(a, b, c, w)
                    k, k1 = sfc64.lattice_k(word)
                else:
                    k = k1
                u = x.dtype.type(k) * scale
                x[i, j, r] = u < p[i, jp, r]
                if k < lo or k >= hi:            # (a branch taken at 0.2% of the draws)
                    idx[m] = f
                    ut[m] = u
                    m += 1
                f += 1
    return m


def _refine(ut, c, x, idx, v, from_logits):
    """Decide the flat draws idx [m] again, whose uniforms are ut [m], with u' of
    ``ar_kernels.tail_uniform`` (module docstring): c [A, 1 or n, R] holds the logits
    (from_logits) or p."""
    A, n, R = x.shape
    per_draw = c.shape[1] != 1
    for t in range(idx.shape[0]):
        f = idx[t]
        a, j, r = f // (n * R), (f // R) % n, f % R
        lo, hi = tail_uniform(ut[t], v[t])                      # u', 1 - u'
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
    _stream_compare = numba.njit(cache=True, nogil=True)(_stream_compare)
    _refine = numba.njit(cache=True, nogil=True)(_refine)


def _as3(t: torch.Tensor, shape3) -> np.ndarray | None:
    """t as a contiguous [A, 1 or n, R] numpy view for draws of ``shape3`` = (A, n, R)."""
    A, n, R = shape3
    if not t.is_contiguous() or t.numel() not in (A * R, A * n * R):
        return None
    return t.numpy().reshape(A, t.numel() // (A * R), R)


def draw(shape, p: torch.Tensor, generator: torch.Generator | None,
         logits: torch.Tensor | None = None) -> torch.Tensor | None:
    """x = [u < p] for u = ``rng.uniform(shape, generator)``, with the tail draws decided
    again (module docstring), for CPU float32 or float64 p and logits broadcast to
    ``shape`` as [N, 1, ...] or ``shape`` itself; None where another layout needs the
    torch operations, and then nothing is drawn from the generator. A detached tensor.
    Where ``rng.uniform`` takes the numbers from an SFC64 stream they are made inside the
    comparison loop (``_stream_compare``)."""
    shape = tuple(shape)
    n_draws = math.prod(shape)
    if n_draws == 0 or p.dtype not in (torch.float32, torch.float64):
        return None
    if len(shape) >= 2 and p.shape[0] == shape[0] and p.dim() == len(shape) and p.shape[1] == 1:
        shape3 = (shape[0], shape[1], n_draws // (shape[0] * shape[1]))
    elif p.shape == shape:
        shape3 = (1, 1, n_draws)
    else:
        return None
    if logits is not None and logits.shape != p.shape:
        return None
    pp = _as3(p, shape3)
    c = pp if logits is None else _as3(logits, shape3)
    if c is None or pp is None:
        return None
    x = np.empty(shape3, pp.dtype)
    fill(x, pp, c, generator, logits is not None)
    return torch.from_numpy(x).view(shape)


_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def fill(x: np.ndarray, p: np.ndarray, c: np.ndarray, generator: torch.Generator | None,
         from_logits: bool) -> None:
    """``draw``'s work on NumPy arrays of one dtype, float32 or float64: x [A, n, R] <-
    [u < p] with the tail draws decided again, for p [A, 1 or n, R] and c, p's logits
    (from_logits) or p itself; the generator consumed as ``draw`` consumes it."""
    n_draws = x.size
    dtype = _TORCH[x.dtype]
    idx = np.empty(n_draws, np.int64)
    if rng.streamed(n_draws, rng.CPU, dtype):
        ut = np.empty(n_draws, x.dtype)
        m = _stream_compare(rng.stream_seed(generator), p, x, idx, ut)
    else:
        u3 = rng.uniform(x.shape, generator, rng.CPU, dtype).numpy()
        _compare(u3, p, x)
        tail = u3.dtype.type(rng.TAIL_CELLS * 2.0 ** -24)
        m = ar_kernels.tail_search(u3.reshape(-1), tail, 1 - tail, idx)
        ut = u3.reshape(-1)[idx[:m]]
    if m:   # V as rng.tail_uniforms draws it, so both paths consume the same numbers
        v = torch.rand(m, generator=generator, dtype=torch.float64).numpy()
        _refine(ut, c, x, idx[:m], v, from_logits)
