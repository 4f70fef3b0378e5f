r"""Jacobians of batched maps: by autograd, by finite differences, and their log|det|.

Every bijection acts row by row on a batch (N, *event), so the Jacobian of a batch is one
D x D matrix per row (D = prod(event)). Both functions return an (N, D, D) array with
J[n, i, j] = d f(z)[n, i] / d z[n, j].

Notes
-----
Lecture: "Flow-based Models", the Jacobian matrix J = [d f_i / d x_j] and the change of
variables, which needs log|det J|. ``jacobian`` takes D reverse-mode passes (one per output
coordinate, all rows at once); ``numerical_jacobian`` takes 2D evaluations of f.

.. math::

    J_{ij} \approx \frac{f_i(z + h e_j) - f_i(z - h e_j)}{2h},
    \qquad h = \epsilon^{1/3} \max(1, |z_j|)

(the central-difference step that balances truncation O(h^2) and round-off O(eps / h)).

References
----------
1. J. Nocedal, S. J. Wright. Numerical Optimization, 2nd ed., Springer, 2006, section 8.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import autograd.numpy as np
from autograd import make_vjp

from refflow.backend import eye_like

__all__ = ["jacobian", "numerical_jacobian", "logabsdet_jacobian"]


def _flat(f: Callable, event_shape: tuple) -> Callable:
    def g(z_flat):
        z = np.reshape(z_flat, z_flat.shape[:1] + event_shape)
        out = f(z)
        return np.reshape(out, out.shape[:1] + (math.prod(out.shape[1:]),))

    return g


def jacobian(f: Callable[[Any], Any], z: Any) -> Any:
    """Per-row Jacobians of ``f`` at a batch ``z`` by autograd, shape (N, D, D).

    ``f`` maps (N, *event) to (N, *event) row by row (pass ``lambda z: b.forward(z)[0]``).

    Examples
    --------
    >>> import numpy
    >>> J = jacobian(lambda z: z * numpy.array([2.0, 3.0]), numpy.ones((4, 2)))
    >>> J.shape, J[0].tolist()
    ((4, 2, 2), [[2.0, 0.0], [0.0, 3.0]])
    """
    event_shape = tuple(z.shape[1:])
    n = z.shape[0]
    z_flat = np.reshape(z, (n, math.prod(event_shape)))  # not -1: an empty batch has N = 0
    vjp, _ = make_vjp(_flat(f, event_shape))(z_flat)
    eye = eye_like(z_flat, z_flat.shape[1])
    # one reverse pass per output coordinate i, all rows at once: row i of every J[n]
    rows = [vjp(np.zeros_like(z_flat) + eye[i]) for i in range(z_flat.shape[1])]
    return np.stack(rows, axis=1)


def numerical_jacobian(f: Callable[[Any], Any], z: Any, eps: float | None = None) -> Any:
    """Per-row Jacobians of ``f`` at ``z`` by central differences, shape (N, D, D).

    ``eps`` is the relative step; by default the cube root of the dtype's machine epsilon.

    Examples
    --------
    >>> import numpy
    >>> J = numerical_jacobian(numpy.sin, numpy.zeros((1, 2)))
    >>> numpy.allclose(J[0], numpy.eye(2))
    True
    """
    event_shape = tuple(z.shape[1:])
    n = z.shape[0]
    z_flat = np.reshape(z, (n, -1))
    g = _flat(f, event_shape)
    if eps is None:
        eps = float(np.finfo(z_flat.dtype).eps) ** (1.0 / 3.0)
    h = eps * np.maximum(1.0, np.abs(z_flat))  # (N, D)
    eye = eye_like(z_flat, z_flat.shape[1])
    cols = []
    for j in range(z_flat.shape[1]):
        step = h * eye[j]
        # the step actually taken, as represented in floating point
        dz = (z_flat + step) - (z_flat - step)
        cols.append((g(z_flat + step) - g(z_flat - step)) / dz[:, j : j + 1])
    return np.stack(cols, axis=2)


def logabsdet_jacobian(f: Callable[[Any], Any], z: Any) -> Any:
    """log|det J_f(z)| per row, from the autograd Jacobian and refflow's LU ``slogdet``.

    Examples
    --------
    >>> import numpy
    >>> float(logabsdet_jacobian(lambda z: 2.0 * z, numpy.ones((1, 3)))[0]) == float(numpy.log(8.0))
    True
    """
    from refflow.linalg import slogdet

    return slogdet(jacobian(f, z))[1]
