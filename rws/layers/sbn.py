"""Sigmoid belief layers: SBN (Neal 1992), its top prior, and DSBN (deterministic
hidden layers before the sigmoid layer, REF's DSBN; the VAE decoder's last stage)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rws import bf16, int8
from rws.layers.bernoulli import BernoulliLayer, default_weights


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



class MLPBernoulli(DSBN):
    """The VAE/IWAE decoder's last stage: Bernoulli x given tanh MLP features of z
    (hidden (200, 200), Glorot initialisation, as in Burda et al. 2016)."""

    def __init__(self, n_x: int, n_y: int, hidden: tuple[int, ...] = (200, 200)):
        super().__init__(n_x, n_y, hidden, act="tanh", init="glorot")
