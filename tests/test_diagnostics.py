"""Estimator diagnostics against exact values: the mean, variance and bias of each
estimator, by enumerating every latent state and every K-tuple of proposals of tiny
models (written here from the model's probabilities, not from the estimators)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from rws import diagnostics, exact
from tests.conftest import tiny_model

X = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0, 1.0]])   # B = 2, D = 5


def per_state_grads(model, x, group):
    """grad of -log p(x_b, h_m) (group "p") or -log q(h_m | x_b) (group "q") for every
    point b and latent state m: [B, M, P]; and log w [B, M], log q [B, M]."""
    params = diagnostics.group_params(model, group)
    hs = exact.latent_grid(model)
    B, M = x.shape[0], hs[0].shape[0]
    grads = torch.zeros(B, M, sum(p.numel() for p in params), dtype=torch.float64)
    for b in range(B):
        for m in range(M):
            rows = [x[b:b + 1]] + [h[m:m + 1] for h in hs]
            term = (torch.stack(model.log_p_layers(rows)).sum() if group == "p"
                    else torch.stack(model.log_q_layers(rows)).sum())
            gs = torch.autograd.grad(-term, params, allow_unused=True)
            grads[b, m] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                     for g, p in zip(gs, params)]).double()
    log_p, log_q = exact.log_joint_table(model, x)
    return grads, (log_p - log_q).detach().double(), log_q.detach().double()


def exact_rws_moments(model, x, K, group):
    """Exact mean [P] and tr Cov of the minibatch RWS estimator sum_k w~_k g(h_k),
    averaged over the B points (each point its own K proposals), by enumerating every
    K-tuple of latent states."""
    G, log_w, log_q = per_state_grads(model, x, group)
    B, M, _ = G.shape
    mean, second = 0.0, 0.0
    for b in range(B):
        mb, sb = torch.zeros(G.shape[2], dtype=torch.float64), 0.0
        for t in itertools.product(range(M), repeat=K):
            t = list(t)
            prob = log_q[b, t].sum().exp()
            w = torch.softmax(log_w[b, t], 0)
            g = (w[:, None] * G[b, t]).sum(0)
            mb = mb + prob * g
            sb = sb + prob * (g @ g)
        mean = mean + mb / B
        second = second + (sb - mb @ mb) / B ** 2      # independent points: variances add
    return mean, float(second)


@pytest.mark.parametrize("K,name,group,target", [
    (K, "rws wake-P", "p", "log_px") for K in (1, 2, 3)] + [
    (K, "rws wake-Q", "q", "kl") for K in (2, 3)])                 # wake-Q needs K >= 2
def test_rws_estimators_match_their_exact_mean_variance_and_bias(K, name, group, target):
    model = tiny_model("sbn:3", n_data=5, seed=1)
    mean, var = exact_rws_moments(model, X, K, group)
    out = diagnostics.diagnose(model, X, [K], R=2500, estimators=[name], seed=0)
    row, = out["rows"]
    assert out["exact"] and row["target"] == target
    assert row["variance"] == pytest.approx(var, rel=0.1)         # var of a var: ~3-5%
    exact_target = (exact.grad_neg_log_px(model, X) if group == "p"
                    else exact.grad_kl(model, X)).double()
    exact_bias = float((mean - exact_target).norm())
    # the reported bias is the exact bias up to the Monte Carlo error of the mean
    assert abs(row["bias"] - exact_bias) <= 4 * row["mc_error"] + 1e-6
    assert row["mc_error"] == pytest.approx(math.sqrt(var / 2500), rel=0.05)


def test_the_mean_of_many_draws_matches_the_exact_expectation():
    model = tiny_model("sbn:3", n_data=5, seed=2)
    mean, var = exact_rws_moments(model, X, 2, "p")
    rws = diagnostics.methods.build("rws", model, 2, sleep_q=False)
    draws, _ = diagnostics.draw_gradients(rws, X, "p", 2000, torch.Generator().manual_seed(5))
    err = (draws["p"].double().mean(0) - mean).norm()
    assert err <= 4 * math.sqrt(var / 2000)


def test_sleep_q_matches_its_exact_mean_and_variance():
    """Sleep-Q over n dreams (x, h) ~ p: mean E_p grad -log q(h|x), variance tr Cov / n,
    by enumerating every x and h."""
    model = tiny_model("sbn:3", n_data=4, seed=3)
    xs = exact.all_states(4)
    G, _, _ = per_state_grads(model, xs, "q")                       # [16, 8, P]
    log_p, _ = exact.log_joint_table(model, xs)
    p = log_p.detach().double().exp()                               # [16, 8], sums to 1
    mean = (p[..., None] * G).sum((0, 1))
    second = (p * (G * G).sum(2)).sum()
    n = 3                                                           # dreams = batch size
    var = float(second - mean @ mean) / n
    x = torch.ones(n, 4)
    out = diagnostics.diagnose(model, x, [1], R=2500, estimators=["rws sleep-Q"], seed=1)
    row, = out["rows"]
    assert row["variance"] == pytest.approx(var, rel=0.1)


@pytest.mark.parametrize("K", [2, 3])
def test_vimco_is_unbiased_for_its_own_bound_and_rws_wake_p_is_not(K):
    model = tiny_model("sbn:3", n_data=5, seed=4, q_scale=0.3)      # a poor Q: visible bias
    out = diagnostics.diagnose(model, X, [K], R=1500, seed=2,
                               estimators=["vimco P", "vimco Q", "rws wake-P"])
    rows = {r["estimator"]: r for r in out["rows"]}
    for name in ("vimco P", "vimco Q"):
        assert rows[name]["target"] == "bound"
        assert rows[name]["bias"] <= 4 * rows[name]["mc_error"], rows[name]
    assert rows["rws wake-P"]["bias"] > 6 * rows["rws wake-P"]["mc_error"]


def test_rws_wake_p_bias_shrinks_with_K():
    model = tiny_model("sbn:3", n_data=5, seed=4, q_scale=0.3)
    out = diagnostics.diagnose(model, X, [1, 4, 16], R=800, estimators=["rws wake-P"], seed=3)
    bias = [r["bias"] for r in out["rows"] if r["estimator"] == "rws wake-P"]
    assert bias[0] > bias[1] > bias[2]


def posterior_q_model():
    """One latent unit: q(h = 1 | x) = sigmoid(V x + d) can equal the exact posterior,
    whose logit is a_top + x . W - sum_j [softplus(W_j + b_j) - softplus(b_j)]."""
    model = tiny_model("sbn:1", n_data=5, seed=6)
    W, b = model.p_layers[0].W[:, 0], model.p_layers[0].b                # [D], [D]
    a_top = model.p_layers[1].a
    with torch.no_grad():
        model.q_layers[0].W.copy_(W[None, :])
        model.q_layers[0].b.copy_(a_top - (F.softplus(W + b) - F.softplus(b)).sum())
    return model


def test_posterior_q_model_is_the_posterior():
    model = posterior_q_model()
    assert float(exact.kl_posterior_q(model, X).detach().abs().max()) < 1e-5


@pytest.mark.parametrize("K", [1, 2, 5, 10])
def test_with_q_the_exact_posterior_ess_is_K_and_wake_p_is_unbiased(K):
    model = posterior_q_model()
    out = diagnostics.diagnose(model, X, [K], R=1000, estimators=["rws wake-P"], seed=K)
    row, = out["rows"]
    assert row["ess"] == pytest.approx(K, rel=1e-5)
    assert abs(row["kl_estimate"]) < 1e-5
    assert row["bias"] <= 4 * row["mc_error"]


def test_diagnose_covers_every_method_on_a_large_model_with_a_reference():
    model = tiny_model("sbn:20", n_data=5, seed=0)                 # 2^20 states: no enumeration
    out = diagnostics.diagnose(model, X, [1, 2], R=5, seed=0, reference_k=50, reference_r=2)
    assert not out["exact"] and "K=50" in out["reference"]
    names = {(r["estimator"], r["K"]) for r in out["rows"]}
    assert {("ws wake-P", 1), ("nvil Q", 1), ("rws wake-P", 2), ("vimco Q", 2)} <= names
    assert ("vimco P", 1) not in names and ("ws wake-P", 2) not in names
    for r in out["rows"]:
        assert "bias" not in r and -1 <= r["cosine"] <= 1 and r["variance"] >= 0
        assert r["seconds"] > 0 and r["snr"] >= 0


def test_gaussian_models_get_vae_and_iwae_rows():
    model = tiny_model("gauss[hidden=8]:2", n_data=5, seed=0)
    out = diagnostics.diagnose(model, X, [1, 3], R=4, method_names=["vae", "iwae", "rws"],
                               reference_k=20, reference_r=2)
    names = {(r["estimator"], r["K"]) for r in out["rows"]}
    assert {("vae P", 1), ("iwae Q", 3), ("rws wake-Q", 3)} <= names


def test_training_records_diagnostics_every_n_epochs(tmp_path):
    from rws.train import TrainConfig, Trainer
    cfg = TrainConfig(data="dna", model="sbn:6", method="rws", K=3, epochs=2, lr=1e-2,
                      valid_k=2, test_k=2, progress=False, threads=1, diagnose_every=2,
                      diagnose_r=3)
    rec = Trainer(cfg, tmp_path).run(lambda *_: None)
    assert "diagnostics" not in rec["epochs"][0]
    d = rec["epochs"][1]["diagnostics"]
    assert set(d) == {"rws wake-P", "rws wake-Q", "rws sleep-Q"}
    assert all(v["variance"] > 0 and 1 <= v["ess"] <= 3 for v in d.values())


def test_rws_diagnose_runs_on_every_methods_checkpoint_of_a_sweep(tmp_path):
    """A sweep of one run per method (SBN for the score-function methods, Gaussian
    latents for VAE/IWAE), then `rws diagnose` on its directory: a record per run."""
    import json
    import subprocess
    import sys
    from rws import sweep
    cfg = {"name": "all", "defaults": {"data": "dna", "epochs": 1, "valid_k": 2, "test_k": 2,
                                       "threads": 1},
           "cells": [{"method": m, "model": "sbn:4"} for m in ("rws", "ws", "nvil", "vimco")]
           + [{"method": m, "model": "gauss[hidden=8]:2"} for m in ("vae", "iwae")]}
    sweep.run(cfg, tmp_path, workers=2, log=lambda *_: None)
    p = subprocess.run([sys.executable, "-m", "rws", "diagnose", str(tmp_path), "-K", "1", "2",
                        "-R", "3", "--batch", "4", "--reference-k", "20", "--threads", "1"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    records = {d.name.split("-")[2]: json.loads((d / "diagnostics.json").read_text())
               for d in tmp_path.iterdir() if d.is_dir()}
    assert set(records) == {"rws", "ws", "nvil", "vimco", "vae", "iwae"}
    for method, rec in records.items():
        assert rec["kind"] == "diagnostics" and rec["batch"] == 4
        rows = {(r["estimator"], r["K"]) for r in rec["rows"]}
        if method in ("vae", "iwae"):
            assert not rec["exact"] and {("vae P", 1), ("iwae Q", 2)} <= rows
        else:
            assert rec["exact"] and {("rws wake-P", 1), ("vimco Q", 2), ("nvil Q", 1)} <= rows
            nvil = next(r for r in rec["rows"] if r["estimator"] == "nvil Q")
            assert ("note" in nvil) == (method != "nvil")   # an NVIL run's own baselines


def test_report_renders_diagnostics_records(tmp_path):
    import json
    from rws import report
    from tests.test_sweep_report import fixture_record
    run = tmp_path / "runs" / "r"
    fixture_record(run, "sbn:3", "rws", 2, -10.0)
    model = tiny_model("sbn:3", n_data=5, seed=4)
    out = diagnostics.diagnose(model, X, [1, 2], R=5, method_names=["rws", "vimco"])
    (run / "diagnostics.json").write_text(json.dumps(
        {**out, "config": {"model": "sbn:3", "method": "rws"}, "epoch": 2}))
    rec = json.loads((run / "record.json").read_text())
    rec["epochs"][1]["diagnostics"] = {"rws wake-P": {"snr": 0.5, "ess": 1.5, "variance": 2.0}}
    (run / "record.json").write_text(json.dumps(rec))
    summary = report.report([tmp_path / "runs"], tmp_path / "out")
    for name in ("diagnostics_vs_k", "bias_vs_k", "diagnostics_vs_epoch"):
        assert name in summary["figures"]
        assert (tmp_path / "out" / "figures" / f"{name}.png").stat().st_size > 1000
    table = (tmp_path / "out" / "tables" / "diagnostics.csv").read_text()
    assert "vimco Q" in table and "rws wake-P" in table
