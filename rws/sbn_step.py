"""RWS, wake-sleep and VIMCO updates of sigmoid belief networks on buffers kept from
one step to the next.

``rws.sbn_gradients`` gives their gradients in closed form (Bornschein & Bengio,
"Reweighted Wake-Sleep", ICLR 2015, Sec. 2-3; Hinton et al. 1995; Mnih & Rezende 2016),
from K proposals h_k ~ q(h | x) with per-sample weights held constant:

    P layer l:  dW_l = sum_{b,k} wp_bk (h_l - sigmoid(a_l)) h_{l+1}^T
    Q layer l:  dV_l = sum_{b,k} wq_bk (h_{l+1} - sigmoid(c_l)) h_l^T
                     + mean_n (h_{l+1} - sigmoid(c_l)) h_l^T   over dreams (x, h) ~ p

(RWS: wp = wq = w~, the normalised weights; wake-sleep: wp = 1, no wq; VIMCO: w~ and its
learning signal minus w~). Each of its steps allocates its tensors afresh, and each call
of a compiled kernel turns its tensors into NumPy arrays and back: at batch 25 an RWS
step on SBN 200 ran some 115 aten operations, 90 of them views, detaches and
conversions, and its fixed time per step (0.84 ms) held a batch-25 epoch at x1.37 of a
batch-100 one. Here the same arithmetic runs on buffers made once per shape (points,
proposals, dreams), with their NumPy views made once: the products write into them
(``out=``) and the kernels (``bernoulli_kernel.fill``, ``logprob_kernel.log_prob_rows``,
``dlogits_kernel.rows``) read and write the views. The units of layer l sit in one
buffer, the wake rows (the data for l = 0, the K proposals of each point above) then the
dreams', so Q's logits on both come from one product and its gradient from one G^T y
without a concatenation. RWS K = 5 on SBN 200, one thread, the two paths alternating in
one process: batch 25 2.22 -> 1.99 ms, batch 100 6.73 -> 6.51 ms.

``SBNStep.propose`` and ``add_wake_gradients`` draw, compute and order as their
namesakes in ``sbn_gradients`` (the dreams first, the generator consumed alike), so the
draws, log p, log q and the gradients are the same bit for bit (tests check). Gradients
are fresh tensors each step, as there.

``Steps.get`` serves an update where every layer of P and Q is an unclamped SBN (an
``SBNTop`` prior), the data and parameters are float32 on a CPU, numba's kernels are on
(``rws.jit``), no bfloat16 weight gradients are asked for, and no parameter holds a
gradient yet (one pass per update; a second micro-batch adds through
``sbn_gradients``).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from rws import bernoulli_kernel, bf16, dlogits_kernel, jit, logprob_kernel, sbn_gradients
from rws.layers import SBN, SBNTop


def _pair(*shape):
    """A float32 CPU tensor of ``shape`` and its NumPy view."""
    t = torch.empty(shape, dtype=torch.float32)
    return t, t.numpy()


class SBNStep:
    """The buffers of updates of ``model`` (L latent layers) on B points, K proposals a
    point and n dreams.

    Units h_l (h_0 = x): ``hs[l]`` [R_l + n, n_l], R_0 = B and R_l = B K above: the wake
    rows, then the dreams' rows. Q layer l: logits ``qc[l]`` and sigmoids ``qp[l]`` on
    all rows of hs[l], [R_l + n, n_{l+1}]; its G ``Gq[l]`` [(B or B K) + n, n_{l+1}]
    (wake rows summed over K for l = 0, as the K proposals share its logits). P layer
    l < L: logits ``pa[l]`` and sigmoids ``pp[l]`` on the proposals [B K, n_l], its G
    ``Gp[l]``; ``da[l]``, ``dp[l]`` on the dreams [n, n_l]. The top prior: sigmoid(a)
    ``ptop`` [n_L] for the dreams, the kernel's ``stop`` [1, 1, n_L] for the gradient.
    log p_l, log q_l and their sums: [B, K].
    """

    def __init__(self, model, B: int, K: int, n: int):
        self.B, self.K, self.n = B, K, n
        self.P, self.Q = list(model.p_layers), list(model.q_layers)   # (layers fixed)
        self.L = L = len(model.q_layers)
        self.sizes = sizes = [model.q_layers[0].n_y] + [q.n_x for q in model.q_layers]
        self.R = R = [B] + [B * K] * L
        self.hs, self.hs_np = zip(*(_pair(R[l] + n, sizes[l]) for l in range(L + 1)))
        self.qc, self.qc_np = zip(*(_pair(R[l] + n, sizes[l + 1]) for l in range(L)))
        self.qp, self.qp_np = zip(*(_pair(R[l] + n, sizes[l + 1]) for l in range(L)))
        self.Gq, self.Gq_np = zip(*(_pair((B if l == 0 else B * K) + n, sizes[l + 1])
                                    for l in range(L)))
        self.pa, self.pa_np = zip(*(_pair(B * K, sizes[l]) for l in range(L)))
        self.pp_np = [np.empty((B, K, sizes[l]), np.float32) for l in range(L)]
        self.Gp, self.Gp_np = zip(*(_pair(B * K, sizes[l]) for l in range(L)))
        self.da, self.da_np = zip(*(_pair(n, sizes[l]) for l in range(L)))
        self.dp, self.dp_np = zip(*(_pair(n, sizes[l]) for l in range(L)))
        self.ptop, self.ptop_np = _pair(sizes[L])
        self.stop = np.empty((1, 1, sizes[L]), np.float32)
        self.G_top = np.empty((B, sizes[L]), np.float32)     # (summed; only db is kept)
        self.log_p_t, self.log_p_sum = _pair(B, K)
        self.log_q_t, self.log_q_sum = _pair(B, K)
        self.log_p = [np.empty((B, K), np.float32) for _ in range(L + 1)]
        self.log_q = [np.empty((B, K), np.float32) for _ in range(L)] if L > 1 else [self.log_q_sum]

    def _units(self, l: int) -> np.ndarray:
        """h_l of the wake rows as the kernels take it: x [B, 1, D], proposals [B, K, n_l]."""
        return self.hs_np[l][:self.R[l]].reshape(self.B, -1, self.sizes[l])

    @torch.no_grad()
    def propose(self, x: torch.Tensor, generator):
        """``sbn_gradients.propose`` on these buffers, the n dreams drawn first (as
        ``model.sample_p``): x [B, D] -> (log p(x, h), log q(h | x)) [B, K], views of
        the buffers that the next call overwrites."""
        B, K, n, L, R, P, Q = self.B, self.K, self.n, self.L, self.R, self.P, self.Q
        hs, hn = self.hs, self.hs_np
        top = P[L]
        a_top = top.a.detach().numpy()[None, None]                       # [1, 1, n_L]
        # the dreams, top down
        if n:
            torch.sigmoid(top.a, out=self.ptop)
            bernoulli_kernel.fill(hn[L][R[L]:].reshape(1, n, -1), self.ptop_np[None, None],
                                  a_top, generator, True)
            for l in reversed(range(L)):
                torch.addmm(P[l].b, hs[l + 1][R[l + 1]:], P[l].W.t(), out=self.da[l])
                torch.sigmoid(self.da[l], out=self.dp[l])
                bernoulli_kernel.fill(hn[l][R[l]:].reshape(n, 1, -1), self.dp_np[l][:, None],
                                      self.da_np[l][:, None], generator, True)
        hs[0][:B].copy_(x)
        # the proposals, bottom up; Q's logits on the wake rows and the dreams at once
        for l in range(L):
            torch.addmm(Q[l].b, hs[l], Q[l].W.t(), out=self.qc[l])
            torch.sigmoid(self.qc[l], out=self.qp[l])
            rows = B if l == 0 else B * K                 # K draws a row on the data
            shape = (rows, -1, self.sizes[l + 1])
            c3, p3 = self.qc_np[l][:rows].reshape(shape), self.qp_np[l][:rows].reshape(shape)
            h3 = hn[l + 1][:B * K].reshape(shape)
            bernoulli_kernel.fill(h3, p3, c3, generator, True)
            logprob_kernel.log_prob_rows(c3, h3, self.log_q[l].reshape(rows, -1))
        for l in range(L):
            torch.addmm(P[l].b, hs[l + 1][:B * K], P[l].W.t(), out=self.pa[l])
            logprob_kernel.log_prob_rows(self.pa_np[l].reshape(B, K, -1), self._units(l),
                                         self.log_p[l], self.pp_np[l])
        logprob_kernel.log_prob_rows(a_top, hn[L][:B * K].reshape(1, B * K, -1),
                                     self.log_p[L].reshape(1, -1), self.stop)
        for parts, out in ((self.log_p, self.log_p_sum), (self.log_q, self.log_q_sum)):
            if len(parts) > 1:            # parts[0] + parts[1] + ... in order, as there
                np.add(parts[0], parts[1], out=out)
                for part in parts[2:]:
                    np.add(out, part, out=out)
        return self.log_p_t, self.log_q_t

    @torch.no_grad()
    def add_wake_gradients(self, p_weights: torch.Tensor, q_weights=None,
                           scale: float = 1.0) -> None:
        """``sbn_gradients.add_wake_gradients`` after ``propose``: set ``.grad`` to the
        gradient of -(scale / B) sum_{b,k} [p_weights_bk log p(x_b, h_bk) + q_weights_bk
        log q(h_bk | x_b)], weights [B, K] held constant (``q_weights`` None: no wake-Q
        term), plus the sleep-Q loss -(scale / n) sum log q(h | x) over the dreams."""
        B, K, n, L, R, P, Q = self.B, self.K, self.n, self.L, self.R, self.P, self.Q
        hs, hn = self.hs, self.hs_np
        c, w = scale / B, p_weights.detach().contiguous().numpy()
        # wake-P, then the prior's bias, then Q (wake and dreams in one G^T y)
        for l in range(L):
            db = np.zeros(self.sizes[l], np.float32)
            dlogits_kernel.rows(self.pp_np[l], self._units(l), w, c, self.Gp_np[l], db)
            P[l].W.grad = torch.mm(self.Gp[l].t(), hs[l + 1][:B * K])
            P[l].b.grad = torch.from_numpy(db)
        db = np.zeros(self.sizes[L], np.float32)
        dlogits_kernel.rows(self.stop, self._units(L), w, c, self.G_top, db)
        P[L].a.grad = torch.from_numpy(db)
        wq = None if q_weights is None else q_weights.detach().contiguous().numpy()
        for l in range(L):
            if wq is None and not n:
                continue                  # (Q untouched, as there)
            rows = B if l == 0 else B * K         # G's wake rows: summed over K on the data
            r0 = 0 if wq is None else rows        # G's first dream row
            db = np.zeros(self.sizes[l + 1], np.float32)
            G = self.Gq_np[l]
            if wq is not None:
                shape = (B, -1, self.sizes[l + 1])
                dlogits_kernel.rows(self.qp_np[l][:R[l]].reshape(shape), self._units(l + 1),
                                    wq, c, G[:rows], db)
            if n:
                dlogits_kernel.rows(self.qp_np[l][R[l]:][:, None], hn[l + 1][R[l + 1]:][:, None],
                                    None, scale / n, G[r0:r0 + n], db)
            y = hs[l] if wq is not None else hs[l][R[l]:]     # the rows G's terms cover
            Q[l].W.grad = torch.mm(self.Gq[l][:r0 + n].t(), y)
            Q[l].b.grad = torch.from_numpy(db)


class Steps:
    """The ``SBNStep`` buffers of a method's recent shapes. A copy or a pickle of it is
    empty: NumPy views copied apart from their tensors would no longer share memory."""

    KEEP = 4        # shapes kept (an epoch's last, smaller batch adds one)

    def __init__(self):
        self._steps: dict = {}
        self._params: dict = {}        # id(model) -> its parameters, () where not all SBN

    def __reduce__(self):                      # (copy.deepcopy and pickle alike)
        return Steps, ()

    def propose(self, model, x: torch.Tensor, K: int, n: int, generator):
        """K proposals per point of x [B, D] after n dreams: (log p(x, h), log q(h | x)
        [B, K], add(p_weights, q_weights=None, scale=1.0), which adds the gradient of
        ``sbn_gradients.add_wake_gradients``), on kept buffers where they serve, else
        through ``sbn_gradients``."""
        step = self.get(model, x, K, n)
        if step is not None:
            return (*step.propose(x, generator), step.add_wake_gradients)
        dreams = model.sample_p(n, generator) if n else None
        props = sbn_gradients.propose(model, x, K, generator, dreams)
        return props.log_p, props.log_q, partial(sbn_gradients.add_wake_gradients, model, props)

    def get(self, model, x: torch.Tensor, K: int, n: int) -> SBNStep | None:
        """The buffers for x [B, D] with K proposals and n dreams, or None where they do
        not serve (module docstring)."""
        params = self._params.get(id(model))     # (its list: model.parameters() took 10 us)
        if params is None:
            params = self._params[id(model)] = list(model.parameters()) if _sbn_only(model) else ()
        if not (params and jit.kernels_on() and not bf16.enabled() and x.dim() == 2
                and x.dtype == torch.float32 and x.is_cpu):
            return None
        for p in params:
            if p.grad is not None or p.dtype != torch.float32 or not p.is_cpu:
                return None
        key = (id(model), x.shape[0], K, n)
        step = self._steps.get(key)
        if step is None:
            if len(self._steps) >= self.KEEP:
                self._steps.pop(next(iter(self._steps)))
            step = self._steps[key] = SBNStep(model, x.shape[0], K, n)
        return step


def _sbn_only(model) -> bool:
    """Every layer of P an SBN (an SBNTop on top) and of Q an SBN, none clamped."""
    *p_layers, top = model.p_layers
    return (type(top) is SBNTop and not top.clamp
            and all(type(layer) is SBN and not layer.clamp
                    for layer in (*p_layers, *model.q_layers)))
