"""The Helmholtz machine: a generative stack P and an inference stack Q.

    p(x, h) = p_L(h_L) prod_{l<L} p_l(h_l | h_{l+1})        (h_0 = x)
    q(h | x) = prod_{l<L} q_l(h_{l+1} | h_l)

``p_layers = [P_0(x|h_1), ..., P_{L-1}(h_{L-1}|h_L), Top(h_L)]`` and
``q_layers = [Q_0(h_1|x), ..., Q_{L-1}(h_L|h_{L-1})]`` (the layout of Bornschein &
Bengio's code). K samples per data point are folded into the batch dimension,
interleaved: row b*K + k is sample k of point b, so every log-term reshapes to [B, K].
"""
from __future__ import annotations

import torch
from torch import nn


class HelmholtzMachine(nn.Module):
    def __init__(self, p_layers: list[nn.Module], q_layers: list[nn.Module], spec: str = ""):
        super().__init__()
        if len(p_layers) != len(q_layers) + 1:
            raise ValueError("need one more P layer (the top prior) than Q layers")
        self.p_layers = nn.ModuleList(p_layers)
        self.q_layers = nn.ModuleList(q_layers)
        self.spec = spec
        self.sizes = [p.n_x for p in p_layers]  # [D, n_1, ..., n_L]

    @property
    def n_data(self) -> int:
        return self.sizes[0]

    @property
    def reparameterizable(self) -> bool:
        """True when every Q layer has a reparameterised (pathwise) sampler."""
        return all(getattr(q, "reparameterizable", False) for q in self.q_layers)

    def sample_q(self, x: torch.Tensor, K: int, generator=None, reparam: bool = False):
        """h ~ q(h | x), K per point.

        x: [B, D] -> (hs, log_q) with hs = [x [B, D], h_1 [B*K, n_1], ...] and
        log_q = per-layer [B*K]. x is kept once per point (layers broadcast it over its K
        samples). Samples are detached unless ``reparam`` (Gaussian layers).
        """
        if (torch.is_inference_mode_enabled() and x.device.type == "cpu"
                and not bool(((x == 0) | (x == 1)).all())):
            raise ValueError("x must be binary (0/1): the model is over binary data, and "
                             "inference multiplies binary units exactly in int8")
        kw = {"reparam": True} if reparam else {}
        hs = [x]
        log_q = []
        h, n = x, K  # Q_0's logits are computed once per point, then repeated K times
        for layer in self.q_layers:
            h, lq = layer.sample(h, n, generator, **kw)
            hs.append(h)
            log_q.append(lq)
            n = 1
        return hs, log_q

    def log_p_layers(self, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer log p_l(h_l | h_{l+1}) and log p_L(h_L), each [N]."""
        L = len(self.q_layers)
        terms = [self.p_layers[l].log_prob(hs[l], hs[l + 1]) for l in range(L)]
        terms.append(self.p_layers[L].log_prob(hs[L]))
        return terms

    def log_q_layers(self, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer log q_l(h_{l+1} | h_l), each [N]."""
        return [q.log_prob(hs[l + 1], hs[l]) for l, q in enumerate(self.q_layers)]

    def log_joint(self, x: torch.Tensor, K: int, generator=None, reparam: bool = False):
        """Draw K proposals per point; return (log p(x, h) [B, K], log q(h | x) [B, K]).

        log w = log p - log q. Both keep their parameter graphs; the samples do not
        (except with ``reparam``).
        """
        B = x.shape[0]
        hs, log_q = self.sample_q(x, K, generator, reparam)
        log_p = torch.stack(self.log_p_layers(hs)).sum(0).view(B, K)
        return log_p, torch.stack(log_q).sum(0).view(B, K)

    def log_weights(self, x: torch.Tensor, K: int, generator=None) -> torch.Tensor:
        """log w = log p(x, h) - log q(h | x), h ~ q: [B, D] -> [B, K]."""
        log_p, log_q = self.log_joint(x, K, generator)
        return log_p - log_q

    @torch.no_grad()
    def sample_p(self, n: int, generator=None) -> list[torch.Tensor]:
        """Ancestral samples ("dreams") from P: [x [n, D], h_1 [n, n_1], ..., h_L]."""
        h, _ = self.p_layers[-1].sample(None, n, generator, score=False)
        hs = [h]
        # (a list: slicing a ModuleList builds a new Module, some 10 us)
        for layer in reversed(list(self.p_layers)[:-1]):
            h, _ = layer.sample(h, 1, generator, score=False)
            hs.append(h)
        return hs[::-1]
