"""Stochastic layers of the model zoo.

Every layer is a distribution over a vector ``x`` of ``n_x`` units, either a top
prior p(x) (``n_y == 0``) or a conditional p(x | y) given ``n_y`` inputs. Layers work
on logits and share one interface:

    sample(y, n, generator) -> (x, log_p)
        y: [N, n_y] context, or None for a top prior.
        With context, draws ``n`` samples per row of y, returned interleaved
        ([N*n, n_x], row i*n + k is sample k of row i); without, ``n`` rows.
        x carries no gradient; log_p [N*n] keeps the graph of the layer's parameters.
    log_prob(x, y) -> [N]

Bernoulli log-probabilities are always computed from logits a as
``sum_i x_i a_i - softplus(a_i)`` (never ``log(sigmoid(a))``).
Initialisation follows Bornschein & Bengio's code (algorithms.md §1.3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """sum_i log Bern(x_i | sigmoid(a_i)) over the last axis: [..., D] -> [...].

    clamp: the original code's ``clamp_sigmoid``, p = 0.9999 sigmoid(a) + 5e-6, which
    bounds each unit's log-probability below by about -12.2.
    """
    if clamp:
        p = 0.9999 * torch.sigmoid(logits) + 5e-6
        return (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def bernoulli_sample(logits: torch.Tensor, generator: torch.Generator | None,
                     clamp: bool = False) -> torch.Tensor:
    """x ~ Bern(sigmoid(logits)), detached, in the logits' dtype."""
    with torch.no_grad():
        p = torch.sigmoid(logits)
        if clamp:
            p = 0.9999 * p + 5e-6
        return torch.bernoulli(p, generator=generator)


def default_weights(n_in: int, n_out: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """U(-s, s) / n_in with s = sqrt(6 / (n_in + n_out)), as in REF's ``default_weights``."""
    s = math.sqrt(6.0 / (n_in + n_out))
    return (torch.rand(shape or (n_out, n_in)) * 2 - 1) * s / n_in


def repeat_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """[N, ...] -> [N*n, ...], each row repeated n times consecutively (the [B, K] layout)."""
    return t if n == 1 else t.repeat_interleave(n, 0)


class BernoulliLayer(nn.Module):
    """Base of layers whose units are Bernoulli given one vector of logits.

    Subclasses define ``logits(y) -> [N, n_x]`` (y is None for a top prior, then [1, n_x]).
    Sampling and scoring share the logits, so a sample costs one forward pass.
    """

    n_x: int
    n_y: int
    clamp: bool = False

    def logits(self, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, y: torch.Tensor | None, n: int = 1,
               generator: torch.Generator | None = None):
        a = self.logits(y)
        a = a.expand(n, -1) if y is None else repeat_rows(a, n)  # [N*n, n_x]
        x = bernoulli_sample(a, generator, self.clamp)
        return x, bernoulli_log_prob(a, x, self.clamp)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        a = self.logits(y)
        if y is None:
            a = a.expand_as(x)
        return bernoulli_log_prob(a, x, self.clamp)


class SBNTop(BernoulliLayer):
    """Factorised Bernoulli prior p(x_j = 1) = sigmoid(a_j); a initialised to -1."""

    def __init__(self, n_x: int, clamp: bool = False):
        super().__init__()
        self.n_x, self.n_y, self.clamp = n_x, 0, clamp
        self.a = nn.Parameter(torch.full((n_x,), -1.0))

    def logits(self, y=None):
        return self.a[None, :]  # [1, n_x]


class SBN(BernoulliLayer):
    """Sigmoid belief layer p(x_j = 1 | y) = sigmoid((W y)_j + b_j) (Neal 1992).

    W: [n_x, n_y] (torch's Linear layout), default_weights; b: [n_x] = -1.
    """

    def __init__(self, n_x: int, n_y: int, clamp: bool = False):
        super().__init__()
        self.n_x, self.n_y, self.clamp = n_x, n_y, clamp
        self.W = nn.Parameter(default_weights(n_y, n_x))
        self.b = nn.Parameter(torch.full((n_x,), -1.0))

    def logits(self, y):
        return F.linear(y, self.W, self.b)  # [N, n_x]
