"""Classical wake-sleep (Hinton, Dayan, Frey & Neal, Science 1995).

    wake:   h ~ q(h | x),          theta += grad_theta log p(x, h)
    sleep:  (x, h) ~ p(x, h),      phi   += grad_phi log q(h | x)

One sample per point; Q learns only from P's dreams. It is RWS with K = 1 and wake-Q
off (with one sample the normalised weight is 1), which a test checks against
``rws.rws.RWS``; this module computes it directly (for sigmoid belief networks in
closed form, ``rws.sbn_gradients``, on kept buffers ``rws.sbn_step`` where it serves).
"""
from __future__ import annotations

import math

import torch

from rws import sbn_gradients, sbn_step
from rws.errors import UserError
from rws.methods import Method, sleep_phi_loss


class WakeSleep(Method):
    name = "ws"
    default_K = 1
    sleep_phase = True

    def __init__(self, model, K: int = 1, n_dreams: int | None = None):
        super().__init__(model, K)
        if K != 1:
            raise UserError(f"ws (classical wake-sleep) draws one sample per point, got K={K}; "
                            "drop -K, or use --method rws --no-wake-q for K samples")
        self.n_dreams = n_dreams
        self._sbn_steps = sbn_step.Steps()     # (buffers, not state)

    def _dreams(self, x) -> int:
        """Dreams of this update's sleep phase (0: a separate sleep update)."""
        return 0 if self.separate_sleep else (self.n_dreams or x.shape[0])

    def loss(self, x, generator=None):
        n = self._dreams(x)     # the dreams first, then the wake sample (as ``backward``)
        sleep = sleep_phi_loss(self.model, n, generator).mean() if n else 0.0
        hs, log_q = self.model.sample_q(x, 1, generator)
        log_p = torch.stack(self.model.log_p_layers(hs)).sum(0)                  # [B]
        train_ll = (log_p - torch.stack(log_q).sum(0)).detach().mean()          # K=1 bound
        return -log_p.mean() + sleep, {"train_ll": train_ll}

    def backward(self, x, generator=None, scale=1.0):
        if not sbn_gradients.supported(self.model):
            return super().backward(x, generator, scale)
        log_p, log_q, add = self._sbn_steps.propose(self.model, x, 1, self._dreams(x),
                                                    generator)                   # [B, 1]
        add(torch.ones_like(log_p), None, scale)
        log_w = log_p - log_q
        return (log_w < math.inf).all() & (log_p > -math.inf).all(), {"train_ll": log_w.mean()}
