"""A strict stand-in for ``cupy.ndarray``, so that CPU CI catches what would break on a GPU.

``StrictArray`` wraps a NumPy array and behaves toward NumPy as CuPy does: NumPy functions
and ufuncs dispatch to it through ``__array_function__`` / ``__array_ufunc__``, implicit
conversion (``numpy.asarray(x)``, ``float(x)`` on non-scalars) raises ``TypeError``, and a
NumPy array mixed into an operation raises ``TypeError`` (NumPy *scalars* and Python numbers
are accepted, as CuPy accepts them). It is a leak detector, not a CuPy emulator.

Importing this module changes nothing: autograd learns ``StrictArray`` only when the stand-in
suite runs (``python3 -m pytest --standin``, see ``tests/conftest.py``), which calls
``refflow.autograd_ext.register_array_type(StrictArray)`` and so installs refflow's autograd
extension for that process alone. Tests that use it carry ``@pytest.mark.standin``.
"""

from __future__ import annotations

import numpy
from autograd.tracer import isbox


class StrictLeak(TypeError):
    """A NumPy array met a device array: on CuPy this would be an error."""


def _unwrap(x, where):
    if isinstance(x, StrictArray):
        return x.data
    if isinstance(x, numpy.ndarray):
        if x.ndim == 0 and x.dtype.kind in "biuf":
            raise StrictLeak(f"0-d numpy array mixed with a device array in {where}")
        raise StrictLeak(f"numpy array of shape {x.shape} mixed with a device array in {where}")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, where) for k, v in x.items()}
    return x


def _wrap(x):
    # CuPy reductions give 0-d device arrays, never host scalars
    if isinstance(x, (numpy.ndarray, numpy.generic)):
        return StrictArray(numpy.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class StrictArray:
    """A device-like array: NumPy can compute with it but never silently convert it."""

    __array_priority__ = 100

    def __init__(self, data):
        if isinstance(data, StrictArray):
            data = data.data
        self.data = numpy.asarray(data)

    # --- what CuPy refuses
    def __array__(self, dtype=None, copy=None):
        raise StrictLeak("implicit conversion of a device array to numpy (use .get())")

    def __float__(self):
        if self.data.size != 1:
            raise TypeError("only size-1 arrays can be converted to Python scalars")
        return float(self.data.reshape(()))

    def __int__(self):
        return int(self.data.reshape(()))

    def __bool__(self):
        return bool(self.data)

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        for i in range(len(self.data)):
            yield StrictArray(self.data[i])

    def get(self):
        """Copy to host, as ``cupy.ndarray.get``."""
        return self.data.copy()

    def item(self):
        return self.data.item()

    # --- dispatch
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if any(isbox(x) for x in inputs):
            return NotImplemented  # as CuPy does: the autograd Box handles the operation
        where = f"{ufunc.__name__}.{method}"
        if method == "at":  # CuPy accepts host integer arrays as indices, as here
            args = (_unwrap(inputs[0], where), _index(inputs[1])) + _unwrap(inputs[2:], where)
        else:
            args = _unwrap(inputs, where)
        out = kwargs.pop("out", None)
        kwargs = _unwrap(kwargs, where)
        if out is not None:
            kwargs["out"] = tuple(o.data for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if method == "at":
            return None
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        if any(isbox(x) for x in args):
            return NotImplemented
        where = func.__name__
        return _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))

    # --- array attributes
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    T = property(lambda self: StrictArray(self.data.T))
    mT = property(lambda self: StrictArray(numpy.swapaxes(self.data, -1, -2)))

    def __repr__(self):
        return f"StrictArray({self.data!r})"

    def __getitem__(self, idx):
        return _wrap(self.data[_index(idx)])

    def __setitem__(self, idx, value):
        self.data[_index(idx)] = _unwrap(value, "__setitem__")

    def astype(self, dtype, copy=True):
        return StrictArray(self.data.astype(dtype, copy=copy))

    def copy(self):
        return StrictArray(self.data.copy())

    def reshape(self, *shape, **kw):
        return StrictArray(self.data.reshape(*shape, **kw))

    def transpose(self, *axes):
        return StrictArray(self.data.transpose(*axes))

    def swapaxes(self, a, b):
        return StrictArray(self.data.swapaxes(a, b))

    def ravel(self):
        return StrictArray(self.data.ravel())

    def squeeze(self, axis=None):
        return StrictArray(self.data.squeeze(axis))

    def sum(self, *a, **k):
        return numpy.sum(self, *a, **k)

    def mean(self, *a, **k):
        return numpy.mean(self, *a, **k)

    def max(self, *a, **k):
        return numpy.max(self, *a, **k)

    def min(self, *a, **k):
        return numpy.min(self, *a, **k)

    def any(self, *a, **k):
        return numpy.any(self, *a, **k)

    def all(self, *a, **k):
        return numpy.all(self, *a, **k)

    def dot(self, other):
        return numpy.dot(self, other)

    def view(self, dtype):
        if dtype is numpy.ndarray:
            raise StrictLeak(".view(numpy.ndarray) on a device array (CuPy reads it as a dtype)")
        return StrictArray(self.data.view(dtype))


def _binary(name):
    ufunc = getattr(numpy, name)

    def op(self, other):
        return ufunc(self, other)

    def rop(self, other):
        return ufunc(other, self)

    return op, rop


for _name, _dunder in [
    ("add", "add"), ("subtract", "sub"), ("multiply", "mul"), ("true_divide", "truediv"),
    ("power", "pow"), ("matmul", "matmul"), ("floor_divide", "floordiv"), ("mod", "mod"),
]:
    _op, _rop = _binary(_name)
    setattr(StrictArray, f"__{_dunder}__", _op)
    setattr(StrictArray, f"__r{_dunder}__", _rop)

for _name, _dunder in [
    ("less", "lt"), ("less_equal", "le"), ("greater", "gt"), ("greater_equal", "ge"),
    ("equal", "eq"), ("not_equal", "ne"), ("logical_and", "and"), ("logical_or", "or"),
]:
    setattr(StrictArray, f"__{_dunder}__", _binary(_name)[0])
StrictArray.__hash__ = None
StrictArray.__neg__ = lambda self: numpy.negative(self)
StrictArray.__pos__ = lambda self: self
StrictArray.__abs__ = lambda self: numpy.absolute(self)
StrictArray.__invert__ = lambda self: numpy.invert(self)


def _index(idx):
    if isinstance(idx, StrictArray):
        return idx.data
    if isinstance(idx, tuple):
        return tuple(_index(i) for i in idx)
    return idx


def strict(x):
    """Wrap a host array (or leave non-arrays alone)."""
    if isinstance(x, numpy.ndarray):
        return StrictArray(x)
    return x
