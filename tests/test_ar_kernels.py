"""The compiled kernels of NADE and DARN (rws.ar_kernels) against the vectorised
definition and the torch loops, in float32 and float64, and their samples against
exact probabilities."""
import numpy as np
import pytest
import torch

from rws import layers
from tests.exact import all_states
from tests.test_layers import N_X, N_Y, chi_square_pvalue, contexts, randomised

pytest.importorskip("numba")

PATHS = ["kernels", "torch"]
TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@pytest.fixture
def path(request, monkeypatch):
    monkeypatch.setenv("RWS_NUMBA", "1" if request.param == "kernels" else "0")
    return request.param


def vectorised_logits(x, b, c, W, V):
    """s_i = b_i + sigmoid(c + sum_{m<i} x_m W_m) . V[:, i], all units at once [R, D, H]."""
    contrib = x[:, :-1, None] * W[:-1]
    a = torch.nn.functional.pad(torch.cumsum(contrib, 1), (0, 0, 1, 0)) + c[:, None, :]
    return b + torch.einsum("rdh,hd->rd", torch.sigmoid(a), V)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.03, 0.3, 0.9])
def test_logits_and_gradients_match_the_vectorised_definition(path, dtype, density):
    """Sparse and dense x: the kernels evaluate sigmoid(a) again only where a unit
    x_i = 1 changed a (and at re-anchorings), so long runs of zeros reuse it."""
    g = torch.Generator().manual_seed(0)
    R, D, H = 17, 150, 7                     # two blocks of 8 rows and one more; more units
                                             # than one re-anchoring span (64)
    x = torch.bernoulli(torch.full((R, D), density), generator=g).to(dtype)
    x[0], x[1] = 0, 1                        # a row of zeros (one sigmoid), a row of ones
    b, c = (torch.randn(R, n, generator=g, dtype=dtype).requires_grad_() for n in (D, H))
    W = (0.3 * torch.randn(D, H, generator=g, dtype=dtype)).requires_grad_()
    V = torch.randn(H, D, generator=g, dtype=dtype).requires_grad_()
    up = torch.randn(R, D, generator=g, dtype=dtype)
    up[2, ::3] = 0                           # units with g_i = 0 (they add nothing to dV, d)
    want = vectorised_logits(x, b, c, W, V)
    want_grads = torch.autograd.grad((want * up).sum(), (b, c, W, V))
    got = layers.NADELogits.apply(x, b, c, W, V)
    assert torch.allclose(got, want, **TOL[dtype])
    for w, h in zip(want_grads, torch.autograd.grad((got * up).sum(), (b, c, W, V))):
        assert torch.allclose(h, w, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampled", [False, True])
def test_walk_saves_a_where_the_backward_pass_restarts(dtype, sampled):
    """The forward pass and the sampler save a_i = c + sum_{m<i} x_m W_m at units 0, 64,
    128 and a_D (the backward pass starts from them); without ``keep`` they save nothing
    and give the same logits and draws."""
    from rws import ar_kernels
    g = torch.Generator().manual_seed(3)
    R, D, H = 11, 150, 5
    x = torch.bernoulli(torch.full((R, D), 0.3), generator=g).to(dtype)
    b, c = torch.randn(R, D, generator=g, dtype=dtype), torch.randn(R, H, generator=g, dtype=dtype)
    W, VT = (0.3 * torch.randn(D, H, generator=g, dtype=dtype) for _ in range(2))
    uT = torch.rand(D, R, generator=g, dtype=dtype)
    arrays = [t.numpy() for t in (b, c, W, VT)]
    if sampled:
        run = lambda keep: ar_kernels.sample(*arrays, uT.numpy(), False, None, keep)
        x_kept, s_kept, saved = run(True)
        x_, s, empty = run(False)
        assert np.array_equal(x_kept, x_)
        x = torch.from_numpy(x_kept)
    else:
        run = lambda keep: ar_kernels.forward(x.numpy(), *arrays, keep)
        (s_kept, saved), (s, empty) = run(True), run(False)
    assert empty.size == 0 and np.array_equal(s_kept, s)
    want = [c + x[:, :i] @ W[:i] for i in (0, 64, 128, D)]
    assert saved.shape == (len(want), R, H)
    for got, w in zip(torch.from_numpy(saved), want):
        assert torch.allclose(got, w, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.2, 1.0])
@pytest.mark.parametrize("n_out", [None, 23])
def test_sparse_kernels_match_the_products(dtype, density, n_out):
    """x W and x^T G over x's nonzeros (any values, not only 1) against the GEMMs: a
    DARN's masked x (W * M) and (x^T G) * M (n_out None: W [D, D]) and the rectangular
    y U of its inputs (n_out = 23), with more units than one vector (16) and a ragged end."""
    from rws import ar_kernels
    from rws.layers import autoregressive
    g = torch.Generator().manual_seed(0)
    R, D = 7, 37
    x = torch.randn(R, D, generator=g, dtype=dtype) * (torch.rand(R, D, generator=g) < density)
    W = torch.randn(D, n_out or D, generator=g, dtype=dtype)
    G = torch.randn(R, n_out or D, generator=g, dtype=dtype)
    M = torch.triu(torch.ones(D, D, dtype=dtype), 1) if n_out is None else None
    masked = W * M if M is not None else W
    want_dW = x.t() @ G if M is None else (x.t() @ G) * M
    got = torch.from_numpy(ar_kernels.sparse_product(x.numpy(), W.numpy(), M is not None))
    assert torch.allclose(got, x @ masked, **TOL[dtype])
    got = torch.from_numpy(ar_kernels.sparse_weight_grad(x.numpy(), G.numpy(), M is not None))
    assert torch.allclose(got, want_dW, **TOL[dtype])
    # the layer's dispatch: the kernels up to SPARSE_SHARE of x nonzero, GEMMs above (and
    # always with RWS_NUMBA=0)
    assert autoregressive._sparse(x, W) == (ar_kernels.available()
                                            and density <= autoregressive.SPARSE_SHARE)
    assert torch.allclose(autoregressive.sparse_product(x, W, M), x @ masked, **TOL[dtype])
    assert torch.allclose(autoregressive.sparse_weight_grad(x, G, M), want_dW, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("family", ["nade", "darn"])
def test_kernels_draw_what_the_torch_loops_draw(monkeypatch, dtype, clamp, family):
    """The same uniforms, unit-major: the same samples (float64 exactly; float32 up to
    the rare draw within a rounding of its probability) and the same log-probabilities."""
    make = {"nade": lambda: layers.NADE(30, N_Y, hidden=6, clamp=clamp),
            "darn": lambda: layers.DARN(30, N_Y, clamp=clamp)}[family]
    layer = randomised(make, seed=4).to(dtype)
    y = contexts()[[1, 5]].to(dtype)
    out = {}
    for p in PATHS:
        monkeypatch.setenv("RWS_NUMBA", "1" if p == "kernels" else "0")
        with torch.no_grad():
            out[p] = layer.sample(y, 500, torch.Generator().manual_seed(3))
    (xk, lk), (xt, lt) = out["kernels"], out["torch"]
    agree = (xk == xt).all(1)
    assert agree.float().mean() >= (1.0 if dtype == torch.float64 else 0.99)
    assert torch.allclose(lk[agree], lt[agree], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clamp", [False, True])
def test_draw_thresholds_decide_as_the_probabilities_do(dtype, clamp):
    """[a > t(u)] against [u < p(a)] in float64 from the definition (p = sigmoid(a), or the
    original code's clamped 0.9999 sigmoid(a) + 5e-6), on uniforms that include 0, the
    clamp's ends and values near 1, where the decision is not within a rounding."""
    from rws.ar_kernels import draw_thresholds
    u = np.array([0.0, 1e-7, 4e-6, 5e-6, 6e-6, 0.1, 0.5, 0.73, 0.999, 0.99999, 0.9999999])
    a = np.linspace(-20, 20, 401)
    p = 1 / (1 + np.exp(-a))
    if clamp:
        p = 0.9999 * p + 5e-6
    want = u[:, None] < p[None, :]
    t = draw_thresholds(u[:, None].astype(dtype), clamp).astype(np.float64)
    got = a[None, :] > t
    near = np.abs(u[:, None] - p[None, :]) < 1e-6      # a float32 rounding of u or p
    assert (got == want)[~near].all()
    assert (got == want).mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clamp", [False, True])
def test_compiled_tail_thresholds_are_tail_thresholds(dtype, clamp):
    """``draw_thresholds`` with ``tail_v`` (a compiled search and refinement) against its
    definition in NumPy and torch: the plain thresholds with the draws near 0 and 1
    replaced by ``layers.bernoulli.tail_thresholds``' (rounded to the thresholds'
    dtype), on uniforms with many tail draws (every cell at both ends), the generator
    left in the same state."""
    pytest.importorskip("numba")
    from rws import rng
    from rws.ar_kernels import draw_thresholds
    from rws.layers.autoregressive import _tail_v
    g = torch.Generator().manual_seed(0)
    u = rng.uniform((300, 40), g, dtype=dtype)
    ends = torch.cat([torch.arange(300.0), 2 ** 24 - 1 - torch.arange(300.0)]) * 2.0 ** -24
    u[:, :2] = ends.view(2, 300).t().to(dtype)                      # 600 tail draws and more
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    got = draw_thresholds(u.numpy(), clamp, _tail_v(g1))
    want = draw_thresholds(u.numpy(), clamp)
    idx, t_tail = layers.bernoulli.tail_thresholds(u, g2, clamp)
    assert idx.shape[0] >= 600
    want.reshape(-1)[idx.numpy()] = t_tail.numpy()
    np.testing.assert_array_equal(got, want)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


FAMILIES = {"nade": (lambda: layers.NADETop(N_X, hidden=3), lambda: layers.NADE(N_X, N_Y, hidden=3)),
            "darn": (lambda: layers.DARNTop(N_X), lambda: layers.DARN(N_X, N_Y))}


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_samples_follow_the_exact_probabilities(path, dtype, family):
    g = torch.Generator().manual_seed(0)
    top = randomised(FAMILIES[family][0], seed=1, scale=1.0).to(dtype)
    cond = randomised(FAMILIES[family][1], seed=2, scale=1.0).to(dtype)
    X = all_states(N_X).to(dtype)
    with torch.no_grad():
        x, log_p = top.sample(None, 40000, g)
        assert torch.allclose(log_p, top.log_prob(x), **TOL[dtype])
        assert chi_square_pvalue(x, top.log_prob(X)) > 1e-4
        for y in contexts()[[0, 6]].to(dtype):
            x, log_p = cond.sample(y[None], 40000, g)
            assert torch.allclose(log_p, cond.log_prob(x, y.expand(len(x), -1)), **TOL[dtype])
            assert chi_square_pvalue(x, cond.log_prob(X, y.expand(len(X), -1))) > 1e-4


@pytest.mark.parametrize("family", ["nade", "darn"])
def test_scored_samples_carry_gradients_to_every_parameter(family):
    """sample(score=True) reuses the sampler's logits (NADE) or autoregressive term
    (DARN); its log-probability still differentiates to what log_prob's does."""
    make = {"nade": lambda: layers.NADE(12, N_Y, hidden=4), "darn": lambda: layers.DARN(12, N_Y)}
    layer = randomised(make[family], seed=5)
    y = contexts()[[2, 3]]
    x, log_p = layer.sample(y, 6, torch.Generator().manual_seed(1))
    got = torch.autograd.grad(log_p.sum(), list(layer.parameters()))
    want = torch.autograd.grad(layer.log_prob(x, y.repeat_interleave(6, 0)).sum(),
                               list(layer.parameters()))
    for w, h in zip(want, got):
        assert torch.allclose(h, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("family", ["nade", "darn"])
def test_units_far_in_the_tails_keep_their_value_at_the_lattices_ends(monkeypatch, path,
                                                                      clamp, family):
    """Every uniform 0, then every uniform at the lattice's top (1 - 2^-24), each standing
    for its cell of width 2^-24: units of logit -40 stay off and units of logit +40 stay
    on. On the lattice alone the first turned every unit on, and the second never drew
    a 0 above a logit of 16.6. Clamped, p lies in [5e-6, 1 - 9.5e-5], beyond both cells:
    every unit on in the first, off in the second."""
    from rws import rng
    logits = torch.tensor([-40.0, 40.0, -40.0, 40.0])
    layer = (layers.NADE(4, 1, hidden=2, clamp=clamp) if family == "nade"
             else layers.DARN(4, 1, clamp=clamp))
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        layer.b.copy_(logits)
    for value in (0.0, 1 - 2.0 ** -24):
        monkeypatch.setattr(rng, "uniform", lambda shape, g=None, device=None,
                            dtype=torch.float32: torch.full(shape, value, dtype=dtype))
        with torch.no_grad():
            x, _ = layer.sample(torch.zeros(1, 1), 1000, torch.Generator().manual_seed(0))
        want = torch.full((4,), float(value == 0)) if clamp else (logits > 0).float()
        assert (x == want).all(), (value, x.mean(0))


@pytest.mark.parametrize("logit", [-20.0, -17.0, 17.0, 20.0])
def test_tail_thresholds_draw_the_true_probability_within_the_end_cells(logit):
    """Given u in the first (or last) cell of the lattice, the draw is 1 (or 0) with
    probability p 2^24 (or (1 - p) 2^24), not always (or never) as u < p alone."""
    m, low = 200_000, logit < 0
    u = torch.full((1, m), 0.0 if low else 1 - 2.0 ** -24)
    idx, t = layers.bernoulli.tail_thresholds(u, torch.Generator().manual_seed(1))
    assert idx.shape[0] == m
    x = (logit > t).double()
    s = torch.sigmoid(torch.tensor(-abs(logit), dtype=torch.float64)).item() * 2 ** 24
    freq = (x if low else 1 - x).mean().item()
    assert abs(freq - s) <= 5 * (s * (1 - s) / m) ** 0.5


@pytest.mark.parametrize("logit, k", [(-40.0, 83), (-40.0, 84), (40.0, 2**24 - 1595),
                                      (40.0, 2**24 - 1594), (40.0, 2**24 - 1593)])
def test_clamped_tail_thresholds_draw_the_clamped_probability_within_the_end_cells(logit, k):
    """The original code's clamped p = 0.9999 sigmoid(a) + 5e-6 lies in [5e-6, 1 - 9.5e-5]:
    given u in cell k near either end, the draw is 1 with probability clip(p 2^24 - k, 0, 1).
    The cells chosen hold or border the clamp's ends (5e-6 2^24 = 83.9, 9.5e-5 2^24 =
    1593.8), where the high end's threshold once used 5e-6 instead of 9.5e-5 and drew
    saturated units on in cells where p says off."""
    m = 200_000
    u = torch.full((1, m), k * 2.0 ** -24)
    idx, t = layers.bernoulli.tail_thresholds(u, torch.Generator().manual_seed(k), clamp=True)
    assert idx.shape[0] == m
    x = (logit > t).double()
    p = 0.9999 * torch.sigmoid(torch.tensor(logit, dtype=torch.float64)).item() + 5e-6
    want = min(max(p * 2 ** 24 - k, 0.0), 1.0)
    freq = x.mean().item()
    assert abs(freq - want) <= 5 * (want * (1 - want) / m) ** 0.5 + 1e-12, (freq, want)


def test_float32_sigmoid_is_within_float32_rounding_of_the_definition():
    """The kernels' vectorising float32 sigmoid (``_sigmoid32``: exp(-a) = 2^n 2^f, 2^f
    by a degree-5 polynomial) within 3e-7 absolute everywhere, and relative to it
    within two roundings of t = -a log2(e) in float32 (ln 2 |t| 2^-23) plus 5e-7 where
    sigmoid(a) is a normal float32 (|a| < 80), against float64."""
    numba = pytest.importorskip("numba")
    from rws import ar_kernels
    sigmoid = numba.njit(ar_kernels._sigmoid32)

    @numba.njit
    def rows(a, out):
        for k in range(a.size):
            out[k] = sigmoid(a[k])
    a = np.concatenate([np.linspace(-80, 80, 400_001), [-1e4, -126, -88, 88, 126, 1e4]])
    a = a.astype(np.float32)
    out = np.empty_like(a)
    rows(a, out)
    got = out.astype(np.float64)
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-a.astype(np.float64)))
    assert np.abs(got - want).max() < 3e-7
    inner = np.abs(a) < 80
    a, got, want = a[inner], got[inner], want[inner]
    bound = np.log(2) * np.abs(a * np.log2(np.e)) * 2.0 ** -23 + 5e-7
    assert (np.abs(got - want) / want <= bound).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 200, 4097])
def test_tail_search_finds_every_tail_draw_in_order(dtype, n):
    """The block-skipping search against np.flatnonzero: lattice draws with hits placed
    at a block's first and last entries, in the remainder after the last whole block,
    and a block of hits only."""
    from rws import ar_kernels
    rng_ = np.random.default_rng(n)
    u = (rng_.integers(0, 1 << 24, n) * 2.0 ** -24).astype(dtype)
    lo, hi = dtype(2.0 ** -10), dtype(1 - 2.0 ** -10)
    for i, v in ((0, 0.0), (63, hi), (64, lo / 2), (n - 1, 1 - 2.0 ** -24)):
        if 0 <= i < n:
            u[i] = v
    if n >= 200:
        u[128:192] = 0.0
    idx = np.full(n, -1, np.int64)
    m = ar_kernels.tail_search(u, lo, hi, idx)
    want = np.flatnonzero((u < lo) | (u >= hi))
    assert m == want.size and np.array_equal(idx[:m], want)
