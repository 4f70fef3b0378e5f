"""Registry factories for the autoregressive family: MAF, IAF (random orders) and SlowMAF,
unconditional and with a context."""

from __future__ import annotations

from refflow.autoregressive import IAF, MAF, SlowMAF
from refflow.elementwise import RationalQuadraticSpline
from tests.registry import Case, example


@example("MAF")
def _maf(rng, dim):
    # a random order and two hidden layers: the sequential forward must not assume 0..D-1
    return Case(bijection=MAF.init(rng, dim, hidden=(12, 12), order="random"))


@example("IAF")
def _iaf(rng, dim):
    return Case(bijection=IAF.init(rng, dim, hidden=(12,), order="random"))


@example("SlowMAF")
def _slow_maf(rng, dim):
    slow = SlowMAF.init(rng, dim, hidden=(8,))
    # a nonzero theta_1, so that the first coordinate is transformed too
    return Case(bijection=SlowMAF(rng.normal(0.0, 0.5, (2,)), slow.nets))


@example("MAF[spline]")
def _maf_spline(rng, dim):
    # a neural spline autoregressive flow: inputs N(0, 1) reach both tails beyond +-2.5
    return Case(bijection=MAF.init(rng, dim, hidden=(12,), transformer=RationalQuadraticSpline,
                                   order="random", bins=4, bound=2.5), fd_atol=1e-4)


@example("IAF[spline]")
def _iaf_spline(rng, dim):
    return Case(bijection=IAF.init(rng, dim, hidden=(12,), transformer=RationalQuadraticSpline,
                                   order="reversed", bins=5, bound=2.5), fd_atol=1e-4)


# conditional cases: the generic suite passes a context of shape (N, C) drawn from N(0, 1)

@example("MAF[context]")
def _maf_context(rng, dim):
    return Case(bijection=MAF.init(rng, dim, hidden=(12, 12), order="random", context_dim=3),
                context_dim=3)


@example("IAF[context]")
def _iaf_context(rng, dim):
    return Case(bijection=IAF.init(rng, dim, hidden=(12,), order="random", context_dim=2),
                context_dim=2)


@example("MAF[spline,context]")
def _maf_spline_context(rng, dim):
    maf = MAF.init(rng, dim, hidden=(12,), transformer=RationalQuadraticSpline, order="random",
                   context_dim=2, bins=4, bound=3.0)
    return Case(bijection=maf, context_dim=2, fd_atol=1e-4)


@example("SlowMAF[context]")
def _slow_maf_context(rng, dim):
    return Case(bijection=SlowMAF.init(rng, dim, hidden=(8,), context_dim=2), context_dim=2)
