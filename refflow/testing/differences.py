r"""Host-side evaluation of foreign callables and finite-difference Jacobians.

The functions under test may be refflow bijections, NumPy code or PyTorch modules, so
everything here works on host float64 NumPy copies and calls the user's code through an
``ArrayAdapter`` that hands it arrays of the type it was given (torch is imported only
when the inputs are torch tensors).

Notes
-----
Central differences with one Richardson extrapolation step. With D(h) = (f(u + h e_j) -
f(u - h e_j)) / (2h) = f'(u) + c_2 h^2 + c_4 h^4 + ...,

.. math::

    R = \frac{4 D(h/2) - D(h)}{3} = f'(u) + O(h^4),
    \qquad |R - f'(u)| \lesssim |R - D(h/2)| \approx |c_2| h^2 / 4,

so |R - D(h/2)| bounds the truncation error of R, while round-off contributes about
3 delta / h for a function computed to an absolute accuracy delta. The step
h = eps^{1/5} max(1, |u_j|) balances O(h^4) truncation against O(eps / h) round-off.

References
----------
1. L. F. Richardson. The deferred approach to the limit. Phil. Trans. R. Soc. A 226, 1927.
2. J. Nocedal, S. J. Wright. Numerical Optimization, 2nd ed., Springer, 2006, section 8.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy

from refflow.backend import to_numpy

__all__ = ["ArrayAdapter", "is_torch", "richardson_jacobian"]

# a function evaluated in floating point is trusted to about NOISE * eps * max(1, |f|)
NOISE = 16.0
# the Richardson error estimate is inflated by this factor before it becomes a tolerance
SAFETY = 4.0


def is_torch(x: Any) -> bool:
    """True for a torch tensor, decided without importing torch."""
    return type(x).__module__.split(".")[0] == "torch"


class ArrayAdapter:
    """Moves host float64 arrays to the user's array type (NumPy or torch) and back.

    The user's arrays keep the dtype of the inputs the check was given; ``eps`` is the
    machine epsilon of the coarsest dtype seen so far (inputs and outputs).
    """

    def __init__(self, example: Any):
        self.torch = is_torch(example)
        if self.torch:
            import torch

            self._torch = torch
            self.device = example.device
            self.np_dtype = numpy.dtype(str(example.dtype).replace("torch.", ""))
        else:
            self.np_dtype = numpy.dtype(to_numpy(example).dtype)
        if self.np_dtype.kind != "f":
            self.np_dtype = numpy.dtype(numpy.float64)
        self.eps = float(numpy.finfo(self.np_dtype).eps)

    def cast(self, a: numpy.ndarray) -> numpy.ndarray:
        """``a`` rounded to the user's dtype, back in float64 (the point actually evaluated)."""
        return a.astype(self.np_dtype).astype(numpy.float64)

    def to_user(self, a: numpy.ndarray) -> Any:
        a = numpy.ascontiguousarray(a, dtype=self.np_dtype)
        if self.torch:
            return self._torch.from_numpy(a).to(self.device)
        return a

    def to_host(self, v: Any) -> numpy.ndarray:
        if is_torch(v):
            v = v.detach().cpu().numpy()
        a = to_numpy(v)
        if a.dtype.kind == "f":
            self.eps = max(self.eps, float(numpy.finfo(a.dtype).eps))
        return numpy.asarray(a, dtype=numpy.float64)


def richardson_jacobian(
    g: Callable[[numpy.ndarray], numpy.ndarray],
    u: numpy.ndarray,
    adapter: ArrayAdapter,
    rel_step: float | None = None,
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Per-row Jacobians of ``g`` at ``u`` (N, D) and an entry-wise error bound, (N, D, D) each.

    ``g`` maps host (M, D) arrays to host (M, D) arrays row by row; it is called once per
    column j on the 4N stacked points u +- h e_j, u +- (h / 2) e_j.
    """
    n, dim = u.shape
    eps = adapter.eps
    if rel_step is None:
        rel_step = eps ** 0.2
    h = rel_step * numpy.maximum(1.0, numpy.abs(u))  # (N, D)
    J = numpy.empty((n, dim, dim))
    E = numpy.empty((n, dim, dim))
    for j in range(dim):
        points = []
        for s in (h[:, j], 0.5 * h[:, j], -h[:, j], -0.5 * h[:, j]):
            p = u.copy()
            p[:, j] = p[:, j] + s
            points.append(adapter.cast(p))
        out = g(numpy.concatenate(points, axis=0)).reshape(4, n, dim)
        steps = [points[k][:, j] - points[k + 2][:, j] for k in (0, 1)]  # actual 2h, h
        d_full = (out[0] - out[2]) / steps[0][:, None]
        d_half = (out[1] - out[3]) / steps[1][:, None]
        R = (4.0 * d_half - d_full) / 3.0
        scale = numpy.maximum(1.0, numpy.max(numpy.abs(out), axis=0))  # (N, D)
        rounding = 3.0 * NOISE * eps * scale / (0.5 * steps[0][:, None])
        J[:, :, j] = R
        E[:, :, j] = SAFETY * numpy.abs(R - d_half) + rounding
    return J, E
