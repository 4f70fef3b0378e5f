r"""The change-of-variables core: the bijection protocol, composition, inversion, flows.

A bijection maps the latent z to the data x (the generative direction, as the lecture
writes every construction, x = f(z)) and reports the log-determinant of its Jacobian:

    forward(z) -> (x, log|det df/dz|),     inverse(x) -> (z, log|det df^{-1}/dx|).

A ``Flow`` pairs a base density p_z with a bijection f and evaluates the lecture's change of
variables, p(x) = p_z(f^{-1}(x)) |det J_{f^{-1}}(x)|, in log space.

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

from refflow.checks import check_array, check_int
from refflow.parallel import rowwise

__all__ = ["Bijection", "Compose", "Inverse", "Flow"]


@runtime_checkable
class Bijection(Protocol):
    """The protocol every bijection follows: x = f(z) and its inverse, with log-dets.

    ``forward(z)`` returns ``(x, log_det)`` with log_det = log|det df/dz|;
    ``inverse(x)`` returns ``(z, log_det)`` with log_det = log|det df^{-1}/dx|. The last axis
    is the event (images: the last three, (H, W, C)); all leading axes are batch and
    ``log_det`` has the batch shape.
    """

    def forward(self, z: Any) -> tuple[Any, Any]: ...

    def inverse(self, x: Any) -> tuple[Any, Any]: ...


@dataclass(frozen=True, eq=False, init=False)
class Compose:
    r"""Composition f = f_K o ... o f_1: ``Compose(f1, ..., fK)`` applies f1 first.

    Notes
    -----
    Lecture: "Flow-based Models", composition theorem: z_k = f_k(z_{k-1}) and

    .. math::

        \log |\det J_f(z_0)| = \sum_{k=1}^K \log |\det J_{f_k}(z_{k-1})|.

    The inverse applies f_K^{-1} first. Cost: the sum of the parts' costs.

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

    def forward(self, z):
        total = 0.0
        for b in self.bijections:
            z, log_det = b.forward(z)
            total = total + log_det
        return z, total

    def inverse(self, x):
        total = 0.0
        for b in reversed(self.bijections):
            x, log_det = b.inverse(x)
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

    def forward(self, z):
        return self.bijection.inverse(z)

    def inverse(self, x):
        return self.bijection.forward(x)


@dataclass(frozen=True, eq=False)
class Flow:
    r"""A normalizing flow: a base density p_z pushed through a bijection, x = f(z).

    Parameters
    ----------
    base : a distribution with ``log_prob(z)``, ``sample(n, rng)`` and ``event_shape``.
    bijection : the map f from latent z to data x.

    Notes
    -----
    Lecture: "Flow-based Models", sampling (z ~ p_z, x = f(z)) and density evaluation:

    .. math::

        \log p_x(x) = \log p_z(f^{-1}(x)) + \log |\det J_{f^{-1}}(x)|,
        \qquad \log p_x(f(z)) = \log p_z(z) - \log |\det J_f(z)|.

    The rows of a batch are independent, so ``log_prob`` and ``push_forward`` are marked
    ``@rowwise``: a large batch is evaluated in row blocks, to bound memory, and over threads
    when ``refflow.set_threads`` asks for it (``refflow.parallel``). The result is the same.

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

    @property
    def event_shape(self) -> tuple:
        return self.base.event_shape

    @rowwise
    def log_prob(self, x):
        """log p(x) = log p_z(f^{-1}(x)) + log|det J_{f^{-1}}(x)|; x: (..., *event_shape)."""
        check_array("x", x, min_ndim=len(self.event_shape), last=self.event_shape)
        z, log_det = self.bijection.inverse(x)
        return self.base.log_prob(z) + log_det

    def sample(self, n: int, rng):
        """n samples x = f(z), z ~ p_z, as an (n, *event_shape) array."""
        x, _ = self.sample_and_log_prob(n, rng)
        return x

    def sample_and_log_prob(self, n: int, rng):
        """n samples and their log-densities in one pass (the reparameterisation trick)."""
        check_int("n", n)
        z = self.base.sample(n, rng)
        return self.push_forward(z)

    @rowwise(sequential=True)
    def push_forward(self, z):
        """x = f(z) and log p(x) = log p_z(z) - log|det J_f(z)|; z: (..., *event_shape)."""
        x, log_det = self.bijection.forward(z)
        return x, self.base.log_prob(z) - log_det
