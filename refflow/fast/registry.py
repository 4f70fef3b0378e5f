r"""The fast layer's registry: reference functions marked replaceable, kernels that replace them.

A reference module marks a function once, visibly, with ``@replaceable("name")``; its body
stays the definition. A kernel module registers a fused replacement for that name and one
array backend with ``@kernel("name", "numpy")``. At call time the dispatcher runs the kernel
when the fast layer is enabled and a kernel exists for the backend of the call's arrays, and
the reference otherwise (the strict test stand-in, for instance, has no kernel and always runs
the reference). This is the only place that branches on the fast layer.

The switch is a context variable: ``enabled(flag)`` holds for the current thread (and for the
threads of a batch split, which copy the caller's context); ``set_enabled`` changes it for the
current context; ``REFFLOW_FAST=0|1`` sets the default of every new thread. Default: on.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from autograd.tracer import Box

__all__ = [
    "replaceable",
    "kernel",
    "enabled",
    "set_enabled",
    "is_enabled",
    "enabled_from_env",
    "references",
    "replaceables",
    "kernels",
    "array_backend",
]


def enabled_from_env(environ: Any = None) -> bool:
    """The default of the switch from ``REFFLOW_FAST`` (unset or empty: on).

    Raises ``ValueError`` naming ``REFFLOW_FAST`` unless it is 0 or 1.
    """
    value = (os.environ if environ is None else environ).get("REFFLOW_FAST", "").strip()
    if value in ("", "1"):
        return True
    if value == "0":
        return False
    raise ValueError(f"REFFLOW_FAST: expected 0 or 1, got {value!r}")


_DEFAULT: bool = enabled_from_env()
_enabled: ContextVar[bool] = ContextVar("refflow_fast", default=_DEFAULT)
_references: dict[str, Callable] = {}
_replaceables: dict[str, Callable] = {}
_kernels: dict[str, dict[str, Callable]] = {}
# the backend of an array type, learnt from ``array_backend`` at its first call: the dispatch
# of a call whose first argument is a NumPy array (or a Box of one) is then two dict lookups
_TYPE_BACKEND: dict[type, str | None] = {}
_UNSEEN = object()
_loaded: list[bool] = [False]



def is_enabled() -> bool:
    """True when replaceable functions run their kernels (where one exists)."""
    return _enabled.get()


def set_enabled(flag: bool) -> None:
    """Turn the fast layer on or off for the current context (thread)."""
    if not isinstance(flag, bool):
        raise ValueError(f"flag: expected True or False, got {flag!r}")
    _enabled.set(flag)


@contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """Run a block with the fast layer on (``True``) or off (``False``), then restore."""
    if not isinstance(flag, bool):
        raise ValueError(f"flag: expected True or False, got {flag!r}")
    token = _enabled.set(flag)
    try:
        yield
    finally:
        _enabled.reset(token)


def array_backend(args: tuple) -> str | None:
    """``"numpy"`` or ``"cupy"`` for the first array among ``args``; None for other types."""
    for value in args:
        while isinstance(value, Box):
            value = value._value
        if not hasattr(value, "shape"):
            continue
        kind = type(value)
        module = kind.__module__
        backend = ("numpy" if module == "numpy" else
                   "cupy" if module.startswith("cupy") else None)
        _TYPE_BACKEND[kind] = backend
        return backend
    return "numpy"


def _load_kernels() -> None:
    # every module of refflow.fast but this one registers kernels; they are imported at the
    # first dispatch, not with the package, so that they may import the reference modules
    if not _loaded[0]:
        _loaded[0] = True
        package = importlib.import_module("refflow.fast")
        for info in pkgutil.iter_modules(package.__path__):
            if info.name != "registry":
                importlib.import_module(f"refflow.fast.{info.name}")


def replaceable(name: str) -> Callable[[Callable], Callable]:
    """Mark a reference function as replaceable by a kernel registered under ``name``.

    The returned function has the reference's signature and docstring, and keeps the
    reference itself as its ``reference`` attribute.
    """

    def mark(reference: Callable) -> Callable:
        if name in _references:
            raise ValueError(f"name: {name!r} is already marked replaceable")
        _references[name] = reference

        @functools.wraps(reference)
        def dispatch(*args, **kwargs):
            if _enabled.get():
                if not _loaded[0]:
                    _load_kernels()
                table = _kernels.get(name)
                if table:
                    # builtins only: this runs at every call of every replaceable function
                    first = args[0] if args else None
                    if isinstance(first, Box):
                        first = first._value
                    backend = _TYPE_BACKEND.get(type(first), _UNSEEN)
                    if backend is _UNSEEN:
                        backend = array_backend(args)
                    fast = table.get(backend)
                    if fast is not None:
                        return fast(*args, **kwargs)
            return reference(*args, **kwargs)

        dispatch.reference = reference
        dispatch.replaceable_name = name
        _replaceables[name] = dispatch
        return dispatch

    return mark


def kernel(name: str, backend: str = "numpy") -> Callable[[Callable], Callable]:
    """Register a kernel as the replacement of the reference function ``name`` on ``backend``.

    The kernel takes the reference's arguments and returns what it returns (same shapes and
    dtypes, the same values up to rounding, the same gradients).
    """
    if backend not in ("numpy", "cupy"):
        raise ValueError(f"backend: expected 'numpy' or 'cupy', got {backend!r}")

    def register(fast: Callable) -> Callable:
        _kernels.setdefault(name, {})[backend] = fast
        return fast

    return register


def references() -> dict[str, Callable]:
    """Every replaceable reference function, by name."""
    return dict(_references)


def replaceables() -> dict[str, Callable]:
    """Every replaceable function as its modules export it (the dispatcher), by name."""
    return dict(_replaceables)


def kernels() -> dict[str, dict[str, Callable]]:
    """Every registered kernel: name -> backend -> kernel (loads the kernel modules)."""
    _load_kernels()
    return {name: dict(table) for name, table in _kernels.items()}
