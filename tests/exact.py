"""Ground truth for tiny models by enumerating every latent state.

These functions never call the estimators under test: they sum the model's
probabilities over all 2^(n_1 + ... + n_L) latent configurations.
"""
import itertools

import torch


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
