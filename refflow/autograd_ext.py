r"""What autograd 1.9.1 needs to differentiate CuPy arrays: vector spaces and eight replacements.

Nothing here runs at import. ``register_array_type(cls)`` teaches autograd a non-NumPy array
type (a Box and a vector space for ``cls``) and, the first time, installs the replacements
below. It is called when a non-NumPy array type first comes into use:

- ``refflow.set_backend("cupy")`` (or ``REFFLOW_BACKEND=cupy``) registers ``cupy.ndarray``;
- ``refflow.backend.is_array(x)``, which every input check of refflow reaches
  (``refflow.checks.check_array``), registers ``cupy.ndarray`` the first time it sees one, so
  CuPy arrays handed to a flow on the NumPy backend are differentiable too;
- the test suite's ``--standin`` option registers its strict stand-in array.

On the NumPy backend none of this happens, and autograd stays exactly as installed.

What is replaced, and why. Each autograd internal below creates NumPy arrays on the host (or
converts to NumPy), which CuPy refuses (or, for ``.view(numpy.ndarray)``, silently misreads).
Every replacement computes what the stock code computes, with arrays of the input's own type
(``zeros_like``, arithmetic), so NumPy values give the same numbers as stock autograd:

===============================================  ============================================
autograd 1.9.1 internal                          what fails on CuPy
===============================================  ============================================
``numpy_vjps.repeat_to_match_shape``             adds ``numpy.zeros(shape)`` (VJP of sum,
                                                 mean, prod, var, std, max, min)
``numpy_vjps.untake``                            ``numpy.add.at`` with slice or tuple indices
                                                 (VJP of indexing)
``numpy_wrapper.concatenate_args``               ends in ``.view(numpy.ndarray)``, read by
                                                 CuPy as a dtype (object)
``numpy_wrapper._array_from_scalar_or_array``    ``numpy.array(device_array)``
``numpy_wrapper.array_from_args``                ``numpy.array([device arrays])``
VJP of ``where``                                 fills with ``numpy.zeros(g.shape)``
``numpy_vjps.dot_adjoint_0`` / ``_1``            ends in ``numpy.asarray(out, dtype)``
VJP of ``trace``                                 multiplies by a host ``numpy.eye``
===============================================  ============================================

The replacement of ``trace``'s VJP handles what stock autograd handles: a non-square matrix,
an offset, and stacked matrices (``trace`` sums over the first two axes). The one of
``where`` keeps stock autograd's shape rule (the gradient has the result's shape); model code
that broadcasts an operand of ``where`` calls ``refflow.ops.where`` instead.

Notes
-----
``installed()`` says whether the replacements are in place, ``status()`` checks each one.
They rebind module-level names inside autograd, so autograd is pinned to 1.9.1.

References
----------
1. D. Maclaurin, D. Duvenaud, M. Johnson, J. Townsend. Autograd (software), 2015-2024.
2. R. Okuta et al. CuPy: A NumPy-compatible library for NVIDIA GPU calculations.
   Workshop on ML Systems, NeurIPS, 2017.
"""

from __future__ import annotations

import threading
from typing import Any

import autograd.numpy as _anp
import numpy
from autograd import core as _ag_core
from autograd.extend import SparseObject, VSpace, defvjp, primitive
from autograd.numpy import numpy_vjps as _vjps
from autograd.numpy import numpy_wrapper as _wrapper
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.numpy.numpy_vspaces import ArrayVSpace
from autograd.tracer import getval

__all__ = ["register_array_type", "registered_types", "install", "installed", "status",
           "REPLACED"]

_registered: frozenset = frozenset()  # replaced, never changed: read without the lock
_lock = threading.Lock()


class _ForeignArrayVSpace(ArrayVSpace):
    """autograd's vector space of arrays, creating its vectors with the array's own type."""

    def __init__(self, value):
        self.shape = value.shape
        self.dtype = value.dtype
        self._proto = value

    def __eq__(self, other):
        # autograd compares vector spaces by __dict__, which would compare the prototypes
        return (type(self) is type(other) and self.shape == other.shape
                and self.dtype == other.dtype and type(self._proto) is type(other._proto))

    __hash__ = None

    def zeros(self):
        return numpy.zeros_like(self._proto)

    def ones(self):
        return numpy.ones_like(self._proto)

    def standard_basis(self):
        for idxs in numpy.ndindex(*self.shape):
            vect = numpy.zeros_like(self._proto)
            vect[idxs] = 1
            yield vect

    def randn(self):
        # autograd's check_grads draws its random directions here
        host = numpy.random.default_rng().standard_normal(self.shape).astype(self.dtype)
        if type(self._proto).__module__.startswith("cupy"):
            import cupy

            return cupy.asarray(host)
        return type(self._proto)(host)

    def _inner_prod(self, x, y):
        return numpy.dot(numpy.ravel(x), numpy.ravel(y))


def registered_types() -> frozenset:
    """The non-NumPy array types autograd has been taught here."""
    return _registered


def register_array_type(cls: type) -> None:
    """Teach autograd to differentiate arrays of type ``cls`` (CuPy, a test stand-in).

    Installs the replacements (``install``) the first time; registering a type twice does
    nothing.
    """
    global _registered
    if not isinstance(cls, type):
        raise ValueError(f"cls: expected an array type, got {cls!r}")
    with _lock:
        if cls in _registered:
            return
        install()
        ArrayBox.register(cls)
        VSpace.register(cls, _ForeignArrayVSpace)
        _registered = _registered | {cls}


def _raw(x: Any) -> Any:
    # the array under any number of Boxes (higher-order derivatives nest them)
    while getval(x) is not x:
        x = getval(x)
    return x


def _eye_like(x: Any, n: int, m: int, k: int, dtype: Any) -> Any:
    """The n x m matrix with ones on diagonal k, with the array type of ``x`` and ``dtype``."""
    raw = _raw(x)
    rows = numpy.cumsum(numpy.ones_like(raw, shape=(n,), dtype=numpy.int64)) - 1
    cols = numpy.cumsum(numpy.ones_like(raw, shape=(m,), dtype=numpy.int64)) - 1
    return (rows[:, None] + k == cols[None, :]).astype(dtype)


def repeat_to_match_shape(g, shape, dtype, axis, keepdims):
    """g broadcast back to ``shape`` (stock: ``+ numpy.zeros(shape)``), and the repeat count."""
    if shape == ():
        return g, 1
    axis = list(axis) if isinstance(axis, tuple) else axis
    new_shape = numpy.array(shape)
    new_shape[axis] = 1
    num_reps = numpy.prod(numpy.array(shape)[axis])
    return _wrapper.reshape(g, tuple(new_shape)) + numpy.zeros_like(
        _raw(g), shape=shape, dtype=dtype
    ), num_reps


def _is_basic_index(idx) -> bool:
    parts = idx if isinstance(idx, tuple) else (idx,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


@primitive
def untake(x, idx, vs):
    """The VJP of ``A[idx]``: x scattered into zeros (stock: ``numpy.add.at`` always)."""
    if isinstance(idx, list) and (len(idx) == 0 or not isinstance(idx[0], slice)):
        idx = numpy.array(idx, dtype="int64")

    def mut_add(A):
        if _is_basic_index(idx):
            # a basic index selects each element once, so a plain in-place add is the scatter
            A[idx] = A[idx] + x
        elif type(A).__module__.startswith("cupy"):
            import cupyx

            cupyx.scatter_add(A, idx, x)
        else:
            numpy.add.at(A, idx, x)
        return A

    return SparseObject(vs, mut_add)


defvjp(untake, lambda ans, x, idx, _: lambda g: g[idx])


@primitive
def concatenate_args(axis, *args):
    """``concatenate``; the stock ``.view(numpy.ndarray)`` only for NumPy results."""
    out = numpy.concatenate(args, axis)
    return out.view(numpy.ndarray) if isinstance(out, numpy.ndarray) else out


@primitive
def _array_from_scalar_or_array(array_args, array_kwargs, scalar):
    """``np.array(x)``; a registered array is copied as its own type."""
    if type(scalar) in _registered:
        dtype = array_kwargs.get("dtype", array_args[0] if array_args else None)
        return scalar.copy() if dtype is None else scalar.astype(dtype)
    return numpy.array(scalar, *array_args, **array_kwargs)


@primitive
def array_from_args(array_args, array_kwargs, *args):
    """``np.array([a, b, ...])``; registered arrays are stacked as their own type."""
    if any(type(a) in _registered for a in args):
        return numpy.stack(args)
    return numpy.array(args, *array_args, **array_kwargs)


def _where_vjp_x(ans, c, x=None, y=None):
    return lambda g: _wrapper.where(c, g, _wrapper.zeros_like(g))


def _where_vjp_y(ans, c, x=None, y=None):
    return lambda g: _wrapper.where(c, _wrapper.zeros_like(g), g)


def _astype(out, dtype):
    if isinstance(out, numpy.ndarray) or numpy.isscalar(out):
        return numpy.asarray(out, dtype=dtype)
    return out.astype(dtype, copy=False)


@primitive
def dot_adjoint_0(B, G, A_meta, B_meta):
    """autograd's adjoint of ``dot`` in its first operand, ending in ``astype``."""
    _, A_ndim, A_dtype, _ = A_meta
    _, B_ndim, _, _ = B_meta
    if B_ndim == 0 or B_ndim == 1 or A_ndim == 0:
        out = numpy.tensordot(G, B, max(0, B_ndim - (A_ndim != 0)))
    else:
        out = numpy.tensordot(G, numpy.swapaxes(B, -1, -2), B_ndim - 1)
    return _astype(out, A_dtype)


@primitive
def dot_adjoint_1(A, G, A_meta, B_meta):
    """autograd's adjoint of ``dot`` in its second operand, ending in ``astype``."""
    _, A_ndim, _, _ = A_meta
    _, B_ndim, B_dtype, _ = B_meta
    needs_transpose = B_ndim > 1 and A_ndim != 0
    if A_ndim == 0 or A_ndim == 1 or B_ndim == 0:
        out = numpy.tensordot(G, A, max(0, A_ndim - (B_ndim != 0)))
    else:
        axes = [range(-A_ndim - B_ndim + 2, -B_ndim + 1), range(A_ndim - 1)]
        out = numpy.tensordot(G, A, axes)
    if needs_transpose:
        out = numpy.swapaxes(out, -1, -2)
    return _astype(out, B_dtype)


def _trace_vjp(ans, x, offset=0):
    # trace sums x[i, i + offset, ...] over i, so dL/dx[i, j, ...] = [j = i + offset] g[...]
    n, m, trailing = x.shape[0], x.shape[1], len(x.shape) - 2

    def vjp(g):
        eye = _eye_like(g, n, m, offset, numpy.result_type(_raw(g).dtype, x.dtype))
        return eye[(...,) + (None,) * trailing] * g

    return vjp


_REBOUND = (
    (_vjps, "repeat_to_match_shape", repeat_to_match_shape),
    (_vjps, "untake", untake),
    (_wrapper, "concatenate_args", concatenate_args),
    (_wrapper, "_array_from_scalar_or_array", _array_from_scalar_or_array),
    (_wrapper, "array_from_args", array_from_args),
    (_vjps, "dot_adjoint_0", dot_adjoint_0),
    (_vjps, "dot_adjoint_1", dot_adjoint_1),
)

#: What ``install`` replaces in autograd 1.9.1 (the table in the module docstring).
REPLACED = (
    "numpy_vjps.repeat_to_match_shape",
    "numpy_vjps.untake",
    "numpy_wrapper.concatenate_args",
    "numpy_wrapper._array_from_scalar_or_array",
    "numpy_wrapper.array_from_args",
    "vjp of where",
    "numpy_vjps.dot_adjoint_0/1",
    "vjp of trace",
)


def install() -> None:
    """Install the replacements in autograd (idempotent); ``register_array_type`` calls it."""
    if installed():
        return
    for module, name, new in _REBOUND:
        old = getattr(module, name)
        if old is not new and old in _ag_core.primitive_vjps:
            # the new primitive differentiates exactly like the one it replaces
            _ag_core.primitive_vjps[new] = _ag_core.primitive_vjps[old]
        setattr(module, name, new)
    # autograd.numpy.where is a plain wrapper; the differentiable primitive is the original one
    defvjp(_anp._original_where, None, _where_vjp_x, _where_vjp_y)
    defvjp(_wrapper.trace, _trace_vjp)


def status() -> dict[str, bool]:
    """For each entry of ``REPLACED``, whether refflow's replacement is in place."""
    return {
        REPLACED[0]: _vjps.repeat_to_match_shape is repeat_to_match_shape,
        REPLACED[1]: _vjps.untake is untake,
        REPLACED[2]: _wrapper.concatenate_args is concatenate_args,
        REPLACED[3]: _wrapper._array_from_scalar_or_array is _array_from_scalar_or_array,
        REPLACED[4]: _wrapper.array_from_args is array_from_args,
        REPLACED[5]: _is_our_vjp(_anp._original_where, _where_vjp_x),
        REPLACED[6]: _vjps.dot_adjoint_0 is dot_adjoint_0 and _vjps.dot_adjoint_1 is dot_adjoint_1,
        REPLACED[7]: _is_our_vjp(_wrapper.trace, _trace_vjp),
    }


def installed() -> bool:
    """True once any replacement is in place (they are installed together)."""
    return any(status().values())


def _is_our_vjp(prim, maker) -> bool:
    vjpmaker = _ag_core.primitive_vjps.get(prim)
    cells = getattr(vjpmaker, "__closure__", None) or ()
    # autograd's defvjp keeps the makers in a dict captured by the registered closure
    return any(
        isinstance(cell.cell_contents, dict) and maker in cell.cell_contents.values()
        for cell in cells
    )
