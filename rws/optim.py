"""Optimisers of the training loop: Adam (the modern default), plain SGD, and the
original RWS code's EMA momentum.

``ema_momentum`` is the step rule of Bornschein & Bengio's code (reweighted-ws,
``learning/training.py``), for each parameter theta with buffer d (initially 0):

    d     <- beta d + (1 - beta) lr g          (beta = 0.95)
    theta <- theta - d                         (a descent step on the loss)

where g is the gradient of the minibatch *sum* of the loss, not its mean, so the first
step is (1 - beta) lr g and in steady state a step is lr g, not lr g / (1 - beta).
(``torch.optim.SGD(momentum=beta, dampening=beta)`` differs at the first step, where it
starts the buffer at g: a first step 20 times too large.) The training loop's losses
are means, so it hands this optimiser ``lr`` times the number of points (or dreams)
that the gradient averaged: a mean loss at lr B is the summed loss at lr
(``SUMMED_GRADIENT``). Wake-Q and sleep-Q updates of Q share its buffer, as in the
original code. Parameters without a gradient in a step keep their buffer unchanged.
"""
from __future__ import annotations

import torch


class EMAMomentum(torch.optim.Optimizer):
    """d <- beta d + (1 - beta) lr g; theta <- theta - d (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.95):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "delta" not in state:
                    state["delta"] = torch.zeros_like(p)
                bufs.append(state["delta"])
            grads = [p.grad for p in params]
            torch._foreach_mul_(bufs, group["beta"])
            torch._foreach_add_(bufs, grads, alpha=(1.0 - group["beta"]) * group["lr"])
            torch._foreach_sub_(params, bufs)


def _adam(groups):
    try:   # the fused kernel: one pass over the parameters (about 1 ms a step less here)
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups)


OPTIMIZERS = {
    "adam": _adam,
    "sgd": lambda groups: torch.optim.SGD(groups),
    "ema_momentum": lambda groups: EMAMomentum(groups),
}

# optimisers whose learning rate multiplies the gradient of the minibatch sum
SUMMED_GRADIENT = {"ema_momentum"}
