import pytest
import torch

from rws import zoo


def tiny_model(spec="sbn:3-2", n_data=5, seed=0, scale=1.0, q_scale=None):
    """A small Helmholtz machine with random, non-trivial parameters (enumerable latents).
    P's parameters ~ N(0, scale^2), Q's ~ N(0, q_scale^2) (default: scale)."""
    torch.manual_seed(seed)
    model = zoo.build(spec, n_data)
    with torch.no_grad():
        for p in model.p_layers.parameters():
            p.normal_(0, scale)
        for p in model.q_layers.parameters():
            p.normal_(0, scale if q_scale is None else q_scale)
    return model


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
