"""Validation of user input at public entry points: clear ``ValueError`` naming the argument.

Every check passes traced values (autograd Boxes) through untouched, so constructors can
validate concrete arrays while ``tree.rebuild`` and training never evaluate a Python
condition on a value being differentiated.
"""

from __future__ import annotations

import numbers
from typing import Any

import autograd.numpy as np

from refflow.backend import is_array, is_traced, to_numpy

__all__ = ["check_array", "check_finite", "check_positive", "check_int", "check_real",
           "check_context"]

# NumPy dtype kinds of real numbers: bool, signed and unsigned integers, floats
_REAL_KINDS = "biuf"


def check_real(name: str, x: Any) -> Any:
    """Raise ``ValueError`` unless ``x`` is an array of real numbers (no complex, text, objects).

    An array here is a NumPy array, one of the backend's registered array types (CuPy, the
    test stand-in) or a NumPy scalar. A torch tensor or a list gets a ``ValueError`` naming
    its type, so a caller learns to convert it, instead of a crash deep inside NumPy.
    """
    # the common case first, in builtins: every bijection call checks its input
    if type(x) is np.ndarray and x.dtype.kind in _REAL_KINDS:
        return x
    if is_traced(x):
        return x
    dtype = getattr(x, "dtype", None)
    numpy_like = is_array(x) or isinstance(getattr(dtype, "kind", None), str)
    if not numpy_like or getattr(x, "shape", None) is None:
        kind = f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")
        raise ValueError(f"{name}: expected a NumPy or backend array, got {kind}")
    if dtype.kind not in _REAL_KINDS:
        raise ValueError(f"{name}: expected real numbers, got an array of dtype {dtype}")
    return x


def check_finite(name: str, x: Any) -> Any:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    if is_traced(x):
        return x
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not isinstance(getattr(dtype, "kind", None), str):
        check_real(name, x)
    # reduce on the device: one scalar comes back to the host, never the whole batch
    if dtype is not None and dtype.kind in "fc" and not bool(np.all(np.isfinite(x))):
        bad = int(to_numpy(np.sum(~np.isfinite(x))))
        raise ValueError(f"{name}: expected finite values, found {bad} NaN or infinite entries")
    return x


def check_array(
    name: str,
    x: Any,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    last: int | tuple[int, ...] | None = None,
    finite: bool = True,
) -> Any:
    """Check the type, rank, trailing (event) shape and finiteness of an array argument.

    The array must hold real numbers (``check_real``). ``last`` is the expected size of the
    last axis, or the expected trailing shape.
    """
    if is_traced(x):
        return x
    check_real(name, x)
    shape = x.shape
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {tuple(shape)}")
    if min_ndim is not None and len(shape) < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {shape}")
    if last is not None:
        tail = (last,) if isinstance(last, int) else tuple(last)
        if tuple(shape[len(shape) - len(tail):]) != tail or len(shape) < len(tail):
            raise ValueError(
                f"{name}: expected trailing shape {tail}, got shape {tuple(shape)}"
            )
    if finite:
        check_finite(name, x)
    return x


def check_positive(name: str, x: Any) -> Any:
    """Raise ``ValueError`` unless every entry of ``x`` is finite and > 0."""
    if is_traced(x):
        return x
    if not isinstance(x, numbers.Real):
        check_real(name, x)
    check_finite(name, x)
    if not bool(np.all(to_numpy(x) > 0)):
        raise ValueError(f"{name}: expected strictly positive values")
    return x


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Raise ``ValueError`` unless ``value`` is an integer >= ``minimum``.

    Python ints and NumPy integer scalars (``numpy.int64(3)``) count; ``bool`` does not.
    ``numbers.Integral`` covers both: ``autograd.numpy.integer`` is not ``numpy.integer``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_context(owner: str, context: Any, context_dim: int, batch_shape: tuple,
                  finite: bool = False) -> Any:
    """A conditional bijection's context after the protocol's checks (DESIGN.md section 2).

    ``owner`` (a class name, "this flow") is named in the messages. With ``context_dim`` C > 0
    the context must be ``batch_shape + (C,)`` (one row per data row) or ``(C,)`` (one for
    every row); a context whose leading axes are all 1 counts as the latter and comes back as
    (C,). A missing context, one given where C = 0, a wrong C or a wrong number of rows is a
    ``ValueError`` naming ``context``. Shapes only (no pass over the data) unless ``finite``.
    Returns the context, or None when C = 0 and none was given.
    """
    if context is None:
        if context_dim:
            raise ValueError(f"context: {owner} expects a context of dimension {context_dim} "
                             f"(shape ({context_dim},) or batch_shape + ({context_dim},)), "
                             "got None")
        return None
    shape = tuple(getattr(context, "shape", ()))
    if not context_dim:
        raise ValueError(f"context: {owner} takes no context (context_dim 0), got one of "
                         f"shape {shape}")
    check_array("context", context, min_ndim=1, finite=finite)
    if shape[-1] != context_dim:
        raise ValueError(f"context: {owner} expects a context of dimension {context_dim} in "
                         f"its last axis, got shape {shape}")
    if len(shape) == 1 or shape[:-1] == tuple(batch_shape):
        return context
    if all(size == 1 for size in shape[:-1]):
        return np.reshape(context, (context_dim,))
    raise ValueError(f"context: {owner} expects shape ({context_dim},) or batch_shape + "
                     f"({context_dim},) = {tuple(batch_shape) + (context_dim,)} (one row per "
                     f"data row, or one for all), got {shape}")
