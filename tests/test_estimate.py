"""The importance-sampling harness against exact log-likelihoods by enumeration."""
import math

import pytest
import torch

from rws import estimate
from rws.estimate import StreamingLogMeanExp
from tests.conftest import tiny_model
from tests.exact import all_states, log_joint_table, log_px


def data_points(n_data=5, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, n_data), 0.5), generator=g)


@pytest.mark.parametrize("spec", [
    "sbn:3", "sbn:3-2", "sbn:2-2-2", "darn:3-2", "nade[hidden=3]:3-2", "dsbn[hidden=4]:3-2",
    "dsbn[hidden=3-3,act=tanh]:2-2", "sbn/nade[hidden=2]:3", "nade/sbn:2-2", "darn/dsbn:3",
    "sbn[clamp=1]/sbn:3"])
def test_estimate_converges_to_exact_log_likelihood(spec):
    model = tiny_model(spec, q_scale=0.3)   # a broad q: light-tailed weights
    x = data_points()
    K = 20000
    with torch.no_grad():
        exact = log_px(model, x).double()
        log_p, log_q = log_joint_table(model, x)
        log_post = (log_p - torch.logsumexp(log_p, 1, keepdim=True)).double()
        chi2 = (torch.exp(2 * log_post - log_q.double())).sum(1) - 1   # chi^2(p(h|x) || q)
    g = torch.Generator().manual_seed(1)
    r = estimate.log_likelihood(model, x, K, generator=g, rows=4096)
    # delta method: log p^_K ~ N(log p(x) - chi2/(2K), chi2/K)
    sd = (chi2 / K).sqrt()
    assert ((r.per_point - (exact - chi2 / (2 * K))).abs() < 5 * sd).all()
    assert (sd < 0.05).all()                  # the check is sharp, not vacuous
    assert ((r.ess >= 1) & (r.ess <= K)).all()


def test_bound_increases_with_K_and_stays_below_truth():
    model = tiny_model("sbn:3-2", seed=3, scale=2.0)
    x = data_points(seed=4)
    exact = log_px(model, x).double().mean().item()
    g = torch.Generator().manual_seed(0)
    means, ses = [], []
    for K in (1, 5, 50):
        reps = torch.stack([estimate.log_likelihood(model, x, K, generator=g).per_point.mean()
                            for _ in range(300)])
        means.append(reps.mean().item())
        ses.append(reps.std().item() / math.sqrt(len(reps)))
    assert means[0] < means[1] < means[2]
    for m, se in zip(means, ses):
        assert m <= exact + 4 * se
    assert exact - means[2] < exact - means[0]


def test_whole_split_is_evaluated_without_dropping_a_remainder():
    model = tiny_model("sbn:3")
    x = data_points(n=7)
    r = estimate.log_likelihood(model, x, 3, rows=6)   # 2 points per pass: 7 = 2+2+2+1
    assert r.per_point.shape == (7,) and torch.isfinite(r.per_point).all()
    assert r.se == pytest.approx(r.per_point.std().item() / math.sqrt(7))


class ScriptedModel(torch.nn.Module):
    """Returns a fixed table of log weights: point i's samples are table[i, 0..K-1] in
    order, however the harness chunks them. Point ids are stored in x[:, 0]."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.cursor = {}
        self.sizes = [1, 1]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def log_weights(self, x, c, generator=None):
        out = []
        for i in x[:, 0].long().tolist():
            s = self.cursor.get(i, 0)
            out.append(self.table[i, s:s + c])
            self.cursor[i] = s + c
        return torch.stack(out)


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_chunked_equals_unchunked_on_identical_samples(rows):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 50, generator=g, dtype=torch.float64) * 30 - 200
    x = torch.arange(9.0)[:, None]
    r = estimate.log_likelihood(ScriptedModel(table), x, 50, rows=rows)
    direct = torch.logsumexp(table, 1) - math.log(50)
    assert torch.allclose(r.per_point, direct, atol=1e-9)
    ess = torch.exp(2 * torch.logsumexp(table, 1) - torch.logsumexp(2 * table, 1))
    assert torch.allclose(r.ess, ess, rtol=1e-9)


def test_permuting_points_permutes_results():
    """Weights are normalised per point only: with a deterministic q (every proposal the
    same), each point's estimate is exactly log p(x, h*) - log q(h*|x), whatever its
    neighbours in the batch."""
    model = tiny_model("sbn:3-2", seed=5)
    with torch.no_grad():
        for q in model.q_layers:       # q(h|x): units pinned to 1 or 0 whatever x is
            q.W.zero_()
            q.b.copy_(torch.tensor([40.0, -40.0, 40.0][:q.b.numel()]))
    x = all_states(5)[torch.randperm(32, generator=torch.Generator().manual_seed(0))[:12]]
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    a = estimate.log_likelihood(model, x, 10, rows=40).per_point
    b = estimate.log_likelihood(model, x[perm], 10, rows=40).per_point
    assert torch.allclose(a[perm], b, atol=1e-9)
    assert a.unique().numel() > 1          # the points really differ


def test_all_minus_inf_weights_give_minus_inf_not_nan():
    acc = StreamingLogMeanExp(2)
    acc.add(torch.tensor([[-math.inf, -math.inf], [0.0, 0.0]]))
    assert acc.log_mean()[0] == -math.inf and acc.log_mean()[1] == pytest.approx(0.0)
    assert acc.ess().tolist() == [0.0, pytest.approx(2.0)]


def test_gaussian_latent_estimate_converges_to_quadrature():
    """One Gaussian latent: log p(x) = log integral N(z; 0, 1) p(x | z) dz by a dense grid."""
    model = tiny_model("gauss[hidden=3]:1", q_scale=0.3)
    x = data_points()
    z = torch.linspace(-12, 12, 24001)[:, None]
    with torch.no_grad():
        log_prior = model.p_layers[1].log_prob(z)                                  # [G]
        log_lik = torch.stack([model.p_layers[0].log_prob(xb.expand(len(z), -1), z)
                               for xb in x])                                        # [B, G]
        exact = torch.logsumexp(log_prior + log_lik, 1) + math.log(z[1, 0] - z[0, 0])
    r = estimate.log_likelihood(model, x, 20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(r.per_point, exact.double(), atol=0.02)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("K, rows", [(3, 6), (40, 16)])     # several points a pass; chunks
def test_an_interrupted_evaluation_continues_to_the_same_estimates(K, rows):
    model = tiny_model("sbn:3-2", seed=2)
    x = data_points(n=9)
    whole = estimate.log_likelihood(model, x, K, generator=torch.Generator().manual_seed(5),
                                    rows=rows)
    saved = []

    def snapshot(state):
        saved.append(state)
        if state["done"] >= 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        estimate.log_likelihood(model, x, K, generator=torch.Generator().manual_seed(5),
                                rows=rows, snapshot=snapshot, snapshot_every=0)
    assert 4 <= saved[-1]["done"] < 9
    # the generator passed in is in any state: the saved one replaces it
    rest = estimate.log_likelihood(model, x, K, generator=torch.Generator().manual_seed(99),
                                   rows=rows, resume=saved[-1])
    assert torch.equal(rest.per_point, whole.per_point) and torch.equal(rest.ess, whole.ess)
    with pytest.raises(ValueError, match=f"not K={K + 1}"):
        estimate.log_likelihood(model, x, K + 1, generator=torch.Generator(), rows=rows,
                                resume=saved[-1])


@pytest.mark.parametrize("K, rows", [(3, 6), (40, 16)])
def test_an_evaluation_stopped_mid_pass_saves_the_points_before_that_pass(K, rows, monkeypatch):
    """Ctrl-C (or SIGTERM, which `rws eval` turns into one) inside a pass: the last
    snapshot holds every point before that pass and the generator as that pass found it,
    so the continued evaluation gives the uninterrupted estimates."""
    model = tiny_model("sbn:3-2", seed=2)
    x = data_points(n=9)
    whole = estimate.log_likelihood(model, x, K, generator=torch.Generator().manual_seed(5),
                                    rows=rows)
    real, calls = model.log_weights, []

    def stop_at_the_fifth_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(model, "log_weights", stop_at_the_fifth_chunk)
    saved = []
    with pytest.raises(KeyboardInterrupt):
        estimate.log_likelihood(model, x, K, generator=torch.Generator().manual_seed(5),
                                rows=rows, snapshot=saved.append, snapshot_every=1e9)
    per_pass, chunks = max(1, rows // K), -(-K // min(K, rows))    # points, chunks a pass
    assert saved[-1]["done"] == 4 // chunks * per_pass > 0          # the passes done before
    monkeypatch.setattr(model, "log_weights", real)
    rest = estimate.log_likelihood(model, x, K, generator=torch.Generator(), rows=rows,
                                   resume=saved[-1])
    assert torch.equal(rest.per_point, whole.per_point) and torch.equal(rest.ess, whole.ess)
