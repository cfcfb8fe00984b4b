"""The fast paths give what the plain computation gives: int8 products with a binary
operand, the data term scored once per point, and the NumPy-filled uniforms."""
import math

import pytest
import torch
from scipy import stats

from rws import int8, methods, rng
from rws.estimate import log_likelihood
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


def test_fast_uniforms_follow_the_generator_state():
    a = rng.uniform((200, 200), torch.Generator().manual_seed(5))
    b = rng.uniform((200, 200), torch.Generator().manual_seed(5))
    c = rng.uniform((200, 200), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_evaluation_rejects_non_binary_data():
    model = tiny_model("sbn:3", n_data=4)
    with pytest.raises(ValueError, match="binary"):
        log_likelihood(model, torch.tensor([[0.0, 0.5, 1.0, 1.0]]), 4)
