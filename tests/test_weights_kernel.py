"""rws.weights_kernel: the normalised weights, log p^_K and the finiteness of an RWS loss
in one compiled pass, and ``rws.weigh``'s torch fallback, against float64 values and
IEEE's rules for the non-finite rows."""
import math

import pytest
import torch

from rws import rws, weights_kernel


def _exact(log_p, log_q):
    """The float64 definitions from the rounded log w (as both paths round it)."""
    log_w = (log_p - log_q).double()
    return torch.softmax(log_w, 1), (torch.logsumexp(log_w, 1) - math.log(log_w.shape[1])).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(25, 5), (3, 1), (7, 50), (1, 5000)])
def test_weights_and_estimate_match_float64(dtype, shape):
    if weights_kernel.numba is None:
        pytest.skip("numba is not installed")
    torch.manual_seed(0)
    log_p = (torch.randn(shape, dtype=dtype) * 30 - 100)
    log_q = torch.randn(shape, dtype=dtype) * 5 - 40
    w, ll, finite = weights_kernel.weigh(log_p, log_q)
    w_exact, ll_exact = _exact(log_p, log_q)
    # float32: one rounding of a float64 value; float64: a few ulps, the reference's own
    # sums and exponentials among them
    tol = 2 ** -23 if dtype == torch.float32 else 2 ** -49
    assert w.dtype == dtype and finite
    # (below the smallest normal number, the subnormals' spacing)
    assert torch.allclose(w.double(), w_exact, rtol=tol, atol=torch.finfo(dtype).tiny * tol)
    assert abs(ll - ll_exact.item()) <= 1e-12 * abs(ll_exact.item())
    assert torch.allclose(w.double().sum(1), torch.ones(shape[0], dtype=torch.float64))


@pytest.mark.parametrize("numba", ["1", "0"])        # the kernel and the torch operations
def test_non_finite_rows_are_what_the_torch_operations_give(monkeypatch, numba):
    monkeypatch.setenv("RWS_NUMBA", numba)
    inf, nan = math.inf, math.nan
    log_p = torch.tensor([[-1.0, -2.0, -3.0],       # finite
                          [-inf, -inf, -inf],       # no proposal possible
                          [-1.0, -inf, -2.0],       # one impossible proposal
                          [-1.0, nan, -2.0],
                          [inf, -1.0, -inf]])
    log_q = torch.zeros(5, 3)
    w, ll, finite = rws.weigh(log_p, log_q)
    assert w.shape == (5, 3) and ll.dtype == torch.float64 and finite.dtype == torch.bool
    assert not finite
    want, _ = _exact(log_p, log_q)
    assert torch.allclose(w[[0, 2]].double(), want[[0, 2]], rtol=4 * 2 ** -23) and w[2, 1] == 0
    assert torch.equal(w[1], torch.zeros(3))
    assert w[3].isnan().all() and w[4].isnan().all()
    assert ll.isnan()
    # without the NaN and -inf rows the mean estimate is +inf, without the NaN and +inf
    # rows -inf (and with both infinities NaN, as torch's mean)
    assert rws.weigh(log_p[[0, 2, 4]], log_q[:3])[1] == inf
    assert rws.weigh(log_p[[0, 1, 2, 4]], log_q[:4])[1].isnan()
    w, ll, finite = rws.weigh(log_p[:3], log_q[:3])
    assert ll == -inf and finite


@pytest.mark.parametrize("numba", ["1", "0"])        # the kernel and the torch operations
def test_rws_weigh_matches_float64_on_either_path(monkeypatch, numba):
    """``rws.weigh`` as RWS calls it (log p with a graph): detached weights within float32
    rounding of the float64 softmax, and the mean log p^ likewise, on both paths."""
    monkeypatch.setenv("RWS_NUMBA", numba)
    torch.manual_seed(1)
    log_p, log_q = torch.randn(25, 5) * 10 - 90, torch.randn(25, 5) * 3 - 60
    w, ll, finite = rws.weigh(log_p.requires_grad_(), log_q)
    w_exact, ll_exact = _exact(log_p.detach(), log_q)
    assert not w.requires_grad and bool(finite) and ll.dtype == torch.float64
    assert torch.allclose(w.double(), w_exact, rtol=4 * 2 ** -23, atol=1e-30)
    assert abs(ll.item() - ll_exact.item()) <= 1e-6 * abs(ll_exact.item())
