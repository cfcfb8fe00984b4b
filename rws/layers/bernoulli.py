"""Bernoulli layers' shared pieces: log-probabilities from logits, sampling from
uniforms, the rows layout of K samples per point, REF's initialisation, and
``BernoulliLayer``, the base of the sigmoid belief layers."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rws import ar_kernels, bernoulli_kernel, logprob_kernel, rng


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """sum_i log Bern(x_i | sigmoid(a_i)) over the last axis: [..., D] -> [...].
    logits broadcast against x; softplus runs on the logits as given (not broadcast).

    clamp: the original code's ``clamp_sigmoid``, p = 0.9999 sigmoid(a) + 5e-6, which
    bounds each unit's log-probability below by about -12.2.
    """
    if clamp:
        out = logprob_kernel.log_prob(logits, x, clamp=True)
        if out is not None:
            return out
        p = 0.9999 * torch.sigmoid(logits) + 5e-6
        return (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)
    if logits.requires_grad and torch.is_grad_enabled() and logprob_kernel.usable(logits, x):
        return _BernoulliLogProb.apply(logits, x)
    out = logprob_kernel.log_prob(logits, x)      # float32 CPU tensors: one compiled pass
    if out is not None:
        return out
    # two reductions are faster than the fused BCE kernel on CPU (measured 0.7 vs 0.9-3.4 ns/elt)
    return (x * logits).sum(-1) - softplus_sum(logits)


def bernoulli_log_prob_and_probs(logits: torch.Tensor, x: torch.Tensor):
    """(``bernoulli_log_prob(logits, x)``, sigmoid(logits)), for a caller that needs both
    and no gradient recorded: from the same exponentials where the compiled pass
    (``rws.logprob_kernel``) applies."""
    res = logprob_kernel.log_prob(logits, x, probs=True)
    return res if res is not None else (bernoulli_log_prob(logits, x), torch.sigmoid(logits))


class _BernoulliLogProb(torch.autograd.Function):
    """``bernoulli_log_prob`` with a gradient to record, by the compiled pass
    (``rws.logprob_kernel``), which keeps sigmoid(a) for the backward pass:

        d/da sum_i [x_i a_i - softplus(a_i)] = x - sigmoid(a),   d/dx = a

    (summed over the dims a or x was broadcast along). Against autograd of the torch
    operations, forward and backward of [125, 784] logits 400 -> 281 us (one thread);
    training steps that score with autograd gain 1-2% (NADE/NADE, NVIL on SBN 200)."""

    @staticmethod
    def forward(ctx, a, x):
        out, s = bernoulli_log_prob_and_probs(a, x)      # (no gradient recorded in here)
        ctx.save_for_backward(s, x, a if ctx.needs_input_grad[1] else None)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        s, x, a = ctx.saved_tensors
        g = g[..., None]
        grad_a = ((x - s) * g).sum_to_size(s.shape) if ctx.needs_input_grad[0] else None
        grad_x = (a * g).sum_to_size(x.shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_x


_LOG2_E = 1 / math.log(2)


def softplus_sum(a: torch.Tensor) -> torch.Tensor:
    """sum_i softplus(a_i) = sum_i log(1 + e^a_i) over the last axis: [..., n] -> [...].

    For float32 CPU tensors without a gradient to record it is one compiled pass
    (``rws.logprob_kernel``). Otherwise, without a gradient to record and for large
    tensors (float64, other devices, no numba), it takes one logarithm per
    group of units instead of one per unit (the accurate per-unit log is most of
    softplus's cost on a CPU; this form takes 40% less time at [1000, 784]):

        sum_i softplus(a_i) = sum_i max(a_i, 0) + log prod_i (1 + e^-|a_i|)

    The product is taken over groups of up to 64 units (the last axis halved while its
    length is even: 784 units make 49 groups of 16), each factor in (1, 2], so no group
    overflows. Each factor carries one float32 rounding (an absolute error <= 6e-8 in
    its log) and each group product a few more: a test checks that the total error
    stays within that of summed float32 softplus values.
    """
    out = logprob_kernel.softplus_sum(a)         # float32 CPU tensors: one compiled pass
    if out is not None:
        return out
    if a.numel() < 1 << 16 or (a.requires_grad and torch.is_grad_enabled()):
        return F.softplus(a).sum(-1)
    relu_sum = F.relu(a).sum(-1)
    f = a.abs().mul_(-_LOG2_E).exp2_().add_(1)     # 1 + e^-|a|   (exp2 is vectorised)
    n, group = f.shape[-1], 1
    while n % 2 == 0 and group < 64:               # pairwise products of the two halves
        n, group = n // 2, group * 2
        f = f[..., :n] * f[..., n:]
    return relu_sum + f.log().sum(-1)


def bernoulli_sample(logits: torch.Tensor, generator: torch.Generator | None,
                     clamp: bool = False, n: int | None = None) -> torch.Tensor:
    """x ~ Bern(sigmoid(logits)), detached, in the logits' dtype. With ``n``, logits
    [N, 1, d] give n draws per row, [N, n, d] (the sigmoid taken once per row)."""
    with torch.no_grad():
        return bernoulli_draw(bernoulli_probs(logits, clamp), generator, n,
                              None if clamp else logits)


def bernoulli_probs(logits: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """sigmoid(logits), or the clamped 0.9999 sigmoid(logits) + 5e-6."""
    p = torch.sigmoid(logits)
    return 0.9999 * p + 5e-6 if clamp else p


def bernoulli_draw(p: torch.Tensor, generator: torch.Generator | None,
                   n: int | None = None, logits: torch.Tensor | None = None) -> torch.Tensor:
    """x ~ Bern(p) for probabilities p, as ``bernoulli_sample`` (n draws per row of
    [N, 1, d] with ``n``), exact in the tails (``exact_tails``; ``logits``, sigmoid's
    argument for p where known, resolves p near 1)."""
    shape = p.shape if n is None else (p.shape[0], n, *p.shape[2:])
    # u < p with u ~ U(0, 1): 4x faster than torch.bernoulli on CPU; written straight
    # into a float tensor (one pass, where a bool tensor and a cast take 8x longer)
    p, logits = p.detach(), None if logits is None else logits.detach()
    if p.device.type == "cpu" and bernoulli_kernel.available():
        x = bernoulli_kernel.draw(shape, p, generator, logits)
        if x is not None:                     # the same draws, compiled
            return x
    u = rng.uniform(shape, generator, p.device, p.dtype)
    x = torch.lt(u, p, out=torch.empty_like(u))
    return exact_tails(x, u, p, generator, logits)


def tail_thresholds(u: torch.Tensor, generator, clamp: bool = False):
    """(flat indices [m], logit thresholds [m] float64) of the draws of u (k / 2^24) near
    0 or 1, for samplers that decide x = [a > t] unit by unit (the autoregressive
    layers): t = log(u' / (1 - u')) of ``rng.tail_uniforms``' u' with 53 more bits,
    or of (u' - 5e-6) / 0.9999 for the original code's clamped sigmoid."""
    idx, lo, hi = rng.tail_uniforms(u, generator)
    if lo.device.type != "cpu":
        log = torch.log
    else:                      # (NumPy: a few operations on a few numbers, as tail_uniforms)
        lo, hi, log = lo.numpy(), hi.numpy(), np.log
    if clamp:     # u' < 0.9999 s + 5e-6 <=> s > s' = (u' - 5e-6) / 0.9999, and
        # 1 - s' = ((1 - u') - 9.5e-5) / 0.9999 (it had 5e-6 too: the draws with
        # 1 - u' in (5e-6, 9.5e-5) turned saturated units on where p says off)
        lo, hi = (lo - 5e-6) / 0.9999, (hi - ar_kernels.CLAMP_TOP) / 0.9999
    with np.errstate(divide="ignore"):                        # -inf: always, +inf: never
        t = log(lo.clip(min=0)) - log(hi.clip(min=0))
    return idx, torch.as_tensor(t)


# names the Bernoulli sampler in evaluation records and resumable evaluations' keys; the
# records written before exact_tails (2026-12-04) lack it: their draws were u < p alone
SAMPLER = "exact-tails"


def exact_tails(x: torch.Tensor, u: torch.Tensor, p: torch.Tensor, generator,
                logits: torch.Tensor | None = None) -> torch.Tensor:
    """Correct the draws x = [u < p] whose uniform lies near 0 or 1, in place.

    ``rng.uniform`` gives u = k / 2^24, so P(u < p) = ceil(p 2^24) / 2^24: every p in
    (0, 2^-24] is drawn with probability 2^-24, and every p that float32 rounds to 1
    (logits above 16.6) never gives 0. log q scores the draws with the true p, so a
    unit with logit -60 turned on by u = 0 (one draw in 2^24) enters the importance
    weight as e^-60 while it was drawn at e^-16.6: a weight too large by e^43. At
    K = 100,000 proposals of a thousand units such draws occur several times a point,
    and a few of them dominated a deep SBN's estimates (2026-12-04, results/README).

    Here the draws within ``rng.TAIL_CELLS`` cells of either end are decided again with
    u' = (k + V) / 2^24 (``rng.tail_uniforms``: V a float64, 53 more bits): x = [u' < p],
    compared on the near side, u' < sigmoid(a) at the low end and 1 - u' > sigmoid(-a)
    at the high end, in float64 from the ``logits`` a where given (else from p), so a
    unit whose float32 sigmoid rounds to 1 still gives 0 with probability sigmoid(-a).
    The floor is 2^-77 (a logit of -53), which no evaluation's 1e12 draws reach. Every
    other draw stays as it is: its k lies at least 2^14 cells from either end, so p and
    the lattice differ by at most a relative 2^-14 there, and only in the one cell
    holding p. The autoregressive samplers use the same u' (``tail_thresholds``).
    x [shape], u [shape], p and logits broadcast to shape.
    """
    idx, lo, hi = rng.tail_uniforms(u, generator)                  # [m] each
    if idx.shape[0] == 0:
        return x
    at = torch.unravel_index(idx, x.shape)
    low = lo < 0.5
    if logits is not None:
        c = logits.expand(x.shape)[at].double()
        on = torch.where(low, lo < torch.sigmoid(c), hi > torch.sigmoid(-c))
    else:
        pm = p.expand(x.shape)[at].double()
        on = torch.where(low, lo < pm, hi > 1 - pm)
    x[at] = on.to(x.dtype)
    return x


def default_weights(n_in: int, n_out: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """U(-s, s) / n_in with s = sqrt(6 / (n_in + n_out)), as in REF's ``default_weights``."""
    s = math.sqrt(6.0 / (n_in + n_out))
    return (torch.rand(shape or (n_out, n_in)) * 2 - 1) * s / n_in


def repeat_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """[N, ...] -> [N*n, ...], each row repeated n times consecutively (the [B, K] layout)."""
    return t if n == 1 else t.repeat_interleave(n, 0)


def match_rows(x: torch.Tensor, y: torch.Tensor | None):
    """x, y with equal rows: the one given once per point ([N]) is repeated to the other's
    interleaved [N*n] rows. ``log_prob(x, y)`` accepts either side once per point."""
    if y is None or x.shape[0] == y.shape[0]:
        return x, y
    if x.shape[0] < y.shape[0]:
        return repeat_rows(x, y.shape[0] // x.shape[0]), y
    return x, repeat_rows(y, x.shape[0] // y.shape[0])


class BernoulliLayer(nn.Module):
    """Base of layers whose units are Bernoulli given one vector of logits.

    Subclasses define ``logits(y) -> [N, n_x]`` (y is None for a top prior, then [1, n_x]).
    Sampling and scoring share the logits, so a sample costs one forward pass. The n
    samples of a row share its logits without copying them: log-probabilities broadcast
    [N, 1, n_x] logits against [N, n, n_x] samples, so softplus runs once per row.

    Layers whose logits end in a linear map, a = f(y) W^T + b, also define ``features``
    (f) and ``head`` ((W, b)). When one x is scored under n contexts (the data term of
    K proposals) in inference, x . a = f(y) . (x W) + x . b needs one matrix-vector
    product per point instead of an elementwise product over every [n, n_x] logit.
    """

    n_x: int
    n_y: int
    clamp: bool = False

    def logits(self, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    features = None      # y [N, n_y] -> f(y) [N, F], for layers with a linear head

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [n_x, F], b [n_x]) of a = f(y) W^T + b."""
        raise NotImplementedError

    def head_logits(self, f: torch.Tensor) -> torch.Tensor:
        W, b = self.head()
        return F.linear(f, W, b)

    def _shared_value_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(x_b | y_bk) for x [N, n_x] and y [N*n, n_y] (inference only): [N*n]."""
        N = x.shape[0]
        f = self.features(y)                                   # [N*n, F]
        a = self.head_logits(f)                                # [N*n, n_x]
        W, b = self.head()
        xa = torch.bmm(f.view(N, -1, f.shape[1]), (x @ W)[:, :, None]).view(N, -1)  # [N, n]
        return (xa + (x @ b)[:, None]).view(-1) - softplus_sum(a)

    def sample(self, y: torch.Tensor | None, n: int = 1,
               generator: torch.Generator | None = None, score: bool = True):
        a = self.logits(y)[:, None, :]                         # [N, 1, n_x] (top: N = 1)
        N = a.shape[0]
        x = bernoulli_sample(a, generator, self.clamp, n)     # [N, n, n_x]
        if not score:
            return x.view(N * n, self.n_x), None
        log_p = bernoulli_log_prob(a, x, self.clamp)          # [N, n]
        return x.view(N * n, self.n_x), log_p.view(N * n)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | y) [rows]. x [N*n, n_x] with y [N, n_y] (context once per point: logits
        once, broadcast), x [N, n_x] with y [N*n, n_y] (value once per point: broadcast,
        not copied), or equal rows. Top prior: y None, [1, n_x] logits broadcast."""
        if (y is not None and y.shape[0] > x.shape[0] and self.features is not None
                and not self.clamp and not torch.is_grad_enabled()):
            return self._shared_value_log_prob(x, y)
        a = self.logits(y)
        if y is None or a.shape[0] == x.shape[0]:
            return bernoulli_log_prob(a, x, self.clamp)
        if x.shape[0] > a.shape[0]:                            # [N, 1, n_x] vs [N, n, n_x]
            N = a.shape[0]
            return bernoulli_log_prob(a[:, None], x.view(N, -1, self.n_x), self.clamp).reshape(-1)
        N = x.shape[0]                                         # [N, n, n_x] vs [N, 1, n_x]
        return bernoulli_log_prob(a.view(N, -1, self.n_x), x[:, None], self.clamp).reshape(-1)
