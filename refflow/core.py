r"""The change-of-variables core: the bijection protocol, composition, inversion, flows.

A bijection maps the latent z to the data x (the generative direction, as the lecture
writes every construction, x = f(z)) and reports the log-determinant of its Jacobian:

    forward(z) -> (x, log|det df/dz|),     inverse(x) -> (z, log|det df^{-1}/dx|).

A ``Flow`` pairs a base density p_z with a bijection f and evaluates the lecture's change of
variables, p(x) = p_z(f^{-1}(x)) |det J_{f^{-1}}(x)|, in log space.

A conditional flow models p(x | c): every map takes the context c as an input, like z, and
is a bijection in z for each fixed c, ``forward(z, context)``. A conditional part declares
its context dimension C (a static field ``context_dim``); parts without a conditioner accept
a context and pass it by, so the maps of the lecture compose unchanged.

Notes
-----
Lecture: "Flow-based Models", the change of variables, the composition theorem and the
definition of normalizing flows.

.. math::

    \log p(x) = \log p_z(f^{-1}(x)) + \log |\det J_{f^{-1}}(x)|
              = \log p_z(z) - \sum_{k=1}^K \log |\det J_{f_k}(z_{k-1})|

The lecture's last line of the change of variables writes |det f^{-1}(x)|; the determinant
is of the Jacobian of f^{-1}, as here (erratum).

References
----------
1. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.
2. G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed, B. Lakshminarayanan.
   Normalizing Flows for Probabilistic Modeling and Inference. JMLR 22(57), 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import autograd.numpy as np

from refflow.checks import check_array, check_context, check_int
from refflow.parallel import rowwise

__all__ = ["Bijection", "Compose", "Inverse", "Flow", "context_dim_of", "repeat_context"]


def context_dim_of(obj: Any) -> int:
    """The context dimension C of a bijection or distribution: 0 when it takes no context.

    Reads the ``context_dim`` field (or property, for containers such as ``Compose``).
    """
    return int(getattr(obj, "context_dim", 0) or 0)


def repeat_context(context: Any, samples: int) -> Any:
    """Each row of an (M, C) context repeated ``samples`` = S times in a row: (M * S, C).

    The way to draw S samples for each of M contexts: ``flow.sample(M * S, rng,
    context=repeat_context(c, S))`` has rows [c_1] * S + ... + [c_M] * S, so its
    ``reshape(M, S, *event_shape)`` holds the S samples of context m at index m.
    Differentiable in ``context`` (autograd's ``repeat``).

    Examples
    --------
    >>> import numpy
    >>> repeat_context(numpy.array([[1.0], [2.0]]), 3)[:, 0].tolist()
    [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    """
    check_int("samples", samples)
    check_array("context", context, ndim=2)
    return np.repeat(context, samples, axis=0)


def _call(method, value, context):
    # None is never passed on: a bijection written before contexts existed keeps working
    return method(value) if context is None else method(value, context=context)


@runtime_checkable
class Bijection(Protocol):
    """The protocol every bijection follows: x = f(z) and its inverse, with log-dets.

    ``forward(z, context=None)`` returns ``(x, log_det)`` with log_det = log|det df/dz|;
    ``inverse(x, context=None)`` returns ``(z, log_det)`` with log_det = log|det df^{-1}/dx|.
    The last axis is the event (images: the last three, (H, W, C)); all leading axes are
    batch and ``log_det`` has the batch shape.

    A conditional bijection has ``context_dim`` = C > 0 and needs a context of shape
    ``batch_shape + (C,)`` or ``(C,)``; the Jacobian and its log-det are taken in z at that
    fixed context. One with no conditioner accepts a context and ignores it.
    """

    def forward(self, z: Any, context: Any = None) -> tuple[Any, Any]: ...

    def inverse(self, x: Any, context: Any = None) -> tuple[Any, Any]: ...


@dataclass(frozen=True, eq=False, init=False)
class Compose:
    r"""Composition f = f_K o ... o f_1: ``Compose(f1, ..., fK)`` applies f1 first.

    Notes
    -----
    Lecture: "Flow-based Models", composition theorem: z_k = f_k(z_{k-1}) and

    .. math::

        \log |\det J_f(z_0)| = \sum_{k=1}^K \log |\det J_{f_k}(z_{k-1})|.

    The inverse applies f_K^{-1} first. Cost: the sum of the parts' costs. A context is
    passed to every part (f_k(z; c)), and ``context_dim`` is the common C of the conditional
    parts (two different ones raise ``ValueError``).

    Examples
    --------
    >>> import numpy
    >>> from refflow.affine import Diagonal
    >>> f = Compose(Diagonal(numpy.array([2.0]), numpy.array([0.0])),
    ...             Diagonal(numpy.array([3.0]), numpy.array([1.0])))
    >>> x, log_det = f.forward(numpy.array([[1.0]]))
    >>> x.tolist(), round(float(log_det[0]), 6) == round(float(numpy.log(6.0)), 6)
    ([[7.0]], True)
    """

    bijections: tuple

    def __init__(self, *bijections: Bijection):
        if len(bijections) == 1 and isinstance(bijections[0], (list, tuple)):
            bijections = tuple(bijections[0])
        for i, b in enumerate(bijections):
            if not isinstance(b, Bijection):
                raise ValueError(
                    f"bijections[{i}]: expected an object with forward and inverse, "
                    f"got {type(b).__name__}"
                )
        object.__setattr__(self, "bijections", tuple(bijections))
        self.__post_init__()

    def __post_init__(self):
        # also run by ``refflow.load``: parts conditioned on contexts of different sizes
        # cannot share one context
        dims = {context_dim_of(b) for b in self.bijections} - {0}
        if len(dims) > 1:
            raise ValueError(f"bijections: the conditional parts expect contexts of different "
                             f"dimensions {sorted(dims)}; a Compose takes one context")

    @property
    def context_dim(self) -> int:
        """The common context dimension C of the conditional parts (0: none)."""
        return max((context_dim_of(b) for b in self.bijections), default=0)

    def forward(self, z, context=None):
        total = 0.0
        for b in self.bijections:
            z, log_det = _call(b.forward, z, context)
            total = total + log_det
        return z, total

    def inverse(self, x, context=None):
        total = 0.0
        for b in reversed(self.bijections):
            x, log_det = _call(b.inverse, x, context)
            total = total + log_det
        return x, total

    def __len__(self) -> int:
        return len(self.bijections)

    def __getitem__(self, i):
        return self.bijections[i]


@dataclass(frozen=True, eq=False)
class Inverse:
    r"""The inverse bijection f^{-1}: swaps ``forward`` and ``inverse``.

    Notes
    -----
    Lecture: "Flow-based Models", inverse function theorem: J_{f^{-1}}(f(z)) = J_f(z)^{-1},
    so log|det J_{f^{-1}}| = -log|det J_f|, which each bijection's ``inverse`` returns.
    """

    bijection: Any

    @property
    def context_dim(self) -> int:
        """The context dimension of the inverted bijection (0: none)."""
        return context_dim_of(self.bijection)

    def forward(self, z, context=None):
        return _call(self.bijection.inverse, z, context)

    def inverse(self, x, context=None):
        return _call(self.bijection.forward, x, context)


@dataclass(frozen=True, eq=False)
class Flow:
    r"""A normalizing flow: a base density p_z pushed through a bijection, x = f(z).

    Parameters
    ----------
    base : a distribution with ``log_prob(z)``, ``sample(n, rng)`` and ``event_shape``; a
        conditional one (``context_dim`` C > 0) takes ``log_prob(z, context)`` and
        ``sample(n, rng, context)``.
    bijection : the map f from latent z to data x.

    Notes
    -----
    Lecture: "Flow-based Models", sampling (z ~ p_z, x = f(z)) and density evaluation:

    .. math::

        \log p_x(x) = \log p_z(f^{-1}(x)) + \log |\det J_{f^{-1}}(x)|,
        \qquad \log p_x(f(z)) = \log p_z(z) - \log |\det J_f(z)|.

    **Conditional flows.** With a context c (a bijection or base with ``context_dim`` C > 0)
    the flow is the conditional density p(x | c): for each fixed c, x = f(z; c) is a
    bijection in z and

    .. math::

        \log p(x \mid c) = \log p_z(f^{-1}(x; c) \mid c) + \log |\det J_{f^{-1}}(x; c)|,

    the Jacobian taken in x only (c is an input, not a variable of the change of variables).
    Every method takes ``context``: shape ``batch_shape + (C,)`` (one row per data row or
    sample) or ``(C,)`` (one context for all rows). A context for a flow that takes none, a
    wrong C, or a row count that matches neither the data nor 1, raises ``ValueError``
    naming ``context``; so does a missing one, from the conditional part that needs it (the
    flow itself checks nothing when no context is given). To draw S samples for each of M
    contexts, repeat each row S times (``repeat_context``) and reshape: ``sample(M * S, rng,
    context=repeat_context(c, S)).reshape(M, S, *event_shape)``.

    The rows of a batch are independent, so ``log_prob`` and ``push_forward`` are marked
    ``@rowwise``: a large batch is evaluated in row blocks, to bound memory, and over threads
    when ``refflow.set_threads`` asks for it (``refflow.parallel``); the context rows travel
    with their data rows. The result is the same.

    Examples
    --------
    >>> import numpy
    >>> from refflow.affine import Diagonal
    >>> from refflow.distributions import StandardNormal
    >>> flow = Flow(StandardNormal(1), Diagonal(numpy.array([0.75]), numpy.array([1.0])))
    >>> lp = flow.log_prob(numpy.array([[1.0]]))       # N(1, 0.75^2) at its mean
    >>> bool(abs(lp[0] - (-0.5 * numpy.log(2 * numpy.pi) - numpy.log(0.75))) < 1e-12)
    True
    """

    base: Any
    bijection: Any

    def __post_init__(self):
        dims = {context_dim_of(self.base), context_dim_of(self.bijection)} - {0}
        if len(dims) > 1:
            raise ValueError(f"base: expects a context of dimension {context_dim_of(self.base)}"
                             f" but the bijection one of {context_dim_of(self.bijection)}")

    @property
    def event_shape(self) -> tuple:
        return self.base.event_shape

    @property
    def context_dim(self) -> int:
        """The dimension C of the context this flow is conditioned on (0: unconditional)."""
        return max(context_dim_of(self.base), context_dim_of(self.bijection))

    def _context(self, context: Any, value: Any) -> Any:
        if context is None:
            # nothing to check, so an unconditional flow costs what it did before contexts;
            # a conditional part called without one raises its own ValueError
            return None
        batch_shape = tuple(value.shape[: len(value.shape) - len(self.event_shape)])
        return check_context("this flow", context, self.context_dim, batch_shape, finite=True)

    def _base_log_prob(self, z, context):
        if context is None or not context_dim_of(self.base):
            return self.base.log_prob(z)
        return self.base.log_prob(z, context)

    @rowwise
    def log_prob(self, x, context=None):
        """log p(x | c) = log p_z(f^{-1}(x; c)) + log|det J_{f^{-1}}(x; c)|.

        x: (..., *event_shape); context: ``None``, (C,) or (..., C) with x's batch shape.
        """
        check_array("x", x, min_ndim=len(self.event_shape), last=self.event_shape)
        context = self._context(context, x)
        z, log_det = _call(self.bijection.inverse, x, context)
        return self._base_log_prob(z, context) + log_det

    def sample(self, n: int, rng, context=None):
        """n samples x = f(z; c), z ~ p_z, as an (n, *event_shape) array.

        context: ``None``, (C,) for all samples, or (n, C), one row per sample.
        """
        x, _ = self.sample_and_log_prob(n, rng, context)
        return x

    def sample_and_log_prob(self, n: int, rng, context=None):
        """n samples and their log-densities in one pass (the reparameterisation trick)."""
        check_int("n", n)
        if context is None:
            return self.push_forward(self.base.sample(n, rng))
        context = check_context("this flow", context, self.context_dim, (n,), finite=True)
        if context_dim_of(self.base):
            z = self.base.sample(n, rng, context)
        else:
            z = self.base.sample(n, rng)
        return self.push_forward(z, context)

    @rowwise(sequential=True)
    def push_forward(self, z, context=None):
        """x = f(z; c) and log p(x | c) = log p_z(z | c) - log|det J_f(z; c)|.

        z: (..., *event_shape); context as in ``log_prob``.
        """
        context = self._context(context, z)
        x, log_det = _call(self.bijection.forward, z, context)
        return x, self._base_log_prob(z, context) - log_det
