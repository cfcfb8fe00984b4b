"""Gaussian layers of the VAE/IWAE baselines (Burda et al. 2016): a diagonal Gaussian
with MLP parameters, and the standard normal prior."""
from __future__ import annotations

import math

import torch
from torch import nn

from rws.layers.bernoulli import match_rows, repeat_rows
from rws.layers.sbn import MLP, init_linear


LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(z, mu, log_sigma):
    """sum_i log N(z_i | mu_i, sigma_i^2): [..., n] -> [...]."""
    return (-0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * LOG_2PI).sum(-1)


class Gaussian(nn.Module):
    """Diagonal Gaussian z | y ~ N(mu(y), diag sigma(y)^2) with tanh hidden layers
    (the VAE/IWAE inference and generative layers of Burda et al. 2016; sigma = exp(linear)).

    sample(..., reparam=True) keeps the pathwise gradient z = mu + sigma * eps; otherwise
    the sample is detached like every discrete sample.
    """

    reparameterizable = True

    def __init__(self, n_x: int, n_y: int, hidden: tuple[int, ...] = (200, 200),
                 act: str = "tanh", init: str = "glorot"):
        super().__init__()
        self.n_x, self.n_y = n_x, n_y
        self.mlp = MLP(n_y, hidden, act, init)
        self.mu = nn.Linear(self.mlp.n_out, n_x)
        self.log_sigma = nn.Linear(self.mlp.n_out, n_x)
        init_linear(self.mu, init)
        init_linear(self.log_sigma, init)

    def params(self, y):
        d = self.mlp(y)
        return self.mu(d), self.log_sigma(d)

    def log_prob(self, x, y=None):
        if x.shape[0] < y.shape[0]:                    # value once per point
            x, y = match_rows(x, y)
        mu, log_sigma = self.params(y)                 # context once per point: repeat after
        n = x.shape[0] // mu.shape[0]
        return normal_log_prob(x, repeat_rows(mu, n), repeat_rows(log_sigma, n))

    def sample(self, y, n=1, generator=None, reparam=False, score=True):
        mu, log_sigma = self.params(y)
        mu, log_sigma = repeat_rows(mu, n), repeat_rows(log_sigma, n)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(log_sigma) * eps
        if not reparam:
            z = z.detach()
        return z, (normal_log_prob(z, mu, log_sigma) if score else None)


class StandardNormal(nn.Module):
    """The fixed prior z ~ N(0, I) (no parameters)."""

    reparameterizable = True

    def __init__(self, n_x: int):
        super().__init__()
        self.n_x, self.n_y = n_x, 0
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def log_prob(self, x, y=None):
        return (-0.5 * x ** 2 - 0.5 * LOG_2PI).sum(-1)

    def sample(self, y, n=1, generator=None, reparam=False, score=True):
        z = torch.randn((n, self.n_x), generator=generator, device=self.zero.device)
        return z, (self.log_prob(z) if score else None)
