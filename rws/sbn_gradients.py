"""RWS, wake-sleep and VIMCO gradients of sigmoid belief networks and DARNs in closed form.

A Bernoulli unit with logit a has d/da log Bern(x | sigmoid(a)) = x - sigmoid(a), and a
sigmoid belief layer has a = W y + b, so each direction of ``rws.rws`` is a weighted sum
of per-layer outer products, the layer-local form in which Bornschein & Bengio state
RWS ("Reweighted Wake-Sleep", ICLR 2015, Sec. 2-3) and Hinton et al. wake-sleep (1995):

    wake-P,  P layer l:  dW_l = sum_{b,k} w~_bk (h_l - sigmoid(a_l)) h_{l+1}^T  (h_0 = x)
    wake-Q,  Q layer l:  dV_l = sum_{b,k} w~_bk (h_{l+1} - sigmoid(c_l)) h_l^T
    sleep-Q, Q layer l:  dV_l = mean_n (h_{l+1} - sigmoid(c_l)) h_l^T   over dreams ~ p

with a_l = W_l h_{l+1} + b_l, c_l = V_l h_l + d_l, biases the same without the outer
factor, and the top prior sum_{b,k} w~_bk (h_L - sigmoid(a_L)). These are the gradients
that autograd takes of the surrogate losses in ``rws.rws``, on the same samples (the
generator is consumed in the same order, so the draws are identical; a test checks the
gradients against autograd's). Written directly they skip the autograd graph (an RWS
step on SBN 200 issues 150 instead of 222 top-level operations, each costing several
microseconds of dispatch) and fold the normalised weights into G = dL/da before the
one weight-gradient GEMM G^T y per layer: that step runs 9-15% faster at K = 5
(interleaved A/B runs). Other layer families (NADE, DSBN, Gaussian), and clamped
layers, use autograd.

A DARN layer (Gregor et al. 2014, ``rws.layers.DARN``) adds its own units' autoregressive
term, a = b + y U + x (W * M) with M strictly upper triangular, so with G = dL/da its
gradients are dU = y^T G, db = sum G and dW = (x^T G) * M: the same GEMMs, G summed
over the K draws first where x is the data, given once per point. A DARN's sampler
returns the autoregressive term it accumulated, so the proposals' logits cost no GEMM
(RWS K = 5 on DARN 200, one thread, `rws bench` run by run: 7.77 -> 6.42 ms a step at
batch 25, 19.0 -> 16.8 ms at batch 100).

The gradient is finite whenever the loss is: G = weight (sigmoid(a) - h) has entries
no larger than |weight| scale / B and y is 0/1, so with finite weights every entry of
G^T y is finite. The methods therefore report the loss's finiteness for both and skip
the gradient-norm check of ``Method.backward`` (3-5% of an RWS step at K = 5).

G itself and its bias sum come from one compiled pass a term (``rws.dlogits_kernel``;
torch's subtraction, multiplication, sums and concatenation where numba is off). RWS
K = 5, one thread, against the in-place torch operations it replaced (processes
alternating, three or four rounds): SBN 200 x1.01 at batch 25 and x1.01-1.06 at batch
100, DARN 200 x1.03 and x1.02.

``propose`` draws the proposals; ``add_wake_gradients`` takes any per-sample weights of
log p and log q (RWS, ``rws.rws``: w~ for both; wake-sleep: 1 for log p; VIMCO,
``baselines.vimco``: w~ and its learning signal minus w~, 8% faster than autograd at
K = 5). Dreams drawn before the proposals and handed to ``propose`` share each Q
layer's GEMMs with them: Q's logits on data and dreams come from one product, and the
wake-Q and sleep-Q gradients of a layer from one G^T y, so each Q weight matrix is
read once per step for both (RWS K = 5 on SBN 200, interleaved runs on a loaded
machine: 4-12% faster at batch 25, where the two phases' products have only 25 rows
each, 3-5% at batch 100; on SBN 200-200 within the noise).
``add_sleep_gradients`` is the sleep-Q gradient alone (a separate sleep update). NVIL
keeps autograd: its baseline networks need it anyway, and the closed form measured no
faster there. For stacks of SBN layers, RWS, wake-sleep and VIMCO updates run the same
arithmetic on buffers kept from step to step (``rws.sbn_step``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rws import bf16, dlogits_kernel
from rws.layers import (DARN, DARNTop, SBN, SBNTop, bernoulli_draw, bernoulli_log_prob,
                        bernoulli_log_prob_and_probs, repeat_rows)
from rws.layers.autoregressive import sparse_product, sparse_weight_grad


def supported(model) -> bool:
    """True when every layer of P and Q is an unclamped sigmoid belief layer or DARN."""
    return all(type(layer) in (SBN, SBNTop, DARN, DARNTop) and not layer.clamp
               for layer in (*model.p_layers, *model.q_layers))


def _add(param: torch.Tensor, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


def _rows(*parts: torch.Tensor) -> torch.Tensor:
    """The parts stacked along rows (the one part itself, not a copy, when alone)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _dlogits(terms, n: int):
    """(G, sum of G's rows [n]) for terms (p, h, w, c, summed): each term's
    G = c w (p - h) of probabilities p = sigmoid(a) and units h, [R or 1, S or 1, n]
    each, weights w [R, S] (None: 1), as [R * S, n] rows or summed over s ([R, n]),
    stacked in the terms' order: in one compiled pass a term (``rws.dlogits_kernel``),
    else in torch."""
    out = dlogits_kernel.dlogits(terms, n)
    if out is not None:
        return out
    Gs = []
    for p, h, w, c, summed in terms:
        G = (p - h) * (c if w is None else (w * c)[..., None])   # [R, S, n]
        Gs.append(G.sum(1) if summed else G.reshape(-1, n))
    G = _rows(*Gs)
    return G, G.sum(0)


def _add_linear_grads(layer: SBN, G: torch.Tensor, db: torch.Tensor, y: torch.Tensor) -> None:
    """dL/dW += G^T y, dL/db += db (sum_n G_n) for G = dL/da [N, n_out], y [N, n_in]."""
    if bf16.enabled():
        _add(layer.W, bf16.weight_gradient(G, y))
    elif layer.W.grad is not None:   # (not addmm_: torch's FLOP counter skips it)
        layer.W.grad = torch.addmm(layer.W.grad, G.t(), y)
    else:
        layer.W.grad = G.t() @ y
    _add(layer.b, db)


def _darn_auto(layer: DARN, x: torch.Tensor) -> torch.Tensor:
    """A DARN's autoregressive term x (W * M): [..., n_x] -> [..., n_x]."""
    return sparse_product(x.reshape(-1, layer.n_x), layer.W, layer.mask).view(x.shape)


def _add_darn_grads(layer: DARN, G: torch.Tensor, db: torch.Tensor, y, G_x: torch.Tensor,
                    x: torch.Tensor) -> None:
    """A DARN's a = b + y U + x (W * M): dL/dU += y^T G, dL/db += db (sum_n G_n) for
    G = dL/da [N, n_x] on the inputs y [N, n_y] (none for a top prior), and
    dL/dW += (x^T G_x) * M for the layer's own units x [M, n_x] with their G_x
    (G summed over the draws that share x)."""
    if layer.U is not None:
        _add(layer.U, sparse_weight_grad(y, G))
    _add(layer.b, db)
    _add(layer.W, sparse_weight_grad(x, G_x, layer.mask))


@dataclass
class Proposals:
    """K proposals h ~ q(h | x) per point of x [B, D], with what their gradients need.

    hs[l]: [B, K, n_l] (hs[0] = x as [B, 1, D]); q_probs[l]: sigmoid(c_l), [B, 1, n] for
    the first Q layer (its logits are shared by the K samples) and [B, K, n] above;
    p_probs[l]: sigmoid(a_l) [B, K, n_l] of P's layers, the top prior's last ([1, n_L]
    for an SBN's, whose logits are its parameter); log_p_layers: log p_l
    [B, K] per P layer, the top prior last; log_q_layers: log q_l [B, K] per Q layer.
    dreams: [x [n, D], h_1 [n, n_1], ...] ~ p, or None; dream_q_probs[l]: Q layer l's
    sigmoid(c_l) on them, [n, n_{l+1}]; q_inputs[l]: Q layer l's inputs on the proposals
    and the dreams stacked, [rows + n, n_l], as its logits took them (its gradient's
    G^T y takes them again).
    """
    hs: list
    q_probs: list
    p_probs: list
    log_p_layers: list
    log_q_layers: list
    dreams: list | None = None
    dream_q_probs: list | None = None
    q_inputs: list | None = None

    @property
    def log_p(self) -> torch.Tensor:
        """log p(x, h) [B, K]."""
        return sum(self.log_p_layers[1:], self.log_p_layers[0])

    @property
    def log_q(self) -> torch.Tensor:
        """log q(h | x) [B, K]."""
        return sum(self.log_q_layers[1:], self.log_q_layers[0])


@torch.no_grad()
def propose(model, x: torch.Tensor, K: int, generator, dreams: list | None = None) -> Proposals:
    """Draw K proposals per point (the generator consumed as ``model.log_joint`` does,
    so the draws are the same; Q's sigmoids are kept for the gradients). ``dreams``
    (``model.sample_p``, drawn before): Q's logits on them come from the proposals'
    GEMMs, for the sleep-Q term of ``add_wake_gradients``."""
    B, L = x.shape[0], len(model.q_layers)
    hs, q_probs, log_q, dream_q_probs, q_inputs = [x[:, None]], [], [], [], []
    for l, layer in enumerate(model.q_layers):
        y = hs[l].reshape(-1, layer.n_y)                          # [B or B*K, n_y]
        n = K if l == 0 else 1
        if dreams is not None:
            q_inputs.append(_rows(y, dreams[l]))                  # [rows + n, n_y]
        if isinstance(layer, DARN):     # c = b + y U + h (W * M), h drawn unit by unit
            base = layer.base_logits(y if dreams is None else q_inputs[l])
            if dreams is not None:
                dream_c = base[y.shape[0]:] + _darn_auto(layer, dreams[l + 1])  # [n, n]
                dream_q_probs.append(torch.sigmoid(dream_c))
                base = base[:y.shape[0]]
            base = repeat_rows(base, n)                           # [B*K, n]
            h, auto = layer.draw(base, generator)
            c = base + (_darn_auto(layer, h) if auto is None else auto)
            p = torch.sigmoid(c)
        else:
            c = layer.logits(y if dreams is None else q_inputs[l])   # [rows (+ n), n]
            p = torch.sigmoid(c)
            if dreams is not None:
                dream_q_probs.append(p[y.shape[0]:])              # [n, n]
                c, p = c[:y.shape[0]], p[:y.shape[0]]
            h = bernoulli_draw(p[:, None], generator, n=n, logits=c[:, None])
        c, p, h = (t.view(B, -1, layer.n_x) for t in (c, p, h))
        log_q.append(bernoulli_log_prob(c, h))                    # [B, K]
        hs.append(h)
        q_probs.append(p)
    p_probs, log_p = [], []
    # (a list: slicing a ModuleList builds a new Module, some 10 us)
    for l, layer in enumerate(list(model.p_layers)[:L]):
        y = hs[l + 1].reshape(B * K, -1)
        if isinstance(layer, DARN):      # h_l (W * M) once per point for the data (l = 0)
            a = layer.base_logits(y).view(B, K, -1).add_(_darn_auto(layer, hs[l]))
        else:
            a = layer.logits(y).view(B, K, -1)                    # [B, K, n_l]
        log_p_l, p = bernoulli_log_prob_and_probs(a, hs[l])
        log_p.append(log_p_l)
        p_probs.append(p)
    top = model.p_layers[L]
    a = top.b + _darn_auto(top, hs[L]) if isinstance(top, DARN) else top.logits()
    log_p_l, p = bernoulli_log_prob_and_probs(a, hs[L])
    log_p.append(log_p_l)
    p_probs.append(p)                                             # [B, K, n_L] or [1, n_L]
    return Proposals(hs, q_probs, p_probs, log_p, log_q, dreams,
                     *((dream_q_probs, q_inputs) if dreams is not None else ()))


@torch.no_grad()
def add_wake_gradients(model, props: Proposals, p_weights: torch.Tensor,
                       q_weights=None, scale: float = 1.0) -> None:
    """Add to ``.grad`` the gradient of the loss

        -(scale / B) sum_{b,k} [p_weights_bk log p(x_b, h_bk) + q_weights_bk log q(h_bk | x_b)]

    with the weights [B, K] held constant (RWS: both w~; VIMCO: w~ and its learning
    signal minus w~), plus, where ``props`` holds dreams, the sleep-Q loss
    -(scale / n) sum log q(h | x) over them. ``q_weights`` None and no dreams leave Q
    untouched."""
    L, hs = len(model.q_layers), props.hs
    B, K = hs[1].shape[:2]
    # P: dL/da_l = (scale / B) p_weights (sigmoid(a_l) - h_l), one row per proposal
    for l, layer in enumerate(list(model.p_layers)[:L]):
        G, db = _dlogits([(props.p_probs[l], hs[l], p_weights, scale / B, False)], layer.n_x)
        y = hs[l + 1].reshape(B * K, -1)
        if isinstance(layer, DARN):      # the data, once per point: G summed over K
            x_l = hs[l].reshape(-1, layer.n_x)                    # [B or B*K, n_l]
            G_x = G.view(B, K, -1).sum(1) if x_l.shape[0] < B * K else G
            _add_darn_grads(layer, G, db, y, G_x, x_l)
        else:
            _add_linear_grads(layer, G, db, y)
    top = model.p_layers[L]
    if isinstance(top, DARN):
        G, db = _dlogits([(props.p_probs[L], hs[L], p_weights, scale / B, False)], top.n_x)
        _add_darn_grads(top, G, db, None, G, hs[L].reshape(B * K, -1))
    else:                                # sigmoid(a_L) [1, n_L] shared by every proposal
        _, db = _dlogits([(props.p_probs[L][None], hs[L], p_weights, scale / B, True)], top.n_x)
        _add(top.a, db)
    # Q: dL/dc_l = (scale / B) q_weights (sigmoid(c_l) - h_{l+1}), summed over the
    # samples sharing c_l, and on the dreams (sigmoid(c_l) - h_{l+1}) scale / n: one
    # G^T y for both
    dreams = props.dreams
    for l, layer in enumerate(model.q_layers):
        darn = isinstance(layer, DARN)   # (its own units' term needs each draw's own G)
        terms, ys, xs = [], [], []
        shared = hs[l].shape[1] < K      # y once per point: G summed over its K samples
        if q_weights is not None:
            terms.append((props.q_probs[l], hs[l + 1], q_weights, scale / B,
                          shared and not darn))
            ys.append(hs[l].reshape(-1, layer.n_y))               # [B or B*K, n_y]
            xs.append(hs[l + 1].reshape(B * K, -1))
        if dreams is not None:
            n = dreams[0].shape[0]
            terms.append((props.dream_q_probs[l][:, None], dreams[l + 1][:, None], None,
                          scale / n, False))
            ys.append(dreams[l])
            xs.append(dreams[l + 1])
        if not terms:
            continue
        G, db = _dlogits(terms, layer.n_x)
        if len(ys) == 2:                 # both terms: the inputs stacked in ``propose``
            ys = [props.q_inputs[l]]
        if not darn:
            _add_linear_grads(layer, G, db, _rows(*ys))
            continue
        G_x = G                          # each draw's own; summed over K for y U
        if q_weights is not None and shared:
            G = _rows(G[:B * K].view(B, K, -1).sum(1), *([G[B * K:]] if dreams else []))
        _add_darn_grads(layer, G, db, _rows(*ys), G_x, _rows(*xs))


@torch.no_grad()
def add_sleep_gradients(model, n: int, generator, scale: float = 1.0) -> None:
    """Add to ``.grad`` the gradient of -(scale / n) sum log q(h | x) over n dreams
    (x, h) ~ p: dL/dc_l = (sigmoid(c_l) - h_{l+1}) scale / n."""
    dreams = model.sample_p(n, generator)                         # [x [n, D], h_1, ..., h_L]
    for l, layer in enumerate(model.q_layers):
        darn = isinstance(layer, DARN)
        c = layer.base_logits(dreams[l]) + _darn_auto(layer, dreams[l + 1]) if darn \
            else layer.logits(dreams[l])
        G, db = _dlogits([(torch.sigmoid(c)[:, None], dreams[l + 1][:, None], None,
                           scale / n, False)], layer.n_x)
        if darn:
            _add_darn_grads(layer, G, db, dreams[l], G, dreams[l + 1])
        else:
            _add_linear_grads(layer, G, db, dreams[l])
