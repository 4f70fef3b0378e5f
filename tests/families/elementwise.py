"""Registry factories for the element-wise family, with inputs that reach every branch.

The spline's inputs mix ordinary points with its knots, both ends +-B exactly and both tails;
the numerical inverses get inputs far enough out to make their brackets grow.
"""

from __future__ import annotations

import numpy

from refflow import backend as B
from refflow.elementwise import (
    Integral,
    Monotone,
    Perturbation,
    RationalQuadraticSpline,
    ScalarAffine,
)
from tests.registry import Case, example


@example("ScalarAffine")
def _scalar_affine(rng, dim):
    return Case(bijection=ScalarAffine.init(rng, dim))


@example("Perturbation")
def _perturbation(rng, dim):
    return Case(bijection=Perturbation.init(rng, dim))


@example("Perturbation[c=0]")
def _perturbation_at_c_zero(rng, dim):
    # the boundary of the parameterisation's range, c = 0 (h affine): artanh(0), |c| and
    # the bound a > k |c| d must give finite values and gradients there
    p = Perturbation.init(rng, dim)
    return Case(bijection=Perturbation(p.a, p.b, B.xp().zeros_like(p.c), p.d, p.e))


@example("Monotone")
def _monotone(rng, dim):
    return Case(bijection=Monotone.init(rng, dim, hidden=4), atol=1e-8)


@example("Integral")
def _integral(rng, dim):
    # 33 points: log h' matches the derivative of the quadrature to ~1e-8 for |z| <= 5
    return Case(bijection=Integral.init(rng, dim, hidden=4), atol=1e-8, fd_atol=1e-5)


def spline_edge_inputs(spline, rng, n):
    """(n, D) inputs: a fifth each of normal draws, knots, +B, -B and tail points."""
    xs = B.to_numpy(spline.knots()[0])                      # (D, K + 1)
    dim, bound = xs.shape[0], spline.bound
    normal = B.to_numpy(rng.standard_normal((n, dim))) * bound / 2
    kind = B.to_numpy(rng.integers(0, 5, (n, dim)))
    pick = B.to_numpy(rng.integers(0, xs.shape[1], (n, dim)))         # any knot, ends included
    knot = xs[numpy.arange(dim)[None, :], pick]                          # (n, D)
    tail = numpy.sign(normal) * (bound + 0.1 + numpy.abs(normal))
    z = numpy.select([kind == 0, kind == 1, kind == 2, kind == 3],
                     [normal, knot, numpy.full_like(normal, bound),
                      numpy.full_like(normal, -bound)], tail)
    return B.asarray(z)


@example("RationalQuadraticSpline")
def _spline(rng, dim):
    # wide normal draws: interior bins and both tails, rarely exactly on a knot
    spline = RationalQuadraticSpline.init(rng, dim, bins=5, bound=2.0)
    return Case(bijection=spline, inputs=lambda r, n: 1.5 * r.standard_normal((n, dim)))


@example("RationalQuadraticSpline[edges]")
def _spline_edges(rng, dim):
    spline = RationalQuadraticSpline.init(rng, dim, bins=5, bound=2.0)
    # On a knot or at +-B the second derivative jumps, so log h' has a kink: the loss of the
    # gradient check is not differentiable there (central differences average the one-sided
    # slopes). Finite gradients at these points are checked in tests/test_elementwise.py.
    # Central differences of h' straddle the kink too: their error is O(step * jump of h''/h'),
    # about 1e-5 * 10 here, so the log-det comparison gets 1e-3 (seen: 1.1e-4 at a knot).
    return Case(bijection=spline, inputs=lambda r, n: spline_edge_inputs(spline, r, n),
                fd_atol=1e-3, grad=False)
