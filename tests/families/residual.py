"""Registry factories for the residual family: iResNet blocks, low-rank blocks, planar, radial.

The factories spread the parameters over the whole valid set, including the edges where the
invertibility conditions are nearly tight (w . v close to -1, beta close to -alpha).
"""

from __future__ import annotations

import math

from refflow import backend as B
from refflow.nn import MLP
from refflow.residual import Amortised, ContractiveResidual, LowRankResidual, Planar, Radial
from tests.registry import Case, example

_ACTIVATIONS = ("tanh", "elu", "lipswish")


def _choice(rng, options):
    return options[int(rng.integers(0, len(options)))]


@example("ContractiveResidual")
def _contractive(rng, dim):
    f = ContractiveResidual.init(rng, dim, hidden=(16, 16), coeff=0.9,
                                 activation=_choice(rng, _ACTIVATIONS))
    return Case(bijection=f)


@example("ContractiveResidual[series]")
def _contractive_series(rng, dim):
    # L = 0.7^2: 60 terms leave a truncation error below D 0.49^61 / (61 * 0.51) < 1e-19
    f = ContractiveResidual.init(rng, dim, hidden=(16,), coeff=0.7, logdet="series",
                                 terms=60, activation=_choice(rng, _ACTIVATIONS))
    return Case(bijection=f)


@example("LowRankResidual")
def _low_rank(rng, dim):
    rank = 1 + int(rng.integers(0, dim))
    f = LowRankResidual.init(rng, dim, rank=rank, coeff=0.95,
                             activation=_choice(rng, _ACTIVATIONS))
    shift = 0.3 * rng.standard_normal((dim,))
    return Case(bijection=LowRankResidual(f.W, f.b, f.V, shift, f.coeff, f.activation))


@example("Planar")
def _planar(rng, dim):
    w = rng.standard_normal((dim,))
    # v = (component orthogonal to w) + s w / |w|^2, so w . v = s, from -0.9 (nearly
    # non-invertible, det close to 0 at w . z + b = 0) up to 3
    s = float(rng.uniform(-0.9, 3.0))
    u = rng.standard_normal((dim,))
    ww = float((w * w).sum())
    v = u - float((w * u).sum()) / ww * w + s / ww * w
    return Case(bijection=Planar(w, v, 0.5 * rng.standard_normal((1,))))


@example("Radial")
def _radial(rng, dim):
    alpha = math.exp(0.5 * float(rng.standard_normal(())))
    beta = alpha * float(rng.uniform(-0.9, 2.0))
    return Case(bijection=Radial(0.5 * rng.standard_normal((dim,)),
                                 0.0 * rng.standard_normal((1,)) + alpha,
                                 0.0 * rng.standard_normal((1,)) + beta))



# Conditional cases: the generic suite passes a context of shape (N, C) drawn from N(0, 1)
# and checks every property in z at that fixed context.

@example("ContractiveResidual[context]")
def _contractive_context(rng, dim):
    # large context rows U: the bias c U moves far from 0, and Lip_z must still hold
    f = ContractiveResidual.init(rng, dim, hidden=(16,), coeff=0.9, context_dim=3,
                                 activation=_choice(rng, _ACTIVATIONS))
    weights = (B.xp().concatenate([f.weights[0][:dim], 3.0 * f.weights[0][dim:]]),)
    return Case(bijection=ContractiveResidual(weights + f.weights[1:], f.biases, f.coeff,
                                              f.activation, context_dim=3), context_dim=3)


def _amortised(rng, family, dim, context_dim):
    # the last layer at full scale (init's 0.1 would make the context nearly irrelevant)
    f = family.init(rng, dim, context_dim=context_dim, hidden=(8,))
    net = f.hyper
    hyper = MLP(net.weights[:-1] + (10.0 * net.weights[-1],), net.biases, net.activation)
    return Case(bijection=Amortised(family, hyper, context_dim), context_dim=context_dim)


@example("Planar[context]")
def _planar_context(rng, dim):
    return _amortised(rng, Planar, dim, 2)


@example("Radial[context]")
def _radial_context(rng, dim):
    return _amortised(rng, Radial, dim, 2)


@example("Amortised")
def _amortised_linear(rng, dim):
    # the smallest hypernetwork, linear (no hidden layer): theta(c) = c A + a0
    f = Planar.init(rng, dim, context_dim=1, hidden=())
    return Case(bijection=f, context_dim=1)
