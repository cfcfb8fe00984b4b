"""The compiled Bernoulli log-probability (``rws.logprob_kernel``) against the float64
definition sum_i x_i a_i - softplus(a_i), in every layout the layers hand it, and
against torch where logits are not finite."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rws import logprob_kernel
from rws.layers import bernoulli

pytestmark = pytest.mark.skipif(not logprob_kernel.available(), reason="numba is not installed")


def _exact(a, x):
    return (x.double() * a.double() - F.softplus(a.double())).sum(-1)


def test_softplus_of_single_logits_is_within_float32_rounding():
    """One unit per row, logits from -100 to 100 and far beyond the exponential's clamp:
    within half a float32 unit of the result plus 1e-7 (e^-|a| by a polynomial with
    relative error 2e-7, the rest in float64)."""
    grid = np.concatenate([np.linspace(-100, 100, 200_001), [-1e4, -126, -88, 88, 126, 1e4]])
    a = torch.tensor(grid, dtype=torch.float32)[:, None]
    want = F.softplus(a.double()).sum(-1)
    err = (logprob_kernel.softplus_sum(a).double() - want).abs()
    assert (err <= 2.0 ** -24 * want + 1e-7).all(), (err - 2.0 ** -24 * want).max()


@pytest.mark.parametrize("shape_a, shape_x", [
    ((25, 5, 784), (25, 1, 784)),     # P's first layer: the data point under K proposals
    ((25, 1, 200), (25, 5, 200)),     # Q's first layer: one row of logits, K samples
    ((1, 200), (25, 5, 200)),         # an SBN's top prior
    ((125, 784), (125, 784)),
    ((784,), (784,)),
    ((3, 2, 5, 7), (3, 1, 1, 7)),
    ((2, 3, 2500), (2, 3, 2500)),     # beyond one block of the float64 product
])
def test_log_prob_is_as_accurate_as_the_float32_torch_operations(shape_a, shape_x):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(shape_a, generator=g) * 6
    a.view(-1)[:8] = torch.tensor([0.0, 1e-8, 30, -30, 90, -90, 1e4, -1e4])
    x = (torch.rand(shape_x, generator=g) < 0.3).float()
    got = logprob_kernel.log_prob(a, x)
    exact = _exact(a, x)
    assert got.shape == exact.shape and got.dtype == torch.float32
    plain = ((x * a).sum(-1) - F.softplus(a).sum(-1)).double()
    bound = torch.maximum((plain - exact).abs().max(), 2.0 ** -23 * exact.abs().max())
    assert (got.double() - exact).abs().max() <= bound


def test_softplus_sum_does_not_overflow_its_products():
    zeros = torch.zeros(3, 1 << 14)                      # every factor 2: 2^16384 in all
    assert torch.allclose(logprob_kernel.softplus_sum(zeros),
                          torch.full((3,), (1 << 14) * math.log(2)))


def test_non_finite_logits_give_what_torch_gives():
    a = torch.randn(5, 300) * 3
    a[0, 5], a[1, 3], a[2, 7], a[3, 9] = math.nan, math.inf, -math.inf, math.inf
    x = torch.zeros(5, 300)
    x[3, 9] = x[2, 8] = 1                                # +inf meets 1 in row 3
    plain = (x * a).sum(-1) - F.softplus(a).sum(-1)
    assert torch.equal(logprob_kernel.log_prob(a, x).isnan(), plain.isnan())
    sp = logprob_kernel.softplus_sum(a)
    want = F.softplus(a).sum(-1)
    assert sp[0].isnan() and sp[1] == math.inf
    assert torch.allclose(sp[2:], want[2:])              # softplus(-inf) = 0


def test_other_layouts_dtypes_and_gradients_go_to_torch():
    a = torch.randn(4, 3, 10)
    x = (torch.rand(1, 3, 10) < 0.5).float()            # shares a middle dim only
    assert logprob_kernel.log_prob(a, x) is None
    assert logprob_kernel.log_prob(a.double(), x.double()) is None
    assert logprob_kernel.softplus_sum(a.double()) is None
    a.requires_grad_(True)
    assert logprob_kernel.log_prob(a, x[0]) is None and logprob_kernel.softplus_sum(a) is None
    out = bernoulli.bernoulli_log_prob(a, x)             # the torch operations, with a graph
    assert torch.allclose(out.double(), _exact(a.detach(), x), atol=1e-4)
    out.sum().backward()
    assert torch.allclose(a.grad, (x - torch.sigmoid(a.detach())).expand_as(a))


def test_layers_score_their_layouts_as_the_float64_definition():
    """An SBN's layers through the kernel in each layout they hand it (value once per
    point under K contexts, equal rows, the top prior's one row of logits, Q's logits
    once per point under K samples) against the float64 definition on the same logits."""
    from rws import zoo
    torch.manual_seed(0)
    model = zoo.build("sbn:200", 784)
    p0, top, q0 = model.p_layers[0], model.p_layers[1], model.q_layers[0]
    x = (torch.rand(6, 784) < 0.2).float()
    h = (torch.rand(30, 200) < 0.5).float()
    with torch.no_grad():
        x5 = x.repeat_interleave(5, 0)
        cases = [(p0.log_prob(x, h), _exact(p0.logits(h), x5)),
                 (p0.log_prob(x5, h), _exact(p0.logits(h), x5)),
                 (top.log_prob(h), _exact(top.logits(None), h)),
                 (q0.log_prob(h, x), _exact(q0.logits(x).repeat_interleave(5, 0), h))]
    for got, exact in cases:
        assert got.shape == exact.shape
        assert torch.allclose(got.double(), exact, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("shape_a, shape_x", [((25, 5, 784), (25, 1, 784)),
                                              ((25, 1, 200), (25, 5, 200)),
                                              ((1, 200), (25, 5, 200)),
                                              ((2, 2500), (2, 2500))])
def test_probs_are_the_sigmoids_of_the_logits_as_given(shape_a, shape_x):
    """sigmoid(a) from the pass's exponentials, in a's shape (not broadcast), within
    2e-7 of float64 (about two float32 roundings of values below 1); the same
    log-probabilities as without."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(shape_a, generator=g) * 8
    a.view(-1)[:4] = torch.tensor([0.0, 90.0, -90.0, -1e4])
    x = (torch.rand(shape_x, generator=g) < 0.3).float()
    out, s = logprob_kernel.log_prob(a, x, probs=True)
    assert s.shape == a.shape and torch.equal(out, logprob_kernel.log_prob(a, x))
    assert (s.double() - torch.sigmoid(a.double())).abs().max() <= 2e-7


@pytest.mark.parametrize("shape_a, shape_x", [((25, 5, 784), (25, 1, 784)),
                                              ((25, 1, 200), (25, 5, 200)),
                                              ((1, 200), (25, 5, 200)),
                                              ((4, 3, 10), (1, 3, 10))])   # torch inside
def test_log_prob_with_a_gradient_matches_float64_autograd(shape_a, shape_x):
    """``bernoulli_log_prob`` recording a gradient (the compiled pass, with the
    gradient x - sigmoid(a) from its sigmoids, summed over broadcast dims): values and
    gradients to both inputs against autograd of the definition in float64."""
    g = torch.Generator().manual_seed(3)
    a = (torch.randn(shape_a, generator=g) * 4).requires_grad_()
    x = (torch.rand(shape_x, generator=g) < 0.3).float().requires_grad_()
    out = bernoulli.bernoulli_log_prob(a, x)
    weights = torch.randn(out.shape, generator=g)
    out.backward(weights)
    a64, x64 = (t.detach().double().requires_grad_() for t in (a, x))
    exact = _exact(a64, x64)
    exact.backward(weights.double())
    assert (out.double() - exact.detach()).abs().max() <= 1e-6 * exact.abs().max() + 1e-5
    assert (a.grad.double() - a64.grad).abs().max() <= 1e-6 * weights.abs().max() * 5
    assert torch.allclose(x.grad.double(), x64.grad, rtol=1e-6, atol=1e-5)


def _exact_clamped(a, x):
    p = 0.9999 * torch.sigmoid(a.double()) + 5e-6
    return (x.double() * torch.log(p) + (1 - x.double()) * torch.log(1 - p)).sum(-1)


@pytest.mark.parametrize("shape_a, shape_x", [((64, 126), (64, 126)),
                                              ((25, 5, 784), (25, 1, 784)),
                                              ((25, 1, 200), (25, 5, 200)),
                                              ((1, 200), (25, 5, 200)),
                                              ((3, 2500), (3, 2500))])
def test_clamped_log_prob_matches_the_float64_definition(shape_a, shape_x):
    """Under the original code's clamped sigmoid, logits far into both tails (where
    1 - p meets its floor 9.5e-5, which float32's p resolves to 6e-4 only): within
    1e-8 per unit of float64, where torch's float32 operations are 1e-2 off."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(shape_a, generator=g) * 12
    a.view(-1)[:4] = torch.tensor([0.0, 90.0, -90.0, 1e4])
    x = (torch.rand(shape_x, generator=g) < 0.3).float()
    got = logprob_kernel.log_prob(a, x, clamp=True)
    assert got.shape == torch.broadcast_shapes(a.shape, x.shape)[:-1]
    err = (got.double() - _exact_clamped(a, x)).abs()
    assert (err <= 2.0 ** -24 * _exact_clamped(a, x).abs() + 1e-8 * a.shape[-1]).all()
    assert torch.allclose(bernoulli.bernoulli_log_prob(a, x, clamp=True), got)


def test_clamped_log_prob_of_non_finite_logits_is_torch_s():
    a = torch.randn(3, 100)
    a[0, 3], a[1, 2], a[2, 4] = math.nan, math.inf, -math.inf
    x = (torch.rand(3, 100, generator=torch.Generator().manual_seed(5)) < 0.5).float()
    got = logprob_kernel.log_prob(a, x, clamp=True)
    assert got[0].isnan() and torch.allclose(got[1:].double(), _exact_clamped(a, x)[1:])
    assert logprob_kernel.log_prob(a, x, probs=True, clamp=True) is None
