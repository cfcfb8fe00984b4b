"""VAE and IWAE on Gaussian latents (Kingma & Welling, ICLR 2014; Burda, Grosse &
Salakhutdinov, ICLR 2016).

Samples are reparameterised, z = mu(x) + sigma(x) * eps, and gradients are pathwise:

    VAE:   ELBO = E_q[log p(x, z) - log q(z | x)], estimated with the mean of K log weights;
           for one latent layer with a N(0, I) prior, E_q[log p(x | z)] - KL(q || N(0, I))
           with the KL in closed form (``analytic_kl``, the default where it applies).
    IWAE:  L_K = E[logsumexp_k log w_k - log K], gradient sum_k w~_k grad log w_k.

IWAE with K = 1 is the VAE's Monte-Carlo ELBO; L_K does not decrease with K.
"""
from __future__ import annotations

import math

import torch

from rws.layers import StandardNormal
from rws.methods import Method


def gaussian_kl_to_standard(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the last axis."""
    return 0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(-1)


class IWAE(Method):
    name = "iwae"
    default_K = 5

    def __init__(self, model, K: int = 5):
        super().__init__(model, K)
        self.require_reparameterizable(self.name, model)

    def loss(self, x, generator=None):
        log_p, log_q = self.model.log_joint(x, self.K, generator, reparam=True)
        bound = torch.logsumexp(log_p - log_q, 1) - math.log(self.K)
        return -bound.mean(), {"train_ll": bound.detach().mean()}


class VAE(Method):
    name = "vae"
    default_K = 1

    def __init__(self, model, K: int = 1, analytic_kl: bool | None = None):
        super().__init__(model, K)
        self.require_reparameterizable(self.name, model)
        closed_form = len(model.q_layers) == 1 and isinstance(model.p_layers[-1], StandardNormal)
        self.analytic_kl = closed_form if analytic_kl is None else analytic_kl
        if self.analytic_kl and not closed_form:
            raise ValueError("analytic KL needs one Gaussian latent layer with a N(0, I) prior")

    def elbo_terms(self, x, generator=None):
        """(ELBO per point [B], log w [B, K]) with the method's estimator of the ELBO."""
        B = x.shape[0]
        hs, log_q = self.model.sample_q(x, self.K, generator, reparam=True)
        log_p = self.model.log_p_layers(hs)
        log_w = (torch.stack(log_p).sum(0) - torch.stack(log_q).sum(0)).view(B, self.K)
        if not self.analytic_kl:
            return log_w.mean(1), log_w
        mu, log_sigma = self.model.q_layers[0].params(x)                          # [B, n]
        return log_p[0].view(B, self.K).mean(1) - gaussian_kl_to_standard(mu, log_sigma), log_w

    def loss(self, x, generator=None):
        elbo, log_w = self.elbo_terms(x, generator)
        train_ll = (torch.logsumexp(log_w, 1) - math.log(self.K)).detach().mean()
        return -elbo.mean(), {"train_ll": train_ll}
