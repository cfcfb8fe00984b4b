"""Importance-sampled log-likelihood, the one yardstick of the suite.

    log p^_K(x) = logsumexp_k(log w_k) - log K,   log w_k = log p(x, h_k) - log q(h_k | x),
    h_k ~ q(h | x)

is an unbiased estimate of p(x) on the linear scale and a stochastic lower bound of
log p(x) that does not decrease with K (Burda et al. 2016). It is computed for every
point of a split with K up to 1e5 in bounded memory: samples are streamed in chunks and
the running log-sum-exps of w and w^2 are accumulated in float64 per point. The
effective sample size is ESS = (sum w)^2 / sum w^2 in [1, K].

The data set mean is reported with its standard error sd / sqrt(N) across points.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rws import allocator, int8, stop
from rws.layers.bernoulli import SAMPLER


@dataclass
class LogLikelihood:
    K: int
    mean: float               # mean over points of log p^_K(x), nats
    se: float                 # standard error of that mean
    per_point: torch.Tensor   # [N] float64
    ess: torch.Tensor         # [N] float64, in [1, K] (0 where every weight is zero)
    seconds: float

    def summary(self) -> dict:
        return {"K": self.K, "ll": self.mean, "se": self.se, "n": int(self.per_point.numel()),
                "ess_mean": float(self.ess.mean()), "ess_over_K": float(self.ess.mean()) / self.K,
                "seconds": self.seconds, "sampler": SAMPLER}

    def per_point_list(self) -> list[float]:
        """Each point's log p^_K to 1e-4 nats, as records keep them: the report pairs two
        runs' tests on the same points with them (``report.paired_step``)."""
        return [round(v, 4) for v in self.per_point.tolist()]

    def __str__(self) -> str:
        return (f"log p^_K(x) = {self.mean:.3f} +- {self.se:.3f} nats (K={self.K}, "
                f"N={self.per_point.numel()}, mean ESS {float(self.ess.mean()):.2f})")


class StreamingLogMeanExp:
    """Running log sum_k w_k and log sum_k w_k^2 per point over chunks of log w [B, c]."""

    def __init__(self, B: int, device=None):
        self.log_sum = torch.full((B,), -math.inf, dtype=torch.float64, device=device)
        self.log_sum_sq = torch.full((B,), -math.inf, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, log_w: torch.Tensor) -> None:
        log_w = log_w.double()
        self.log_sum = torch.logaddexp(self.log_sum, torch.logsumexp(log_w, 1))
        self.log_sum_sq = torch.logaddexp(self.log_sum_sq, torch.logsumexp(2 * log_w, 1))
        self.count += log_w.shape[1]

    def log_mean(self) -> torch.Tensor:
        return self.log_sum - math.log(self.count)

    def ess(self) -> torch.Tensor:
        ess = torch.exp(2 * self.log_sum - self.log_sum_sq)
        return torch.where(torch.isfinite(self.log_sum), ess, torch.zeros_like(ess))


def default_rows(model) -> int:
    """Rows (points x samples) per forward pass: the widest layer's [rows, n] float32
    activations about 4 MB, so that the elementwise work between matrix multiplies stays
    in cache (measured on 2 cores: 1024 rows of MNIST run 1.7x faster than 4096)."""
    return int(min(65536, max(256, 2 ** 20 // max(model.sizes))))


@torch.inference_mode()
def log_likelihood(model, data: torch.Tensor, K: int, *, generator=None, rows: int | None = None,
                   device=None, progress: bool = False, desc: str = "eval",
                   resume: dict | None = None, snapshot=None,
                   snapshot_every: float = 60.0) -> LogLikelihood:
    """log p^_K(x) for every row of ``data`` [N, D] (uint8 or float 0/1).

    Up to ``rows`` proposals are scored per forward pass: many points per pass for
    small K, one point in several chunks of samples for large K.

    A long evaluation (K = 1e5 over 10,000 points takes hours on a CPU) can be continued
    after an interruption: ``snapshot(state)`` is called at a boundary between points at
    most every ``snapshot_every`` seconds, and a later call with the same model, data, K,
    rows and ``resume=state`` continues from it. ``state`` holds the finished points'
    estimates and the generator's state, so the continued evaluation draws what an
    uninterrupted one would have drawn. Stopped by KeyboardInterrupt (Ctrl-C; ``rws
    eval`` turns SIGTERM into one), it snapshots the points before the pass it was in,
    with the generator as that pass found it, and re-raises.
    """
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if (resume is not None or snapshot is not None) and generator is None:
        raise ValueError("a resumable evaluation needs a generator of its own")
    allocator.retain_freed_memory()
    t0 = time.perf_counter()
    device = device or next(model.parameters()).device
    rows = rows or default_rows(model)
    N = data.shape[0]
    points = max(1, rows // K)                  # points per pass
    chunk = min(K, rows)                        # samples per point per pass
    per_point = torch.empty(N, dtype=torch.float64)
    ess = torch.empty(N, dtype=torch.float64)
    done, seconds_before = 0, 0.0
    if resume is not None:
        if (resume["K"], resume["rows"], resume["N"]) != (K, rows, N):
            raise ValueError(f"the saved progress is of K={resume['K']}, rows={resume['rows']}, "
                             f"N={resume['N']}, not K={K}, rows={rows}, N={N}")
        done, seconds_before = resume["done"], resume["seconds"]
        per_point[:done], ess[:done] = resume["per_point"], resume["ess"]
        generator.set_state(resume["generator"])
    last_snapshot = time.perf_counter()

    def state(upto: int, generator_state=None) -> dict:
        """Progress after the points before ``upto``, whose passes left the generator in
        ``generator_state`` (default: its state now)."""
        return {"K": K, "rows": rows, "N": N, "done": upto, "per_point": per_point[:upto].clone(),
                "ess": ess[:upto].clone(),
                "generator": generator.get_state() if generator_state is None else generator_state,
                "seconds": seconds_before + time.perf_counter() - t0}

    was_training = model.training
    model.eval()
    bar = tqdm(total=N, initial=done, desc=desc, disable=not progress, leave=False, unit="pt")
    begun = (done, generator.get_state() if snapshot is not None else None)
    try:
        with int8.evaluation():                 # weights fixed: int8 pieces cut once
            for start in range(done, N, points):
                if snapshot is not None:
                    if time.perf_counter() - last_snapshot >= snapshot_every:
                        snapshot(state(start))
                        last_snapshot = time.perf_counter()
                    begun = (start, generator.get_state())   # this pass's first draw
                x = data[start:start + points].to(device=device, dtype=torch.float32)
                acc = StreamingLogMeanExp(x.shape[0], device)
                for s in range(0, K, chunk):
                    stop.check()                # a kill that numba's compiler swallowed
                    acc.add(model.log_weights(x, min(chunk, K - s), generator))
                per_point[start:start + x.shape[0]] = acc.log_mean().cpu()
                ess[start:start + x.shape[0]] = acc.ess().cpu()
                bar.update(x.shape[0])
    except KeyboardInterrupt:                   # stopped: keep every point before this pass
        if snapshot is not None:
            snapshot(state(*begun))
        raise
    bar.close()
    model.train(was_training)
    mean = float(per_point.mean())
    se = float(per_point.std() / math.sqrt(N)) if N > 1 else float("nan")
    return LogLikelihood(K, mean, se, per_point, ess, seconds_before + time.perf_counter() - t0)
