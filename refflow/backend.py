r"""The array backend: NumPy (default) or CuPy; array creation and random numbers.

This is the only module of refflow, with ``refflow.autograd_ext`` and ``refflow.parallel``,
that imports ``numpy`` (or ``cupy``) directly. Model code is written once with
``import autograd.numpy as np``; NumPy forwards a call on a CuPy array to CuPy through
``__array_ufunc__`` / ``__array_function__``, so the same code runs on the GPU. What this
module holds:

1. the choice of backend (``set_backend("cupy")`` or ``REFFLOW_BACKEND=cupy``);
2. array creation on the current backend (``asarray``, ``zeros``, ``eye_like``, ...);
3. seeded random numbers (``rng(seed)``) drawing arrays of the current backend;
4. what counts as an array (``is_array``, ``is_traced``).

autograd is taught non-NumPy array types by ``refflow.autograd_ext``, when one first comes
into use: ``set_backend("cupy")`` registers ``cupy.ndarray``, and so does ``is_array`` the
first time it meets a CuPy array (every input check of refflow reaches it). On NumPy,
autograd is left as installed. The batch split over threads lives in ``refflow.parallel``;
``set_threads``, ``get_threads``, ``threads_from_env``, ``map_batch`` and ``SPLIT_MIN_ROWS``
are still found here for one release, as are ``patches_installed`` and ``PATCHED`` (now
``refflow.autograd_ext.status`` and ``REPLACED``).

References
----------
1. D. Maclaurin, D. Duvenaud, M. Johnson, J. Townsend. Autograd (software), 2015-2024.
2. R. Okuta et al. CuPy: A NumPy-compatible library for NVIDIA GPU calculations.
   Workshop on ML Systems, NeurIPS, 2017.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy
from autograd.tracer import isbox

from refflow import autograd_ext
from refflow.autograd_ext import register_array_type

__all__ = [
    "BackendUnavailableError",
    "set_backend",
    "get_backend",
    "xp",
    "asarray",
    "to_numpy",
    "zeros",
    "ones",
    "full",
    "eye",
    "arange",
    "eye_like",
    "rng",
    "Generator",
    "is_traced",
    "is_array",
    "register_array_type",
]


class BackendUnavailableError(RuntimeError):
    """The requested array backend cannot run on this machine."""


_state: dict[str, Any] = {"name": "numpy", "xp": numpy}


def _load_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'cupy': CuPy is not installed. Install it with "
            "`pip install 'refflow[gpu]'` (cupy-cuda12x) on a machine with an NVIDIA GPU."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA raises its own error types when no driver is present
        raise BackendUnavailableError(
            f"backend 'cupy': CuPy is installed but no CUDA GPU is visible ({exc})."
        ) from exc
    if count < 1:
        raise BackendUnavailableError(
            "backend 'cupy': CuPy is installed but no CUDA GPU is visible."
        )
    return cupy


def set_backend(name: str) -> None:
    """Select the array backend: ``"numpy"`` (default) or ``"cupy"``.

    Raises ``BackendUnavailableError`` naming what is missing (CuPy, or a visible GPU).
    """
    if name == "numpy":
        _state.update(name="numpy", xp=numpy)
    elif name == "cupy":
        cupy = _load_cupy()
        register_array_type(cupy.ndarray)
        _state.update(name="cupy", xp=cupy)
    else:
        raise ValueError(f"name: expected 'numpy' or 'cupy', got {name!r}")


def get_backend() -> str:
    """The name of the current backend, ``"numpy"`` or ``"cupy"``."""
    return _state["name"]


def xp():
    """The array module of the current backend (for host-side setup code only)."""
    return _state["xp"]


def _dtype(dtype):
    return numpy.float64 if dtype is None else dtype


def is_traced(x: Any) -> bool:
    """True when ``x`` is an autograd Box, i.e. a value being differentiated."""
    return isbox(x)


def is_array(x: Any) -> bool:
    """True for arrays of any registered backend type (NumPy, CuPy, test stand-ins).

    The first CuPy array seen here registers ``cupy.ndarray`` with autograd
    (``refflow.autograd_ext``), so that it can be differentiated.
    """
    if isinstance(x, numpy.ndarray):
        return True
    kind = type(x)
    if kind in autograd_ext.registered_types():
        return True
    if kind.__module__.startswith("cupy") and kind.__name__ == "ndarray":
        register_array_type(kind)
        return True
    return False


def asarray(x: Any, dtype: Any = None):
    """``x`` as an array of the current backend; Python floats become float64.

    Integer and boolean arrays keep their dtype unless ``dtype`` is given.
    """
    if isinstance(x, (float, int, list, tuple)) and dtype is None:
        arr = numpy.asarray(x)
        dtype = numpy.float64 if arr.dtype.kind in "fc" or isinstance(x, float) else None
    if type(x) in autograd_ext.registered_types() and _state["name"] == "numpy":
        x = to_numpy(x)
    return _state["xp"].asarray(x, dtype=dtype)


def to_numpy(x: Any) -> numpy.ndarray:
    """A host NumPy copy of ``x`` (a CuPy array, a test stand-in, or anything array-like)."""
    if isbox(x):
        x = x._value
    if isinstance(x, numpy.ndarray):
        return x
    getter = getattr(x, "get", None)
    if callable(getter):
        return numpy.asarray(getter())
    return numpy.asarray(x)


def zeros(shape, dtype=None):
    """Zeros on the current backend (setup code; inside model code use ``zeros_like``)."""
    return _state["xp"].zeros(shape, dtype=_dtype(dtype))


def ones(shape, dtype=None):
    """Ones on the current backend (setup code)."""
    return _state["xp"].ones(shape, dtype=_dtype(dtype))


def full(shape, value, dtype=None):
    """A constant array on the current backend (setup code)."""
    return _state["xp"].full(shape, value, dtype=_dtype(dtype))


def eye(n: int, dtype=None):
    """The n x n identity on the current backend (setup code)."""
    return _state["xp"].eye(n, dtype=_dtype(dtype))


def arange(n: int, dtype=None):
    """0, 1, ..., n - 1 on the current backend; integer unless ``dtype`` is given."""
    return _state["xp"].arange(n, dtype=dtype)


def eye_like(x: Any, n: int | None = None, k: int = 0):
    """The n x n identity (ones on diagonal ``k``) with the array type and dtype of ``x``.

    Safe inside model code.
    Built from ``zeros_like`` and a broadcast comparison so that it never touches the host
    (``numpy.eye(..., like=x)`` fails for CuPy under NumPy 2).
    """
    if n is None:
        n = x.shape[-1]
    raw = x._value if isbox(x) else x
    while isbox(raw):
        raw = raw._value
    idx = numpy.cumsum(numpy.ones_like(raw, shape=(n,), dtype=numpy.int64)) - 1
    return (idx[:, None] + k == idx[None, :]).astype(raw.dtype)


class Generator:
    """A seeded random generator whose draws are arrays of the current backend.

    Continuous draws come from the device generator; permutations and integers are drawn on
    the host (small, setup-time arrays) and moved to the backend.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.host = numpy.random.default_rng(seed)
        if _state["name"] == "numpy":
            self._device = self.host
        else:
            self._device = _state["xp"].random.default_rng(
                int(self.host.integers(0, 2**63 - 1))
            )

    def standard_normal(self, size=None, dtype=None):
        """Independent N(0, 1) draws."""
        return self._device.standard_normal(size, dtype=_dtype(dtype))

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=None):
        """Independent N(loc, scale^2) draws."""
        return loc + scale * self.standard_normal(size, dtype)

    def random(self, size=None, dtype=None):
        """Independent Uniform[0, 1) draws."""
        return self._device.random(size, dtype=_dtype(dtype))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=None):
        """Independent Uniform[low, high) draws."""
        return low + (high - low) * self.random(size, dtype)

    def integers(self, low, high=None, size=None):
        """Integers in [low, high), as a backend array."""
        return asarray(self.host.integers(low, high, size))

    def permutation(self, n: int):
        """A random permutation of 0..n-1, as a backend integer array."""
        return asarray(self.host.permutation(n))

    def choice(self, n: int, size=None, replace: bool = True):
        """Indices drawn from 0..n-1, as a backend integer array."""
        return asarray(self.host.choice(n, size=size, replace=replace))

    def spawn(self) -> Generator:
        """An independent child generator (for reproducible sub-streams)."""
        return Generator(int(self.host.integers(0, 2**63 - 1)))


def rng(seed: int | None = None) -> Generator:
    """A seeded ``Generator`` drawing arrays of the current backend."""
    return Generator(seed)


# names that moved, kept here for one release: module -> (new name, old name)
_MOVED = {
    "set_threads": ("refflow.parallel", "set_threads"),
    "get_threads": ("refflow.parallel", "get_threads"),
    "threads_from_env": ("refflow.parallel", "threads_from_env"),
    "map_batch": ("refflow.parallel", "map_batch"),
    "SPLIT_MIN_ROWS": ("refflow.parallel", "SPLIT_MIN_ROWS"),
    "patches_installed": ("refflow.autograd_ext", "status"),
    "PATCHED": ("refflow.autograd_ext", "REPLACED"),
}


def __getattr__(name: str) -> Any:
    # resolved at each access, so the old names follow the new module's current values
    if name in _MOVED:
        module, new = _MOVED[name]
        return getattr(importlib.import_module(module), new)
    raise AttributeError(f"module 'refflow.backend' has no attribute {name!r}")


if os.environ.get("REFFLOW_BACKEND", "numpy").strip().lower() not in ("", "numpy"):
    set_backend(os.environ["REFFLOW_BACKEND"].strip().lower())
