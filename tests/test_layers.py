"""Every layer is a normalised distribution and samples from exp(log_prob)."""
import pytest
import torch
from scipy import stats

from rws import ar_kernels, layers
from tests.exact import all_states

N_X, N_Y = 4, 3

# name -> constructor of a small layer; conditional layers take (n_x, n_y).
TOP_LAYERS = {
    "sbn_top": lambda: layers.SBNTop(N_X),
    "sbn_top_clamped": lambda: layers.SBNTop(N_X, clamp=True),
    "darn_top": lambda: layers.DARNTop(N_X),
    "nade_top": lambda: layers.NADETop(N_X, hidden=3),
    "nade_top_clamped": lambda: layers.NADETop(N_X, hidden=5, clamp=True),
}
COND_LAYERS = {
    "sbn": lambda: layers.SBN(N_X, N_Y),
    "sbn_clamped": lambda: layers.SBN(N_X, N_Y, clamp=True),
    "dsbn_sigmoid": lambda: layers.DSBN(N_X, N_Y, hidden=(5,)),
    "dsbn_tanh_deep": lambda: layers.DSBN(N_X, N_Y, hidden=(5, 3), act="tanh"),
    "darn": lambda: layers.DARN(N_X, N_Y),
    "darn_clamped": lambda: layers.DARN(N_X, N_Y, clamp=True),
    "nade": lambda: layers.NADE(N_X, N_Y, hidden=3),
    "mlp_bernoulli": lambda: layers.MLPBernoulli(N_X, N_Y, hidden=(6, 6)),
}


def randomised(factory, seed=0, scale=1.5):
    """The layer with every parameter drawn from N(0, scale^2), so no unit is trivial."""
    torch.manual_seed(seed)
    layer = factory()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, scale)
    return layer


def contexts():
    return all_states(N_Y)


@pytest.mark.parametrize("name", TOP_LAYERS)
def test_top_layer_sums_to_one(name):
    layer = randomised(TOP_LAYERS[name])
    total = torch.logsumexp(layer.log_prob(all_states(N_X)), 0)
    assert total.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", COND_LAYERS)
def test_conditional_layer_sums_to_one_for_every_context(name):
    layer = randomised(COND_LAYERS[name])
    X = all_states(N_X)
    for y in contexts():
        total = torch.logsumexp(layer.log_prob(X, y.expand(len(X), -1)), 0)
        assert total.item() == pytest.approx(0.0, abs=1e-5)


def chi_square_pvalue(samples, log_probs):
    """Goodness of fit of binary samples [n, N_X] to the probabilities of all states."""
    codes = (samples * (2 ** torch.arange(N_X - 1, -1, -1))).sum(1).long()
    observed = torch.bincount(codes, minlength=2 ** N_X).double()
    expected = log_probs.double().exp() * len(samples)
    return stats.chisquare(observed.numpy(), expected.numpy() / expected.sum().item()
                           * len(samples)).pvalue


@pytest.mark.parametrize("name", TOP_LAYERS)
def test_top_samples_follow_log_prob(name):
    layer = randomised(TOP_LAYERS[name], seed=1, scale=1.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x, log_p = layer.sample(None, 40000, g)
        assert torch.allclose(log_p, layer.log_prob(x), atol=1e-5)
        assert chi_square_pvalue(x, layer.log_prob(all_states(N_X))) > 1e-4


@pytest.mark.parametrize("name", COND_LAYERS)
def test_conditional_samples_follow_log_prob(name):
    layer = randomised(COND_LAYERS[name], seed=2, scale=1.0)
    g = torch.Generator().manual_seed(0)
    X = all_states(N_X)
    with torch.no_grad():
        for y in contexts()[[0, 3, 6]]:
            x, log_p = layer.sample(y[None], 40000, g)   # 40000 samples of one context
            assert x.shape == (40000, N_X)
            assert torch.allclose(log_p, layer.log_prob(x, y.expand(len(x), -1)), atol=1e-5)
            assert chi_square_pvalue(x, layer.log_prob(X, y.expand(len(X), -1))) > 1e-4


@pytest.mark.parametrize("name", COND_LAYERS)
def test_sample_layout_is_interleaved(name):
    """n samples per context row come out consecutively: rows [i*n, (i+1)*n) are drawn
    given context i, so they score higher under context i than under the other one."""
    layer = randomised(COND_LAYERS[name], seed=3, scale=1.5)
    ys = contexts()[[0, 7]]
    n = 2000
    with torch.no_grad():
        x, _ = layer.sample(ys, n, torch.Generator().manual_seed(0))
        under = [layer.log_prob(x, y.expand(len(x), -1)) for y in ys]   # [2n] each
    assert x.shape == (2 * n, N_X)
    assert under[0][:n].mean() > under[1][:n].mean()
    assert under[1][n:].mean() > under[0][n:].mean()


def test_log_prob_is_finite_for_extreme_logits():
    """Logits of +-100 give finite log-probabilities (softplus form, not log(sigmoid))."""
    layer = layers.SBN(2, 1)
    with torch.no_grad():
        layer.W.fill_(100.0)
        layer.b.fill_(0.0)
    lp = layer.log_prob(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0]]))
    assert torch.isfinite(lp).all() and lp.item() == pytest.approx(-200.0, rel=1e-6)


def test_clamped_log_prob_is_bounded_below():
    layer = layers.SBN(2, 1, clamp=True)
    with torch.no_grad():
        layer.W.fill_(100.0)
    lp = layer.log_prob(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0]]))
    assert lp.item() > 2 * -12.3


def test_darn_conditions_each_unit_on_earlier_units_only():
    """A hand-computed DARN: p(x_1) uses b_1 only, p(x_2 | x_1) uses W_12 (i < j)."""
    layer = layers.DARNTop(2)
    with torch.no_grad():
        layer.b.copy_(torch.tensor([0.3, -0.2]))
        layer.W.copy_(torch.tensor([[9.0, 1.5], [-7.0, 9.0]]))   # only W[0, 1] may act
    x = torch.tensor([[1.0, 1.0]])
    expected = torch.nn.functional.logsigmoid(torch.tensor(0.3)) + \
        torch.nn.functional.logsigmoid(torch.tensor(-0.2 + 1.5))
    assert layer.log_prob(x).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("density", [1.0, 0.15])
def test_darn_sparse_product_differentiates_as_the_product(masked, density):
    """SparseProduct's hand-written backward (dW masked in place, dx) against autograd
    through x (W * M) or x W, in float64, on dense x and on sparse x (the compiled
    loops over x's nonzeros)."""
    from rws.layers.autoregressive import SparseProduct, _sparse
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    x = (x * (torch.rand(40, 5, generator=g) < density)).requires_grad_()
    W = torch.randn(5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.float64), 1) if masked else None
    assert _sparse(x, W) == (ar_kernels.available() and density < 1)
    assert torch.autograd.gradcheck(lambda x, W: SparseProduct.apply(x, W, mask), (x, W))
    G = torch.randn(40, 5, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((SparseProduct.apply(x, W, mask) * G).sum(), (x, W))
    want = torch.autograd.grad((x @ (W * mask if masked else W) * G).sum(), (x, W))
    for h, w in zip(got, want):
        assert torch.allclose(h, w)
    if masked:
        assert not got[1].tril().any()              # nothing reaches the masked weights


def test_nade_log_prob_matches_its_definition_unit_by_unit():
    layer = randomised(lambda: layers.NADE(N_X, N_Y, hidden=3), seed=7)
    x, y = all_states(N_X)[[5, 10]], contexts()[[2, 7]]
    b = layer.b + y @ layer.Ub
    a = layer.c + y @ layer.Uc
    expected = torch.zeros(2)
    for i in range(N_X):
        p1 = torch.sigmoid(b[:, i] + torch.sigmoid(a) @ layer.V[:, i])
        expected += torch.log(torch.where(x[:, i] == 1, p1, 1 - p1))
        a = a + x[:, i:i + 1] * layer.W[i]
    assert torch.allclose(layer.log_prob(x, y), expected, atol=1e-5)


def test_nade_hand_written_backward_matches_autograd():
    """NADELogits' backward pass against autograd through the vectorised definition
    (exclusive cumulative sum over units), on more units than one re-anchoring span."""
    torch.manual_seed(0)
    R, D, H = 7, 150, 5
    x = torch.bernoulli(torch.full((R, D), 0.4))
    b, c = torch.randn(R, D, requires_grad=True), torch.randn(R, H, requires_grad=True)
    W = (0.3 * torch.randn(D, H)).requires_grad_()
    V = torch.randn(H, D, requires_grad=True)
    g = torch.randn(R, D)

    def reference():
        contrib = x[:, :-1, None] * W[:-1]
        a = torch.nn.functional.pad(torch.cumsum(contrib, 1), (0, 0, 1, 0)) + c[:, None, :]
        return b + torch.einsum("rdh,hd->rd", torch.sigmoid(a), V)

    want = torch.autograd.grad((reference() * g).sum(), (b, c, W, V))
    s = layers.NADELogits.apply(x, b, c, W, V)
    assert torch.allclose(s, reference(), atol=1e-4)
    got = torch.autograd.grad((s * g).sum(), (b, c, W, V))
    for w, h in zip(want, got):
        assert torch.allclose(w, h, atol=1e-3, rtol=1e-3)


def test_gaussian_log_prob_is_the_normal_density():
    torch.manual_seed(0)
    layer = layers.Gaussian(3, N_Y, hidden=(4,))
    y, z = torch.randn(5, N_Y), torch.randn(5, 3)
    mu, log_sigma = layer.params(y)
    expected = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).sum(-1)
    assert torch.allclose(layer.log_prob(z, y), expected, atol=1e-5)
    prior = layers.StandardNormal(3)
    assert torch.allclose(prior.log_prob(z),
                          torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-6)


def test_gaussian_samples_have_the_layer_moments_and_reparameterise():
    torch.manual_seed(0)
    layer = layers.Gaussian(2, N_Y, hidden=(4,))
    y = torch.randn(1, N_Y)
    z, log_q = layer.sample(y, 50000, torch.Generator().manual_seed(0))
    mu, log_sigma = layer.params(y)
    assert torch.allclose(z.mean(0), mu[0].detach(), atol=0.03)
    assert torch.allclose(z.std(0), log_sigma[0].exp().detach(), rtol=0.03)
    assert not z.requires_grad                                # detached by default
    zr, _ = layer.sample(y, 4, torch.Generator().manual_seed(0), reparam=True)
    zr.sum().backward()
    assert layer.mu.weight.grad is not None                   # pathwise gradient


@pytest.mark.parametrize("name", COND_LAYERS)
def test_x_given_once_per_point_scores_as_x_repeated(name):
    """log_prob(x [N], y [N*n]) (P's data term under n proposals per point) equals the
    score of x repeated n times, in value and in every parameter's gradient."""
    layer = randomised(COND_LAYERS[name], seed=2, scale=1.0)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, N_X, generator=g) < 0.5).float()
    y = (torch.rand(3 * 4, N_Y, generator=g) < 0.5).float()
    grads = []
    for xs in (x, x.repeat_interleave(4, 0)):
        layer.zero_grad()
        lp = layer.log_prob(xs, y)
        (lp * torch.arange(12.0)).sum().backward()        # a different weight per row
        grads.append([p.grad.clone() for p in layer.parameters()])
        if xs is x:
            once = lp.detach()
    assert torch.allclose(once, lp.detach(), atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("logit", [-40.0, -20.0, -16.0, 16.0, 20.0, 40.0])
@pytest.mark.parametrize("k", [0, 1, 2**24 - 2, 2**24 - 1])
def test_draws_at_the_lattices_ends_follow_the_true_probabilities(logit, k):
    """A uniform u = k / 2^24 stands for the interval [k, k + 1) / 2^24; given that, a
    draw is 1 with probability clip(p 2^24 - k, 0, 1) (low end) and 0 with probability
    clip((1 - p) 2^24 - (2^24 - 1 - k), 0, 1) (high end). u < p alone turns on every
    unit with p > 0 at u = 0, and never gives 0 where float32 rounds p to 1."""
    m = 100_000
    c = torch.full((m,), logit)
    p, u = torch.sigmoid(c), torch.full((m,), k * 2.0 ** -24)
    x = layers.bernoulli.exact_tails((u < p).float(), u, p, torch.Generator().manual_seed(k),
                                     c)
    low = k < 2 ** 23
    s = torch.sigmoid(torch.tensor(logit if low else -logit, dtype=torch.float64)).item()
    expected = min(max(s * 2 ** 24 - (k if low else 2 ** 24 - 1 - k), 0.0), 1.0)
    tail = (x if low else 1 - x).mean().item()     # the tail value's frequency
    sd = (expected * (1 - expected) / m) ** 0.5
    assert abs(tail - expected) <= 5 * sd + 1e-12, (tail, expected)


def test_a_unit_far_below_the_lattice_stays_off_when_its_uniform_is_zero(monkeypatch):
    """Through the layers' sampler and the closed-form proposals: with every uniform 0,
    units of logit -40 (p = 4e-18) stay off and units of logit +40 stay on; before,
    u = 0 < p turned them all on, and log q then scored them at e^-40 while they had
    been drawn at 2^-24 (the importance weights of such draws e^23 too large)."""
    from rws import rng, sbn_gradients, zoo
    monkeypatch.setattr(rng, "uniform", lambda shape, g=None, device=None, dtype=torch.float32:
                        torch.zeros(shape, dtype=dtype))
    a = torch.tensor([[-40.0, 40.0, -40.0]])[:, None]                  # [1, 1, 3]
    x = layers.bernoulli_sample(a, torch.Generator().manual_seed(0), n=1000)
    assert (x[..., 0] == 0).all() and (x[..., 1] == 1).all() and (x[..., 2] == 0).all()
    model = zoo.build("sbn:3", 2)
    with torch.no_grad():
        model.q_layers[0].W.zero_()
        model.q_layers[0].b.copy_(torch.tensor([-40.0, 40.0, -40.0]))
    props = sbn_gradients.propose(model, torch.ones(4, 2), 50, torch.Generator().manual_seed(0))
    assert (props.hs[1] == torch.tensor([0.0, 1.0, 0.0])).all()
