"""Registry factories for the residual family: iResNet blocks, low-rank blocks, planar, radial.

The factories spread the parameters over the whole valid set, including the edges where the
invertibility conditions are nearly tight (w . v close to -1, beta close to -alpha).
"""

from __future__ import annotations

import math

from refflow.residual import ContractiveResidual, LowRankResidual, Planar, Radial
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

