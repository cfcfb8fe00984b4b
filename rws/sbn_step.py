"""An RWS update of a sigmoid belief network on buffers kept from one step to the next.

``rws.sbn_gradients`` gives the RWS gradients of an SBN in closed form (Bornschein &
Bengio, "Reweighted Wake-Sleep", ICLR 2015, Sec. 2-3):

    wake-P,  P layer l:  dW_l = sum_{b,k} w~_bk (h_l - sigmoid(a_l)) h_{l+1}^T
    wake-Q,  Q layer l:  dV_l = sum_{b,k} w~_bk (h_{l+1} - sigmoid(c_l)) h_l^T
    sleep-Q, Q layer l:  dV_l = mean_n (h_{l+1} - sigmoid(c_l)) h_l^T   over dreams ~ p

Each of its steps allocates its tensors afresh, and each call of a compiled kernel
turns its tensors into NumPy arrays and back: at batch 25 an RWS step on SBN 200 ran
some 115 aten operations, 90 of them views, detaches and conversions, and its fixed
time per step (0.84 ms) held a batch-25 epoch at x1.37 of a batch-100 one. Here the
same arithmetic runs on buffers made once per shape (points, dreams), with their NumPy
views made once: the products write into them (``out=``) and the kernels
(``bernoulli_kernel.fill``, ``logprob_kernel.log_prob_rows``,
``weights_kernel.weigh_rows``, ``dlogits_kernel.rows``) read and write the views. The
units of layer l sit in one buffer, the wake rows (the data for l = 0, the K proposals
of each point above) then the dreams', so Q's logits on both come from one product and
its gradient from one G^T y without a concatenation.

The draws, the operations and their order are those of ``sbn_gradients.propose`` and
``add_wake_gradients`` (dreams first, the generator consumed alike), so the gradients,
the weights and log p^ are the same bit for bit (tests check). Gradients are fresh
tensors each step, as there.

``Steps.get`` serves an update where every layer of P and Q is an unclamped SBN (an
``SBNTop`` prior), the data and parameters are float32 on a CPU, numba's kernels are on
(``rws.jit``), no bfloat16 weight gradients are asked for, and no parameter holds a
gradient yet (one pass per update; a second micro-batch adds through
``sbn_gradients``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rws import bernoulli_kernel, bf16, dlogits_kernel, jit, logprob_kernel, weights_kernel
from rws.layers import SBN, SBNTop


def _pair(*shape):
    """A float32 CPU tensor of ``shape`` and its NumPy view."""
    t = torch.empty(shape, dtype=torch.float32)
    return t, t.numpy()


class SBNStep:
    """The buffers of RWS updates of ``model`` (L latent layers) on B points, K
    proposals a point and n dreams.

    Units h_l (h_0 = x): ``hs[l]`` [R_l + n, n_l], R_0 = B and R_l = B K above: the wake
    rows, then the dreams' rows. Q layer l: logits ``qc[l]`` and sigmoids ``qp[l]`` on
    all rows of hs[l], [R_l + n, n_{l+1}]; its G ``Gq[l]`` [(B or B K) + n, n_{l+1}]
    (wake rows summed over K for l = 0, as the K proposals share its logits). P layer
    l < L: logits ``pa[l]`` and sigmoids ``pp[l]`` on the proposals [B K, n_l], its G
    ``Gp[l]``; ``da[l]``, ``dp[l]`` on the dreams [n, n_l]. The top prior: sigmoid(a)
    ``ptop`` [n_L] for the dreams, the kernel's ``stop`` [1, 1, n_L] for the gradient.
    log p_l, log q_l, their sums and w~: [B, K].
    """

    def __init__(self, model, B: int, K: int, n: int):
        self.model, self.B, self.K, self.n = model, B, K, n
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
        self.log_p = [np.empty((B, K), np.float32) for _ in range(L + 1)]
        self.log_q = [np.empty((B, K), np.float32) for _ in range(L)]
        self.log_p_sum, self.log_q_sum, self.w = (np.empty((B, K), np.float32) for _ in "pqw")

    def _units(self, l: int) -> np.ndarray:
        """h_l of the wake rows as the kernels take it: x [B, 1, D], proposals [B, K, n_l]."""
        return self.hs_np[l][:self.R[l]].reshape(self.B, -1, self.sizes[l])

    @torch.no_grad()
    def backward(self, x: torch.Tensor, generator, scale: float = 1.0, wake_q: bool = True,
                 wake_sleep: bool = False):
        """``rws.rws.RWS.backward`` on these buffers: add ``scale`` x the RWS gradient
        (wake-P, wake-Q if ``wake_q``, sleep-Q on the n dreams) of x [B, D] to the
        parameters' (empty) ``.grad``. Returns (every log w < +inf, {"train_ll": the
        minibatch mean of log p^_K(x)}). With ``wake_sleep`` (K = 1, no wake-Q), that of
        ``baselines.wake_sleep.WakeSleep.backward``: the one sample's weight is 1, and
        the update is finite where every log w < +inf and log p > -inf."""
        B, K, n, L, R = self.B, self.K, self.n, self.L, self.R
        hs, hn = self.hs, self.hs_np
        P, Q = list(self.model.p_layers), list(self.model.q_layers)
        top = P[L]
        a_top = top.a.detach().numpy()[None, None]                       # [1, 1, n_L]
        # the dreams, top down (``model.sample_p``)
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
        log_p, log_q = self._total(self.log_p, self.log_p_sum), self._total(self.log_q, self.log_q_sum)
        if wake_sleep:
            self.w.fill(1.0)
            log_p, log_q = torch.from_numpy(log_p), torch.from_numpy(log_q)
            log_w = log_p - log_q
            finite = (log_w < math.inf).all() & (log_p > -math.inf).all()
            train_ll = log_w.mean()
        else:
            total, finite = weights_kernel.weigh_rows(log_p, log_q, self.w)
            finite = torch.tensor(finite)
            train_ll = torch.tensor(total / B - math.log(K), dtype=torch.float64)
        # wake-P, then the prior's bias, then Q (wake and dreams in one G^T y)
        c, w = scale / B, self.w
        for l in range(L):
            db = np.zeros(self.sizes[l], np.float32)
            dlogits_kernel.rows(self.pp_np[l], self._units(l), w, c, self.Gp_np[l], db)
            P[l].W.grad = torch.mm(self.Gp[l].t(), hs[l + 1][:B * K])
            P[l].b.grad = torch.from_numpy(db)
        db = np.zeros(self.sizes[L], np.float32)
        dlogits_kernel.rows(self.stop, self._units(L), w, c, self.G_top, db)
        top.a.grad = torch.from_numpy(db)
        for l in range(L):
            rows = B if l == 0 else B * K
            db = np.zeros(self.sizes[l + 1], np.float32)
            G = self.Gq_np[l]
            if wake_q:
                shape = (B, -1, self.sizes[l + 1])
                dlogits_kernel.rows(self.qp_np[l][:R[l]].reshape(shape), self._units(l + 1),
                                    w, c, G[:rows], db)
            if n:
                r0 = rows if wake_q else 0
                dlogits_kernel.rows(self.qp_np[l][R[l]:][:, None], hn[l + 1][R[l + 1]:][:, None],
                                    None, scale / n, G[r0:r0 + n], db)
            y = hs[l] if wake_q and n else hs[l][:R[l]] if wake_q else hs[l][R[l]:]
            G_rows = (rows if wake_q else 0) + n
            Q[l].W.grad = torch.mm(self.Gq[l][:G_rows].t(), y)
            Q[l].b.grad = torch.from_numpy(db)
        return finite, {"train_ll": train_ll}

    @staticmethod
    def _total(parts: list, out: np.ndarray) -> np.ndarray:
        """parts[0] + parts[1] + ... in order (as ``sbn_gradients.Proposals`` sums them)."""
        if len(parts) == 1:
            return parts[0]
        np.add(parts[0], parts[1], out=out)
        for part in parts[2:]:
            np.add(out, part, out=out)
        return out


class Steps:
    """The ``SBNStep`` buffers of a method's recent shapes. A copy or a pickle of it is
    empty: NumPy views copied apart from their tensors would no longer share memory."""

    KEEP = 4        # shapes kept (an epoch's last, smaller batch adds one)

    def __init__(self):
        self._steps: dict = {}
        self._params: dict = {}        # id(model) -> its parameters, () where not all SBN

    def __deepcopy__(self, memo):
        return Steps()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

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
