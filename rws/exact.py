"""Ground truth for tiny models by enumerating every latent state.

These functions never call an estimator: they sum the model's probabilities over all
2^(n_1 + ... + n_L) latent configurations (and, for the K-sample bound, over every
K-tuple of them). The tests check the estimators against them, and ``rws diagnose``
takes its exact target gradients from them on models small enough to enumerate.
"""
from __future__ import annotations

import itertools
import math

import torch

MAX_STATES = 2 ** 12        # latent configurations that ``enumerable`` allows


def all_states(n: int) -> torch.Tensor:
    """Every binary vector of length n: [2^n, n] float."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def latent_grid(model):
    """Every joint latent configuration: a list [h_1 [M, n_1], ..., h_L [M, n_L]]."""
    per_layer = [all_states(n) for n in model.sizes[1:]]
    idx = torch.cartesian_prod(*[torch.arange(len(s)) for s in per_layer])
    if idx.dim() == 1:
        idx = idx[:, None]
    return [s[idx[:, i]] for i, s in enumerate(per_layer)]


def log_joint_table(model, x):
    """log p(x_b, h_m) and log q(h_m | x_b) for every point b and latent state m: [B, M] each."""
    hs = latent_grid(model)
    B, M = x.shape[0], hs[0].shape[0]
    rows = [x.repeat_interleave(M, 0)] + [h.repeat(B, 1) for h in hs]
    log_p = torch.stack(model.log_p_layers(rows)).sum(0).view(B, M)
    log_q = torch.stack(model.log_q_layers(rows)).sum(0).view(B, M)
    return log_p, log_q


def log_px(model, x):
    """Exact log p(x): [B]."""
    log_p, _ = log_joint_table(model, x)
    return torch.logsumexp(log_p, 1)


def kl_posterior_q(model, x):
    """Exact KL(p(h|x) || q(h|x)) per point: [B]."""
    log_p, log_q = log_joint_table(model, x)
    log_post = log_p - torch.logsumexp(log_p, 1, keepdim=True)
    return (log_post.exp() * (log_post - log_q)).sum(1)


def expected_log_q_under_p(model):
    """Exact E_{p(x,h)} log q(h|x), over every x and h."""
    X = all_states(model.n_data)
    log_p, log_q = log_joint_table(model, X)
    return (log_p.exp() * log_q).sum()


def enumerable(model, max_states: int = MAX_STATES) -> bool:
    """True for binary latents with at most ``max_states`` joint configurations."""
    return not model.reparameterizable and sum(model.sizes[1:]) <= math.log2(max_states)


def _grads(value: torch.Tensor, params: list) -> torch.Tensor:
    """d value / d params, flattened: [P]."""
    gs = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(gs, params)])


def grad_neg_log_px(model, x) -> torch.Tensor:
    """The gradient of -mean_b log p(x_b) in P's parameters: [P]. (The wake-P target.)"""
    return _grads(-log_px(model, x).mean(), list(model.p_layers.parameters()))


def grad_kl(model, x) -> torch.Tensor:
    """The gradient of mean_b KL(p(h | x_b) || q(h | x_b)) in Q's parameters, P held
    fixed: -mean_b sum_h p(h | x_b) grad log q(h | x_b): [Q]. (The wake-Q target.)"""
    log_p, log_q = log_joint_table(model, x)
    post = torch.softmax(log_p.detach(), 1)
    return _grads(-(post * log_q).sum(1).mean(), list(model.q_layers.parameters()))


def bound_table(model, x, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every K-tuple of latent states m_1..m_K per point: (log prod_k q(h_mk | x) [B, T],
    log p^_K = logsumexp_k log w_mk - log K [B, T]), T = M^K, with their graphs."""
    log_p, log_q = log_joint_table(model, x)                       # [B, M]
    M = log_p.shape[1]
    tuples = torch.cartesian_prod(*[torch.arange(M)] * K) if K > 1 else torch.arange(M)[:, None]
    log_w = (log_p - log_q)[:, tuples]                             # [B, T, K]
    return log_q[:, tuples].sum(2), torch.logsumexp(log_w, 2) - math.log(K)


def grad_neg_bound(model, x, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of -mean_b L_K(x_b), L_K = E_{h_1..K ~ q} log p^_K(x) (the K-sample
    bound of IWAE and VIMCO), in P's and in Q's parameters: ([P], [Q])."""
    log_q_tuple, log_phat = bound_table(model, x, K)
    bound = (log_q_tuple.exp() * log_phat).sum(1).mean()
    p_params = list(model.p_layers.parameters())
    both = _grads(-bound, p_params + list(model.q_layers.parameters()))
    n_p = sum(p.numel() for p in p_params)
    return both[:n_p], both[n_p:]
