"""The fast paths give what the plain computation gives: int8 products with a binary
operand, the data term scored once per point, and the NumPy-filled uniforms; bfloat16
weight gradients stay far inside the estimator's own noise."""
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from rws import bf16, int8, layers, methods, rng
from rws.estimate import log_likelihood
from rws.methods import Method
from rws.train import OPTIMIZERS, train_step
from tests.conftest import tiny_model


@pytest.mark.parametrize("shape", [(1, 2, 3), (7, 5, 3), (300, 200, 784), (3, 784, 200)])
def test_int8_binary_product_is_as_exact_as_float32(shape):
    N, k, n = shape
    torch.manual_seed(0)
    W, b = torch.randn(n, k) * 0.3, torch.randn(n)
    W[0] = 0.0                                        # an all-zero row has no step
    y = (torch.rand(N, k) < 0.3).float()
    exact = torch.addmm(b.double(), y.double(), W.double().t())
    err_int8 = (int8.binary_linear(y, *int8.split(W), b).double() - exact).abs().max()
    err_f32 = (torch.addmm(b, y, W.t()).double() - exact).abs().max()
    # float32 rounding of the result is the floor; the split adds at most ~2^-24 |W|max
    assert err_int8 <= 2 * err_f32 + 1e-7 * k * W.abs().max()


@pytest.mark.parametrize("shape", [(1, 2, 3), (300, 200, 784), (1024, 784, 200)])
def test_int8_recombination_compiled_gives_the_torch_operations_values(monkeypatch, shape):
    """The compiled recombination of the three int32 products (``int8._combine``) rounds
    as torch's add and addcmul do (fused multiply-adds)."""
    pytest.importorskip("numba")
    N, k, n = shape
    torch.manual_seed(1)
    W, b = torch.randn(n, k) * 0.3, torch.randn(n)
    y = (torch.rand(N, k) < 0.3).float()
    pieces = int8.split(W)
    compiled = int8.binary_linear(y, *pieces, b)
    monkeypatch.setenv("RWS_NUMBA", "0")
    assert torch.equal(compiled, int8.binary_linear(y, *pieces, b))


def test_int8_path_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("RWS_INT8", "1")
    assert not int8.enabled(cpu)                      # only inside an evaluation block
    with int8.evaluation():
        assert int8.enabled(cpu) and not int8.enabled(torch.device("meta"))
        with int8.turned_off():
            assert not int8.enabled(cpu)
        monkeypatch.setenv("RWS_INT8", "0")
        assert not int8.enabled(cpu)


@pytest.mark.parametrize("spec", ["sbn:6-3", "dsbn[hidden=4]:6", "sbn/nade:4"])
def test_evaluation_fast_paths_agree_with_the_plain_computation(spec, monkeypatch):
    """Inference (int8 products, data term once per point) vs. training-mode scoring of
    the same proposals (float32, x repeated) on a model big enough to use both."""
    model = tiny_model(spec, n_data=40, seed=3, scale=0.5)
    x = (torch.rand(5, 40, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    monkeypatch.setenv("RWS_INT8", "1")
    with torch.inference_mode(), int8.evaluation():
        fast = model.log_weights(x, 64, torch.Generator().manual_seed(7))
    monkeypatch.setenv("RWS_INT8", "0")
    with torch.enable_grad():
        hs, log_q = model.sample_q(x, 64, torch.Generator().manual_seed(7))
        hs[0] = x.repeat_interleave(64, 0)
        plain = (torch.stack(model.log_p_layers(hs)).sum(0)
                 - torch.stack(log_q).sum(0)).view(5, 64)
    assert torch.allclose(fast, plain.detach(), rtol=1e-5, atol=1e-4)


def test_evaluations_between_training_steps_use_the_current_weights(monkeypatch):
    """Validation during training: fused Adam updates the weights in place without
    bumping their version counter, so pieces must not outlive an evaluation."""
    model = tiny_model("sbn:8", n_data=30, seed=0, scale=0.3)
    method = methods.build("rws", model, 4)
    opt = OPTIMIZERS["adam"](method.param_groups(0.05))
    x = (torch.rand(20, 30, generator=torch.Generator().manual_seed(2)) < 0.4).float()

    def ll(setting):
        monkeypatch.setenv("RWS_INT8", setting)
        return log_likelihood(model, x, 32, generator=torch.Generator().manual_seed(0)).mean

    g = torch.Generator().manual_seed(1)
    before = ll("1")
    for _ in range(5):
        train_step(method, opt, x, g, 20)
    after = ll("1")
    assert after != before and after == pytest.approx(ll("0"), abs=1e-4)


@pytest.mark.parametrize("shape", [(7, 5, 3), (500, 200, 784), (100, 784, 200)])
def test_bf16_weight_gradient_within_its_rounding_bound(shape):
    N, k, n = shape
    torch.manual_seed(0)
    W = (torch.randn(n, k) * 0.3).requires_grad_()
    b = torch.randn(n).requires_grad_()
    y = (torch.rand(N, k) < 0.3).float()
    G = torch.randn(N, n)
    a = bf16.binary_linear(y, W, b)
    assert torch.equal(a, torch.addmm(b, y, W.t()))      # the forward pass is float32's
    a.backward(G)
    exact = G.double().t() @ y.double()                   # [n, k]
    # G rounded to bfloat16 (unit roundoff 2^-8), float32 sums, the result rounded (2^-8)
    bound = 2 ** -7 * (G.double().abs().t() @ y.double()) + 1e-6
    assert ((W.grad.double() - exact).abs() <= bound).all()
    assert torch.equal(b.grad, G.sum(0))
    with pytest.raises(ValueError, match="must not require a gradient"):
        bf16.binary_linear(y.requires_grad_(), W, b)


@pytest.mark.parametrize("closed_form", [False, True])
def test_bf16_rws_gradient_error_is_far_below_its_monte_carlo_noise(closed_form):
    """Same samples (the forward pass is unchanged), float32 vs bfloat16 weight
    gradients, against the spread of the float32 gradient over fresh samples; through
    autograd (``binary_linear``) and in the closed form (``rws.sbn_gradients``)."""
    model = tiny_model("sbn:30", n_data=60, seed=1, scale=0.3)
    method = methods.build("rws", model, 5)
    x = (torch.rand(50, 60, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    backward = method.backward if closed_form else partial(Method.backward, method)

    def grads(seed, on):
        model.zero_grad(set_to_none=True)
        with bf16.weight_gradients(on):
            _, stats = backward(x, torch.Generator().manual_seed(seed))
        return stats["train_ll"], [p.grad.clone() for p in model.parameters()]

    ll32, g32 = grads(0, False)
    ll16, g16 = grads(0, True)
    assert torch.equal(ll32, ll16)
    spread = [torch.stack(s).std(0) for s in zip(*(grads(s, False)[1] for s in range(1, 17)))]
    for a, c, sd in zip(g32, g16, spread):
        if a.dim() == 2:                                  # the weights: bfloat16 products
            assert not torch.equal(a, c)
            assert (a - c).norm() < 0.02 * sd.norm(), ((a - c).norm(), sd.norm())
        else:                                             # biases: float32 sums as before
            assert torch.allclose(a, c, rtol=1e-6, atol=1e-7)


def test_fast_uniforms_are_uniform_on_the_float32_lattice():
    g = torch.Generator().manual_seed(0)
    u = rng.uniform((300, 1000), g)                   # large: the NumPy path
    assert u.shape == (300, 1000) and u.dtype == torch.float32
    assert 0 <= u.min() and u.max() < 1
    assert torch.equal(u * 2 ** 24, (u * 2 ** 24).round())
    assert stats.kstest(u.flatten()[:100_000].numpy(), "uniform").pvalue > 1e-4
    # consecutive values and the two halves of each 64-bit word are uncorrelated
    v = u.flatten().double()
    assert abs(torch.corrcoef(torch.stack([v[:-1], v[1:]]))[0, 1]) < 5 / math.sqrt(v.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_uniforms_are_torchs_draws_on_the_lattice(dtype):
    """Below ``FAST_MIN`` numbers the uniforms are torch.rand's float32 draws as they are
    (k / 2^24 on a CPU, which the tail refinement relies on), in the asked dtype."""
    u = rng.uniform((20, 50), torch.Generator().manual_seed(3), dtype=dtype)
    assert u.dtype == dtype and u.numel() < rng.FAST_MIN
    assert torch.equal(u * 2 ** 24, (u * 2 ** 24).floor())
    assert torch.equal(u, torch.rand((20, 50), generator=torch.Generator().manual_seed(3)).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 123456789012345678, 2**62 - 1])
def test_compiled_sfc64_gives_numpys_numbers(monkeypatch, dtype, seed):
    """``rws.sfc64`` against NumPy's SeedSequence, SFC64 and lattice conversion, bit for
    bit: the seeding state for seeds of one and two 32-bit words, and rng.uniform's
    numbers for even and odd lengths, with the compiled path on and off."""
    from rws import sfc64
    if sfc64.numba is None:
        pytest.skip("numba is not installed")
    want = np.random.SeedSequence(seed).generate_state(3, np.uint64)
    assert (sfc64.seed_state(seed) == want).all()
    for n in (1, 2, 7, rng.FAST_MIN + 1):
        u = np.empty(n, {torch.float32: np.float32, torch.float64: np.float64}[dtype])
        sfc64.lattice_uniforms(seed, u)
        raw = np.random.SFC64(seed).random_raw((n + 1) // 2).view(np.int32)[:n]
        assert (u == (raw & (2 ** 24 - 1)) * 2.0 ** -24).all(), n
    draws = {}
    for numba in ("1", "0"):
        monkeypatch.setenv("RWS_NUMBA", numba)
        g = torch.Generator().manual_seed(seed % 2**63)
        draws[numba] = (rng.uniform((3, rng.FAST_MIN // 3 + 1), g, dtype=dtype),
                        torch.rand(2, generator=g))
    assert all(torch.equal(a, b) for a, b in zip(draws["1"], draws["0"]))


def test_fast_uniforms_follow_the_generator_state():
    a = rng.uniform((200, 200), torch.Generator().manual_seed(5))
    b = rng.uniform((200, 200), torch.Generator().manual_seed(5))
    c = rng.uniform((200, 200), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_evaluation_rejects_non_binary_data():
    model = tiny_model("sbn:3", n_data=4)
    with pytest.raises(ValueError, match="binary"):
        log_likelihood(model, torch.tensor([[0.0, 0.5, 1.0, 1.0]]), 4)


@pytest.mark.parametrize("numba", ["1", "0"])       # the compiled pass and torch's groups
@pytest.mark.parametrize("shape", [(1000, 784), (3, 70000), (100, 5, 200), (700, 97)])
def test_softplus_sum_is_as_accurate_as_summed_float32_softplus(monkeypatch, shape, numba):
    monkeypatch.setenv("RWS_NUMBA", numba)
    torch.manual_seed(0)
    a = torch.randn(shape) * 6
    a.view(-1)[:10] = torch.tensor([0.0, 1e-8, -1e-8, 30, -30, 90, -90, 1e4, -1e4, 16])
    exact = F.softplus(a.double()).sum(-1)
    plain = (F.softplus(a).sum(-1).double() - exact).abs().max()
    grouped = (layers.softplus_sum(a).double() - exact).abs().max()
    assert grouped <= 3 * plain, (grouped, plain)


def test_softplus_sum_groups_do_not_overflow_and_gradients_still_flow(monkeypatch):
    monkeypatch.setenv("RWS_NUMBA", "0")
    zeros = torch.zeros(3, 1 << 14)                      # every factor 2: groups of 64 -> 2^64
    assert torch.allclose(layers.softplus_sum(zeros), torch.full((3,), (1 << 14) * math.log(2)))
    a = torch.randn(100, 1000, requires_grad=True)
    layers.softplus_sum(a).sum().backward()
    assert torch.allclose(a.grad, torch.sigmoid(a.detach()))
