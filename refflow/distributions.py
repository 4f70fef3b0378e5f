r"""Base densities p_z: ``StandardNormal``, ``DiagonalNormal``, ``Uniform``, and the
conditional ``ConditionalDiagonalNormal``.

Each has an ``event_shape``, ``log_prob(x)`` summing over the event axes, and
``sample(n, rng)`` drawing arrays of the current backend. A conditional one has
``context_dim`` C > 0 and takes ``log_prob(x, context)``, ``sample(n, rng, context)``.

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
from refflow.nn import MLP
from refflow.ops import where

__all__ = ["StandardNormal", "DiagonalNormal", "Uniform", "ConditionalDiagonalNormal"]

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


@dataclass(frozen=True, eq=False)
class ConditionalDiagonalNormal:
    r"""A normal whose mean and log-scale are a network of the context: N(mu(c), diag(s(c)^2)).

    Parameters
    ----------
    net : ``refflow.nn.MLP`` from the context (..., C) to (..., 2 D): the mean mu(c), then
        the log-scale log s(c).
    context_dim : C, the context dimension (static).

    Notes
    -----
    The conditional base of a conditional flow p(x | c) (Papamakarios et al., section 5.3).
    With an identity bijection it is the heteroscedastic Gaussian model; behind a conditional
    bijection it lets the base follow c too. The context is an input of the network, so
    log p(z | c) is differentiable in c as in the parameters.

    .. math::

        \log p(z \mid c) = -\tfrac12 \sum_i \Big(\frac{z_i - \mu_i(c)}{s_i(c)}\Big)^2
            - \sum_i \log s_i(c) - \tfrac{D}{2} \log 2\pi

    ``context`` is ``batch_shape + (C,)`` (one row per z) or ``(C,)`` (one for all).
    ``init`` zeroes the last layer, so the density starts as N(0, I) for every c.

    Examples
    --------
    >>> import numpy, scipy.stats
    >>> from refflow.backend import rng
    >>> p = ConditionalDiagonalNormal.init(rng(0), 2, context_dim=3)
    >>> z = numpy.array([[0.5, -1.0]])
    >>> bool(numpy.isclose(p.log_prob(z, numpy.ones(3))[0],
    ...                    scipy.stats.norm.logpdf(z).sum()))
    True
    """

    net: Any
    context_dim: int = field(metadata={"static": True})

    def __post_init__(self):
        check_int("context_dim", self.context_dim)
        if self.net.weights[0].shape[0] != self.context_dim:
            raise ValueError(f"net: expected an input of size context_dim = {self.context_dim},"
                             f" got {self.net.weights[0].shape[0]}")
        if self.net.weights[-1].shape[-1] % 2:
            raise ValueError("net: expected an even output size, 2 D (mean and log-scale)")

    @classmethod
    def init(cls, rng, dim: int, context_dim: int, hidden: tuple = (32,),
             activation: str = "tanh", dtype: Any = None) -> ConditionalDiagonalNormal:
        """An MLP C -> hidden -> 2 D with a zero last layer: N(0, I) at every context."""
        dim = check_int("dim", dim)
        context_dim = check_int("context_dim", context_dim)
        net = MLP.init(rng, [context_dim, *hidden, 2 * dim], activation, zero_last=True,
                       dtype=dtype)
        return cls(net, context_dim)

    @property
    def event_shape(self) -> tuple:
        return (self.net.weights[-1].shape[-1] // 2,)

    def _check_context(self, context):
        if context is None:
            raise ValueError(f"context: ConditionalDiagonalNormal expects a context of "
                             f"dimension {self.context_dim}, got None")
        check_array("context", context, min_ndim=1, last=self.context_dim)

    def mean_and_log_scale(self, context):
        """mu(c) and log s(c), each (..., D), from the network's one output."""
        self._check_context(context)
        d = self.event_shape[0]
        out = self.net(context)  # (..., 2 D)
        return out[..., :d], out[..., d:]

    def log_prob(self, x, context=None):
        mean, log_scale = self.mean_and_log_scale(context)
        u = (x - mean) * np.exp(-log_scale)
        d = self.event_shape[0]
        return (-0.5 * np.sum(u**2, axis=-1) - np.sum(log_scale, axis=-1)
                - 0.5 * d * _LOG_2PI)

    def sample(self, n: int, rng, context=None):
        """n draws mu(c) + s(c) eps; context (C,) for all of them or (n, C), one per draw."""
        check_int("n", n)
        mean, log_scale = self.mean_and_log_scale(context)
        eps = rng.standard_normal((n,) + self.event_shape, dtype=self.net.weights[0].dtype)
        return mean + np.exp(log_scale) * eps
