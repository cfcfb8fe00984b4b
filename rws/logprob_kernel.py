"""Bernoulli log-probabilities of logits as one compiled CPU pass per row (numba):

    log p(x | a) = sum_i [x_i a_i - softplus(a_i)],
    softplus(a)  = max(a, 0) + log(1 + e^-|a|)

In torch the sum of softplus alone is eight passes over the logits (``layers.bernoulli.
softplus_sum``: the ReLU sum, |a|, a scaling, exp2, +1, pairwise products, log, sum)
and x . a two more. Here softplus is one loop over a row: e^-|a_i| by
``ar_kernels.exp2_32`` (a polynomial that vectorises, relative error about 2e-7), the
factors 1 + e^-|a_i| in (1, 2] multiplied in float64 (up to ``BLOCK`` of them cannot
overflow) with one logarithm per block, and the ReLU sum accumulated in float64; x . a
is a second loop over the row while it is in cache (fusing the two measured 4% faster,
not worth a second copy of the loop). The float64 sums make the result closer to the
exact one than torch's float32 reductions. Where logits are shared by n values (Q's
first layer: one row of logits per point, K samples) softplus runs once per row of
logits; where one value is scored under n rows of logits (P's first layer: the data
point under its K proposals) x is read once per point.

One thread, float32 (benchmarks/NOTES.md): softplus_sum of [125, 784] logits 116 -> 53
us, of [1024, 784] (an evaluation's pass) 1,470 -> 403 us; the log-probability of
[25, 5, 784] logits against [25, 1, 784] data 126 -> 65 us. An SBN 200 RWS step
x1.07 at batch 25 and x1.11 at batch 100, DARN 200's x1.05 at batch 25; K = 5,000
evaluations x1.23 (SBN 200), x1.25 (the deep SBN) and x1.12 (NADE/NADE).

Under the original code's clamped sigmoid p = 0.9999 sigmoid(a) + 5e-6 (the UCI
models), each unit contributes log q_i with q_i = p_i or 1 - p_i, both >= 5e-6: the
loop multiplies them in float64 blocks of ``CLAMP_BLOCK``, sets each block's binary
exponent aside (frexp) and takes one logarithm a row, with 1 - p from e^-|a| directly.
Against the float32 torch operations: about 100 times closer to the float64 values
(torch's p resolves the smallest 1 - p, 9.5e-5, to 6e-4 only), [1024, 126] 382 -> 190
us, [25, 5, 784] 258 -> 131 us; K = 10,000 evaluations of a clamped SBN 200 on
connect4 x1.25, of adult's NADE/NADE x1.05.

float32 only (float64 and the rest go to torch). Non-finite logits give what torch
gives: NaN from a NaN logit, or where x = 0 meets an infinite one (0 * inf), and
softplus(+inf) = inf, softplus(-inf) = 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rws import ar_kernels

numba = ar_kernels.numba
available = ar_kernels.available
BLOCK = 1000      # 1 + e^-|a| <= 2: a float64 product of 1,000 stays below 2^1000
_ZERO, _ONE = np.float32(0), np.float32(1)
_NEG_LOG2_E, _LOW = np.float32(-1 / math.log(2)), np.float32(-125)
CLAMP_BLOCK = 48  # clamped factors >= 5e-6: a float64 product of 48 stays above 1e-255
_CLAMP_TOP = 1 - 0.9999 - 5e-6    # 1 - the clamped sigmoid's largest value
_LN2 = math.log(2)


def _exp_neg_abs(v):
    """e^-|v|, float32 (``ar_kernels.exp2_32``; 2^-125 below e^-86.6)."""
    return ar_kernels.exp2_32(max(abs(v) * _NEG_LOG2_E, _LOW))


def _softplus_block(a, s):
    """sum_i softplus(a_i) over a [D <= BLOCK], in float64 (module docstring); and
    s = sigmoid(a) where s is not empty."""
    store = s.shape[0] > 0
    relu, prod = 0.0, 1.0
    for i in range(a.shape[0]):
        v = a[i]
        e = _exp_neg_abs(v)
        relu += np.float64(max(v, _ZERO))         # (NaN stays NaN: no nnan flag)
        prod *= 1.0 + np.float64(e)
        if store:
            s[i] = (_ONE if v >= _ZERO else e) / (_ONE + e)
    return relu + math.log(prod)


def _clamped_block(a, x):
    """(prod_i q_i, NaN logits) over a, x [D <= CLAMP_BLOCK] for the clamped sigmoid
    p = 0.9999 sigmoid(a) + 5e-6, q = p where x = 1 and 1 - p where x = 0, in float64:
    1 - p = 0.9999 sigmoid(-a) + (1 - 0.9999 - 5e-6) from e^-|a| directly, not from p
    (whose float32 rounding is 6e-4 of the smallest 1 - p). Each q >= 5e-6, so a float64
    product of ``CLAMP_BLOCK`` of them cannot underflow."""
    prod, nans = 1.0, 0
    for i in range(a.shape[0]):
        v = a[i]
        e = np.float64(_exp_neg_abs(v))
        hi = 1.0 / (1.0 + e)                            # sigmoid(|a|)
        on = x[i] != _ZERO
        # q = 0.9999 sigmoid(z) + (5e-6 or 1 - 0.9999 - 5e-6) with z = a or -a: z >= 0
        # where a's sign and x agree, and then sigmoid(z) = sigmoid(|a|)
        prod *= 0.9999 * (hi if (v >= _ZERO) == on else e * hi) + (5e-6 if on else _CLAMP_TOP)
        nans += v != v
    return prod, nans


def _clamped_row(a, x):
    """sum_i log q_i over the rows a, x [D] (``_clamped_block``): the blocks' products
    multiplied with their binary exponents set aside (frexp), one logarithm a row."""
    mantissa, exponent, nans = 1.0, 0, 0
    for b in range(0, a.shape[0], CLAMP_BLOCK):
        prod, n = _clamped_block(a[b:b + CLAMP_BLOCK], x[b:b + CLAMP_BLOCK])
        mantissa, k = math.frexp(mantissa * prod)
        exponent += k
        nans += n
    return math.log(mantissa) + exponent * _LN2 if nans == 0 else math.nan


def _softplus_sum(a, s):
    """``_softplus_block`` over a row a [D] (and s), in blocks of ``BLOCK`` (one loop
    that vectorises each)."""
    if a.shape[0] <= BLOCK:
        return _softplus_block(a, s)
    total = 0.0
    for b in range(0, a.shape[0], BLOCK):
        total += _softplus_block(a[b:b + BLOCK], s[b:b + BLOCK])
    return total


def _dot(a, x):
    """x . a over the rows a, x [D], in float64."""
    dot = 0.0
    for i in range(a.shape[0]):
        dot += np.float64(x[i] * a[i])
    return dot


def _softplus_rows(a, out):
    """out[r] = sum_i softplus(a[r, i]) for a [N, D]."""
    none = np.empty(0, a.dtype)
    for r in range(a.shape[0]):
        out[r] = _softplus_sum(a[r], none)


def _log_prob_rows(a, x, out, s, clamp):
    """out[i, j] = log p(x[i, j or 0] | a[i, j or 0]) for a [A, 1 or n, D] and
    x [A, 1 or n, D] (the side with 1 broadcast), out [A, n]; and s = sigmoid(a) where
    s [A, 1 or n, D] is not empty (not with ``clamp``, the clamped sigmoid's)."""
    A, n = out.shape
    none = np.empty(0, a.dtype)
    for i in range(A):
        if clamp:
            for j in range(n):
                out[i, j] = _clamped_row(a[i, 0 if a.shape[1] == 1 else j],
                                         x[i, 0 if x.shape[1] == 1 else j])
        elif a.shape[1] == 1 and n > 1:          # one row of logits, n values
            sp = _softplus_sum(a[i, 0], s[i, 0] if s.size else none)
            for j in range(n):
                out[i, j] = _dot(a[i, 0], x[i, j]) - sp
        else:
            for j in range(n):
                aj = a[i, j]
                out[i, j] = (_dot(aj, x[i, 0 if x.shape[1] == 1 else j])
                             - _softplus_sum(aj, s[i, j] if s.size else none))


if numba is not None:
    # reassociation lets the sums and the product vectorise; no nnan/ninf, so a
    # non-finite logit still reaches the result
    _flags = {"reassoc", "contract", "nsz", "arcp"}
    _row = numba.njit(fastmath=_flags, error_model="numpy", cache=True, inline="always")
    _exp_neg_abs = _row(_exp_neg_abs)
    _softplus_block, _softplus_sum, _dot = _row(_softplus_block), _row(_softplus_sum), _row(_dot)
    _clamped_block, _clamped_row = _row(_clamped_block), _row(_clamped_row)
    _loop = numba.njit(fastmath=_flags, error_model="numpy", cache=True, nogil=True)
    _softplus_rows, _log_prob_rows = _loop(_softplus_rows), _loop(_log_prob_rows)


def usable(*ts: torch.Tensor) -> bool:
    """Whether the kernel may serve tensors ts, gradients aside: float32, on the CPU,
    with numba."""
    return available() and all(t.device.type == "cpu" and t.dtype == torch.float32
                               for t in ts)


def _usable(*ts: torch.Tensor) -> bool:
    """``usable``, and no gradient to record (``layers.bernoulli`` wraps that case)."""
    return usable(*ts) and not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def softplus_sum(a: torch.Tensor) -> torch.Tensor | None:
    """sum_i softplus(a_i) over the last axis, [..., D] -> [...], float32; None where
    the kernel does not apply (not a float32 CPU tensor, a gradient to record, no
    numba)."""
    if not _usable(a) or a.numel() == 0:
        return None
    a2 = a.reshape(-1, a.shape[-1]).contiguous().numpy()
    out = np.empty(a2.shape[0], np.float32)
    _softplus_rows(a2, out)
    if ar_kernels.on_work is not None:           # one exponential per logit
        ar_kernels._count(0, a2.size)
    return torch.from_numpy(out).view(a.shape[:-1])


def log_prob(a: torch.Tensor, x: torch.Tensor, probs: bool = False, clamp: bool = False):
    """sum_i log Bern(x_i | sigmoid(a_i)) over the last axis, a and x broadcast:
    [..., D] -> [...], float32; with ``probs`` also sigmoid(a) in a's shape (from the
    same exponentials), the pair; with ``clamp`` under the original code's clamped
    sigmoid 0.9999 sigmoid(a) + 5e-6 (``layers.bernoulli.bernoulli_log_prob``; not with
    probs). The kernel takes the layouts where, after the leading dims that a and x
    share, one of them has only 1s (logits or value once per point); None for any other
    layout and where ``softplus_sum`` gives None."""
    if not _usable(a, x) or a.shape[-1] != x.shape[-1] or (probs and clamp):
        return None
    nd = max(a.dim(), x.dim()) - 1
    pa = (1,) * (nd + 1 - a.dim()) + tuple(a.shape[:-1])
    px = (1,) * (nd + 1 - x.dim()) + tuple(x.shape[:-1])
    k = 0                                        # the leading dims both have
    while k < nd and pa[k] == px[k]:
        k += 1
    if all(d == 1 for d in pa[k:]):
        lead = px
    elif all(d == 1 for d in px[k:]):
        lead = pa
    else:
        return None
    A, n, D = math.prod(lead[:k]), math.prod(lead[k:]), a.shape[-1]
    if A * n * D == 0:
        return None
    out = np.empty((A, n), np.float32)
    a3 = a.contiguous().numpy().reshape(A, -1, D)
    s = np.empty(a3.shape, np.float32) if probs else None
    log_prob_rows(a3, x.contiguous().numpy().reshape(A, -1, D), out, s, clamp)
    out = torch.from_numpy(out).view(lead)
    return (out, torch.from_numpy(s).view(a.shape)) if probs else out


_NO_PROBS = np.empty((0, 0, 0), np.float32)


def log_prob_rows(a3: np.ndarray, x3: np.ndarray, out: np.ndarray, probs=None,
                  clamp: bool = False) -> None:
    """``log_prob``'s kernel on float32 NumPy arrays in its layout: out [A, n] <- the
    sums over rows of a3 and x3 ([A, 1 or n, D] each); probs (a3's shape, or None)
    <- sigmoid(a3)."""
    _log_prob_rows(a3, x3, out, _NO_PROBS if probs is None else probs, clamp)
    if ar_kernels.on_work is not None:           # one exponential per logit
        ar_kernels._count(0, a3.size)
