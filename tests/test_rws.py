"""RWS estimators against exact gradients computed by enumerating every latent state."""
import pytest
import torch
import torch.nn.functional as F

from rws import methods, zoo
from rws.errors import UserError
from rws.rws import sleep_phi_loss, wake_phi_loss, wake_theta_loss
from tests.conftest import tiny_model
from tests.exact import expected_log_q_under_p, kl_posterior_q, log_px

X = torch.tensor([[1.0, 0, 1, 1, 0], [0, 0, 1, 0, 1], [1, 1, 1, 0, 0], [0, 1, 0, 0, 1]])


def flat_grad(loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for g, p in zip(grads, params)])


def mc_mean(draw, R):
    """Mean and standard error over R independent draws of a gradient vector."""
    gs = torch.stack([draw() for _ in range(R)])
    return gs.mean(0), gs.std(0) / R ** 0.5


def rel_err(est, exact):
    return ((est - exact).norm() / exact.norm()).item()


@pytest.fixture
def model():
    return tiny_model("sbn:3-2", n_data=5, seed=11, q_scale=0.5)


def test_wake_theta_approaches_grad_log_px(model):
    theta = list(model.p_layers.parameters())
    exact = flat_grad(-log_px(model, X).mean(), theta)
    g = torch.Generator().manual_seed(0)

    def draw(K):
        log_p, log_q = model.log_joint(X, K, g)
        return flat_grad(wake_theta_loss(log_p, log_q).mean(), theta)

    est_big, _ = mc_mean(lambda: draw(2000), 10)
    est_small, _ = mc_mean(lambda: draw(2), 10 * 1000)   # same sample budget, K=2
    assert rel_err(est_big, exact) < 0.03
    assert rel_err(est_small, exact) > rel_err(est_big, exact)   # the O(1/K) bias is real


def test_wake_phi_approaches_grad_inclusive_kl(model):
    phi = list(model.q_layers.parameters())
    exact = flat_grad(kl_posterior_q(model, X).mean(), phi)   # grad of KL(p(h|x) || q)
    g = torch.Generator().manual_seed(1)

    def draw():
        log_p, log_q = model.log_joint(X, 2000, g)
        return flat_grad(wake_phi_loss(log_p, log_q).mean(), phi)

    est, _ = mc_mean(draw, 10)
    assert rel_err(est, exact) < 0.03


def test_sleep_phi_is_unbiased_for_grad_expected_log_q(model):
    phi = list(model.q_layers.parameters())
    exact = flat_grad(-expected_log_q_under_p(model), phi)
    g = torch.Generator().manual_seed(2)
    est, se = mc_mean(lambda: flat_grad(sleep_phi_loss(model, 20000, g).mean(), phi), 20)
    assert ((est - exact).abs() < 5 * se + 1e-6).all()
    assert rel_err(est, exact) < 0.03


def test_one_backward_equals_separate_backward_passes(model):
    """Detaching log q inside the wake-P loss keeps it out of phi (RRWS grad_check)."""
    theta, phi = list(model.p_layers.parameters()), list(model.q_layers.parameters())
    log_p, log_q = model.log_joint(X, 7, torch.Generator().manual_seed(3))
    lt, lq = wake_theta_loss(log_p, log_q).mean(), wake_phi_loss(log_p, log_q).mean()
    both = flat_grad(lt + lq, theta + phi)
    separate = torch.cat([flat_grad(lt, theta), flat_grad(lq, phi)])
    assert torch.allclose(both, separate, atol=1e-6)
    assert flat_grad(lt, phi).abs().max() == 0          # wake-P does not touch Q
    assert flat_grad(lq, theta).abs().max() == 0        # wake-Q does not touch P


def test_wake_phi_with_one_sample_has_zero_mean(model):
    """K=1: the weight is 1 and E_q[grad log q] = 0, so wake-Q is pure noise (why
    classical wake-sleep turns it off)."""
    phi = list(model.q_layers.parameters())
    g = torch.Generator().manual_seed(4)

    def draw():
        log_p, log_q = model.log_joint(X.repeat(500, 1), 1, g)
        return flat_grad(wake_phi_loss(log_p, log_q).mean(), phi)

    est, se = mc_mean(draw, 40)
    assert (est.abs() < 5 * se).all()


def test_weights_of_impossible_points_are_zero_not_nan():
    log_p = torch.tensor([[-float("inf")] * 3, [-1.0, -2.0, -3.0]], requires_grad=True)
    log_q = torch.zeros(2, 3, requires_grad=True)
    loss = wake_theta_loss(log_p, log_q).sum() + wake_phi_loss(log_p, log_q).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(log_p.grad).all()
    assert torch.isfinite(log_q.grad).all()


def test_rws_needs_some_q_update():
    with pytest.raises(UserError, match="wake-Q or sleep-Q"):
        methods.build("rws", zoo.build("sbn:2", 3), 5, wake_q=False, sleep_q=False)


def one_latent_problem(D=4, seed=0):
    """P: h ~ Bern(sigmoid(a)), x_i | h ~ Bern(sigmoid(W_i h + b_i)). Its posterior logit is
    a + sum_i x_i W_i + sum_i [softplus(b_i) - softplus(W_i + b_i)]: linear in x, so an
    SBN Q layer holds it exactly."""
    torch.manual_seed(seed)
    model = zoo.build("sbn:1", D)
    with torch.no_grad():
        model.p_layers[0].W.copy_(torch.tensor([[1.5], [-1.0], [0.8], [2.0]])[:D])
        model.p_layers[0].b.copy_(torch.tensor([-0.5, 0.7, 0.2, -1.2])[:D])
        model.p_layers[1].a.fill_(0.3)
    W, b = model.p_layers[0].W[:, 0].detach(), model.p_layers[0].b.detach()
    exact_W = W
    exact_b = 0.3 + (F.softplus(b) - F.softplus(W + b)).sum()
    return model, exact_W, exact_b


@pytest.mark.parametrize("wake_q,sleep_q", [(True, False), (False, True)])
def test_q_converges_to_the_exact_posterior(wake_q, sleep_q):
    """The binary analogue of Pyro's RWS convergence tests: P frozen, Q trained by
    wake-only (K=3) or sleep-only RWS reaches the analytic posterior's parameters."""
    model, exact_W, exact_b = one_latent_problem()
    method = methods.build("rws", model, 3, wake_q=wake_q, sleep_q=sleep_q, n_dreams=256)
    g = torch.Generator().manual_seed(0)
    data = model.sample_p(4096, g)[0]
    q = model.q_layers[0]
    opt = torch.optim.Adam(q.parameters(), lr=0.03)
    sched = torch.optim.lr_scheduler.StepLR(opt, 600, 0.2)
    for step in range(1800):
        x = data[torch.randint(0, 4096, (256,), generator=g)]
        loss, _ = method.loss(x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert torch.allclose(q.W[0].detach(), exact_W, atol=0.1)
    assert q.b.item() == pytest.approx(exact_b.item(), abs=0.1)
