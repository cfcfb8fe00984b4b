"""The method interface and registry.

A method turns a minibatch into one surrogate loss whose gradient is its estimator
(``loss``), and adds that gradient to the parameters (``backward``: autograd, unless
the method knows it in closed form).
It is an ``nn.Module`` so that its own trainable parts (NVIL's baselines) and running
statistics are saved in checkpoints with the model. The training loop knows nothing
else about it.
"""
from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

from rws.errors import UserError

# name -> "module:Class"; imported on first use so baselines stay optional reading.
REGISTRY = {
    "rws": "rws.rws:RWS",
    "ws": "baselines.wake_sleep:WakeSleep",
    "nvil": "baselines.nvil:NVIL",
    "vimco": "baselines.vimco:VIMCO",
    "vae": "baselines.vae:VAE",
    "iwae": "baselines.vae:IWAE",
}


class Method(nn.Module):
    """Base class. Subclasses implement ``loss``."""

    name = "?"
    default_K = 1          # samples per point when the user gives none

    def __init__(self, model: nn.Module, K: int):
        super().__init__()
        if K < 1:
            raise UserError(f"K (samples per data point) must be >= 1, got {K}")
        self.model = model  # registered as a submodule; state_dict() excludes it below
        self.K = K

    @staticmethod
    def require_reparameterizable(method: str, model) -> None:
        if not model.reparameterizable:
            raise UserError(f"method '{method}' needs reparameterisable (Gaussian) latents, but "
                            f"model '{model.spec}' has discrete latents; use a Gaussian model "
                            "such as --model gauss:50, or a score-function method (rws, ws, "
                            "nvil, vimco)")

    def loss(self, x: torch.Tensor, generator: torch.Generator | None):
        """x [B, D] float -> (scalar loss to minimise, {'train_ll': [] detached estimate})."""
        raise NotImplementedError

    def backward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 scale: float = 1.0, check_gradient: bool = True) -> tuple[torch.Tensor, dict]:
        """Add ``scale`` x the gradient of ``loss(x)`` to the parameters' ``.grad``.
        Returns (whether the loss and the accumulated gradient are finite: [] bool, the
        stats of ``loss``). An override may skip the gradient's check (``check_gradient``
        False) where a finite loss bounds its gradient (``bounded_gradient``)."""
        loss, stats = self.loss(x, generator)
        (loss * scale).backward()
        finite = torch.isfinite(loss.detach())
        if not check_gradient:
            return finite, stats
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        return finite & torch.isfinite(grad_norm), stats

    def param_groups(self, lr: float, lr_p: float | None = None,
                     lr_q: float | None = None) -> list[dict]:
        """Optimiser groups, each named: "p" (the generative stack, at lr_p, default lr),
        "q" (the inference stack, at lr_q, default lr), then "own" (the method's own
        parameters, at lr) if any."""
        own = [p for n, p in self.named_parameters() if not n.startswith("model.")]
        groups = [{"name": "p", "params": list(self.model.p_layers.parameters()),
                   "lr": lr if lr_p is None else lr_p},
                  {"name": "q", "params": list(self.model.q_layers.parameters()),
                   "lr": lr if lr_q is None else lr_q}]
        if own:
            groups.append({"name": "own", "params": own, "lr": lr})
        return groups

    # -- the sleep phase ----------------------------------------------------------
    # Methods that train Q on dreams (RWS with sleep-Q, wake-sleep) set ``sleep_phase``.
    # By default their ``backward`` adds the sleep gradient to each update; the trainer
    # sets ``separate_sleep`` to leave it to ``sleep_backward``, an update of its own
    # (the original RWS code's sleep every ``si`` steps at its own learning rate).
    sleep_phase = False
    separate_sleep = False

    def sleep_backward(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Add the gradient of -(1/n) sum log q(h | x) over n dreams (x, h) ~ p to Q's
        ``.grad``; returns whether it is finite ([] bool)."""
        from rws import sbn_gradients    # (imports this module)
        if sbn_gradients.supported(self.model):
            sbn_gradients.add_sleep_gradients(self.model, n, generator)
            return torch.ones((), dtype=torch.bool)   # bounded (``rws.sbn_gradients``)
        loss = sleep_phi_loss(self.model, n, generator).mean()
        loss.backward()
        grads = [p.grad for p in self.model.q_layers.parameters() if p.grad is not None]
        return torch.isfinite(loss.detach()) & torch.isfinite(
            torch.nn.utils.get_total_norm(grads))

    def own_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def load_own_state(self, state: dict) -> None:
        self.load_state_dict({**self.model.state_dict(prefix="model."), **state})


def bounded_gradient(model) -> bool:
    """True when every layer of P and Q is a sigmoid belief layer, a DARN or a NADE, so
    that a surrogate loss of ``rws.rws`` that is finite has a finite gradient, and its
    norm (0.22 ms a step for NADE/NADE's 986k parameters, 1% of a batch-25 step) need
    not be checked. Each unit's d/da log Bern(x | sigmoid(a)) = x - sigmoid(a) lies in
    [-1, 1] (clamped, p = 0.9999 sigmoid(a) + 5e-6: within 1/0.9999), and a finite loss
    has finite normalised weights in [0, 1]. An SBN's or DARN's weight and bias
    gradients are sums of such terms times 0/1 inputs; NADE's dV and db are sums of
    them times sigmoids, bounded by the number of terms whatever the parameters; its
    dW, dc and conditioning weights' gradients multiply them by V as well and by
    h (1 - h) <= 1/4. A step moves V by a bounded multiple of the learning rate times
    its own bounded gradient, so V stays finite, and these sums could overflow float32
    only with entries of V near 1e30. Other layers (deterministic MLPs, Gaussians) are checked."""
    from rws.layers import DARN, NADE, SBN, SBNTop      # (DARNTop, NADETop subclass these)
    return all(isinstance(layer, (SBN, SBNTop, DARN, NADE))
               for layer in (*model.p_layers, *model.q_layers))


def sleep_phi_loss(model, n: int, generator=None) -> torch.Tensor:
    """-log q(h | x) on n dreams (x, h) ~ p, sampled without gradient: -> [n]."""
    hs = model.sample_p(n, generator)
    return -torch.stack(model.log_q_layers(hs)).sum(0)


def method_class(name: str) -> type:
    if name not in REGISTRY:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(REGISTRY)}")
    module, cls_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls_name)


def build(name: str, model: nn.Module, K: int, **options) -> Method:
    """Construct method ``name``. Options left as None are dropped; an option set by the
    user that the method does not take is an error."""
    cls = method_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in accepted:
            raise UserError(f"method '{name}' does not take the option '{key}'; drop it")
        kwargs[key] = value
    return cls(model, K, **kwargs)
