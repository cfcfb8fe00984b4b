"""The compiled Bernoulli sampler (``rws.bernoulli_kernel``) against torch's operations,
its definition (``layers.bernoulli.exact_tails``), and against the true probabilities
at the lattice's ends."""
import pytest
import torch

from rws import bernoulli_kernel, rng
from rws.layers import bernoulli

pytestmark = pytest.mark.skipif(not bernoulli_kernel.available(), reason="numba is not installed")


def _draw(monkeypatch, numba: str, p, seed, n, logits):
    monkeypatch.setenv("RWS_NUMBA", numba)
    g = torch.Generator().manual_seed(seed)
    x = bernoulli.bernoulli_draw(p, g, n, logits)
    return x, torch.rand(4, generator=g)        # and what the generator gives next


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, n", [((25, 1, 784), None), ((25, 1, 200), 5),
                                      ((1, 1, 200), 25), ((7, 3, 11), None), ((30, 1, 5), 400),
                                      ((3, 1, 4, 5), 2), ((40,), None)])
@pytest.mark.parametrize("scale", [1.0, 25.0, 70.0])
@pytest.mark.parametrize("with_logits", [True, False])
def test_kernel_draws_what_the_torch_operations_draw(monkeypatch, dtype, shape, n, scale,
                                                     with_logits):
    """The same x from the same generator, which is then left in the same state, for
    layouts with one probability row per n draws and with one per draw, logits far into
    both tails (scale 70: many units beyond float32's sigmoid) and float32/float64."""
    a = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * scale).to(dtype)
    p = torch.sigmoid(a)
    logits = a if with_logits else None
    x_kernel, next_kernel = _draw(monkeypatch, "1", p, 7, n, logits)
    x_torch, next_torch = _draw(monkeypatch, "0", p, 7, n, logits)
    assert x_kernel.dtype == x_torch.dtype == dtype and x_kernel.shape == x_torch.shape
    assert torch.equal(x_kernel, x_torch)
    assert torch.equal(next_kernel, next_torch)


def test_kernel_serves_the_samplers_layouts():
    """``draw`` takes the layouts the layers and the closed-form proposals hand it (it
    returns None, and the torch operations serve, for any other)."""
    g = torch.Generator().manual_seed(0)
    for shape, p_shape in [((25, 1, 784), (25, 1, 784)), ((25, 5, 200), (25, 1, 200)),
                           ((1, 25, 200), (1, 1, 200))]:
        p = torch.rand(p_shape)
        assert bernoulli_kernel.draw(shape, p, g, p.logit()) is not None
    p = torch.rand(1, 200)                                    # another broadcast
    state = g.get_state()
    assert bernoulli_kernel.draw((25, 200), p, g) is None
    assert torch.equal(g.get_state(), state)                  # and nothing was drawn


@pytest.mark.parametrize("logit", [-40.0, -16.0, 20.0, 40.0])
@pytest.mark.parametrize("k", [0, 1, 2**24 - 2, 2**24 - 1])
@pytest.mark.parametrize("with_logits", [True, False])
def test_kernel_draws_at_the_lattices_ends_follow_the_true_probabilities(monkeypatch, logit, k,
                                                                         with_logits):
    """u = k / 2^24 everywhere: a draw is 1 with probability clip(p 2^24 - k, 0, 1) at the
    low end and 0 with probability clip((1 - p) 2^24 - (2^24 - 1 - k), 0, 1) at the high
    end (as ``tests/test_layers.py`` checks of ``exact_tails``). From p alone the high
    end resolves no better than float32's p (1 - p = 0 above a logit of 16.6)."""
    m = 100_000
    monkeypatch.setattr(rng, "uniform", lambda shape, g=None, device=None, dtype=torch.float32:
                        torch.full(shape, k * 2.0 ** -24, dtype=dtype))
    monkeypatch.setattr(rng, "FAST_MIN", m + 1)    # not streamed: the draws take these u
    c = torch.full((m, 1, 1), logit)
    p = torch.sigmoid(c)
    x = bernoulli.bernoulli_draw(p, torch.Generator().manual_seed(k), None,
                                 c if with_logits else None)
    low = k < 2 ** 23
    if with_logits:
        s = torch.sigmoid(torch.tensor(logit if low else -logit, dtype=torch.float64)).item()
    else:
        s = p.double()[0, 0, 0].item() if low else 1 - p.double()[0, 0, 0].item()
    expected = min(max(s * 2 ** 24 - (k if low else 2 ** 24 - 1 - k), 0.0), 1.0)
    tail = (x if low else 1 - x).mean().item()     # the tail value's frequency
    sd = (expected * (1 - expected) / m) ** 0.5
    assert abs(tail - expected) <= 5 * sd + 1e-12, (tail, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_draws_make_rng_uniforms_numbers_in_the_loop(monkeypatch, dtype):
    """Where ``rng.uniform`` would take an SFC64 stream, ``draw`` makes the same numbers
    inside its comparison (it no longer calls ``rng.uniform``), lists the same tail
    draws as a search of those numbers, and compares with the same u."""
    import numpy as np
    from rws import ar_kernels, sfc64
    A, n, R = 30, 5, 200
    p = torch.rand(A, 1, R, generator=torch.Generator().manual_seed(3), dtype=dtype)
    u = np.empty(A * n * R, p.numpy().dtype)
    sfc64.lattice_uniforms(12345, u)
    x = np.empty((A, n, R), u.dtype)
    idx, ut = np.empty(u.size, np.int64), np.empty(u.size, u.dtype)
    m = bernoulli_kernel._stream_compare(12345, p.numpy(), x, idx, ut)
    tail = u.dtype.type(rng.TAIL_CELLS * 2.0 ** -24)
    expected = np.empty(u.size, np.int64)
    m_search = ar_kernels.tail_search(u, tail, 1 - tail, expected)
    assert m == m_search > 0
    assert np.array_equal(idx[:m], expected[:m]) and np.array_equal(ut[:m], u[expected[:m]])
    assert np.array_equal(x.reshape(-1), (u.reshape(A, n, R) < p.numpy()).reshape(-1))

    def no_uniforms(*args, **kwargs):
        raise AssertionError("the streamed draws called rng.uniform")
    monkeypatch.setattr(rng, "uniform", no_uniforms)
    assert bernoulli_kernel.draw((A, n, R), p, torch.Generator().manual_seed(0)) is not None
