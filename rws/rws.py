"""Reweighted Wake-Sleep (Bornschein & Bengio, "Reweighted Wake-Sleep", ICLR 2015).

For a data point x draw K proposals h_k ~ q(h | x) (no gradient through the samples),
with log weights log w_k = log p(x, h_k) - log q(h_k | x) and normalised weights
w~_k = softmax_k(log w_k), treated as constants. The estimators (ascent directions):

    wake-P:   g_theta = sum_k w~_k grad_theta log p(x, h_k)
              -> grad_theta log p(x) as K grows (self-normalised IS, O(1/K) bias)
    wake-Q:   g_phi   = sum_k w~_k grad_phi log q(h_k | x)
              -> -grad_phi KL(p(h|x) || q(h|x))
    sleep-Q:  g_phi   = grad_phi log q(h | x),  (x, h) ~ p(x, h)  ("dreams")
              unbiased for grad_phi E_p(x,h) log q(h | x)

Their surrogate losses (to minimise, averaged over the minibatch):

    wake-P   -sum_k sg[w~_k] log p_k          (gradient of -log p^_K(x) in theta)
    wake-Q   -sum_k sg[w~_k] log q_k
    sleep-Q  -log q(h_dream | x_dream)

log p depends on theta only and log q on phi only, so one backward pass gives both
gradients, and one softmax gives the weights of both. The minibatch estimate of
log p^_K(x) is reported separately (``log_px_estimate``).
"""
from __future__ import annotations

import math
import warnings

import torch

from rws import sbn_gradients, sbn_step, weights_kernel
from rws.errors import UserError
from rws.methods import Method, bounded_gradient, sleep_phi_loss


def normalized_weights(log_w: torch.Tensor) -> torch.Tensor:
    """softmax over the K axis of log_w [B, K], detached; rows whose weights are all
    -inf (every proposal impossible under p) get zero weight instead of NaN (a NaN
    log weight stays NaN, so that the step is seen to be non-finite)."""
    log_w = log_w.detach()
    w = torch.softmax(log_w, dim=1)
    return torch.where((log_w == -math.inf).all(1, keepdim=True), torch.zeros_like(w), w)


def _weighted(w: torch.Tensor, log_term: torch.Tensor) -> torch.Tensor:
    """-sum_k w_k log_term_k: [B, K] -> [B]; proposals of weight 0 (log w = -inf, where
    log_term may be infinite) contribute neither value nor gradient."""
    return -(w * torch.where(w > 0, log_term, 0.0)).sum(1)


def wake_theta_loss(log_p: torch.Tensor, log_q: torch.Tensor,
                    w: torch.Tensor | None = None) -> torch.Tensor:
    """-sum_k sg[w~_k] log p(x, h_k) per point: [B, K] -> [B]. Its gradient is the wake-P
    direction -sum_k w~_k grad_theta log p(x, h_k) (also the gradient of -log p^_K(x)
    with log q held fixed). w: the normalised weights, if already computed."""
    return _weighted(normalized_weights(log_p - log_q) if w is None else w, log_p)


def wake_phi_loss(log_p: torch.Tensor, log_q: torch.Tensor,
                  w: torch.Tensor | None = None) -> torch.Tensor:
    """-sum_k sg[w~_k] log q(h_k | x) per point: [B, K] -> [B]."""
    return _weighted(normalized_weights(log_p - log_q) if w is None else w, log_q)


def log_px_estimate(log_w: torch.Tensor) -> torch.Tensor:
    """log p^_K(x) = logsumexp_k(log w_k) - log K from log w = log p - log q: [B, K] ->
    [B], detached."""
    return torch.logsumexp(log_w.detach(), dim=1) - math.log(log_w.shape[1])


def weigh(log_p: torch.Tensor, log_q: torch.Tensor):
    """(w~ [B, K] detached, the minibatch mean of log p^_K(x) [] float64, whether every
    log w < +inf [] bool) from log p and log q [B, K]: ``normalized_weights``,
    ``log_px_estimate`` and the finiteness of the loss, in one compiled pass where
    ``rws.weights_kernel`` serves (CPU), else in torch."""
    out = weights_kernel.weigh(log_p, log_q)
    if out is not None:
        w, ll, finite = out
        return w, torch.tensor(ll, dtype=torch.float64), torch.tensor(finite)
    log_w = (log_p - log_q).detach()
    return (normalized_weights(log_w), log_px_estimate(log_w).mean().double(),
            (log_w < math.inf).all())


class RWS(Method):
    """Reweighted wake-sleep: wake-P always, wake-Q and/or sleep-Q for the inference net.

    wake_q, sleep_q: which Q updates run (the paper's best: both). When both run their
    gradients add, as in the original code. n_dreams: dreams per sleep step (default:
    the batch size, every step, as in the author's later Blocks code).
    """

    name = "rws"
    default_K = 5

    def __init__(self, model, K: int = 5, wake_q: bool = True, sleep_q: bool = True,
                 n_dreams: int | None = None):
        super().__init__(model, K)
        if not (wake_q or sleep_q):
            raise UserError("rws needs wake-Q or sleep-Q (or both) to train the inference "
                            "network; drop --no-wake-q or --no-sleep-q")
        if wake_q and K == 1:
            warnings.warn("wake-Q with K=1 has zero expected gradient (pure noise); "
                          "use K > 1 or --no-wake-q (classical wake-sleep)", stacklevel=2)
        self.wake_q, self.sleep_q, self.n_dreams = wake_q, sleep_q, n_dreams
        self.sleep_phase = sleep_q
        self._sbn_steps = sbn_step.Steps()     # (buffers, not state)

    def _dreams(self, x) -> int:
        """Dreams of this update's sleep-Q term (0: none, or a separate sleep update)."""
        return (self.n_dreams or x.shape[0]) if self.sleep_q and not self.separate_sleep else 0

    def loss(self, x, generator=None):
        n = self._dreams(x)     # the dreams first, then the proposals (as ``backward``)
        sleep = sleep_phi_loss(self.model, n, generator).mean() if n else 0.0
        log_p, log_q = self.model.log_joint(x, self.K, generator)    # [B, K] each
        w, train_ll, _ = weigh(log_p, log_q)                         # one softmax for both
        loss = wake_theta_loss(log_p, log_q, w).mean()
        if self.wake_q:
            loss = loss + wake_phi_loss(log_p, log_q, w).mean()
        return loss + sleep, {"train_ll": train_ll}

    def backward(self, x, generator=None, scale=1.0):
        """The gradient of ``loss``; for sigmoid belief networks and DARNs in closed form,
        on the same samples (``rws.sbn_gradients``; for SBNs on buffers kept from step to
        step, ``rws.sbn_step``)."""
        if not sbn_gradients.supported(self.model):    # autograd: NADE, clamped layers, ...
            return super().backward(x, generator, scale,
                                    check_gradient=not bounded_gradient(self.model))
        log_p, log_q, add = self._sbn_steps.propose(self.model, x, self.K, self._dreams(x),
                                                    generator)
        # the loss is finite unless a weight is NaN or +inf (log w = -inf counts for
        # nothing), and then so is the gradient (``rws.sbn_gradients``)
        w, train_ll, finite = weigh(log_p, log_q)                  # [B, K], [], []
        add(w, w if self.wake_q else None, scale)
        return finite, {"train_ll": train_ll}
