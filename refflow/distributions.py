r"""Base densities p_z: ``StandardNormal``, ``DiagonalNormal``, ``Uniform``.

Each has an ``event_shape``, ``log_prob(x)`` summing over the event axes, and
``sample(n, rng)`` drawing arrays of the current backend.

Notes
-----
Lecture: "Flow-based Models": a flow pushes a simple known density p(z) forward; the
worked examples use a uniform density on the unit cube and a standard normal.

.. math::

    \log \mathcal{N}(x; \mu, \mathrm{diag}(\sigma^2))
        = -\tfrac12 \sum_i \big((x_i - \mu_i)/\sigma_i\big)^2
          - \sum_i \log \sigma_i - \tfrac{D}{2} \log 2\pi

References
----------
1. G. Papamakarios et al. Normalizing Flows for Probabilistic Modeling and Inference.
   JMLR 22(57), 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import autograd.numpy as np

from refflow.backend import to_numpy
from refflow.checks import check_array, check_int, check_positive
from refflow.ops import where

__all__ = ["StandardNormal", "DiagonalNormal", "Uniform"]

_LOG_2PI = math.log(2.0 * math.pi)


def _event_axes(event_shape: tuple) -> tuple:
    return tuple(range(-len(event_shape), 0))


def _as_event_shape(dim) -> tuple:
    shape = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    for s in shape:
        check_int("dim", s)
    return tuple(int(s) for s in shape)


@dataclass(frozen=True, eq=False, init=False)
class StandardNormal:
    r"""The standard normal N(0, I) on R^D (or on an image event shape).

    Examples
    --------
    >>> import numpy
    >>> p = StandardNormal(2)
    >>> bool(numpy.isclose(p.log_prob(numpy.zeros((1, 2)))[0], -numpy.log(2 * numpy.pi)))
    True
    """

    event_shape: tuple = field(metadata={"static": True})
    dtype: Any = field(default=None, metadata={"static": True})

    def __init__(self, dim, dtype: Any = None):
        object.__setattr__(self, "event_shape", _as_event_shape(dim))
        object.__setattr__(self, "dtype", dtype)

    def log_prob(self, x):
        d = math.prod(self.event_shape)
        return -0.5 * np.sum(x**2, axis=_event_axes(self.event_shape)) - 0.5 * d * _LOG_2PI

    def sample(self, n: int, rng):
        check_int("n", n)
        return rng.standard_normal((n,) + self.event_shape, dtype=self.dtype)


@dataclass(frozen=True, eq=False)
class DiagonalNormal:
    r"""A normal with diagonal covariance, N(loc, diag(scale^2)); trainable loc and scale.

    Examples
    --------
    >>> import numpy, scipy.stats
    >>> p = DiagonalNormal(numpy.array([1.0]), numpy.array([0.75]))
    >>> bool(numpy.isclose(p.log_prob(numpy.array([[0.3]]))[0],
    ...                    scipy.stats.norm(1.0, 0.75).logpdf(0.3)))
    True
    """

    loc: Any
    scale: Any = field(metadata={"constraint": "positive"})

    def __post_init__(self):
        check_array("loc", self.loc, ndim=1)
        check_positive("scale", self.scale)
        check_array("scale", self.scale, ndim=1, last=self.loc.shape[-1])

    @property
    def event_shape(self) -> tuple:
        return (self.loc.shape[-1],)

    def log_prob(self, x):
        u = (x - self.loc) / self.scale
        d = self.loc.shape[-1]
        return -0.5 * np.sum(u**2, axis=-1) - np.sum(np.log(self.scale)) - 0.5 * d * _LOG_2PI

    def sample(self, n: int, rng):
        check_int("n", n)
        eps = rng.standard_normal((n,) + self.event_shape, dtype=self.loc.dtype)
        return self.loc + self.scale * eps


@dataclass(frozen=True, eq=False)
class Uniform:
    r"""The uniform density on the box [low, high]: log p = -sum log(high - low) inside, -inf out.

    Examples
    --------
    >>> import numpy
    >>> p = Uniform(numpy.zeros(3), numpy.ones(3))       # the lecture's unit cube
    >>> p.log_prob(numpy.array([[0.5, 0.5, 0.5], [2.0, 0.5, 0.5]])).tolist()
    [0.0, -inf]
    """

    low: Any = field(metadata={"static": True})
    high: Any = field(metadata={"static": True})

    def __post_init__(self):
        check_array("low", self.low, ndim=1)
        check_array("high", self.high, ndim=1, last=self.low.shape[-1])
        if not bool((to_numpy(self.high) > to_numpy(self.low)).all()):
            raise ValueError("high: expected high > low in every coordinate")

    @property
    def event_shape(self) -> tuple:
        return (self.low.shape[-1],)

    def log_prob(self, x):
        inside = np.all((x >= self.low) & (x <= self.high), axis=-1)
        log_volume = np.sum(np.log(self.high - self.low))
        return where(inside, -log_volume, -np.inf)

    def sample(self, n: int, rng):
        check_int("n", n)
        u = rng.random((n,) + self.event_shape, dtype=self.low.dtype)
        return self.low + (self.high - self.low) * u
