r"""A flow as a flat list of parameter arrays, and back: what autograd differentiates.

``partition(flow) -> (leaves, rebuild)`` walks the dataclasses of a flow. Array fields are
parameters; fields marked ``field(metadata={"static": True})`` and non-array values (ints,
strings, None) are configuration. A constrained field declares its constraint once in its
metadata, ``field(metadata={"constraint": "positive"})``: the leaf handed to autograd is then
unconstrained (the log of a positive scale) and ``rebuild`` maps it back, so no gradient step
can produce an invalid bijection. A class with a joint constraint defines
``to_unconstrained(self)`` and ``from_unconstrained(theta, **static)`` instead.

``rebuild`` creates the objects without calling their constructors, so no validation (no
Python condition) ever runs on a traced value; bijections hold no derived state, so nothing
else needs recomputing.

>>> import numpy
>>> from refflow.affine import Diagonal
>>> d = Diagonal(scale=numpy.array([2.0, 0.5]), shift=numpy.array([0.0, 1.0]))
>>> leaves, rebuild = partition(d)
>>> [l.round(4).tolist() for l in leaves]      # log(scale) and shift
[[0.6931, -0.6931], [0.0, 1.0]]
>>> rebuild(leaves).scale.tolist()
[2.0, 0.5]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import autograd.numpy as np

from refflow.backend import eye_like, is_array, is_traced, zeros
from refflow.ops import segment

__all__ = ["partition", "ravel_leaves", "map_arrays", "count_parameters", "describe",
           "CONSTRAINTS", "is_static_field"]


def _unit_lower(u):
    return np.tril(u, -1) + eye_like(u)


# name -> (natural -> unconstrained, unconstrained -> natural)
CONSTRAINTS: dict[str, tuple[Callable, Callable]] = {
    "real": (lambda x: x, lambda u: u),
    "positive": (np.log, np.exp),
    "unit_lower": (lambda x: x, _unit_lower),
    "lower": (lambda x: x, lambda u: np.tril(u)),
    "upper": (lambda x: x, lambda u: np.triu(u)),
    "strict_upper": (lambda x: x, lambda u: np.triu(u, 1)),
}


def _is_array(x: Any) -> bool:
    return is_array(x) or is_traced(x)


def is_static_field(f: dataclasses.Field, value: Any) -> bool:
    """A field is configuration when marked static or when it holds no array or module."""
    if f.metadata.get("static", False):
        return True
    return not (_is_array(value) or dataclasses.is_dataclass(value)
                or isinstance(value, (tuple, list)))


def _flatten(obj: Any, leaves: list) -> Any:
    if _is_array(obj):
        leaves.append(obj)
        return ("leaf", "real")
    if isinstance(obj, (tuple, list)):
        return ("seq", type(obj), [_flatten(v, leaves) for v in obj])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_unconstrained") and hasattr(type(obj), "from_unconstrained"):
            static = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                      if f.metadata.get("static", False)}
            leaves.append(obj.to_unconstrained())
            return ("joint", type(obj), static)
        spec = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if is_static_field(f, value):
                spec.append((f.name, ("static", value)))
            elif _is_array(value):
                name = f.metadata.get("constraint", "real")
                leaves.append(CONSTRAINTS[name][0](value))
                spec.append((f.name, ("leaf", name)))
            else:
                spec.append((f.name, _flatten(value, leaves)))
        return ("dataclass", type(obj), spec)
    return ("static", obj)


def _unflatten(spec: Any, leaves) -> Any:
    kind = spec[0]
    if kind == "leaf":
        return CONSTRAINTS[spec[1]][1](next(leaves))
    if kind == "static":
        return spec[1]
    if kind == "seq":
        return spec[1](_unflatten(s, leaves) for s in spec[2])
    if kind == "joint":
        return spec[1].from_unconstrained(next(leaves), **spec[2])
    obj = object.__new__(spec[1])
    for name, sub in spec[2]:
        object.__setattr__(obj, name, _unflatten(sub, leaves))
    return obj


def partition(obj: Any) -> tuple[list, Callable[[list], Any]]:
    """Split a flow into its unconstrained parameter arrays and a function rebuilding it.

    Parameters
    ----------
    obj : a bijection, a ``Flow``, a distribution, a network, or a tuple of them.

    Returns
    -------
    leaves : list of arrays, the unconstrained parameters (what autograd differentiates).
    rebuild : callable, ``rebuild(leaves)`` returns an object of the same structure whose
        parameters are the constrained images of ``leaves``.
    """
    leaves: list = []
    spec = _flatten(obj, leaves)

    def rebuild(new_leaves):
        it = iter(new_leaves)
        out = _unflatten(spec, it)
        if next(it, None) is not None:
            raise ValueError("leaves: more arrays than the structure has parameters")
        return out

    return leaves, rebuild


def ravel_leaves(leaves: list) -> tuple[Any, Callable[[Any], list]]:
    """One vector v = (ravel(leaf_1), ..., ravel(leaf_n)) of a list of arrays, and its inverse.

    ``unravel(v)`` cuts any vector of that layout into arrays of the leaves' shapes and
    dtypes, differentiably. Training differentiates ``loss(rebuild(unravel(v)))`` with
    respect to v: autograd then builds the vector space of one array, where a list of n
    leaves costs it the space of the whole list once per leaf taken (n^2 work).

    Examples
    --------
    >>> import numpy
    >>> v, unravel = ravel_leaves([numpy.ones((2, 2)), numpy.arange(3.0)])
    >>> v.tolist(), [a.shape for a in unravel(2 * v)]
    ([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0], [(2, 2), (3,)])
    """
    layout, start = [], 0
    for leaf in leaves:
        layout.append((start, start + leaf.size, leaf.shape, leaf.dtype))
        start += leaf.size
    vector = np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else zeros(0)

    def unravel(v):
        # one autograd node per leaf (a cast only where the leaves' dtypes differ)
        return [segment(v, lo, hi, shape) if v.dtype == dtype
                else segment(v, lo, hi, shape).astype(dtype)
                for lo, hi, shape, dtype in layout]

    return vector, unravel


def map_arrays(fn: Callable[[Any], Any], obj: Any) -> Any:
    """Apply ``fn`` to every array inside ``obj``, static ones (masks, orders) included.

    Used to move a flow between backends (``map_arrays(backend.asarray, flow)``) and by the
    tests to wrap a flow in the strict stand-in array type.
    """
    if _is_array(obj):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_arrays(fn, v) for v in obj)
    if isinstance(obj, dict):
        return {k: map_arrays(fn, v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        new = object.__new__(type(obj))
        for f in dataclasses.fields(obj):
            object.__setattr__(new, f.name, map_arrays(fn, getattr(obj, f.name)))
        return new
    return obj


def count_parameters(obj: Any) -> int:
    """The number of scalar parameters (the sizes of the unconstrained leaves)."""
    leaves, _ = partition(obj)
    return int(sum(int(np.size(leaf)) for leaf in leaves))


def _shape_text(x: Any) -> str:
    value = getattr(x, "_value", x)
    return f"{value.dtype}{list(value.shape)}"


def _static_text(value: Any, width: int = 48) -> str:
    text = _shape_text(value) if _is_array(value) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_module(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _describe(obj: Any, label: str, depth: int, lines: list) -> None:
    pad = "  " * depth
    head = f"{pad}{label}{type(obj).__name__}"
    count = count_parameters(obj)
    if count:
        head += f"  ({count:,} parameters)"
    children = []
    config = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        items = value if isinstance(value, (tuple, list)) else None
        static = f.metadata.get("static", False)
        if _is_module(value) or (_is_array(value) and not static):
            children.append((f.name, value, static))
        elif items and any(_is_module(v) or _is_array(v) for v in items):
            children.extend((f"{f.name}[{i}]", v, static) for i, v in enumerate(items))
        else:
            config.append(f"{f.name}={_static_text(value)}")
    lines.append("  ".join([head, *config]))
    for name, value, static in children:
        if _is_module(value):
            _describe(value, f"{name}: ", depth + 1, lines)
        else:
            # a static array (a mask, an order) is configuration, not a parameter
            lines.append(f"{pad}  {name}: {_static_text(value)}{'  (static)' if static else ''}")


def describe(obj: Any) -> str:
    """A tree of the bijections in ``obj``: class names, static configuration, parameter shapes
    and counts (what ``print(flow)`` shows; the arrays themselves stay one attribute away).

    >>> import numpy
    >>> from refflow.affine import Diagonal
    >>> print(describe(Diagonal(numpy.array([2.0, 0.5]), numpy.array([0.0, 1.0]))))
    Diagonal  (4 parameters)
      scale: float64[2]
      shift: float64[2]
    """
    if not _is_module(obj):
        return _static_text(obj)
    lines: list[str] = []
    _describe(obj, "", 0, lines)
    return "\n".join(lines)
