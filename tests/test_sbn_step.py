"""rws.sbn_step: RWS, wake-sleep and VIMCO updates of sigmoid belief networks on kept
buffers give what ``rws.sbn_gradients`` gives (itself checked against autograd and exact
gradients), bit for bit: gradients, log p^, draws and the generator's state after."""
import copy
import pickle

import pytest
import torch

from rws import bf16, jit, methods, sbn_step
from rws.train import OPTIMIZERS, train_step
from tests.conftest import tiny_model

pytestmark = pytest.mark.skipif(not jit.kernels_on(), reason="needs numba's kernels")

# (method, spec, data size, K, options); sbn:200-10 draws >= 2048 numbers a call (the
# streamed uniforms, with tail draws refined) and fewer (torch's), the others few
CASES = [("rws", "sbn:200-10", 30, 5, {}),
         ("rws", "sbn:20", 30, 5, {}),
         ("rws", "sbn:6-4-3", 8, 4, {}),
         ("rws", "sbn:6-4-3", 8, 3, {"wake_q": False}),
         ("rws", "sbn:6-4-3", 8, 3, {"sleep_q": False}),
         ("rws", "sbn:6-4-3", 8, 1, {"wake_q": False, "n_dreams": 5}),
         ("rws", "sbn:6-4", 8, 2, {"n_dreams": 40}),
         ("ws", "sbn:200-10", 30, 1, {}),
         ("ws", "sbn:6-4-3", 8, 1, {"n_dreams": 5}),
         ("vimco", "sbn:200-10", 30, 5, {}),
         ("vimco", "sbn:6-4-3", 8, 3, {})]


def _data(n_data, rows=12, seed=4):
    return (torch.rand(rows, n_data, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def _update(m, x, seed, scale=0.7):
    """(the gradients, (finite, train_ll), the generator's state after) of one backward."""
    m.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(seed)
    finite, stats = m.backward(x, g, scale)
    return [p.grad.clone() for p in m.parameters()], (bool(finite), stats["train_ll"].item()), \
        g.get_state()


def _without_buffers(monkeypatch):
    monkeypatch.setattr(sbn_step.Steps, "get", lambda *args: None)


@pytest.mark.parametrize("method,spec,n_data,K,options", CASES)
def test_kept_buffers_give_the_same_update(monkeypatch, method, spec, n_data, K, options):
    m = methods.build(method, tiny_model(spec, n_data=n_data, seed=3, scale=0.7), K, **options)
    x = _data(n_data)
    kept, out, state = _update(m, x, 5)
    assert len(m._sbn_steps._steps) == 1              # the buffers served
    with monkeypatch.context() as mp:
        _without_buffers(mp)
        ref, ref_out, ref_state = _update(m, x, 5)
    assert all(torch.equal(a, b) for a, b in zip(kept, ref))
    assert all(g.abs().max() > 0 for g in ref if g.numel() > 1)
    assert out == ref_out and torch.equal(state, ref_state)


def test_training_runs_the_same_and_its_gradients_are_fresh(monkeypatch):
    """Ten Adam updates, a smaller last batch among them (a second set of buffers):
    the same parameters as through ``sbn_gradients``; a gradient of one update is not
    overwritten by the next."""
    torch.manual_seed(0)
    a = methods.build("rws", tiny_model("sbn:30-10", n_data=20, seed=1), 4)
    b = copy.deepcopy(a)
    opts = [OPTIMIZERS["adam"]([{"params": list(m.parameters()), "lr": 1e-2}]) for m in (a, b)]
    xs = [_data(20, rows, seed) for seed, rows in enumerate([16] * 9 + [5])]
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    kept = None
    for i, x in enumerate(xs):
        assert train_step(a, opts[0], x, ga, micro=64)[0]
        if i == 0:
            kept = [p.grad for p in a.parameters()]
            first = [g.clone() for g in kept]
        with monkeypatch.context() as mp:
            _without_buffers(mp)
            assert train_step(b, opts[1], x, gb, micro=64)[0]
    assert len(a._sbn_steps._steps) == 2 and not b._sbn_steps._steps
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.equal(g, f) for g, f in zip(kept, first))


def test_a_copy_has_buffers_of_its_own():
    """A deep copy or a pickle (their NumPy views would lose their tensors) starts
    without buffers and updates as the original does."""
    m = methods.build("rws", tiny_model("sbn:20", n_data=30, seed=3), 5)
    x = _data(30)
    before = _update(m, x, 5)
    c, d = copy.deepcopy(m), pickle.loads(pickle.dumps(m))
    assert not c._sbn_steps._steps and not d._sbn_steps._steps
    for got in (_update(c, x, 5), _update(d, x, 5), _update(m, x, 5)):
        assert all(torch.equal(g, r) for g, r in zip(got[0], before[0])) and got[1] == before[1]


def test_where_the_buffers_do_not_serve(monkeypatch):
    x = _data(8)
    steps = sbn_step.Steps()
    plain = methods.build("rws", tiny_model("sbn:6-4", n_data=8), 3).model
    assert steps.get(plain, x, 3, 12) is not None
    for spec in ("darn:6-4", "sbn/darn:6-4", "dsbn:6-4"):
        assert steps.get(tiny_model(spec, n_data=8), x, 3, 12) is None
    clamped = tiny_model("sbn:6-4", n_data=8)
    clamped.q_layers[0].clamp = True
    assert sbn_step.Steps().get(clamped, x, 3, 12) is None
    assert steps.get(plain, x.double(), 3, 12) is None
    with bf16.weight_gradients(True):
        assert steps.get(plain, x, 3, 12) is None
    plain.q_layers[0].b.grad = torch.zeros_like(plain.q_layers[0].b)   # a micro-batch adds
    assert steps.get(plain, x, 3, 12) is None
    plain.q_layers[0].b.grad = None
    monkeypatch.setenv("RWS_NUMBA", "0")
    assert steps.get(plain, x, 3, 12) is None
