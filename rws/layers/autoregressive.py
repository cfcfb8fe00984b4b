"""Autoregressive layers: DARN (Gregor et al. 2014) and NADE (Larochelle & Murray
2011), on the compiled loops of ``rws.ar_kernels`` for CPU tensors and on torch loops
elsewhere."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rws import ar_kernels, rng
from rws.layers.bernoulli import (bernoulli_log_prob, bernoulli_probs, default_weights,
                                  repeat_rows, tail_thresholds)


def _use_kernels(t: torch.Tensor) -> bool:
    """The compiled loops (``rws.ar_kernels``) serve CPU float32/float64 tensors."""
    return (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and ar_kernels.available())


def _arrays(*tensors):
    """Contiguous numpy views (copies where a tensor is strided or broadcast)."""
    return [t.detach().contiguous().numpy() for t in tensors]


def _tail_v(generator):
    """m -> m float64 uniforms from ``generator``, drawn as ``rng.tail_uniforms`` draws
    them, for the compiled samplers' tail draws (``ar_kernels.draw_thresholds``)."""
    return lambda m: torch.rand(m, generator=generator, dtype=torch.float64).numpy()


def _unit_tails(u, generator, clamp):
    """The same draws per unit for the torch loops: [(rows [m_j], thresholds [m_j])] for
    each unit j (a split of a sort, which the compiled samplers need not pay for)."""
    idx, t = tail_thresholds(u, generator, clamp)
    R = u.shape[1]
    unit = idx // R
    counts = torch.bincount(unit, minlength=u.shape[0]).tolist()
    order = torch.argsort(unit, stable=True)
    return list(zip((idx % R)[order].split(counts), t[order].split(counts)))


def _fix_tails(x_j, logit_j, tails_j):
    """Unit j's draws near the lattice's ends, decided again: x = [logit > t] in float64."""
    rows, t = tails_j
    if rows.numel():
        x_j[rows] = (logit_j[rows].double() > t).to(x_j.dtype)


# the share of nonzero inputs up to which a DARN's products with binary inputs (its
# autoregressive term x (W * M), and y U where y is the data or the dreams) and their
# weight gradients run as compiled loops over the nonzeros instead of (masked) GEMMs:
# MNIST's pixels (13% on) at batch 25, 0.57 -> 0.14 ms for the term and 0.42 -> 0.13 ms
# for the gradient; 200 latent units at 17% x2 faster, at 50% x0.7-0.9 (one thread; the
# same x every call, so on fresh data the gains are smaller: benchmarks/NOTES.md)
SPARSE_SHARE = 0.25


def _sparse(x, other):
    """True where the compiled loops serve x [R, D] (CPU, other's dtype) and few of its
    entries are nonzero, judged on its first 8 rows (counting them all took as long as
    the GEMM it decides on, for latent units at batch 25)."""
    if not (x.dim() == 2 and _use_kernels(x) and x.dtype == other.dtype):
        return False
    head = x[:8].detach().numpy()
    return np.count_nonzero(head) <= SPARSE_SHARE * head.size


def _masked(W, mask, rows: int):
    """W * M for a dense product over ``rows`` rows, whose FLOPs on M's zeros are
    reported to ``rws.bench``'s counter (``ar_kernels.count_masked``)."""
    ar_kernels.count_masked(rows, mask)
    return W * mask


def sparse_product(x, W, mask=None):
    """x W for x [R, D_in], W [D_in, D_out], or a DARN's autoregressive term x (W * M)
    with its mask M: [R, D_out]."""
    if _sparse(x, W):
        return torch.from_numpy(ar_kernels.sparse_product(*_arrays(x, W), mask is not None))
    return x @ (W if mask is None else _masked(W, mask, x.shape[0]))


def sparse_weight_grad(x, G, mask=None):
    """Their weight gradient x^T G, or (x^T G) * M, for x [R, D_in], G [R, D_out]."""
    if _sparse(x, G):
        return torch.from_numpy(ar_kernels.sparse_weight_grad(*_arrays(x, G), mask is not None))
    dW = torch.mm(x.t(), G)
    if mask is not None:
        ar_kernels.count_masked(x.shape[0], mask)
        dW.mul_(mask)
    return dW


def _repeats(x, y):
    """(x's repeats, y's repeats) to a common number of rows: x [N*n] with y [N],
    x [N] with y [N*n], or equal rows (y None, a top prior: (1, x's rows))."""
    rows = x.shape[0] if y is None else max(x.shape[0], y.shape[0])
    return rows // x.shape[0], (rows if y is None else rows // y.shape[0])


class SparseProduct(torch.autograd.Function):
    """x W, or x (W * M) for a DARN's strictly upper-triangular mask M: [R, D_in] -> [R, D_out].

    backward: dW = x^T G (times M), and dx = G (W * M)^T where x needs it. For sparse x
    (binary data, most units off) on a CPU both the product and dW run over x's nonzeros
    (``sparse_product``, ``sparse_weight_grad``).
    ``known``: the product, already computed (by the sampler that drew x).
    """

    @staticmethod
    def forward(ctx, x, W, mask=None, known=None):
        ctx.save_for_backward(x, W, mask)
        if known is not None:
            return known.clone()
        return sparse_product(x, W, mask)

    @staticmethod
    def backward(ctx, G):
        x, W, mask = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = G @ (W if mask is None else _masked(W, mask, G.shape[0])).t()
        dW = sparse_weight_grad(x, G, mask) if ctx.needs_input_grad[1] else None
        return dx, dW, None, None


class DARN(nn.Module):
    """Autoregressive SBN (Gregor et al. 2014), top prior (n_y = 0) or conditional:
    p(x_j = 1 | x_<j, y) = sigmoid(b_j + (y U)_j + sum_{i<j} x_i W_ij).

    log_prob is one masked matrix multiply, x (W * M) with M_ij = 1 iff i < j (strictly
    upper triangular). Sampling runs over j in the same order, batched over all rows
    (REF's fast log_prob used the transposed mask and so scored another distribution
    than it sampled; algorithms.md §11.1).
    """

    def __init__(self, n_x: int, n_y: int = 0, clamp: bool = False):
        super().__init__()
        self.n_x, self.n_y, self.clamp = n_x, n_y, clamp
        self.b = nn.Parameter(torch.zeros(n_x))
        scale = 0.5 if n_y == 0 else 1.0
        self.W = nn.Parameter(scale * default_weights(n_x, n_x, (n_x, n_x)))   # [in i, out j]
        self.register_buffer("mask", torch.triu(torch.ones(n_x, n_x), 1), persistent=False)
        self.U = nn.Parameter(default_weights(n_y, n_x, (n_y, n_x))) if n_y else None

    def _base(self, y, n):
        """b + y U, repeated n times per row: [N*n, n_x] (top: [n, n_x])."""
        if y is None or self.U is None:
            return self.b.expand(n, -1)
        return repeat_rows(SparseProduct.apply(y, self.U) + self.b, n)

    def log_prob(self, x, y=None):
        """log p(x | y) [rows]; x or y may be given once per point (``_repeats``)."""
        # the autoregressive term x (W * M) depends on x alone, and b + y U on y alone:
        # each is computed on its own rows and repeated to the other's (P's data term
        # under K proposals: the x (W * M) GEMM pair on 1/K of the rows; Q's scoring of
        # its K draws: y U on 1/K of them)
        nx, ny = _repeats(x, y)
        auto = repeat_rows(SparseProduct.apply(x, self.W, self.mask), nx)
        logits = self._base(y, ny) + auto                                  # [rows, n_x]
        return bernoulli_log_prob(logits, repeat_rows(x, nx), self.clamp)

    def base_logits(self, y):
        """b + y U, the logits' part that depends on y alone: [N, n_x] (top: [1, n_x])."""
        return self._base(y, 1)

    def sample(self, y, n=1, generator=None, score=True):
        with torch.set_grad_enabled(score and torch.is_grad_enabled()):
            base = self._base(y, n)            # [N*n, n_x]; its graph kept for the score
        x, auto = self.draw(base, generator)
        if not score:
            return x, None
        if auto is None:                       # (the torch loop's draws: scored anew)
            return x, self.log_prob(x, y)
        auto = SparseProduct.apply(x, self.W, self.mask, auto)         # no rerun
        return x, bernoulli_log_prob(base + auto, x, self.clamp)

    @torch.no_grad()
    def draw(self, base, generator=None):
        """x ~ p(x | base) unit by unit, for base = b + y U [R, n_x] (one row per draw):
        (x [R, n_x], auto), auto = x (W * M) from the compiled sampler, or None from the
        torch loop (other devices and dtypes)."""
        u = rng.uniform((self.n_x, base.shape[0]), generator, base.device, base.dtype)
        if _use_kernels(self.W):                                # unit j: u[j]
            x, auto = ar_kernels.darn_sample(*_arrays(base, self.W, u), self.clamp,
                                             _tail_v(generator))
            return torch.from_numpy(x), torch.from_numpy(auto)
        per_unit = _unit_tails(u, generator, self.clamp)
        accT = base.t().contiguous()                   # running logits [n_x, R]
        xT = torch.empty_like(accT)
        for j in range(self.n_x):
            torch.lt(u[j], bernoulli_probs(accT[j], self.clamp), out=xT[j])
            _fix_tails(xT[j], accT[j], per_unit[j])
            accT[j + 1:].addr_(self.W[j, j + 1:], xT[j])    # unit j feeds units > j
        return xT.t().contiguous(), None


class DARNTop(DARN):
    def __init__(self, n_x: int, clamp: bool = False):
        super().__init__(n_x, 0, clamp)


class NADELogits(torch.autograd.Function):
    """The logits of a NADE, unit by unit, with a hand-written backward pass.

    forward:  a_0 = c;  for each unit i:  h_i = sigmoid(a_i),  s_i = b_i + h_i . V[:, i],
              a_{i+1} = a_i + x_i W[i]
    backward: with g_i = dL/ds_i and d = dL/da_{i+1} running from the last unit down,
              dW[i] = x_i^T d,  dV[:, i] = h_i^T g_i,  d += (g_i V[:, i]) * h_i (1 - h_i),
              dc = d at the end,  db = g.
    Every step works on [rows, H], which stays in cache, updated in place, with the units
    of x, g and V as contiguous rows; autograd through the unit loop (or the vectorised
    [rows, n_x, H] form) is several times slower on a CPU. The backward pass recovers
    a_i by subtracting x_i W[i], re-anchored every ``anchor`` units at values saved in
    the forward pass so rounding cannot drift. On CPU float tensors both passes run as
    ``rws.ar_kernels``' compiled loops instead (the same recursions; the torch loops here
    are the fallback for other devices, or with RWS_NUMBA=0).
    x: [R, D] (constant), b: [R, D], c: [R, H], W: [D, H], V: [H, D] -> s: [R, D].
    """

    anchor = ar_kernels.ANCHOR      # the compiled backward pass's spacing, one constant

    @staticmethod
    def forward(ctx, x, b, c, W, V, known=None, keep=True):
        """``known``: (the logits, a's saved values), already computed by the sampler
        that drew x. ``keep``: save a for the backward pass (False: no backward pass
        will run, as under torch.no_grad)."""
        if _use_kernels(b):
            ctx.kernel = True
            if known is not None:        # (a tuple, not a tensor input: no copy needed)
                s, saved = known
            else:
                s, saved = map(torch.from_numpy, ar_kernels.forward(
                    *_arrays(x, b, c, W), _arrays(V.t())[0], keep))
            ctx.save_for_backward(x, saved, W, V)
            return s
        ctx.kernel = False
        R, D = x.shape
        xT, VT = x.t().contiguous(), V.t().contiguous()     # [D, R], [D, H]: unit i is a row
        sT = torch.empty(D, R, dtype=b.dtype, device=b.device)
        a = c.clone()
        saved = []
        for i in range(D):
            if i % NADELogits.anchor == 0:
                saved.append(a.clone())
            torch.mv(torch.sigmoid(a), VT[i], out=sT[i])
            a.addr_(xT[i], W[i])
        ctx.save_for_backward(x, W, V, a, *saved)
        return torch.add(b, sT.t(), out=torch.empty_like(b))

    @staticmethod
    def backward(ctx, g):
        if ctx.kernel:
            x, saved, W, V = ctx.saved_tensors
            dc, dW, dVT = ar_kernels.backward(*_arrays(x, saved, W, V.t(), g))
            return (None, g, torch.from_numpy(dc), torch.from_numpy(dW),
                    torch.from_numpy(dVT).t(), None, None)
        x, W, V, a, *saved = ctx.saved_tensors
        R, D = x.shape
        xT, gT, VT = x.t().contiguous(), g.t().contiguous(), V.t().contiguous()
        dW, dV = torch.empty_like(W), torch.empty_like(V)
        d = torch.zeros_like(a)                    # dL/da_{i+1}
        a = a.clone()                              # (the saved tensors stay intact)
        for i in range(D - 1, -1, -1):
            torch.mv(d.t(), xT[i], out=dW[i])
            if i % NADELogits.anchor == 0:
                a.copy_(saved[i // NADELogits.anchor])
            else:
                a.addr_(xT[i], W[i], alpha=-1)     # a_i from a_{i+1}
            h = torch.sigmoid(a)
            dV[:, i] = torch.mv(h.t(), gT[i])
            hp = torch.addcmul(h, h, h, value=-1).mul_(gT[i][:, None])   # g_i h (1 - h)
            d.addcmul_(hp, VT[i])                  # += (g_i V[:, i]) * h (1 - h)
        return None, g, d, dW, dV, None, None


class NADE(nn.Module):
    """NADE (Larochelle & Murray 2011), top prior (n_y = 0) or conditional:
    a_i = c' + sum_{m<i} x_m W_m,   p(x_i = 1 | x_<i, y) = sigmoid(b'_i + sigmoid(a_i) . V_:,i)
    with b' = b + y U_b and c' = c + y U_c for a conditional layer.

    log_prob runs over units with ``NADELogits`` (O(n_x H) per row, [rows, H] working
    memory); sampling runs over units too, batched over all rows.
    hidden: H (default n_x for a top prior, min(n_x, n_y) otherwise).
    """

    def __init__(self, n_x: int, n_y: int = 0, hidden: int | None = None, clamp: bool = False):
        super().__init__()
        H = hidden or (n_x if n_y == 0 else min(n_x, n_y))
        self.n_x, self.n_y, self.H, self.clamp = n_x, n_y, H, clamp
        self.b = nn.Parameter(torch.zeros(n_x))
        self.c = nn.Parameter(torch.zeros(H))
        self.W = nn.Parameter(default_weights(n_x, H, (n_x, H)))
        # V [H, n_x] is stored unit-major (V.t() is contiguous, each unit's weights V[:, i]
        # a row), as the unit loops read it: no transposed copy per call (0.23 ms for
        # 200 x 784). Its state_dict entry is V [H, n_x] as before.
        self.V = nn.Parameter(default_weights(H, n_x, (H, n_x)).t().contiguous().t())
        if n_y:
            self.Ub = nn.Parameter(default_weights(n_y, n_x, (n_y, n_x)))
            self.Uc = nn.Parameter(default_weights(n_y, H, (n_y, H)))

    def _biases(self, y, n):
        """(b' [N*n, n_x], c' [N*n, H]); a top prior gives n rows."""
        if y is None or not self.n_y:
            return self.b.expand(n, -1), self.c.expand(n, -1)
        return repeat_rows(y @ self.Ub + self.b, n), repeat_rows(y @ self.Uc + self.c, n)

    def log_prob(self, x, y=None):
        """log p(x | y) [rows]; x or y may be given once per point (``_repeats``: y's biases
        are computed on y's rows, then repeated)."""
        nx, ny = _repeats(x, y)
        x = repeat_rows(x, nx)
        b, c = self._biases(y, ny)
        logits = NADELogits.apply(x, b, c, self.W, self.V, None, torch.is_grad_enabled())
        return bernoulli_log_prob(logits, x, self.clamp)

    def sample(self, y, n=1, generator=None, score=True):
        if _use_kernels(self.W):
            keep = score and torch.is_grad_enabled()       # a backward pass may follow
            with torch.set_grad_enabled(keep):
                b, c = self._biases(y, n)      # [N*n, n_x], [N*n, H]; graphs kept to score
            with torch.no_grad():
                u = rng.uniform((self.n_x, b.shape[0]), generator, b.device, b.dtype)
                x, s, saved = map(torch.from_numpy, ar_kernels.sample(
                    *_arrays(b, c, self.W, self.V.t(), u), self.clamp,
                    _tail_v(generator), keep))
            if not score:
                return x, None
            logits = NADELogits.apply(x, b, c, self.W, self.V, (s, saved), keep)  # no rerun
            return x, bernoulli_log_prob(logits, x, self.clamp)
        with torch.no_grad():
            b, c = self._biases(y, n)
            a = c.clone()                                  # [N*n, H]
            u = rng.uniform((self.n_x, b.shape[0]), generator, b.device, b.dtype)  # unit i: u[i]
            per_unit = _unit_tails(u, generator, self.clamp)
            bT, VT = b.t().contiguous(), self.V.t().contiguous()
            xT = torch.empty_like(bT)                      # [n_x, N*n]
            for i in range(self.n_x):
                logit = torch.mv(torch.sigmoid(a), VT[i]).add_(bT[i])
                torch.lt(u[i], bernoulli_probs(logit, self.clamp), out=xT[i])
                _fix_tails(xT[i], logit, per_unit[i])
                a.addr_(xT[i], self.W[i])
            x = xT.t().contiguous()
        return x, (self.log_prob(x, y) if score else None)


class NADETop(NADE):
    def __init__(self, n_x: int, hidden: int | None = None, clamp: bool = False):
        super().__init__(n_x, 0, hidden, clamp)
