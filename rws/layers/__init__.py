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

One file per family: ``bernoulli`` (the shared Bernoulli pieces and ``BernoulliLayer``),
``sbn`` (SBN, DSBN), ``autoregressive`` (DARN, NADE), ``gaussian`` (the VAE/IWAE layers).
"""
from rws.layers.autoregressive import DARN, NADE, DARNTop, NADELogits, NADETop
from rws.layers.bernoulli import (BernoulliLayer, bernoulli_draw, bernoulli_log_prob,
                                  bernoulli_log_prob_and_probs, bernoulli_probs, bernoulli_sample, default_weights,
                                  match_rows, repeat_rows, softplus_sum)
from rws.layers.gaussian import Gaussian, StandardNormal, normal_log_prob
from rws.layers.sbn import ACTIVATIONS, DSBN, MLP, SBN, MLPBernoulli, SBNTop, init_linear

__all__ = ["ACTIVATIONS", "BernoulliLayer", "DARN", "DARNTop", "DSBN", "Gaussian", "MLP",
           "MLPBernoulli", "NADE", "NADELogits", "NADETop", "SBN", "SBNTop", "StandardNormal",
           "bernoulli_draw", "bernoulli_log_prob", "bernoulli_log_prob_and_probs", "bernoulli_probs", "bernoulli_sample",
           "default_weights", "init_linear", "match_rows", "normal_log_prob", "repeat_rows",
           "softplus_sum"]
