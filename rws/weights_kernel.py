"""Self-normalised importance weights of K proposals, in one compiled CPU pass (numba).

From log p(x_b, h_bk) and log q(h_bk | x_b) [B, K], with log w_bk = log p - log q:

    w~_bk          = exp(log w_bk - m_b) / sum_j exp(log w_bj - m_b),  m_b = max_j log w_bj
    log p^_K(x_b)  = m_b + log sum_j exp(log w_bj - m_b) - log K
    finite         = every log w_bk < +inf

(Bornschein & Bengio, "Reweighted Wake-Sleep", ICLR 2015, Sec. 3: the normalised
weights of wake-P and wake-Q, and the K-sample estimate of log p(x)). In torch these are
some fifteen operations on a [B, K] tensor (``rws.rws.weigh``): a subtraction, the
softmax and its all -inf guard, the finiteness check, the logsumexp, the mean and its
conversion, each a few microseconds of dispatch on 125 numbers (43 us alone at [25, 5]).
An RWS step on SBN 200 (K = 5, one thread, alternating processes) 2.33 -> 2.25 ms at
batch 25 and 6.49 -> 6.40 ms at batch 100 (benchmarks/NOTES.md).

Non-finite weights give what the torch operations give: a row whose log w are all -inf
(no proposal possible under p) has weights 0 and log p^ = -inf; a row with a NaN has NaN
weights and log p^; a row with +inf (and no NaN) has NaN weights and log p^ = +inf. The
exponentials and sums are float64, each weight rounded once, and the estimate's mean is
summed in float64 (torch's softmax and mean work in float32).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rws import ar_kernels

numba = ar_kernels.numba


def _weigh_rows(log_p, log_q, w):
    """w <- the normalised weights of the rows of log_p - log_q [B, K]; returns (the sum
    over rows of log sum_k exp(log w_bk), float64; whether every log w < +inf). No
    fastmath: the infinities and NaNs are IEEE. log w is rounded to w's dtype, as torch's
    subtraction rounds it."""
    B, K = log_p.shape
    total = 0.0
    finite = True
    for b in range(B):
        m = -np.inf
        nan = False
        for k in range(K):
            lw = log_p[b, k] - log_q[b, k]
            w[b, k] = lw
            if not lw < np.inf:
                finite = False
            if lw != lw:
                nan = True
            elif lw > m:
                m = lw
        if nan or m == np.inf:       # torch's softmax: NaN; its logsumexp: NaN or +inf
            for k in range(K):
                w[b, k] = np.nan
            total += np.nan if nan else np.inf
        elif m == -np.inf:           # no proposal possible: weight 0, log p^ = -inf
            for k in range(K):
                w[b, k] = 0.0
            total += -np.inf
        else:                        # in float64, each weight rounded once
            s = 0.0
            for k in range(K):
                s += np.exp(np.float64(w[b, k]) - m)
            for k in range(K):
                w[b, k] = np.exp(np.float64(w[b, k]) - m) / s
            total += m + np.log(s)
    return total, finite


if numba is not None:
    _weigh_rows = numba.njit(cache=True, nogil=True)(_weigh_rows)


def usable(log_p: torch.Tensor, log_q: torch.Tensor) -> bool:
    """Whether the kernel serves these [B, K] tensors: CPU, float32 or float64 alike,
    numba on, nothing to differentiate."""
    return (ar_kernels.available() and log_p.device.type == "cpu" and log_p.dim() == 2
            and log_p.dtype in (torch.float32, torch.float64)
            and log_q.dtype == log_p.dtype and log_q.shape == log_p.shape
            and log_q.device.type == "cpu" and log_p.numel() > 0)


def weigh(log_p: torch.Tensor, log_q: torch.Tensor):
    """(w~ [B, K], mean_b log p^_K(x_b) as a float64 number, every log w < +inf) from
    log p and log q [B, K] (read detached), or None where ``usable`` says no."""
    if not usable(log_p, log_q):
        return None
    p, q = log_p.detach().contiguous().numpy(), log_q.detach().contiguous().numpy()
    w = np.empty(p.shape, p.dtype)
    total, finite = _weigh_rows(p, q, w)
    return torch.from_numpy(w), total / p.shape[0] - math.log(p.shape[1]), finite
