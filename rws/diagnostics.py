"""Estimator diagnostics: bias, variance and signal-to-noise of every method's gradients.

RWS's argument is about variance: Q only shapes the variance of the importance-sampled
estimates, so it should be trained to reduce it, and K samples reduce it further
(Bornschein & Bengio, ICLR 2015, Sec. 2-3). This module measures it. At fixed
parameters and one minibatch x it draws an estimator's gradient g (in the loss's sign:
a descent direction) R times with fresh samples and reports, per parameter group
(P's theta, Q's phi):

    variance   tr Cov(g) = sum_i Var(g_i)
    SNR        ||E g|| / sqrt(tr Cov g), and mean_i |E g_i| / sd(g_i), the per-parameter
               signal-to-noise ratio of Rainforth et al. ("Tighter variational bounds
               are not necessarily better", ICML 2018)
    cosine     cos(E g, g_ref) against a reference direction
    bias       ||mean g - g_target|| with the Monte Carlo error of the mean, sqrt(tr Cov / R),
               and sqrt(max(0, bias^2 - tr Cov / R)), which removes that error's expected
               share (E ||mean - target||^2 = ||E g - target||^2 + tr Cov / R)

and, per K, the effective sample size of the importance weights (sum w)^2 / sum w^2 and
the estimate KL(p(h|x) || q(h|x)) ~ log p^_K(x) - mean_k log w_k (as RRWS reports it).

Targets. On a model small enough to enumerate every latent state (``rws.exact``) the
targets are exact: wake-P estimators (RWS, wake-sleep, NVIL) aim at grad -log p(x);
wake-Q and sleep-Q at grad KL(p(h|x) || q(h|x)) on the data (the direction the paper
argues Q should follow; sleep-Q follows it on P's dreams instead); VIMCO at the gradient
of its own K-sample bound, exact by enumerating every K-tuple while there are at most
``MAX_TUPLES`` (beyond, VIMCO's rows have no bias, and their cosine is to the exact
wake targets). Elsewhere the reference direction is RWS wake-P and wake-Q at a large K
(``reference_k``), averaged over ``reference_r`` draws, and no bias is reported.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass

import torch

from rws import exact, methods
from rws.errors import UserError

MAX_TUPLES = 200_000        # M^K latent tuples per point for the exact K-sample bound


@dataclass(frozen=True)
class Estimator:
    name: str             # e.g. "rws wake-P"
    method: str           # the method whose surrogate loss gives it
    options: tuple        # method options, as (key, value) pairs
    group: str            # "p" or "q": the parameters whose gradient it is
    target: str           # "log_px", "kl" or "bound": what it estimates (exact targets)
    K: str = "any"        # "any", "one" (K = 1 only) or "many" (K >= 2)


ESTIMATORS = [
    Estimator("rws wake-P", "rws", (("sleep_q", False),), "p", "log_px"),
    Estimator("rws wake-Q", "rws", (("sleep_q", False),), "q", "kl", "many"),
    Estimator("rws sleep-Q", "rws", (("wake_q", False),), "q", "kl"),
    Estimator("ws wake-P", "ws", (), "p", "log_px", "one"),
    Estimator("ws sleep-Q", "ws", (), "q", "kl", "one"),
    Estimator("nvil P", "nvil", (), "p", "log_px", "one"),
    Estimator("nvil Q", "nvil", (), "q", "kl", "one"),
    Estimator("vimco P", "vimco", (), "p", "bound", "many"),
    Estimator("vimco Q", "vimco", (), "q", "bound", "many"),
    Estimator("vae P", "vae", (), "p", "bound", "one"),
    Estimator("vae Q", "vae", (), "q", "bound", "one"),
    Estimator("iwae P", "iwae", (), "p", "bound", "many"),
    Estimator("iwae Q", "iwae", (), "q", "bound", "many"),
]
METHODS = sorted({e.method for e in ESTIMATORS})


def applicable(est: Estimator, model, K: int) -> bool:
    if est.method in ("vae", "iwae") and not model.reparameterizable:
        return False                    # reparameterised methods need Gaussian latents
    return est.K == "any" or (est.K == "one") == (K == 1)


def group_params(model, group: str) -> list:
    return list((model.p_layers if group == "p" else model.q_layers).parameters())


def draw_gradients(method, x, groups, R: int, generator) -> tuple[dict, float]:
    """R independent draws of the method's gradient in each parameter group of
    ``groups`` ("p", "q"; one draw serves both): ({group: [R, P]}, seconds per draw).
    The method's running statistics (NVIL's centring) are restored after each draw, so
    every draw sees the same state."""
    groups = [groups] if isinstance(groups, str) else list(groups)
    params = {gr: group_params(method.model, gr) for gr in groups}
    flat = [p for gr in groups for p in params[gr]]
    buffers = {k: v.clone() for k, v in method.named_buffers() if not k.startswith("model.")}
    out = {gr: [] for gr in groups}
    t0 = time.perf_counter()
    for _ in range(R):
        loss, _ = method.loss(x, generator)
        gs = iter(torch.autograd.grad(loss, flat, allow_unused=True))
        for gr in groups:
            # (params first: zip stops on them without taking the next group's gradient)
            out[gr].append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                      for p, g in zip(params[gr], gs)]))
        with torch.no_grad():
            for k, v in method.named_buffers():
                if k in buffers:
                    v.copy_(buffers[k])
    return {gr: torch.stack(v) for gr, v in out.items()}, (time.perf_counter() - t0) / R


def summarise(g: torch.Tensor, reference: torch.Tensor | None = None,
              target: torch.Tensor | None = None) -> dict:
    """The statistics of R draws g [R, P] (module docstring)."""
    g = g.double()
    R = g.shape[0]
    mean = g.mean(0)
    var = g.var(0, unbiased=True) if R > 1 else torch.zeros_like(mean)
    trace = float(var.sum())
    sd = var.sqrt()
    nz = sd > 0
    out = {"R": R, "variance": trace, "mean_norm": float(mean.norm()),
           "snr": float(mean.norm()) / math.sqrt(trace) if trace > 0 else math.inf,
           "snr_per_parameter": float((mean[nz].abs() / sd[nz]).mean()) if nz.any() else math.inf,
           "mc_error": math.sqrt(trace / R)}
    if reference is not None:
        ref = reference.double()
        denom = float(mean.norm() * ref.norm())
        out["cosine"] = float(mean @ ref) / denom if denom > 0 else math.nan
    if target is not None:
        # E ||mean - target||^2 = ||bias||^2 + tr Cov / R: the Monte Carlo part removed
        bias = float((mean - target.double()).norm())
        out["bias"] = bias
        out["bias_corrected"] = math.sqrt(max(0.0, bias ** 2 - trace / R))
        out["target_norm"] = float(target.double().norm())
    return out


@torch.no_grad()
def weight_stats(model, x, K: int, R: int, generator) -> dict:
    """Mean over R draws and the points of x: ESS of the K importance weights, and the
    estimate KL ~ log p^_K - mean_k log w_k."""
    ess, kl = [], []
    for _ in range(R):
        log_w = model.log_weights(x, K, generator).double()                # [B, K]
        ess.append((2 * torch.logsumexp(log_w, 1) - torch.logsumexp(2 * log_w, 1)).exp())
        kl.append(torch.logsumexp(log_w, 1) - math.log(K) - log_w.mean(1))
    return {"ess": float(torch.stack(ess).mean()), "ess_over_K": float(torch.stack(ess).mean()) / K,
            "kl_estimate": float(torch.stack(kl).mean())}


def exact_targets(model, x, K: int) -> dict:
    """The exact targets {(target, group): [P]} of an enumerable model; the K-sample
    bound only while M^K <= MAX_TUPLES."""
    out = {("log_px", "p"): exact.grad_neg_log_px(model, x),
           ("kl", "q"): exact.grad_kl(model, x)}
    if 2 ** (sum(model.sizes[1:]) * K) <= MAX_TUPLES:
        out[("bound", "p")], out[("bound", "q")] = exact.grad_neg_bound(model, x, K)
    return out


def reference_directions(model, x, K_ref: int, R_ref: int, generator) -> dict:
    """RWS wake-P and wake-Q at a large K, averaged over R_ref draws: {"p": [P], "q": [Q]}."""
    rws = methods.build("rws", model, K_ref, sleep_q=False)
    draws, _ = draw_gradients(rws, x, ("p", "q"), R_ref, generator)
    return {group: g.mean(0) for group, g in draws.items()}


def build_method(est: Estimator, model, K: int, own_state: dict | None, seed: int):
    torch.manual_seed(seed)                       # NVIL's baseline networks
    with warnings.catch_warnings():
        # RWS's advice against training wake-Q at K = 1: here that estimator is measured
        # on purpose (its zero mean and its variance are a row of the table)
        warnings.filterwarnings("ignore", message="wake-Q with K=1")
        method = methods.build(est.method, model, K, **dict(est.options))
    if own_state and est.method == "nvil":        # the run's trained baselines
        method.load_own_state(own_state)
    return method


def diagnose(model, x, Ks, R: int = 100, method_names=None, seed: int = 0,
             reference_k: int = 1000, reference_r: int = 10, own_states=None,
             estimators=None, log=lambda *_: None) -> dict:
    """Every applicable estimator of ``method_names`` (default all; or only those named
    in ``estimators``) at every K on the minibatch x [B, D]: one row per (estimator, K)
    (module docstring). ``own_states``: {method: own_state} of a run's method (NVIL's
    baselines); other NVIL rows use fresh baselines (and say so)."""
    if R < 2:
        raise UserError(f"diagnostics need R >= 2 draws for a variance, got {R}")
    unknown = sorted(set(method_names or []) - set(METHODS))
    if unknown:
        raise UserError(f"unknown method(s) {unknown} for diagnostics; choose from "
                        f"{', '.join(METHODS)}")
    names = set(method_names or METHODS)
    x = x.float()
    g = torch.Generator().manual_seed(seed)
    is_exact = exact.enumerable(model)
    if is_exact:
        reference, kind = None, "exact"
    else:
        reference = reference_directions(model, x, reference_k, reference_r, g)
        kind = f"rws wake-P / wake-Q at K={reference_k}, mean of {reference_r} draws"
    rows = []
    for K in Ks:
        targets = exact_targets(model, x, K) if is_exact else {}
        stats = weight_stats(model, x, K, min(R, 20), g)
        chosen = [est for est in ESTIMATORS
                  if est.method in names and applicable(est, model, K)
                  and (not estimators or est.name in estimators)]
        cache = {}      # estimators of one surrogate loss (e.g. vimco P and Q) share draws
        for est in chosen:
            key = (est.method, est.options)
            if key not in cache:
                method = build_method(est, model, K, (own_states or {}).get(est.method), seed)
                groups = sorted({e.group for e in chosen if (e.method, e.options) == key})
                cache[key] = draw_gradients(method, x, groups, R, g)
            all_draws, seconds = cache[key]
            draws = all_draws[est.group]
            target = targets.get((est.target, est.group))
            if is_exact:       # the estimator's own target, else the exact wake target
                ref = target if target is not None else targets[(
                    "log_px" if est.group == "p" else "kl", est.group)]
            else:
                ref = reference[est.group]
            row = {"estimator": est.name, "method": est.method, "group": est.group, "K": K,
                   "target": est.target if target is not None else None,
                   "seconds": seconds, **stats, **summarise(draws, ref, target)}
            if est.method == "nvil" and not (own_states or {}).get("nvil"):
                row["note"] = "untrained NVIL baselines (not an NVIL run's checkpoint)"
            rows.append(row)
            log(format_row(row))
    return {"kind": "diagnostics", "reference": kind, "exact": is_exact, "R": R,
            "batch": x.shape[0], "K": list(Ks), "rows": rows}


def format_row(r: dict) -> str:
    s = (f"{r['estimator']:12s} K={r['K']:<4d} var {r['variance']:10.4g}  SNR {r['snr']:7.4f}  "
         f"cos {r.get('cosine', math.nan):6.3f}  ESS {r['ess']:7.2f}  KL~ {r['kl_estimate']:7.3f}")
    if "bias" in r:
        s += f"  bias {r['bias']:.4g} (+- {r['mc_error']:.2g})"
    return s + f"  {r['seconds'] * 1e3:.1f} ms"


def probe(model, x, K: int, method: str, R: int, seed: int = 0,
          own_state: dict | None = None) -> dict:
    """The diagnostics of one run's own estimators at its K on a fixed probe minibatch,
    small R, recorded during training (``TrainConfig.diagnose_every``): {estimator:
    {snr, variance, ess, kl_estimate, ...}}. ``own_state``: the run's method state
    (NVIL's baselines)."""
    model = copy.deepcopy(model)                  # the run's parameters stay untouched
    out = diagnose(model, x, [K], R, [method], seed, reference_k=max(100, K),
                   reference_r=2, own_states={method: own_state} if own_state else None)
    return {r["estimator"]: {k: r[k] for k in ("snr", "snr_per_parameter", "variance", "ess",
                                               "kl_estimate", "cosine") if k in r}
            for r in out["rows"]}
