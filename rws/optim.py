"""Optimisers of the training loop: Adam (the modern default, ``FusedAdam``), plain SGD,
and the original RWS code's EMA momentum.

``ema_momentum`` is the step rule of Bornschein & Bengio's code (reweighted-ws,
``learning/training.py``), for each parameter theta with buffer d (initially 0):

    d     <- beta d + (1 - beta) lr g          (beta = 0.95)
    theta <- theta - d                         (a descent step on the loss)

where g is the gradient of the minibatch *sum* of the loss, not its mean, so the first
step is (1 - beta) lr g and in steady state a step is lr g, not lr g / (1 - beta).
(``torch.optim.SGD(momentum=beta, dampening=beta)`` differs at the first step, where it
starts the buffer at g: a first step 20 times too large.) The training loop's losses
are means, so it hands this optimiser ``lr`` times the number of points (or dreams)
that the gradient averaged: a mean loss at lr B is the summed loss at lr
(``SUMMED_GRADIENT``). Wake-Q and sleep-Q updates of Q share its buffer, as in the
original code. Parameters without a gradient in a step keep their buffer unchanged.
"""
from __future__ import annotations

import torch
from torch.optim import optimizer as _optimizer


class EMAMomentum(torch.optim.Optimizer):
    """d <- beta d + (1 - beta) lr g; theta <- theta - d (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.95):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "delta" not in state:
                    state["delta"] = torch.zeros_like(p)
                bufs.append(state["delta"])
            grads = [p.grad for p in params]
            torch._foreach_mul_(bufs, group["beta"])
            torch._foreach_add_(bufs, grads, alpha=(1.0 - group["beta"]) * group["lr"])
            torch._foreach_sub_(params, bufs)


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` (Kingma & Ba 2015): the same update, state and
    ``state_dict``, with the per-step bookkeeping of torch's ``step`` done once.

    torch's step gathers each group's parameters, gradients and moment buffers into
    lists and groups them by device and dtype, every step, before its one fused kernel
    call per group. Here the buffer lists of a group are gathered once, after torch's own
    step has created the state, and reused while the group's parameters and state stay
    the same objects; a step then costs a list of the gradients and two calls per group.
    Any case outside the plain one (a group whose parameters have only some of their
    gradients, amsgrad, maximize, decoupled weight decay, a tensor learning rate, a group
    loaded from an unfused Adam's state_dict, parameters on several devices or of several
    dtypes in one group, a closure) runs torch's step unchanged. RWS K=5 on SBN 200, one
    thread, A/B in one process with the training runs stopped: 2.10 -> 2.05 ms a step
    at batch 25, 6.30 -> 6.22 ms at batch 100.

    The fused kernel takes a non-contiguous tensor through a contiguous copy and back.
    A parameter stored transposed (NADE's V, unit-major) is handed to it as the
    permuted view that is contiguous, with its gradient and moments viewed alike (Adam
    is elementwise, so only the pairing of entries matters, and that is kept): NADE's
    986k parameters, three of their matrices transposed, 0.87 -> 0.73 ms a step (the
    optimiser alone after an RWS step at batch 25, one thread, three alternating runs).
    The kernel pairs a parameter's entries with its gradient's by their place in memory,
    so a gradient of other strides than its parameter's (one set directly as ``.grad``;
    autograd gives its parameter's layout) would update the wrong entries: torch 2.13's
    fused Adam does so, on its own step too. Here such a gradient is first replaced by a
    copy in its parameter's layout, on either path.
    """

    def __init__(self, params, **options):
        # group index -> (exp_avgs, exp_avg_sqs, steps, orders, the step counts as one
        # tensor, the states they were taken from)
        self._buffers: dict[int, tuple] = {}
        super().__init__(params, fused=True, **options)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # torch's fused kernel walks the parameter and its moments as flat memory: a
        # moment loaded with other strides than its parameter's (a state saved before a
        # layer changed its parameter's layout, such as NADE's V) would be updated
        # element by element against the wrong entries. Give each moment its
        # parameter's layout.
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    m = state.get(key)
                    if m is not None and m.stride() != p.stride():
                        state[key] = torch.empty_like(p).copy_(m)
        self._buffers.clear()

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        self._buffers.clear()

    def _group_buffers(self, index: int, group: dict):
        """(exp_avgs, exp_avg_sqs, steps, orders, counts) of a plain group whose state
        exists, else None: each parameter's contiguous order (``_dense_order``), the
        moments viewed in it, and the step counts gathered into one tensor ``counts``
        [n], each state's "step" becoming a view of its entry, so that one addition
        counts a step for the whole group (torch's ``_foreach_add_`` over the n scalars
        took 20-45 us inside a batch-25 step)."""
        cached = self._buffers.get(index)
        states = [self.state.get(p) for p in group["params"]]
        if (cached is not None and len(states) == len(cached[5])
                and all(s is c for s, c in zip(states, cached[5]))):
            return cached[:5]
        params = group["params"]
        if (not params or any(not s or "exp_avg" not in s for s in states)
                or len({(p.device, p.dtype) for p in params}) != 1):
            return None
        steps = [s["step"] for s in states]
        if len({(t.device, t.dtype, t.dim()) for t in steps}) != 1:
            return None
        counts = torch.stack(steps)                              # [n]
        for i, s in enumerate(states):
            s["step"] = counts[i]
        orders = [_dense_order(p) for p in params]   # (moments share their strides)
        cached = ([_view(s["exp_avg"], o) for s, o in zip(states, orders)],
                  [_view(s["exp_avg_sq"], o) for s, o in zip(states, orders)],
                  [s["step"] for s in states], orders, counts, states)
        self._buffers[index] = cached
        return cached[:5]

    @staticmethod
    def _plain(group: dict) -> bool:
        return bool(group["fused"]) and not (
            group["amsgrad"] or group["maximize"] or group["differentiable"]
            or group["capturable"] or group.get("decoupled_weight_decay")
            or isinstance(group["lr"], torch.Tensor))

    @torch.no_grad()
    def _step(self, closure=None):
        if closure is not None:
            return self._torch_step(closure)
        calls = []
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:   # (see the class docstring)
                if p.grad is not None and p.grad.stride() != p.stride():
                    p.grad = torch.empty_like(p).copy_(p.grad)
            grads = [p.grad for p in group["params"]]
            if all(g is None for g in grads):
                continue                     # (torch's step leaves such a group alone)
            buffers = self._group_buffers(index, group) if self._plain(group) else None
            if buffers is None or any(g is None for g in grads):
                return self._torch_step()
            calls.append((group, grads, buffers))
        for group, grads, (exp_avgs, exp_avg_sqs, steps, orders, counts) in calls:
            params = group["params"]
            if any(orders):     # the transposed ones as contiguous views, gradients alike
                params = [_view(p, o) for p, o in zip(params, orders)]
                grads = [_view(g, o) for g, o in zip(grads, orders)]
            beta1, beta2 = group["betas"]
            counts.add_(1)                   # each of ``steps`` is a view of counts
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps,
                               amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=False, grad_scale=None, found_inf=None)
        return None

    def _torch_step(self, closure=None):
        """torch's Adam step, without the hook wrapper that torch puts on ``Adam.step``
        once any plain Adam exists: ``step`` below has run the hooks already."""
        adam_step = torch.optim.Adam.step
        if getattr(adam_step, "hooked", False):
            adam_step = adam_step.__wrapped__
        return adam_step(self, closure)

    _observed_step = torch.optim.Optimizer.profile_hook_step(_step)

    def step(self, closure=None):
        """The update. torch wraps every optimiser's ``step`` in a profiler scope and the
        step hooks' calls; here that wrapper runs only where a profiler or a hook is there
        to see it. Inside an RWS step on SBN 200 (K=5, batch 25, one thread) the wrapper
        cost 40-55 us a call, 2% of the step."""
        if (torch._C._autograd._profiler_enabled()
                or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _optimizer._global_optimizer_pre_hooks
                or _optimizer._global_optimizer_post_hooks):
            return self._observed_step(closure)
        return self._step(closure)

    step.hooked = True     # (torch's __init__ would wrap it again)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's, without its profiler scope where no profiler runs."""
        if not set_to_none or torch._C._autograd._profiler_enabled():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def _dense_order(t: torch.Tensor) -> tuple | None:
    """The order of t's dimensions in which it is contiguous (a transposed matrix: (1,
    0)), or None where t is contiguous already or no order makes it so."""
    if t.is_contiguous():
        return None
    order = tuple(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    return order if t.permute(order).is_contiguous() else None


def _view(t: torch.Tensor, order: tuple | None) -> torch.Tensor:
    return t if order is None else t.permute(order)


def _adam(groups):
    try:   # the fused kernel: one pass over the parameters (about 1 ms a step less here)
        return FusedAdam(groups)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups)


OPTIMIZERS = {
    "adam": _adam,
    "sgd": lambda groups: torch.optim.SGD(groups),
    "ema_momentum": lambda groups: EMAMomentum(groups),
}

# optimisers whose learning rate multiplies the gradient of the minibatch sum
SUMMED_GRADIENT = {"ema_momentum"}
