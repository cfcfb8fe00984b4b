"""Every layer is a normalised distribution and samples from exp(log_prob)."""
import pytest
import torch
from scipy import stats

from rws import layers
from tests.exact import all_states

N_X, N_Y = 4, 3

# name -> constructor of a small layer; conditional layers take (n_x, n_y).
TOP_LAYERS = {
    "sbn_top": lambda: layers.SBNTop(N_X),
    "sbn_top_clamped": lambda: layers.SBNTop(N_X, clamp=True),
}
COND_LAYERS = {
    "sbn": lambda: layers.SBN(N_X, N_Y),
    "sbn_clamped": lambda: layers.SBN(N_X, N_Y, clamp=True),
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
    """n samples per context row come out consecutively: row i*n + k belongs to row i."""
    layer = randomised(COND_LAYERS[name], seed=3, scale=8.0)   # near-deterministic units
    ys = contexts()[[1, 6]]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x, _ = layer.sample(ys, 5, g)
        x0, _ = layer.sample(ys[:1], 5, g)
    assert x.shape == (10, N_X)
    mode0 = (layer.log_prob(X := all_states(N_X), ys[0].expand(len(X), -1))).argmax()
    # the first 5 rows follow context 0's (near-certain) mode, as a separate draw does
    assert (x[:5] == X[mode0]).float().mean() > 0.9
    assert (x0 == X[mode0]).float().mean() > 0.9


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
