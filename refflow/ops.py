r"""refflow's own differentiable primitives where autograd 1.9.1's VJP is wrong or upcasts.

refflow leaves autograd as it is (``import refflow`` rebinds nothing inside it). Where model
code needs a gradient that stock autograd gets wrong, it calls one of these instead, each an
``autograd.extend.primitive`` with its VJP given by ``defvjp``, the public extension mechanism:

- ``where(condition, x, y)``: autograd's VJP of ``where`` returns the gradient in the shape of
  the result, not of the operand, so an operand broadcast against the others (an (N, 1)
  column beside an (N, D) array) receives an (N, D) gradient: silently wrong downstream. Here
  each operand's gradient is summed back to its own shape.
- ``maximum(x, y)`` and ``minimum(x, y)``: autograd weights the gradient by a float64 ratio
  (ties split half and half), so a float32 model gets float64 gradients. Here the weight has
  the dtype of the result.
- ``take(x, index)``, ``x[index]`` for a basic index (integers, slices, ``...``, ``None``):
  autograd's VJP of indexing scatters with ``numpy.add.at``, which is right for any index but
  many times slower than an in-place add for a slice (docs/performance.md). A basic index
  selects every element at most once, so here the gradient is added in place into zeros.
- ``segment(v, start, stop, shape)``, ``v[start:stop]`` of a flat vector reshaped to
  ``shape``, in one autograd node: training cuts its parameter vector into the parameter
  arrays with it (``refflow.tree.ravel_leaves``).

All five work on any array type NumPy dispatches to (CuPy, the strict stand-in of the tests):
the VJPs create their arrays with ``zeros_like`` and arithmetic only.

Notes
-----
With r = where(c, x, y) and G = dL/dr: dL/dx = sum over broadcast axes of [c] G, and
dL/dy = sum over broadcast axes of [not c] G. With r = max(x, y): dL/dx = G w(x, r, y),
w = [x = r] / (1 + [x = y]), the same tie rule as autograd's.

Examples
--------
>>> import numpy
>>> from autograd import grad
>>> u = numpy.array([[1.0], [2.0]])                          # (2, 1), broadcast to (2, 3)
>>> grad(lambda u: where(numpy.ones((2, 3)) > 0, u, 0.0).sum())(u).tolist()
[[3.0], [3.0]]
"""

from __future__ import annotations

from typing import Any

import autograd.numpy as np
from autograd.extend import SparseObject, defvjp, primitive, vspace
from autograd.numpy.numpy_vjps import unbroadcast_f

__all__ = ["where", "maximum", "minimum", "take", "take_last", "segment"]


@primitive
def where(condition: Any, x: Any, y: Any) -> Any:
    """Elements of ``x`` where ``condition`` holds, else of ``y`` (broadcast together)."""
    return np.where(condition, x, y)


defvjp(
    where,
    None,
    lambda ans, c, x, y: unbroadcast_f(x, lambda g: np.where(c, g, np.zeros_like(g))),
    lambda ans, c, x, y: unbroadcast_f(y, lambda g: np.where(c, np.zeros_like(g), g)),
)


@primitive
def maximum(x: Any, y: Any) -> Any:
    """The element-wise maximum of ``x`` and ``y``; float32 stays float32 in the gradient."""
    return np.maximum(x, y)


@primitive
def minimum(x: Any, y: Any) -> Any:
    """The element-wise minimum of ``x`` and ``y``; float32 stays float32 in the gradient."""
    return np.minimum(x, y)


def _tie_weight(a: Any, ans: Any, b: Any) -> Any:
    # 1 where a is the extremum, 1/2 where a and b tie, 0 elsewhere; in the result's dtype
    weight = (a == ans) / (1.0 + (a == b))
    return weight.astype(np.result_type(ans), copy=False)


for _extremum in (maximum, minimum):
    defvjp(
        _extremum,
        lambda ans, x, y: unbroadcast_f(x, lambda g: g * _tie_weight(x, ans, y)),
        lambda ans, x, y: unbroadcast_f(y, lambda g: g * _tie_weight(y, ans, x)),
    )


def _check_basic(index: Any) -> None:
    parts = index if isinstance(index, tuple) else (index,)
    for part in parts:
        if not (part is None or part is Ellipsis or isinstance(part, (int, slice))):
            raise ValueError(f"index: expected integers, slices, ... or None, got {part!r}")


@primitive
def take(x: Any, index: Any) -> Any:
    """``x[index]`` for a basic index; its gradient is added in place, not by ``add.at``."""
    _check_basic(index)
    return x[index]


def take_last(x: Any, start: int | None, stop: int | None = None) -> Any:
    """``x[..., start:stop]``, a slice of the last axis, by ``take``."""
    return take(x, (Ellipsis, slice(start, stop)))


@primitive
def _untake(g: Any, index: Any, space: Any) -> Any:
    # the gradient of take: g placed at index in zeros of x's space; autograd sums several
    # of them into one zeros array by calling mut_add in turn
    def mut_add(total):
        total[index] = total[index] + g
        return total

    return SparseObject(space, mut_add)


defvjp(take, lambda ans, x, index: lambda g: _untake(g, index, vspace(x)))
defvjp(_untake, lambda ans, g, index, space: lambda h: take(h, index))


@primitive
def segment(v: Any, start: int, stop: int, shape: tuple) -> Any:
    """``v[start:stop]`` of a flat vector, reshaped to ``shape``; gradient added in place."""
    return np.reshape(v[start:stop], shape)


defvjp(segment, lambda ans, v, start, stop, shape: lambda g: _untake(
    np.ravel(g), slice(start, stop), vspace(v)))
