"""Stochastic layers of the model zoo.

Every layer is a distribution over a vector ``x`` of ``n_x`` units, either a top
prior p(x) (``n_y == 0``) or a conditional p(x | y) given ``n_y`` inputs. Layers work
on logits and share one interface:

    sample(y, n, generator) -> (x, log_p)
        y: [N, n_y] context, or None for a top prior.
        With context, draws ``n`` samples per row of y, returned interleaved
        ([N*n, n_x], row i*n + k is sample k of row i); without, ``n`` rows.
        x carries no gradient; log_p [N*n] keeps the graph of the layer's parameters
        (None with ``score=False``, for draws whose probability is not needed).
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

from rws import ar_kernels, bf16, int8, rng


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """sum_i log Bern(x_i | sigmoid(a_i)) over the last axis: [..., D] -> [...].
    logits broadcast against x; softplus runs on the logits as given (not broadcast).

    clamp: the original code's ``clamp_sigmoid``, p = 0.9999 sigmoid(a) + 5e-6, which
    bounds each unit's log-probability below by about -12.2.
    """
    if clamp:
        p = 0.9999 * torch.sigmoid(logits) + 5e-6
        return (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)
    # two reductions are faster than the fused BCE kernel on CPU (measured 0.7 vs 0.9-3.4 ns/elt)
    return (x * logits).sum(-1) - softplus_sum(logits)


_LOG2_E = 1 / math.log(2)


def softplus_sum(a: torch.Tensor) -> torch.Tensor:
    """sum_i softplus(a_i) = sum_i log(1 + e^a_i) over the last axis: [..., n] -> [...].

    Without a gradient to record, and for large tensors, it takes one logarithm per
    group of units instead of one per unit (the accurate per-unit log is most of
    softplus's cost on a CPU; this form takes 40% less time at [1000, 784]):

        sum_i softplus(a_i) = sum_i max(a_i, 0) + log prod_i (1 + e^-|a_i|)

    The product is taken over groups of up to 64 units (the last axis halved while its
    length is even: 784 units make 49 groups of 16), each factor in (1, 2], so no group
    overflows. Each factor carries one float32 rounding (an absolute error <= 6e-8 in
    its log) and each group product a few more: a test checks that the total error
    stays within that of summed float32 softplus values.
    """
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
        return bernoulli_draw(bernoulli_probs(logits, clamp), generator, n)


def bernoulli_probs(logits: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """sigmoid(logits), or the clamped 0.9999 sigmoid(logits) + 5e-6."""
    p = torch.sigmoid(logits)
    return 0.9999 * p + 5e-6 if clamp else p


def bernoulli_draw(p: torch.Tensor, generator: torch.Generator | None,
                   n: int | None = None) -> torch.Tensor:
    """x ~ Bern(p) for probabilities p, as ``bernoulli_sample`` (n draws per row of
    [N, 1, d] with ``n``)."""
    shape = p.shape if n is None else (p.shape[0], n, *p.shape[2:])
    # u < p with u ~ U(0, 1): 4x faster than torch.bernoulli on CPU; written straight
    # into a float tensor (one pass, where a bool tensor and a cast take 8x longer)
    u = rng.uniform(shape, generator, p.device, p.dtype)
    return torch.lt(u, p.detach(), out=torch.empty_like(u))


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
    y is binary (data or samples of a Bernoulli layer): in an evaluation block on a CPU
    with int8 units the product runs as exact int8 GEMMs (``rws.int8``), the weight
    pieces cut once per block; in a ``bf16.weight_gradients()`` block the weight
    gradient comes from a bfloat16 product (``rws.bf16``).
    """

    def __init__(self, n_x: int, n_y: int, clamp: bool = False):
        super().__init__()
        self.n_x, self.n_y, self.clamp = n_x, n_y, clamp
        self.W = nn.Parameter(default_weights(n_y, n_x))
        self.b = nn.Parameter(torch.full((n_x,), -1.0))
        self._pieces = None           # (evaluation block, pieces, scale) of the int8 path

    def features(self, y):
        return y

    def head(self):
        return self.W, self.b

    def head_logits(self, y):
        if torch.is_inference_mode_enabled() and int8.enabled(y.device):
            key = int8.block()          # weights are fixed inside a block
            if self._pieces is None or self._pieces[0] != key:
                self._pieces = (key, *int8.split(self.W))
            return int8.binary_linear(y, self._pieces[1], self._pieces[2], self.b)
        if bf16.active() and not y.requires_grad:
            return bf16.binary_linear(y, self.W, self.b)   # bfloat16 weight gradient
        return F.linear(y, self.W, self.b)  # [N, n_x]

    def logits(self, y):
        return self.head_logits(y)


ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


class MLP(nn.Module):
    """Deterministic hidden layers y -> act(... act(y U_1 + a_1) ...), REF's initialisation
    (default_weights, biases -1) or Glorot's (biases 0)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], act: str, init: str = "ref"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{act}' (sigmoid or tanh)")
        self.act = ACTIVATIONS[act]
        self.linears = nn.ModuleList()
        for n_out in hidden:
            lin = nn.Linear(n_in, n_out)
            init_linear(lin, init)
            self.linears.append(lin)
            n_in = n_out
        self.n_out = n_in

    def forward(self, y):
        for lin in self.linears:
            y = self.act(lin(y))
        return y


def init_linear(lin: nn.Linear, init: str, bias: float = -1.0) -> None:
    with torch.no_grad():
        n_out, n_in = lin.weight.shape
        if init == "ref":
            lin.weight.copy_(default_weights(n_in, n_out))
            lin.bias.fill_(bias)
        elif init == "glorot":
            nn.init.xavier_uniform_(lin.weight)
            lin.bias.zero_()
        else:
            raise ValueError(f"unknown init '{init}' (ref or glorot)")


class DSBN(BernoulliLayer):
    """SBN with deterministic hidden layers (REF's DSBN has one):
    d = g(y U + a);  p(x_j = 1 | y) = sigmoid((d W)_j + b_j),  g = sigmoid or tanh.
    hidden: widths of the deterministic layers (default one of (n_x + n_y) // 2)."""

    def __init__(self, n_x: int, n_y: int, hidden: tuple[int, ...] | None = None,
                 act: str = "sigmoid", init: str = "ref", clamp: bool = False):
        super().__init__()
        self.n_x, self.n_y, self.clamp = n_x, n_y, clamp
        self.mlp = MLP(n_y, hidden or ((n_x + n_y) // 2,), act, init)
        self.out = nn.Linear(self.mlp.n_out, n_x)
        init_linear(self.out, init)

    def features(self, y):
        return self.mlp(y)

    def head(self):
        return self.out.weight, self.out.bias

    def logits(self, y):
        return self.out(self.mlp(y))


def _use_kernels(t: torch.Tensor) -> bool:
    """The compiled loops (``rws.ar_kernels``) serve CPU float32/float64 tensors."""
    return (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and ar_kernels.available())


def _arrays(*tensors):
    """Contiguous numpy views (copies where a tensor is strided or broadcast)."""
    return [t.detach().contiguous().numpy() for t in tensors]


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
        return repeat_rows(y @ self.U + self.b, n)

    def log_prob(self, x, y=None):
        x, y = match_rows(x, y)
        logits = self._base(y, 1 if y is not None else x.shape[0]) + x @ (self.W * self.mask)
        return bernoulli_log_prob(logits, x, self.clamp)

    def sample(self, y, n=1, generator=None, score=True):
        if _use_kernels(self.W):
            with torch.no_grad():
                base = self._base(y, n)
                u = rng.uniform((self.n_x, base.shape[0]), generator, base.device, base.dtype)
                x = ar_kernels.darn_sample(*_arrays(base, self.W, u), self.clamp)
                x = torch.from_numpy(x)
            return x, (self.log_prob(x, y) if score else None)
        with torch.no_grad():
            accT = self._base(y, n).t().contiguous()       # running logits [n_x, N*n]
            u = rng.uniform(accT.shape, generator, accT.device, accT.dtype)    # unit j: u[j]
            xT = torch.empty_like(accT)
            for j in range(self.n_x):
                torch.lt(u[j], bernoulli_probs(accT[j], self.clamp), out=xT[j])
                accT[j + 1:].addr_(self.W[j, j + 1:], xT[j])   # unit j feeds units > j
            x = xT.t().contiguous()
        return x, (self.log_prob(x, y) if score else None)


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

    anchor = 64

    @staticmethod
    def forward(ctx, x, b, c, W, V, known=None):
        """``known``: the logits, already computed (by the sampler that drew x)."""
        if _use_kernels(b):
            ctx.save_for_backward(x, c, W, V)
            ctx.kernel = True
            if known is not None:
                return known.clone()
            return torch.from_numpy(ar_kernels.forward(
                *_arrays(x, b, c, W), _arrays(V.t())[0]))
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
            x, c, W, V = ctx.saved_tensors
            dc, dW, dVT = ar_kernels.backward(*_arrays(x, c, W, V.t(), g))
            return (None, g, torch.from_numpy(dc), torch.from_numpy(dW),
                    torch.from_numpy(dVT).t(), None)
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
        return None, g, d, dW, dV, None


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
        self.V = nn.Parameter(default_weights(H, n_x, (H, n_x)))
        if n_y:
            self.Ub = nn.Parameter(default_weights(n_y, n_x, (n_y, n_x)))
            self.Uc = nn.Parameter(default_weights(n_y, H, (n_y, H)))

    def _biases(self, y, n):
        """(b' [N*n, n_x], c' [N*n, H]); a top prior gives n rows."""
        if y is None or not self.n_y:
            return self.b.expand(n, -1), self.c.expand(n, -1)
        return repeat_rows(y @ self.Ub + self.b, n), repeat_rows(y @ self.Uc + self.c, n)

    def log_prob(self, x, y=None):
        x, y = match_rows(x, y)
        b, c = self._biases(y, 1 if y is not None else x.shape[0])
        logits = NADELogits.apply(x, b, c, self.W, self.V)
        return bernoulli_log_prob(logits, x, self.clamp)

    def sample(self, y, n=1, generator=None, score=True):
        if _use_kernels(self.W):
            with torch.no_grad():
                b, c = self._biases(y, n)
                u = rng.uniform((self.n_x, b.shape[0]), generator, b.device, b.dtype)
                x, s = map(torch.from_numpy, ar_kernels.sample(
                    *_arrays(b, c, self.W, self.V.t(), u), self.clamp))
            if not score:
                return x, None
            x, y = match_rows(x, y)                       # the scored logits are s: no rerun
            b, c = self._biases(y, 1 if y is not None else x.shape[0])
            logits = NADELogits.apply(x, b, c, self.W, self.V, s)
            return x, bernoulli_log_prob(logits, x, self.clamp)
        with torch.no_grad():
            b, c = self._biases(y, n)
            a = c.clone()                                  # [N*n, H]
            u = rng.uniform((self.n_x, b.shape[0]), generator, b.device, b.dtype)  # unit i: u[i]
            bT, VT = b.t().contiguous(), self.V.t().contiguous()
            xT = torch.empty_like(bT)                      # [n_x, N*n]
            for i in range(self.n_x):
                logit = torch.mv(torch.sigmoid(a), VT[i]).add_(bT[i])
                torch.lt(u[i], bernoulli_probs(logit, self.clamp), out=xT[i])
                a.addr_(xT[i], self.W[i])
            x = xT.t().contiguous()
        return x, (self.log_prob(x, y) if score else None)


class NADETop(NADE):
    def __init__(self, n_x: int, hidden: int | None = None, clamp: bool = False):
        super().__init__(n_x, 0, hidden, clamp)


LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(z, mu, log_sigma):
    """sum_i log N(z_i | mu_i, sigma_i^2): [..., n] -> [...]."""
    return (-0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * LOG_2PI).sum(-1)


class Gaussian(nn.Module):
    """Diagonal Gaussian z | y ~ N(mu(y), diag sigma(y)^2) with tanh hidden layers
    (the VAE/IWAE inference and generative layers of Burda et al. 2016; sigma = exp(linear)).

    sample(..., reparam=True) keeps the pathwise gradient z = mu + sigma * eps; otherwise
    the sample is detached like every discrete sample.
    """

    reparameterizable = True

    def __init__(self, n_x: int, n_y: int, hidden: tuple[int, ...] = (200, 200),
                 act: str = "tanh", init: str = "glorot"):
        super().__init__()
        self.n_x, self.n_y = n_x, n_y
        self.mlp = MLP(n_y, hidden, act, init)
        self.mu = nn.Linear(self.mlp.n_out, n_x)
        self.log_sigma = nn.Linear(self.mlp.n_out, n_x)
        init_linear(self.mu, init)
        init_linear(self.log_sigma, init)

    def params(self, y):
        d = self.mlp(y)
        return self.mu(d), self.log_sigma(d)

    def log_prob(self, x, y=None):
        if x.shape[0] < y.shape[0]:                    # value once per point
            x, y = match_rows(x, y)
        mu, log_sigma = self.params(y)                 # context once per point: repeat after
        n = x.shape[0] // mu.shape[0]
        return normal_log_prob(x, repeat_rows(mu, n), repeat_rows(log_sigma, n))

    def sample(self, y, n=1, generator=None, reparam=False, score=True):
        mu, log_sigma = self.params(y)
        mu, log_sigma = repeat_rows(mu, n), repeat_rows(log_sigma, n)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(log_sigma) * eps
        if not reparam:
            z = z.detach()
        return z, (normal_log_prob(z, mu, log_sigma) if score else None)


class StandardNormal(nn.Module):
    """The fixed prior z ~ N(0, I) (no parameters)."""

    reparameterizable = True

    def __init__(self, n_x: int):
        super().__init__()
        self.n_x, self.n_y = n_x, 0
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def log_prob(self, x, y=None):
        return (-0.5 * x ** 2 - 0.5 * LOG_2PI).sum(-1)

    def sample(self, y, n=1, generator=None, reparam=False, score=True):
        z = torch.randn((n, self.n_x), generator=generator, device=self.zero.device)
        return z, (self.log_prob(z) if score else None)


class MLPBernoulli(DSBN):
    """The VAE/IWAE decoder's last stage: Bernoulli x given tanh MLP features of z
    (hidden (200, 200), Glorot initialisation, as in Burda et al. 2016)."""

    def __init__(self, n_x: int, n_y: int, hidden: tuple[int, ...] = (200, 200)):
        super().__init__(n_x, n_y, hidden, act="tanh", init="glorot")
