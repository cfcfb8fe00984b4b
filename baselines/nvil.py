"""NVIL: neural variational inference and learning (Mnih & Gregor, ICML 2014).

Maximises the ELBO E_q[l(x, h)], l = log p(x, h) - log q(h | x), with one sample per
point (or K independent replicas):

    theta:  grad_theta log p(x, h)                                  (pathwise in theta)
    phi:    sum_i A_i grad_phi log q_i(h_i | h_{i-1}),
            A_i = (l_i - C_i(h_{i-1}) - c_i) / max(1, sqrt(v_i))
    psi:    minimise (l_i - C_i(h_{i-1}) - c_i)^2                   (baseline regression)

l_i is the local learning signal of Q layer i (NVIL §3.3): the terms of l that depend
on h_i or above, sum_{j>=i-1} log p_j - sum_{j>=i} log q_j. C_i is an input-dependent
baseline (an MLP, 100 tanh units, on 2 h_{i-1} - 1); c_i and v_i are running mean and
variance of l_i - C_i, updated from each minibatch before use with decay alpha = 0.8.
The baseline does not depend on h_i, so the phi-estimator stays unbiased for
grad_phi ELBO when alpha = 1 and normalisation is off (a test checks it by enumeration).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rws.layers import repeat_rows
from rws.methods import Method


class NVIL(Method):
    name = "nvil"
    default_K = 1

    def __init__(self, model, K: int = 1, alpha: float = 0.8, normalise: bool = True,
                 baseline_hidden: int = 100, baseline_lr_scale: float = 10.0):
        super().__init__(model, K)
        self.alpha, self.normalise, self.baseline_lr_scale = alpha, normalise, baseline_lr_scale
        self.baselines = nn.ModuleList(
            nn.Sequential(nn.Linear(n_in, baseline_hidden), nn.Tanh(), nn.Linear(baseline_hidden, 1))
            for n_in in model.sizes[:-1])
        L = len(model.q_layers)
        self.register_buffer("c", torch.zeros(L))
        self.register_buffer("v", torch.zeros(L))

    def param_groups(self, lr, lr_p=None, lr_q=None):
        # the baselines learn 10x faster than the model (as in REBAR's NVIL)
        groups = super().param_groups(lr, lr_p, lr_q)
        groups[-1]["lr"] = lr * self.baseline_lr_scale       # "own": the baseline nets
        return groups

    def local_signals(self, log_p: list, log_q: list) -> torch.Tensor:
        """l_i = sum_{j>=i} log p_j - sum_{j>=i} log q_j for each Q layer i: [L, N]."""
        L = len(log_q)
        current = log_p[L]                         # the top prior
        signals = [None] * L
        for i in range(L - 1, -1, -1):
            current = current + log_p[i] - log_q[i]
            signals[i] = current
        return torch.stack(signals)

    def loss(self, x, generator=None):
        hs, log_q = self.model.sample_q(x, self.K, generator)
        log_p = self.model.log_p_layers(hs)
        signals = self.local_signals(log_p, log_q).detach()                       # [L, N]
        N = signals.shape[1]                       # x (hs[0]) is given once per point
        C = torch.stack([repeat_rows(b(2 * h - 1).squeeze(-1), N // h.shape[0])
                         for b, h in zip(self.baselines, hs)])
        residual = signals - C                                                      # [L, N]
        with torch.no_grad():
            r = residual.detach()
            self.c.mul_(self.alpha).add_((1 - self.alpha) * r.mean(1))
            self.v.mul_(self.alpha).add_((1 - self.alpha) * r.var(1, unbiased=False))
        centred = residual - self.c[:, None]
        A = centred.detach()
        if self.normalise:
            A = A / torch.clamp(self.v.sqrt(), min=1.0)[:, None]
        theta_loss = -torch.stack(log_p).sum(0).mean()
        phi_loss = -(A * torch.stack(log_q)).sum(0).mean()
        baseline_loss = (centred ** 2).sum(0).mean()
        train_ll = (signals[0].view(-1, self.K).logsumexp(1) - math.log(self.K)).mean()
        return theta_loss + phi_loss + baseline_loss, {"train_ll": train_ll}
