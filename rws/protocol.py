"""Training protocols: named presets of the knobs that distinguish the original RWS
code's training from the modern convention.

    modern  Adam (lr on the minibatch mean), sleep-Q (where the method has it) added to
            every update, early stopping after ``patience`` validations without
            improvement, the best-validated parameters restored, no pixel permutation.
    ref     what Bornschein & Bengio's code does (reweighted-ws, ``mnist/run-mnist``
            and ``learning/training.py``, commit e964147):
            EMA momentum 0.95 on the minibatch-summed gradient (``rws.optim``), a
            separate sleep-Q update every 2 steps with 2 B dreams at its own learning
            rate after that step's wake update, ``EarlyStopping(lookahead=10,
            min_epochs=10)`` (no failure counted before epoch 10; validate every epoch),
            the *last* parameters evaluated (the original does not restore the best),
            and, for autoregressive layers (DARN, NADE), the fixed pixel permutation of
            its ``--shuffle`` (seed 23).

Each knob is a ``TrainConfig`` field, an ``rws train`` option and a sweep key; a knob
left unset (None) takes the protocol's value, one that is set wins. The record holds
the protocol's name and every resolved knob. The learning rates (``lr``, and ``lr_p``,
``lr_q``, ``lr_s`` for wake-P, wake-Q and sleep-Q, default ``lr``) and the per-epoch
decay ``lr_decay`` (lr / lr_decay^epoch, epochs counted from 0) apply under either.
"""
from __future__ import annotations

from rws import zoo

PROTOCOLS: dict[str, dict] = {
    "modern": {"optimizer": "adam", "sleep_interleave": 0, "min_epochs": 0, "patience": 10,
               "restore_best": True, "permute_pixels": -1},
    "ref": {"optimizer": "ema_momentum", "sleep_interleave": 2, "min_epochs": 10,
            "patience": 10, "restore_best": False, "permute_pixels": "autoregressive:23"},
}

AUTOREGRESSIVE = {"darn", "nade"}


def resolve(cfg) -> None:
    """Fill every knob of ``cfg`` that is None from its protocol's preset, in place."""
    preset = PROTOCOLS[cfg.protocol]
    for key, value in preset.items():
        if getattr(cfg, key) is None:
            if key == "permute_pixels" and isinstance(value, str):
                spec = zoo.parse(cfg.model)
                value = (int(value.split(":")[1])
                         if {spec.p.family, spec.q.family} & AUTOREGRESSIVE else -1)
            setattr(cfg, key, value)


def resolved_defaults() -> dict:
    """The knobs of the default (modern) protocol as a run records them."""
    return {k: (-1 if k == "permute_pixels" else v) for k, v in PROTOCOLS["modern"].items()}
