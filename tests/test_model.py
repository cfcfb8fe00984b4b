"""The Helmholtz machine: dreams follow p(x, h); K samples are laid out per point."""
import warnings

import pytest
import torch
from scipy import stats

from rws import zoo
from tests.conftest import tiny_model
from tests.exact import all_states, latent_grid


@pytest.mark.parametrize("spec", ["sbn:2-1", "darn:2-1", "nade[hidden=2]:2-1", "dsbn[hidden=3]:2"])
def test_dreams_follow_the_joint_distribution(spec):
    model = tiny_model(spec, n_data=3, seed=2)
    n = 60000
    with torch.no_grad():
        dreams = model.sample_p(n, torch.Generator().manual_seed(0))
        joint = torch.cat(dreams, 1)                                    # [n, D + latents]
        width = joint.shape[1]
        codes = (joint * 2 ** torch.arange(width - 1, -1, -1)).sum(1).long()
        observed = torch.bincount(codes, minlength=2 ** width).double()
        states = all_states(width)
        splits = torch.split(states, model.sizes, 1)
        log_p = torch.stack(model.log_p_layers(list(splits))).sum(0)
    expected = log_p.double().exp() * n
    assert expected.sum().item() == pytest.approx(n, rel=1e-5)        # p sums to one
    expected *= n / expected.sum()                                       # float rounding
    assert stats.chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-4


@pytest.mark.parametrize("spec", ["sbn:3-2", "sbn[clamp=1]/sbn:3", "dsbn[hidden=3]:3-2",
                                  "darn:3-2", "nade[hidden=2]:3", "sbn/nade:3", "gauss[hidden=4]:3"])
def test_proposals_are_laid_out_point_by_point(spec):
    model = tiny_model(spec, seed=1)
    x = all_states(5)[[3, 17, 30]]
    hs, log_q = model.sample_q(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(hs[0], x)                                         # x once per point
    assert [h.shape for h in hs] == [(3, 5)] + [(12, n) for n in model.sizes[1:]]
    # each proposal's log q and log p is that of its own point (row b*K + k is x_b):
    # x once per point gives what x repeated row by row gives
    repeated = [x.repeat_interleave(4, 0)] + hs[1:]
    recomputed = torch.stack(model.log_q_layers(repeated)).sum(0)
    assert torch.allclose(torch.stack(log_q).sum(0), recomputed, atol=1e-6)
    assert torch.allclose(torch.stack(model.log_q_layers(hs)).sum(0), recomputed, atol=1e-6)
    for a, b in zip(model.log_p_layers(hs), model.log_p_layers(repeated)):
        assert a.shape == (12,) and torch.allclose(a, b, atol=1e-6)
    log_p, lq = model.log_joint(x, 4, torch.Generator().manual_seed(0))
    assert log_p.shape == lq.shape == (3, 4)


def test_latent_grid_covers_every_state_once():
    model = tiny_model("sbn:2-3")
    grid = torch.cat(latent_grid(model), 1)
    assert grid.shape == (32, 5) and torch.unique(grid, dim=0).shape[0] == 32


def test_a_widening_stack_warns_that_sizes_run_from_the_data_up():
    """The paper's "SBN 10-100-200-300-400" lists layers from the top; written as a spec it
    puts 10 units next to the pixels (a run of it stalled at -153 nats), so building such
    a stack names the pyramid the user probably meant."""
    with pytest.warns(UserWarning, match=r"write 'sbn:400-300-200-100-10'"):
        zoo.build("sbn:10-100-200-300-400", 784)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.build("sbn:400-300-200-100-10", 784)
        zoo.build("sbn:200-200-10", 784)
        zoo.build("sbn:2-3", 5)            # two layers: too common in small models to flag
