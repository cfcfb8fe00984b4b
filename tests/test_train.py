"""The training loop: learning happens, runs resume exactly, faults are contained."""
import json
import subprocess

import pytest
import torch

from rws import results
from rws.errors import UserError
from rws.train import TrainConfig, Trainer, evaluate


def small_config(**kw):
    base = dict(data="dna", model="sbn:20", method="rws", K=5, batch_size=50, epochs=3,
                lr=3e-2, valid_k=10, test_k=10, progress=False, threads=2)
    base.update(kw)
    return TrainConfig(**base)


def quiet(*_):
    pass


def test_brief_training_raises_validation_log_likelihood(tmp_path):
    trainer = Trainer(small_config(), tmp_path)
    before = evaluate(trainer.model, trainer.splits["valid"], 10, 0, trainer.device).mean
    record = trainer.run(quiet)
    after = record["epochs"][-1]["valid_ll"]
    assert after > before + 2, (before, after)   # dna: -101.9 -> -97.8
    assert record["status"] == "finished" and record["test"]["K"] == 10
    assert all(e["seconds"] > 0 for e in record["epochs"])


def test_record_and_checkpoint_are_complete(tmp_path):
    Trainer(small_config(epochs=2), tmp_path).run(quiet)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["config"]["model"] == "sbn:20" and record["seed"] == 0
    for key in ("python", "torch", "git_commit", "device", "torch_threads", "cpu_model"):
        assert key in record["environment"]
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    for key in ("train_ll", "valid_ll", "seconds"):
        assert key in record["epochs"][0]
    assert {"ll", "se", "K", "ess_mean"} <= set(record["test"])
    points = record["test"]["per_point"]              # one estimate per test point
    assert len(points) == record["data"]["test"] == record["test"]["n"]
    assert sum(points) / len(points) == pytest.approx(record["test"]["ll"], abs=1e-4)
    state = results.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 2 and state["best"]["model"] is not None


def test_resumed_run_continues_exactly_where_it_stopped(tmp_path):
    straight = Trainer(small_config(epochs=3), tmp_path / "a")
    straight.run(quiet)
    Trainer(small_config(epochs=2), tmp_path / "b").run(quiet)     # stops after 2 epochs
    resumed = Trainer(small_config(epochs=3), tmp_path / "b")       # asked for one more
    assert resumed.epoch == 2
    resumed.run(quiet)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a = json.loads((tmp_path / "a" / "record.json").read_text())["epochs"]
    b = json.loads((tmp_path / "b" / "record.json").read_text())["epochs"]
    assert [e["train_ll"] for e in a] == [e["train_ll"] for e in b]


def test_a_record_without_its_checkpoint_is_kept_when_the_run_starts_again(tmp_path):
    """As in a clean checkout: the record was committed, the checkpoint was not."""
    Trainer(small_config(epochs=2), tmp_path).run(quiet)
    first = (tmp_path / "record.json").read_text()
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.warns(UserWarning, match=r"\(2 epochs\) but no checkpoint.pt.*starts again"):
        again = Trainer(small_config(epochs=1), tmp_path)
    assert again.epoch == 0
    again.run(quiet)
    [kept] = tmp_path.glob("record.superseded-*.json")
    assert kept.read_text() == first
    assert json.loads((tmp_path / "record.json").read_text())["epochs_done"] == 1


def test_a_record_names_the_code_of_every_process_that_trained_it(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "git_commit", lambda: "aaa")
    Trainer(small_config(epochs=1), tmp_path).run(quiet)
    monkeypatch.setattr(results, "git_commit", lambda: "bbb+dirty")
    Trainer(small_config(epochs=2), tmp_path).run(quiet)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["sessions"] == [{"from_epoch": 0, "git_commit": "aaa"},
                                  {"from_epoch": 1, "git_commit": "bbb+dirty"}]
    assert record["environment"]["git_commit"] == "bbb+dirty"


def test_the_commit_is_dirty_for_changed_source_not_for_changed_records(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "src.py").write_text("a = 1\n")
    (tmp_path / "results" / "record.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "results" / "record.json").write_text('{"epochs": 1}\n')   # a running sweep
    assert results.git_commit(tmp_path / "results") == head
    (tmp_path / "src.py").write_text("a = 2\n")
    assert results.git_commit(tmp_path) == head + "+dirty"


def test_resume_with_a_different_config_is_refused(tmp_path):
    Trainer(small_config(epochs=1), tmp_path).run(quiet)
    with pytest.raises(UserError, match="different config.*K: 5 -> 7"):
        Trainer(small_config(epochs=2, K=7), tmp_path)


def test_run_from_before_a_config_field_existed_resumes(tmp_path):
    """A checkpoint whose config lacks a field added since (here grad_precision) ran
    with that field's default, and resumes under it."""
    Trainer(small_config(epochs=1), tmp_path).run(quiet)
    state = results.load_checkpoint(tmp_path / "checkpoint.pt")
    del state["config"]["grad_precision"]
    results.save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert Trainer(small_config(epochs=2), tmp_path).epoch == 1
    with pytest.raises(UserError, match="grad_precision: 'float32' -> 'bfloat16'"):
        Trainer(small_config(epochs=2, grad_precision="bfloat16"), tmp_path)


def test_bfloat16_weight_gradients_learn_as_float32_does(tmp_path):
    ll = {}
    for precision in ("float32", "bfloat16"):
        record = Trainer(small_config(grad_precision=precision), tmp_path / precision).run(quiet)
        ll[precision] = record["epochs"][-1]["valid_ll"]
        assert record["config"]["grad_precision"] == precision
    # dna, 3 epochs: -97.8 both ways (the sample paths part after the first rounding)
    assert ll["bfloat16"] == pytest.approx(ll["float32"], abs=0.5), ll


def test_unknown_grad_precision_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown grad precision 'half'.*float32, bfloat16"):
        Trainer(small_config(grad_precision="half"), tmp_path)


def test_finished_run_is_not_retrained(tmp_path):
    Trainer(small_config(epochs=1), tmp_path).run(quiet)
    lines = []
    Trainer(small_config(epochs=1), tmp_path).run(lines.append)
    assert "already finished" in lines[0]


def test_early_stopping_restores_the_best_parameters(tmp_path):
    # a learning rate this large makes validation worse after the first epoch or two
    trainer = Trainer(small_config(epochs=8, lr=0.3, patience=2), tmp_path)
    record = trainer.run(quiet)
    valid = [e["valid_ll"] for e in record["epochs"]]
    best = max(range(len(valid)), key=valid.__getitem__)
    assert record["best_epoch"] == best + 1
    if record["stopped_by"] == "early_stopping":
        assert len(valid) == best + 1 + 2
    # the test set is scored with the best epoch's parameters, not the last
    model = trainer.best_model()
    state = results.load_checkpoint(tmp_path / "checkpoint.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["best"]["model"][k])


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    trainer = Trainer(small_config(epochs=1), tmp_path)
    real_backward = trainer.method.backward
    calls = {"n": 0}

    def sometimes_nan(x, g, scale):       # every 4th step: a NaN gradient, reported
        finite, stats = real_backward(x, g, scale)
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            trainer.model.p_layers[0].b.grad[0] = float("nan")
            finite = torch.zeros((), dtype=torch.bool)
        return finite, stats

    monkeypatch.setattr(trainer.method, "backward", sometimes_nan)
    record = trainer.run(quiet)
    assert record["skipped_steps"] == 28 // 4 == record["epochs"][0]["skipped_steps"]
    assert record["epochs"][0]["steps"] == 28 - 7
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_run_of_nonfinite_steps_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    Trainer(small_config(epochs=1), tmp_path).run(quiet)
    good = results.load_checkpoint(tmp_path / "checkpoint.pt")
    trainer = Trainer(small_config(epochs=2, max_bad_steps=3), tmp_path)
    monkeypatch.setattr(trainer.method, "backward",      # a non-finite loss, every step
                        lambda x, g, scale: (torch.tensor(False), {"train_ll": torch.tensor(0.0)}))
    with pytest.raises(UserError, match="3 steps in a row had a non-finite"):
        trainer.run(quiet)
    kept = results.load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == good["epoch"] == 1
    for k, v in good["model"].items():
        assert torch.equal(v, kept["model"][k])
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "stopped_nonfinite" and "non-finite" in record["error"]


def test_batch_larger_than_data_is_refused(tmp_path):
    with pytest.raises(UserError, match="batch size 5000 is larger than the 1400"):
        Trainer(small_config(batch_size=5000), tmp_path)


@pytest.mark.parametrize("spec", ["sbn:10-10-5", "dsbn[hidden=20]:10", "darn:10",
                                  "nade[hidden=10]:10", "sbn/nade[hidden=10]:10",
                                  "gauss[hidden=20]:5"])
def test_every_family_learns(tmp_path, spec):
    trainer = Trainer(small_config(data="mushrooms", model=spec, epochs=3), tmp_path)
    before = evaluate(trainer.model, trainer.splits["valid"], 10, 0, trainer.device).mean
    valid = [e["valid_ll"] for e in trainer.run(quiet)["epochs"]]
    assert valid[-1] > before + 10 and valid[-1] > valid[0], (before, valid)


def test_micro_batches_give_the_full_batch_gradient():
    """The loss is a mean over points, so back-propagating it in micro-batches (to keep
    the work in cache) yields the same gradient. One latent layer and wake-only RWS draw
    the same random numbers in the same order either way."""
    from rws import methods, zoo
    from rws.train import OPTIMIZERS, train_step
    torch.manual_seed(0)
    grads = []
    for micro in (12, 5):
        model = zoo.build("sbn:6", 10)
        torch.manual_seed(0)
        for p in model.parameters():
            torch.nn.init.normal_(p, 0, 0.5)
        method = methods.build("rws", model, 3, sleep_q=False)
        opt = OPTIMIZERS["adam"](method.param_groups(1e-3))
        x = torch.bernoulli(torch.full((12, 10), 0.4), generator=torch.Generator().manual_seed(1))
        train_step(method, opt, x, torch.Generator().manual_seed(2), micro)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0
