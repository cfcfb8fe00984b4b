"""The training protocols (rws.protocol): the original code's EMA momentum against a
hand-computed sequence of steps, and every knob reaching the update it claims to change."""
import copy
import json
import math

import pytest
import torch

from rws import protocol
from rws.errors import UserError
from rws.methods import sleep_phi_loss
from rws.optim import EMAMomentum, FusedAdam
from rws.train import TrainConfig, Trainer, _split_model_group, load_splits
from tests.conftest import tiny_model


def cfg(**kw):
    base = dict(data="dna", model="sbn:6", method="rws", K=3, batch_size=100, epochs=1,
                lr=1e-3, valid_k=2, test_k=2, progress=False, threads=1)
    return TrainConfig(**{**base, **kw})


def test_ema_momentum_follows_the_original_recursion_by_hand():
    # d <- 0.95 d + 0.05 lr g; theta <- theta - d, from d = 0, lr = 0.1, g = 2, -1, 4:
    # d = 0.01, 0.0045, 0.024275 -> theta = 0.99, 0.9855, 0.961225
    theta = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = EMAMomentum([theta], lr=0.1)
    for g, want in zip((2.0, -1.0, 4.0), (0.99, 0.9855, 0.961225)):
        theta.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert theta.item() == pytest.approx(want, abs=1e-15)


def test_ema_momentum_leaves_parameters_without_gradient_and_their_buffer_alone():
    a, b = (torch.nn.Parameter(torch.ones(2)) for _ in range(2))
    opt = EMAMomentum([a, b], lr=1.0)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    a.grad, b.grad = None, torch.ones(2)
    opt.step()
    assert torch.allclose(a, torch.full((2,), 0.95))                 # one step of 0.05
    assert torch.allclose(opt.state[a]["delta"], torch.full((2,), 0.05))
    assert torch.allclose(b, torch.full((2,), 1 - 0.05 - 0.0975))


def test_fused_adam_steps_are_kingma_and_bas_equations():
    # by hand, in float64 (Kingma & Ba 2015, Algorithm 1, with L2 weight decay folded
    # into the gradient as torch.optim.Adam does): g <- g + wd theta;
    # m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    # theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.01
    theta = torch.nn.Parameter(torch.tensor([1.0, -3.0]))
    opt = FusedAdam([theta], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    want, m, v = [1.0, -3.0], [0.0, 0.0], [0.0, 0.0]
    for t, grad in enumerate(([0.5, 2.0], [-2.0, 0.25], [0.125, -1.0]), start=1):
        theta.grad = torch.tensor(grad)
        opt.step()
        for i, g in enumerate(grad):
            g = g + wd * want[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            want[i] -= lr * (m[i] / (1 - b1 ** t)) / (math.sqrt(v[i] / (1 - b2 ** t)) + eps)
        assert theta.tolist() == pytest.approx(want, rel=1e-6)
    assert opt._buffers, "steps 2 and 3 took the cached (fast) path"


def test_fused_adam_takes_torchs_steps_bit_for_bit_and_its_fast_path(monkeypatch):
    # two groups at their own rates, as P and Q: full steps (the fast path), a step with
    # one group's gradients only (sleep-Q), one with a partial group (torch's step), a
    # rate change, and a state_dict round trip into fresh optimisers of both kinds
    torch_steps = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a: torch_steps.append(type(self)) or adam_step(self, *a))
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in ((3, 4), (4,), (5, 3), (5,))]

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 3e-3}]
    ours, ref = ([torch.nn.Parameter(t.clone()) for t in init] for _ in range(2))
    fused, adam = FusedAdam(groups(ours)), torch.optim.Adam(groups(ref), fused=True)
    plan = ["all", "all", "q", "all", "partial", "all", "lr", "all", "reload", "all", "all"]
    for what in plan:
        if what == "lr":
            for o in (fused, adam):
                o.param_groups[1]["lr"] = 1e-3
            continue
        if what == "reload":
            saved = fused.state_dict(), adam.state_dict()
            fused, adam = FusedAdam(groups(ours)), torch.optim.Adam(groups(ref), fused=True)
            fused.load_state_dict(saved[0])
            adam.load_state_dict(saved[1])
            continue
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        for ps in (ours, ref):
            for i, (p, g) in enumerate(zip(ps, grads)):
                keep = (what == "all" or (what == "q" and i >= 2)
                        or (what == "partial" and i != 1))
                p.grad = g.clone() if keep else None
        fused.step()
        adam.step()
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
            assert torch.equal(fused.state[a]["exp_avg"], adam.state[b]["exp_avg"])
            assert torch.equal(fused.state[a]["exp_avg_sq"], adam.state[b]["exp_avg_sq"])
            assert torch.equal(fused.state[a]["step"], adam.state[b]["step"])
    # torch's own step ran for the reference (9 steps), and for ours only where it must:
    # the first step (it creates the state) and the partial group; a loaded state serves
    # the fast path at once
    assert torch_steps.count(torch.optim.Adam) == 9
    assert torch_steps.count(FusedAdam) == 2
    # an unfused Adam's state (another rounding) keeps torch's step
    unfused = torch.optim.Adam(groups(ref), foreach=True)
    unfused.load_state_dict(adam.state_dict() | {"param_groups": [
        g | {"fused": None, "foreach": True} for g in adam.state_dict()["param_groups"]]})
    fused.load_state_dict(unfused.state_dict())
    fused.step()
    assert torch_steps.count(FusedAdam) == 3


def test_fused_adam_still_runs_step_hooks_and_shows_in_the_profiler():
    """FusedAdam skips torch's step wrapper only where nothing would see it: instance and
    global step hooks run once, in torch's order (also on a first step, which falls back
    to torch's Adam step, hooked itself once a plain Adam exists), the profiler sees the
    step's scope, and the step is the same either way."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])   # torch hooks Adam.step too
    theta, twin = (torch.nn.Parameter(torch.tensor([1.0, -3.0])) for _ in range(2))
    opt, plain = FusedAdam([theta], lr=0.1), FusedAdam([twin], lr=0.1)
    calls = []
    handles = [opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
               opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
               register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
    try:
        theta.grad = twin.grad = torch.tensor([0.5, 2.0])
        opt.step()
        assert calls == ["global pre", "pre", "post", "global post"]
    finally:
        for h in handles:
            h.remove()
    plain.step()                                    # no hooks: the unwrapped step
    assert torch.equal(theta, twin)
    with torch.profiler.profile() as prof:
        plain.zero_grad()
        twin.grad = torch.tensor([0.5, 2.0])
        plain.step()
    names = {e.name for e in prof.events()}
    assert {"Optimizer.step#FusedAdam.step", "Optimizer.zero_grad#FusedAdam.zero_grad"} <= names
    plain.zero_grad()
    assert twin.grad is None and calls == ["global pre", "pre", "post", "global post"]


def test_fused_adam_gives_loaded_moments_their_parameters_layout():
    """torch's fused kernel walks a parameter and its moments as flat memory: a moment
    saved from a contiguous parameter and loaded for a transposed one (NADE's V, stored
    unit-major) must take the parameter's strides, or the update pairs wrong entries."""
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(4, 6, generator=gen) for _ in range(3)]
    contiguous = torch.nn.Parameter(torch.randn(4, 6, generator=gen))
    transposed = torch.nn.Parameter(contiguous.detach().t().contiguous().t())
    assert not transposed.is_contiguous()
    first = FusedAdam([contiguous], lr=0.1)
    for g in steps[:2]:
        contiguous.grad = g.clone()
        first.step()
    transposed.data.copy_(contiguous.detach())
    second = FusedAdam([transposed], lr=0.1)
    second.load_state_dict(copy.deepcopy(first.state_dict()))     # as from a checkpoint
    assert second.state[transposed]["exp_avg"].stride() == transposed.stride()
    contiguous.grad, transposed.grad = steps[2].clone(), steps[2].t().contiguous().t()
    first.step()
    second.step()
    assert torch.equal(transposed, contiguous)


def test_fused_adam_steps_a_transposed_parameter_as_its_contiguous_twin(monkeypatch):
    """A parameter stored transposed goes to the fused kernel as its contiguous permuted
    view, with its gradient and moments alike: the same steps, bit for bit, as torch's
    fused Adam on the same values stored contiguously, on the fast path; so does a
    gradient of other strides than its parameter's (torch's fused kernel pairs such
    entries wrongly)."""
    torch_steps = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a: torch_steps.append(1) or adam_step(self, *a))
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(8, 16, generator=gen)   # (no scalar tail in the kernel's vector loop,
    # whose last entries, which differ by layout, it rounds in another order)
    plain = torch.nn.Parameter(init.clone())
    transposed = torch.nn.Parameter(init.t().contiguous().t())
    bias = torch.nn.Parameter(torch.randn(8, generator=gen))
    twin_bias = torch.nn.Parameter(bias.detach().clone())
    ours = FusedAdam([transposed, bias], lr=0.05)
    ref = torch.optim.Adam([plain, twin_bias], lr=0.05, fused=True)
    for step in range(5):
        g, gb = torch.randn(8, 16, generator=gen), torch.randn(8, generator=gen)
        plain.grad, twin_bias.grad = g.clone(), gb.clone()
        # the gradient in its parameter's layout, but row-major in step 3 and in the
        # first step (which torch's own step takes, to create the state)
        transposed.grad = g.clone() if step in (0, 3) else g.t().contiguous().t()
        bias.grad = gb.clone()
        ours.step()
        ref.step()
        assert torch.equal(transposed, plain) and torch.equal(bias, twin_bias)
        assert torch.equal(ours.state[transposed]["exp_avg_sq"], ref.state[plain]["exp_avg_sq"])
    assert not transposed.is_contiguous()
    assert ours.state[transposed]["exp_avg"].stride() == transposed.stride()
    assert ours._buffers[0][3] == [(1, 0), None]
    assert len(torch_steps) == 6     # ref's five, and ours only where it creates the state
    # (what the copy guards against: torch's fused step pairs such a gradient wrongly)
    p, twin = (torch.nn.Parameter(t) for t in (init.t().contiguous().t(), init.clone()))
    for param in (p, twin):
        param.grad = g.clone()
        torch.optim.Adam([param], lr=0.05, fused=True).step()
    assert not torch.equal(p, twin)


def test_ref_protocol_resolves_every_knob_and_explicit_settings_win():
    c = cfg(protocol="ref").resolved()
    assert (c.optimizer, c.sleep_interleave, c.min_epochs, c.patience, c.restore_best,
            c.permute_pixels) == ("ema_momentum", 2, 10, 10, False, -1)
    assert cfg(protocol="ref", model="nade[hidden=5]:4").resolved().permute_pixels == 23
    assert cfg(protocol="ref", model="sbn/darn:4").resolved().permute_pixels == 23
    m = cfg(protocol="ref", optimizer="adam", sleep_interleave=0, restore_best=True).resolved()
    assert (m.optimizer, m.sleep_interleave, m.restore_best) == ("adam", 0, True)
    d = cfg().resolved()
    assert (d.optimizer, d.sleep_interleave, d.restore_best, d.permute_pixels) == \
        ("adam", 0, True, -1)
    with pytest.raises(UserError, match="unknown protocol"):
        cfg(protocol="old").check()
    with pytest.raises(UserError, match="--sleep-interleave"):
        cfg(lr_s=1e-4).check()


class StepSpy:
    """Records, for each optimiser step, each group's lr and whether it had gradients."""

    def __init__(self, trainer):
        self.steps, opt = [], trainer.optimizer
        inner = opt.step

        def step(*a, **kw):
            self.steps.append({g["name"]: (g["lr"], any(p.grad is not None for p in g["params"]))
                               for g in opt.param_groups})
            return inner(*a, **kw)
        opt.step = step


def test_learning_rates_sleep_schedule_and_summed_gradients_reach_the_updates(tmp_path):
    # dna: 1400 points, batch 100 -> 14 wake steps an epoch; si = 3 -> sleep updates
    # after global steps 3, 6, 9, 12 (then 15, ..., 27 in epoch 2), each with 300
    # dreams; the ema_momentum lr multiplies sums
    t = Trainer(cfg(optimizer="ema_momentum", lr_p=2e-3, lr_q=3e-3, lr_s=5e-3,
                    sleep_interleave=3, epochs=2, lr_decay=2.0), tmp_path)
    spy = StepSpy(t)
    t.run(lambda *_: None)
    epoch1, epoch2 = spy.steps[:18], spy.steps[18:]
    assert (len(epoch1), len(epoch2)) == (14 + 4, 14 + 5)
    wake = [s for s in epoch1 if s["p"][1]]
    sleep = [s for s in epoch1 if not s["p"][1]]
    assert [i for i, s in enumerate(epoch1) if not s["p"][1]] == [3, 7, 11, 15]
    for s in wake:
        assert s["p"] == (pytest.approx(2e-3 * 100), True)
        assert s["q"] == (pytest.approx(3e-3 * 100), True)
    for s in sleep:                          # Q alone, at lr_s x dreams
        assert s["q"] == (pytest.approx(5e-3 * 300), True)
    for s in epoch2:                         # lr / 2^1 in the second epoch
        if s["p"][1]:
            assert s["p"][0] == pytest.approx(2e-3 * 100 / 2)
        else:
            assert s["q"][0] == pytest.approx(5e-3 * 300 / 2)
    assert t.n_dreams == 300 and t.steps_done == 28


def test_modern_protocol_adds_sleep_to_every_update_with_adam_lrs(tmp_path):
    t = Trainer(cfg(lr_q=3e-3), tmp_path)
    spy = StepSpy(t)
    t.run(lambda *_: None)
    assert len(spy.steps) == 14 and all(s["p"][1] and s["q"][1] for s in spy.steps)
    assert spy.steps[0]["p"][0] == 1e-3 and spy.steps[0]["q"][0] == 3e-3
    assert not t.method.separate_sleep


@pytest.mark.parametrize("spec", ["sbn:3-2", "darn:3-2", "nade[hidden=4]:3"])   # closed form x2, autograd
def test_sleep_backward_is_the_gradient_of_the_sleep_loss(spec):
    from rws.rws import RWS
    model = tiny_model(spec)
    method = RWS(model, K=2)
    method.sleep_backward(50, torch.Generator().manual_seed(3))
    got = [p.grad.clone() for p in model.q_layers.parameters()]
    assert all(p.grad is None for p in model.p_layers.parameters())
    model.zero_grad(set_to_none=True)
    sleep_phi_loss(model, 50, torch.Generator().manual_seed(3)).mean().backward()
    for g, p in zip(got, model.q_layers.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_a_separate_sleep_update_leaves_the_wake_gradient_without_sleep():
    from rws.rws import RWS
    model = tiny_model("sbn:3-2")
    x = (torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    both, wake_only = RWS(model, K=2), RWS(model, K=2)
    wake_only.separate_sleep = True
    loss_both, _ = both.loss(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    sleep = sleep_phi_loss(model, 4, g).mean()     # the dreams drawn first, as `both` does
    loss_wake, _ = wake_only.loss(x, g)
    # without sleep-Q the loss is the combined one less exactly its sleep term
    assert torch.allclose(loss_wake + sleep, loss_both, atol=1e-6)
    assert abs(float(sleep.detach())) > 1e-3


def _flat_valid_run(tmp_path, **kw):
    """SGD at a learning rate too small to change a float32 parameter: the validation
    log-likelihood repeats exactly, so every validation after the first fails."""
    return Trainer(cfg(optimizer="sgd", lr=1e-30, patience=1, epochs=8, **kw),
                   tmp_path).run(lambda *_: None)


def test_min_epochs_holds_off_early_stopping(tmp_path):
    assert _flat_valid_run(tmp_path / "a")["epochs_done"] == 2
    rec = _flat_valid_run(tmp_path / "b", min_epochs=4)
    assert rec["epochs_done"] == 5 and rec["stopped_by"] == "early_stopping"


def test_restore_best_off_tests_the_last_parameters(tmp_path):
    rec = Trainer(cfg(epochs=3, lr=3e-2, restore_best=False), tmp_path).run(lambda *_: None)
    assert rec["tested_epoch"] == 3
    rec = Trainer(cfg(epochs=3, lr=3e-2), tmp_path / "b").run(lambda *_: None)
    assert rec["tested_epoch"] == rec["best_epoch"]


def test_pixel_permutation_is_fixed_and_applied_to_every_split():
    plain = load_splits(cfg().resolved())
    perm = load_splits(cfg(permute_pixels=23).resolved())
    again = load_splits(cfg(permute_pixels=23).resolved())
    for split in ("train", "valid", "test"):
        assert torch.equal(perm[split], again[split])
        assert not torch.equal(perm[split], plain[split])
        # the same column permutation: each column of the permuted split is a column
        assert torch.equal(perm[split].sum(0).sort().values, plain[split].sum(0).sort().values)
    cols = {tuple(plain["train"][:, j].tolist()): j for j in range(plain["train"].shape[1])}
    mapping = [cols[tuple(perm["train"][:, j].tolist())] for j in range(5)]
    for split in ("valid", "test"):
        assert torch.equal(perm[split][:, :5], plain[split][:, mapping])


def test_a_checkpoint_from_before_the_p_q_groups_resumes(tmp_path):
    t = Trainer(cfg(epochs=1), tmp_path)
    t.run(lambda *_: None)
    state = t.optimizer.state_dict()
    old = {"state": state["state"],
           "param_groups": [{**state["param_groups"][0], "name": "model",
                             "params": state["param_groups"][0]["params"]
                             + state["param_groups"][1]["params"]}]}
    fitted = _split_model_group(old, state)
    assert [g["params"] for g in fitted["param_groups"]] == \
        [g["params"] for g in state["param_groups"]]
    t.optimizer.load_state_dict(fitted)


def test_protocol_and_knobs_are_recorded(tmp_path):
    Trainer(cfg(protocol="ref", epochs=1), tmp_path).run(lambda *_: None)
    rec = json.loads((tmp_path / "record.json").read_text())
    for key, value in protocol.PROTOCOLS["ref"].items():
        assert key in rec["config"]
    assert rec["config"]["protocol"] == "ref" and rec["config"]["optimizer"] == "ema_momentum"
    assert "lr" in rec["epochs"][0]
