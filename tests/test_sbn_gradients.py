"""Closed-form RWS / wake-sleep gradients of sigmoid belief networks: against autograd of
the surrogate losses on the same samples, and against exact gradients by enumeration."""
import pytest
import torch

from rws import ar_kernels, logprob_kernel, methods, sbn_gradients, sbn_step, zoo
from rws.methods import Method
from rws.rws import normalized_weights
from rws.train import OPTIMIZERS, train_step
from tests.conftest import tiny_model
from tests.exact import expected_log_q_under_p, kl_posterior_q, log_px
from tests.test_rws import X, flat_grad, mc_mean, rel_err


def grads_of(module, backward, x, seed, scale=1.0, parts=1):
    """Gradients left in .grad of module's parameters by ``backward`` over x split into
    ``parts`` micro-batches."""
    module.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(seed)
    out = [backward(xs, g, scale * xs.shape[0] / x.shape[0]) for xs in x.split(x.shape[0] // parts)]
    return [p.grad.clone() for p in module.parameters()], out


@pytest.mark.parametrize("spec,n_data,method,K,options", [
    ("sbn:20", 30, "rws", 5, {}),
    ("sbn:6-4-3", 8, "rws", 4, {}),
    ("sbn:6-4-3", 8, "rws", 3, {"wake_q": False}),
    ("sbn:6-4-3", 8, "rws", 3, {"sleep_q": False}),
    ("sbn:6-4-3", 8, "rws", 1, {"wake_q": False, "n_dreams": 5}),
    ("sbn:6-4", 8, "ws", 1, {"n_dreams": 7}),
    ("sbn:20", 30, "vimco", 5, {}),
    ("sbn:6-4-3", 8, "vimco", 3, {}),
    ("darn:20", 30, "rws", 5, {}),
    ("darn:6-4-3", 8, "rws", 4, {}),
    ("darn:6-4-3", 8, "rws", 3, {"wake_q": False}),
    ("darn:6-4-3", 8, "rws", 3, {"sleep_q": False}),
    ("darn:6-4", 8, "ws", 1, {"n_dreams": 7}),
    ("darn:20", 30, "vimco", 5, {}),
    ("sbn/darn:6-4", 8, "rws", 3, {}),
    ("darn/sbn:6-4", 8, "rws", 3, {}),
])
@pytest.mark.parametrize("parts", [1, 2])
def test_closed_form_equals_autograd_on_the_same_samples(monkeypatch, spec, n_data, method, K,
                                                         options, parts):
    """The algebra: both sides score with torch's float32 operations (the compiled
    log-probability, whose roundings differ, is compared in the test below; the kept
    buffers of ``rws.sbn_step``, whose kernels take no detour through ``log_prob``, are
    left out: they give what ``sbn_gradients`` gives, tests/test_sbn_step.py)."""
    monkeypatch.setattr(logprob_kernel, "log_prob", lambda *args, **kw: None)
    monkeypatch.setattr(sbn_step.Steps, "get", lambda *args: None)
    monkeypatch.setattr(logprob_kernel, "softplus_sum", lambda a: None)
    model = tiny_model(spec, n_data=n_data, seed=3, scale=0.7)
    m = methods.build(method, model, K, **options)
    x = (torch.rand(12, n_data, generator=torch.Generator().manual_seed(4)) < 0.4).float()
    assert sbn_gradients.supported(model)
    auto, auto_out = grads_of(m, lambda *a: Method.backward(m, *a), x, 5, 0.7, parts)
    closed, closed_out = grads_of(m, m.backward, x, 5, 0.7, parts)
    for a, c in zip(auto, closed):
        assert a.abs().max() > 0
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-6 * a.abs().max().item())
    for (fa, sa), (fc, sc) in zip(auto_out, closed_out):
        assert bool(fa) and bool(fc)
        assert sa["train_ll"].item() == pytest.approx(sc["train_ll"].item(), rel=1e-6)


@pytest.mark.parametrize("spec,method", [("sbn:20", "rws"), ("sbn:20", "vimco"),
                                         ("darn:6-4-3", "rws"), ("darn:20", "vimco")])
def test_closed_form_with_the_compiled_log_probability_is_within_float32_noise(spec, method):
    """The closed form as training runs it (log-probabilities by ``rws.logprob_kernel``,
    float64 sums) against autograd of torch's float32 operations: the two differ by
    roundings, which VIMCO's leave-one-out signals amplify most."""
    model = tiny_model(spec, n_data=30 if spec.endswith(":20") else 8, seed=3, scale=0.7)
    m = methods.build(method, model, 5)
    x = (torch.rand(12, model.n_data, generator=torch.Generator().manual_seed(4)) < 0.4).float()
    auto, _ = grads_of(m, lambda *a: Method.backward(m, *a), x, 5, 0.7, 2)
    closed, _ = grads_of(m, m.backward, x, 5, 0.7, 2)
    for a, c in zip(auto, closed):
        assert torch.allclose(a, c, rtol=1e-3, atol=1e-4 * a.abs().max().item())


@pytest.mark.parametrize("spec", ["darn:20", "darn:6-4-3"])
def test_darn_closed_form_on_sparse_data_equals_autograd_of_the_masked_gemms(monkeypatch, spec):
    """Data with few units on, as MNIST's pixels: the closed form takes P's term x (W * M)
    and its weight gradient over the nonzeros (``layers.autoregressive.sparse_product``),
    and so Q's first layer its y U and dU;
    autograd, on the same samples, takes them as the masked dense GEMMs of the definition."""
    from rws.layers import autoregressive
    model = tiny_model(spec, n_data=30, seed=3, scale=0.7)
    m = methods.build("rws", model, 4)
    x = (torch.rand(12, 30, generator=torch.Generator().manual_seed(4)) < 0.1).float()
    assert autoregressive._sparse(x, x) == ar_kernels.available()
    closed, _ = grads_of(m, m.backward, x, 5, 0.7)
    monkeypatch.setattr(autoregressive, "_sparse", lambda x, other: False)
    auto, _ = grads_of(m, lambda *a: Method.backward(m, *a), x, 5, 0.7)
    for a, c in zip(auto, closed):
        assert a.abs().max() > 0
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-6 * a.abs().max().item())


def test_darn_closed_form_equals_autograd_on_the_torch_loops(monkeypatch):
    """Without the compiled sampler (other devices), DARN's draws come from torch loops
    that give no autoregressive term: the closed form computes it."""
    monkeypatch.setenv("RWS_NUMBA", "0")
    test_closed_form_equals_autograd_on_the_same_samples(monkeypatch, "darn:6-4-3", 8, "rws", 4,
                                                         {}, 1)


@pytest.fixture(params=["sbn:3-2", "darn:3-2"])
def model(request):
    return tiny_model(request.param, n_data=5, seed=11, q_scale=0.5)


def test_closed_form_wake_p_approaches_grad_log_px(model):
    theta, phi = list(model.p_layers.parameters()), list(model.q_layers.parameters())
    exact = flat_grad(-log_px(model, X).mean(), theta)
    g = torch.Generator().manual_seed(0)

    def draw():
        model.zero_grad(set_to_none=True)
        props = sbn_gradients.propose(model, X, 2000, g)
        w = normalized_weights(props.log_p - props.log_q)
        sbn_gradients.add_wake_gradients(model, props, w)
        assert all(p.grad is None for p in phi)          # wake-P touches P only
        return torch.cat([p.grad.flatten() for p in theta])

    est, _ = mc_mean(draw, 10)
    assert rel_err(est, exact) < 0.03


def test_closed_form_wake_q_and_sleep_q_approach_their_exact_gradients(model):
    theta, phi = list(model.p_layers.parameters()), list(model.q_layers.parameters())
    g = torch.Generator().manual_seed(1)

    def wake():
        model.zero_grad(set_to_none=True)
        props = sbn_gradients.propose(model, X, 2000, g)
        w = normalized_weights(props.log_p - props.log_q)
        sbn_gradients.add_wake_gradients(model, props, torch.zeros_like(w), w)
        return torch.cat([p.grad.flatten() for p in phi])

    def sleep():
        model.zero_grad(set_to_none=True)
        sbn_gradients.add_sleep_gradients(model, 20000, g)
        assert all(p.grad is None for p in theta)        # sleep-Q touches Q only
        return torch.cat([p.grad.flatten() for p in phi])

    def sleep_beside_proposals():      # dreams sharing Q's GEMMs with a step's proposals
        model.zero_grad(set_to_none=True)
        props = sbn_gradients.propose(model, X, 1, g, model.sample_p(20000, g))
        sbn_gradients.add_wake_gradients(model, props, torch.zeros_like(props.log_p))
        return torch.cat([p.grad.flatten() for p in phi])

    est, _ = mc_mean(wake, 10)
    assert rel_err(est, flat_grad(kl_posterior_q(model, X).mean(), phi)) < 0.03
    exact = flat_grad(-expected_log_q_under_p(model), phi)
    for estimator in (sleep, sleep_beside_proposals):
        est, se = mc_mean(estimator, 20)
        assert ((est - exact).abs() < 5 * se + 1e-6).all() and rel_err(est, exact) < 0.03


@pytest.mark.parametrize("spec", ["nade[hidden=4]:3", "sbn[clamp=1]:3", "darn[clamp=1]:3",
                                  "sbn/nade[hidden=4]:3-2", "dsbn[hidden=4]:3", "gauss:2"])
def test_other_layer_families_use_autograd(spec):
    assert not sbn_gradients.supported(zoo.build(spec, 5))


def test_train_step_uses_the_closed_form_for_sbn(monkeypatch):
    model = tiny_model("sbn:6-4", n_data=8)
    method = methods.build("rws", model, 3)
    monkeypatch.setattr(method, "loss", lambda *a: pytest.fail("autograd path taken"))
    opt = OPTIMIZERS["adam"](method.param_groups(1e-3))
    before = [p.detach().clone() for p in model.parameters()]
    stepped, ll = train_step(method, opt, (torch.rand(10, 8) < 0.5).float(), None, 4)
    assert stepped and torch.isfinite(ll)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_nonfinite_weights_are_reported():
    model = tiny_model("sbn:6-4", n_data=8)
    with torch.no_grad():
        model.p_layers[0].W[0, 0] = float("nan")
    finite, _ = methods.build("rws", model, 3).backward((torch.rand(4, 8) < 0.5).float())
    assert not bool(finite)
    darn = methods.build("rws", tiny_model("darn:4", n_data=8), 3)     # autograd's check
    with torch.no_grad():
        darn.model.p_layers[0].b[0] = float("nan")
    assert not bool(darn.backward((torch.rand(4, 8) < 0.5).float())[0])



def test_autograd_backward_reports_a_nonfinite_gradient_of_a_finite_loss():
    class SqrtAtZero(Method):            # loss sqrt(0 * b) = 0, gradient 0 * inf = NaN
        def loss(self, x, generator=None):
            b = self.model.p_layers[0].b
            return torch.sqrt(b[0] * 0.0), {"train_ll": torch.zeros(())}

    m = SqrtAtZero(tiny_model("sbn:6-4", n_data=8), 1)
    finite, _ = m.backward(torch.zeros(2, 8))
    assert not bool(finite)
    opt = OPTIMIZERS["adam"](m.param_groups(1e-3))
    before = [p.detach().clone() for p in m.parameters()]
    assert train_step(m, opt, torch.zeros(2, 8), None, 2) == (False, 0.0)
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))


@pytest.mark.parametrize("spec,bounded", [("nade[hidden=5]:4", True), ("sbn[clamp=1]:4-3", True),
                                          ("sbn/nade[hidden=3]:4", True),
                                          ("dsbn[hidden=5,act=tanh]:4", False), ("gauss:3", False)])
def test_rws_checks_the_gradient_norm_only_where_a_finite_loss_does_not_bound_it(
        spec, bounded, monkeypatch):
    """RWS by autograd (NADE, clamped layers) skips the gradient-norm check where every
    layer's gradient is bounded when the loss is finite (``methods.bounded_gradient``):
    with parameters of order 1e6 (saturated units) it is finite when reported finite;
    a NaN parameter makes the loss NaN, reported as such; deterministic MLPs and
    Gaussians keep the check."""
    norms = []
    get_total_norm = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm",
                        lambda grads: norms.append(1) or get_total_norm(grads))
    model = tiny_model(spec, n_data=8, seed=1)
    assert methods.bounded_gradient(model) is bounded
    assert not sbn_gradients.supported(model)                   # (the autograd path)
    if bounded:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1e6)
    m = methods.build("rws", model, 4)
    x = (torch.rand(16, 8, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    finite, _ = m.backward(x, torch.Generator().manual_seed(3))
    assert bool(finite)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert len(norms) == (0 if bounded else 1)
    with torch.no_grad():
        next(model.p_layers[0].parameters()).view(-1)[0] = float("nan")
    m.zero_grad()
    assert not bool(m.backward(x, torch.Generator().manual_seed(3))[0])


@pytest.mark.parametrize("spec", ["sbn:6-4-3", "darn:6-4-3"])
@pytest.mark.parametrize("method,K", [("rws", 4), ("ws", 1), ("vimco", 4)])
def test_closed_form_gradient_is_finite_when_reported_finite(method, K, spec):
    """The closed form skips the gradient-norm check: its gradient is bounded whenever
    the loss is finite, even for saturated units (logits of order 1e6)."""
    model = tiny_model(spec, n_data=8, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e6)
    m = methods.build(method, model, K)
    x = (torch.rand(16, 8, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    finite, _ = m.backward(x, torch.Generator().manual_seed(3))
    assert bool(finite)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
