"""dL/da of sigmoid belief layers and its bias sum, in one compiled CPU pass (numba).

A Bernoulli unit with logit a has d/da log Bern(h | sigmoid(a)) = h - sigmoid(a), so a
weighted loss -sum_s w_s log p(h_s | a) has (Bornschein & Bengio, "Reweighted
Wake-Sleep", ICLR 2015, Sec. 2-3; ``rws.sbn_gradients``)

    G[r, j]  = c sum_s w[r, s] (sigmoid(a_r)_j - h[r, s, j])     (S samples share a_r)
    db[j]    = sum_r G[r, j]

with c the loss's scale (1 / B for a minibatch mean). In torch that is a subtraction, a
multiplication, a sum over s where samples share their logits, a concatenation of the
wake and sleep terms, and a sum over rows, each a pass over memory and a few
microseconds of dispatch. Here each term is one pass that writes its rows of G and adds
them to db, in G's dtype with torch's roundings of each operation (the sums' order may
differ). On SBN 200's RWS step (K = 5, one thread) the G and bias sums of a step took
0.20 ms at batch 100 and 0.10 ms at batch 25, against 0.47 and 0.18 ms for the torch
operations of ``sbn_gradients._dlogits``' fallback.
"""
from __future__ import annotations

import numpy as np
import torch

from rws import ar_kernels

numba = ar_kernels.numba


def rows(p, h, w, c, G, db):
    """One term of ``dlogits`` on NumPy arrays: G <- (p - h) c w over [R, S, n] (p and h
    [R or 1, S or 1, n], broadcast from one row or one s), G's rows [R * S, n] or, where
    G has R rows, summed over s in order; w [R, S], None: every w = 1; db[j] += each
    G[:, j] in row order. All in G's dtype, each operation rounded as torch rounds the
    same ones ((p - h) * (w * c), c rounded to G's dtype first)."""
    n = G.shape[1]
    R = max(p.shape[0], h.shape[0])
    S = max(p.shape[1], h.shape[1])
    summed = G.shape[0] == R and S > 1
    cc = G.dtype.type(c)
    for r in range(R):
        for s in range(S):
            ws = cc if w is None else G.dtype.type(w[r, s] * cc)
            pr = p[r if p.shape[0] > 1 else 0, s if p.shape[1] > 1 else 0]
            hr = h[r if h.shape[0] > 1 else 0, s if h.shape[1] > 1 else 0]
            if not summed:
                g_row = G[r * S + s]
                for j in range(n):
                    v = (pr[j] - hr[j]) * ws
                    g_row[j] = v
                    db[j] += v
                continue
            g_row = G[r]
            if s == 0:
                for j in range(n):
                    g_row[j] = (pr[j] - hr[j]) * ws
            elif s < S - 1:
                for j in range(n):
                    g_row[j] += (pr[j] - hr[j]) * ws
            else:
                for j in range(n):
                    v = g_row[j] + (pr[j] - hr[j]) * ws
                    g_row[j] = v
                    db[j] += v


if numba is not None:
    rows = numba.njit(cache=True, nogil=True)(rows)


_DTYPES = (torch.float32, torch.float64)


def dlogits(terms, n: int):
    """(G, db [n]) for terms (p, h, w, c, summed): p and h [R or 1, S or 1, n], w [R, S]
    or None, c a number; each term's G = c w (p - h), as [R * S, n] or summed over s
    ([R, n]), stacked in the order of the terms; db the sum of G's rows. None where the
    kernel does not serve: numba off, not a CPU, or not float32 or float64 alike. The
    tensors hold no gradient to record (the callers run under no_grad); strided ones are
    read as they are. (Few checks: a fuller set took 7 of the 11 us that a call cost.)"""
    dtype = terms[0][0].dtype
    if dtype not in _DTYPES or terms[0][0].device.type != "cpu" or not ar_kernels.available():
        return None
    arrays, n_rows = [], 0
    for p, h, w, c, summed in terms:
        if p.dtype != dtype or h.dtype != dtype or (w is not None and w.dtype != dtype):
            return None
        R = max(p.shape[0], h.shape[0])
        R_G = R if summed else R * max(p.shape[1], h.shape[1])
        arrays.append((p.numpy(), h.numpy(), None if w is None else w.numpy(), c, n_rows, R_G))
        n_rows += R_G
    G = np.empty((n_rows, n), arrays[0][0].dtype)
    db = np.zeros(n, G.dtype)
    for p, h, w, c, r0, R_G in arrays:
        rows(p, h, w, c, G[r0:r0 + R_G], db)
    return torch.from_numpy(G), torch.from_numpy(db)

