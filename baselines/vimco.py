"""VIMCO: variational inference for Monte Carlo objectives (Mnih & Rezende, ICML 2016).

Maximises the K-sample bound L^ = logsumexp_k(log w_k) - log K (the IWAE bound) with
score-function gradients for discrete latents and a leave-one-out baseline per sample:

    grad L^ = sum_k (L^ - L^_{-k}) grad_phi log q(h_k | x) + sum_k w~_k grad log w_k

where L^_{-k} is L^ with log w_k replaced by the mean of the other K - 1 log weights.
Surrogate loss (minimised): -L^ - sum_k sg[L^ - L^_{-k}] log q(h_k | x). Needs K >= 2.
For sigmoid belief networks the gradient is taken in closed form (``rws.sbn_gradients``):
the loss's derivative is -w~_k in log p(x, h_k) and w~_k - (L^ - L^_{-k}) in log q(h_k | x)
(for stacks of SBN layers on buffers kept from step to step, ``rws.sbn_step``).
"""
from __future__ import annotations

import math

import torch

from rws import sbn_gradients, sbn_step
from rws.errors import UserError
from rws.methods import Method


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """L^_{-k} for every k: [B, K] -> [B, K]."""
    B, K = log_w.shape
    others_mean = (log_w.sum(1, keepdim=True) - log_w) / (K - 1)              # [B, K]
    # row k of the [B, K, K] tensor is log_w with entry k replaced by others_mean[k]
    replaced = log_w[:, None, :].expand(B, K, K).clone()
    idx = torch.arange(K)
    replaced[:, idx, idx] = others_mean
    return torch.logsumexp(replaced, 2) - math.log(K)


class VIMCO(Method):
    name = "vimco"
    default_K = 5

    def __init__(self, model, K: int = 5):
        super().__init__(model, K)
        if K < 2:
            raise UserError(f"vimco needs K >= 2 samples for its leave-one-out baseline, got K={K}")
        self._sbn_steps = sbn_step.Steps()     # (buffers, not state)

    def _bound_and_loss(self, log_p, log_q):
        """L^ [B], the learning signals L^ - L^_{-k} [B, K] (detached), the surrogate loss."""
        log_w = log_p - log_q
        bound = torch.logsumexp(log_w, 1) - math.log(self.K)                      # [B]
        with torch.no_grad():
            signal = bound[:, None] - leave_one_out_bounds(log_w)                   # [B, K]
        return bound, signal, -bound.mean() - (signal * log_q).sum(1).mean()

    def loss(self, x, generator=None):
        log_p, log_q = self.model.log_joint(x, self.K, generator)                 # [B, K]
        bound, _, loss = self._bound_and_loss(log_p, log_q)
        return loss, {"train_ll": bound.detach().mean()}

    def backward(self, x, generator=None, scale=1.0):
        if not sbn_gradients.supported(self.model):
            return super().backward(x, generator, scale)
        log_p, log_q, add = self._sbn_steps.propose(self.model, x, self.K, 0, generator)
        bound, signal, loss = self._bound_and_loss(log_p, log_q)                 # [B, K]
        w = torch.softmax(log_p - log_q, 1)                                       # d L^ / d log w
        add(w, signal - w, scale)
        return torch.isfinite(loss), {"train_ll": bound.mean()}
