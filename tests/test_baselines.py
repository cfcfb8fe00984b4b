"""Baselines against exact gradients by enumeration, and against each other where they coincide."""
import math

import pytest
import torch

from baselines.vae import VAE, gaussian_kl_to_standard
from rws import methods
from rws.errors import UserError
from rws.train import Trainer, evaluate
from tests.conftest import tiny_model
from tests.exact import log_joint_table
from tests.test_rws import X, flat_grad, mc_mean
from tests.test_train import quiet, small_config


def test_wake_sleep_is_rws_with_one_sample_and_no_wake_q():
    model = tiny_model("sbn:3-2", seed=1)
    ws = methods.build("ws", model, 1)
    rws = methods.build("rws", model, 1, wake_q=False, sleep_q=True)
    params = list(model.parameters())
    ga = flat_grad(ws.loss(X, torch.Generator().manual_seed(5))[0], params)
    gb = flat_grad(rws.loss(X, torch.Generator().manual_seed(5))[0], params)
    assert torch.allclose(ga, gb, atol=1e-6) and ga.abs().sum() > 0


def exact_elbo(model, x):
    """E_q[log p(x,h) - log q(h|x)] per point by enumeration: [B]."""
    log_p, log_q = log_joint_table(model, x)
    return (log_q.exp() * (log_p - log_q)).sum(1)


def test_nvil_gradients_are_unbiased_for_the_elbo():
    """With alpha = 1 (fixed c = 0) and no variance normalisation, NVIL's phi-gradient is
    unbiased for grad_phi ELBO whatever its baselines; its theta-gradient too."""
    model = tiny_model("sbn:3-2", seed=2, q_scale=0.7)
    nvil = methods.build("nvil", model, 1, alpha=1.0, normalise=False)
    theta, phi = list(model.p_layers.parameters()), list(model.q_layers.parameters())
    exact = flat_grad(-exact_elbo(model, X).mean(), theta + phi)
    g = torch.Generator().manual_seed(0)
    xs = X.repeat(500, 1)   # 500 draws per point in each estimate
    est, se = mc_mean(lambda: flat_grad(nvil.loss(xs, g)[0], theta + phi), 40)
    assert ((est - exact).abs() < 5 * se + 1e-5).all()
    assert ((est - exact).norm() / exact.norm()) < 0.1


def test_nvil_baselines_reduce_variance():
    """After the baseline is trained, the phi-gradient's variance is smaller (the point
    of NVIL's control variates)."""
    model = tiny_model("sbn:3-2", seed=2, q_scale=0.7)
    nvil = methods.build("nvil", model, 1, alpha=0.8, normalise=False)
    phi = list(model.q_layers.parameters())
    g = torch.Generator().manual_seed(1)
    xs = X.repeat(50, 1)

    def spread():
        gs = torch.stack([flat_grad(nvil.loss(xs, g)[0], phi) for _ in range(30)])
        return gs.var(0).sum().item()

    before = spread()
    opt = torch.optim.Adam(nvil.baselines.parameters(), lr=0.01)
    for _ in range(300):
        loss, _ = nvil.loss(xs, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert spread() < 0.7 * before         # measured: 0.076 -> 0.042


def exact_k_sample_bound(model, x, K):
    """E over K i.i.d. proposals of logsumexp_k log w_k - log K, enumerating K-tuples: [B]."""
    log_p, log_q = log_joint_table(model, x)                                   # [B, M]
    M = log_p.shape[1]
    idx = torch.cartesian_prod(*[torch.arange(M)] * K)                         # [M^K, K]
    log_w = (log_p - log_q)[:, idx]                                            # [B, M^K, K]
    bound = torch.logsumexp(log_w, 2) - math.log(K)
    prob = log_q[:, idx].sum(2).exp()                                          # [B, M^K]
    return (prob * bound).sum(1)


def test_vimco_gradients_are_unbiased_for_the_k_sample_bound():
    model = tiny_model("sbn:3", seed=3, q_scale=0.7)
    K = 3
    vimco = methods.build("vimco", model, K)
    params = list(model.parameters())
    exact = flat_grad(-exact_k_sample_bound(model, X, K).mean(), params)
    g = torch.Generator().manual_seed(0)
    xs = X.repeat(500, 1)
    est, se = mc_mean(lambda: flat_grad(vimco.loss(xs, g)[0], params), 40)
    assert ((est - exact).abs() < 5 * se + 1e-5).all()
    assert ((est - exact).norm() / exact.norm()) < 0.1


def test_iwae_with_one_sample_is_the_vae_elbo():
    model = tiny_model("gauss[hidden=4]:2", seed=4)
    iwae = methods.build("iwae", model, 1)
    vae = methods.build("vae", model, 1, analytic_kl=False)
    a = iwae.loss(X, torch.Generator().manual_seed(0))[0]
    b = vae.loss(X, torch.Generator().manual_seed(0))[0]
    assert a.item() == pytest.approx(b.item(), abs=1e-5)


def test_iwae_bound_increases_with_K():
    model = tiny_model("gauss[hidden=4]:2", seed=4, q_scale=0.5)
    g = torch.Generator().manual_seed(0)
    xs = X.repeat(200, 1)
    means = []
    for K in (1, 5, 50):
        iwae = methods.build("iwae", model, K)
        with torch.no_grad():
            draws = torch.stack([-iwae.loss(xs, g)[0] for _ in range(20)])
        means.append((draws.mean().item(), draws.std().item() / math.sqrt(20)))
    (m1, s1), (m5, s5), (m50, s50) = means
    assert m5 - m1 > 4 * math.hypot(s1, s5) and m50 - m5 > 4 * math.hypot(s5, s50)


def test_vae_analytic_kl_elbo_agrees_with_monte_carlo():
    model = tiny_model("gauss[hidden=4]:2", seed=5, q_scale=0.5)
    analytic = VAE(model, 1, analytic_kl=True)
    mc = VAE(model, 1000, analytic_kl=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mu, log_sigma = model.q_layers[0].params(X)
        kl = gaussian_kl_to_standard(mu, log_sigma)
        q = torch.distributions.Normal(mu, log_sigma.exp())
        z = q.sample((200000,))
        kl_mc = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1)
        assert torch.allclose(kl, kl_mc.mean(0), atol=4 * (kl_mc.std(0) / 447).max().item())
        a = torch.stack([analytic.elbo_terms(X, g)[0] for _ in range(2000)])
        b = torch.stack([mc.elbo_terms(X, g)[0] for _ in range(20)])
    se = (a.std(0) ** 2 / 2000 + b.std(0) ** 2 / 20).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se + 1e-3).all()


@pytest.mark.parametrize("method,spec,K,message", [
    ("vae", "sbn:10", None, r"needs reparameterisable \(Gaussian\) latents"),
    ("iwae", "darn:10", None, r"needs reparameterisable \(Gaussian\) latents"),
    ("ws", "sbn:10", 5, "draws one sample per point"),
    ("vimco", "sbn:10", 1, "needs K >= 2"),
])
def test_method_model_mismatch_is_a_clear_error(tmp_path, method, spec, K, message):
    with pytest.raises(UserError, match=message):
        Trainer(small_config(method=method, model=spec, K=K), tmp_path)


def test_option_of_another_method_is_refused(tmp_path):
    with pytest.raises(UserError, match="method 'nvil' does not take the option 'wake_q'"):
        Trainer(small_config(method="nvil", K=None, method_options={"wake_q": False}), tmp_path)


@pytest.mark.parametrize("method,spec", [
    ("ws", "sbn:10"), ("nvil", "sbn:10"), ("nvil", "sbn:10-5"), ("vimco", "sbn:10"),
    ("vae", "gauss[hidden=20]:5"), ("iwae", "gauss[hidden=20]:5"), ("rws", "gauss[hidden=20]:5"),
])
def test_every_method_learns(tmp_path, method, spec):
    trainer = Trainer(small_config(data="mushrooms", method=method, model=spec, K=None,
                                   epochs=3), tmp_path)
    before = evaluate(trainer.model, trainer.splits["valid"], 10, 0, trainer.device).mean
    valid = [e["valid_ll"] for e in trainer.run(quiet)["epochs"]]
    assert valid[-1] > before + 10 and valid[-1] > valid[0], (before, valid)
