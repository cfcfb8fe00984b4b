"""rws.dlogits_kernel: dL/da = c w (sigmoid(a) - h) of sigmoid belief layers and its bias
sum, in one compiled pass, and ``sbn_gradients._dlogits``' torch fallback, both against
float64 values of the definition."""
import pytest
import torch

from rws import dlogits_kernel, sbn_gradients

# (p's shape, h's shape, w's shape or None, summed over s): the terms of
# ``add_wake_gradients``: P's layers (one row per proposal, the data shared by K), a top
# prior shared by every proposal, Q's first layer (logits shared by K, summed), dreams
TERMS = [((6, 5, 7), (6, 1, 7), (6, 5), False),
         ((6, 5, 7), (6, 5, 7), (6, 5), False),
         ((1, 1, 7), (6, 5, 7), (6, 5), True),
         ((6, 1, 7), (6, 5, 7), (6, 5), True),
         ((4, 1, 7), (4, 1, 7), None, False)]


def _draw(shape_p, shape_h, shape_w, dtype, g):
    p = torch.rand(shape_p, generator=g, dtype=dtype)
    h = (torch.rand(shape_h, generator=g) < 0.4).to(dtype)
    w = None if shape_w is None else torch.rand(shape_w, generator=g, dtype=dtype)
    return p, h, w


def _exact(p, h, w, c, summed):
    """The definition in float64: c w (p - h) as rows, or summed over s."""
    G = (p.double() - h.double()) * (c if w is None else c * w.double()[..., None])
    return G.sum(1) if summed else G.reshape(-1, G.shape[-1])


@pytest.mark.parametrize("numba", ["1", "0"])        # the kernel and the torch operations
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_and_bias_sums_match_float64(monkeypatch, numba, dtype):
    if numba == "1" and dlogits_kernel.numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setenv("RWS_NUMBA", numba)
    g = torch.Generator().manual_seed(0)
    eps = torch.finfo(dtype).eps
    for chosen in ([0], [1], [2], [3], [4], [3, 4], [0, 4]):   # one term, or stacked
        terms = [(*_draw(*TERMS[i][:3], dtype, g), 0.3, TERMS[i][3]) for i in chosen]
        out = dlogits_kernel.dlogits(terms, 7)
        assert (out is None) == (numba == "0")
        G, db = sbn_gradients._dlogits(terms, 7)
        exact = torch.cat([_exact(*t) for t in terms])
        bound = torch.cat([_exact(p, h, None if w is None else w.abs(), abs(c), summed)
                           for p, h, w, c, summed in terms]).abs()
        assert G.dtype == db.dtype == dtype and G.shape == exact.shape
        # each term rounded a few times (w c, p - h, the product, the sum over s)
        assert ((G.double() - exact).abs() <= 4 * eps * bound * 5 + 1e-300).all()
        # the row sum in the dtype: within rows x eps of the sum of |G|
        assert ((db.double() - exact.sum(0)).abs()
                <= (exact.shape[0] + 4) * eps * bound.sum(0)).all()


def test_non_contiguous_and_mixed_inputs():
    """Strided views are read as they are; mixed dtypes leave the work to torch."""
    g = torch.Generator().manual_seed(1)
    p, h, w = _draw((6, 5, 14), (6, 1, 7), (6, 10), torch.float32, g)
    p, w = p[..., ::2], w[:, ::2]                     # [6, 5, 7], [6, 5], strided
    G, db = sbn_gradients._dlogits([(p, h, w, 0.5, False)], 7)
    exact = _exact(p, h, w, 0.5, False)
    assert torch.allclose(G.double(), exact, rtol=1e-6, atol=1e-7)
    if dlogits_kernel.numba is not None:
        assert dlogits_kernel.dlogits([(p, h.double(), w, 0.5, False)], 7) is None
