"""Inputs for the generated fast-layer tests: one case factory per replaceable function.

Each module of this package (one per kernel module of ``refflow.fast``) registers, for every
replaceable name it covers, a factory

    @case("name")
    def _(rng, dtype, variant): -> (args, kwargs, argnums)

``rng`` is a ``numpy.random.Generator``, ``dtype`` float64 or float32, ``variant`` one of
``VARIANTS`` ("generic": random interior inputs; "edge": the inputs where kernels go wrong:
bin edges, knots, tails, all-tail batches, operands broadcast on a non-leading axis).
``args``/``kwargs`` are host NumPy arguments of the reference function; ``argnums`` the
positions of the float arguments to differentiate. ``tests/test_fast.py`` runs every
(reference, kernel) pair on every case: values, autograd gradients, finite differences,
float32, the strict stand-in.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

VARIANTS = ("generic", "edge")

CASES: dict[str, Callable] = {}


def case(name: str) -> Callable[[Callable], Callable]:
    """Register the input factory of the replaceable function ``name``."""

    def register(factory: Callable) -> Callable:
        if name in CASES:
            raise ValueError(f"name: a case for {name!r} is already registered")
        CASES[name] = factory
        return factory

    return register


def load_all() -> dict[str, Callable]:
    """Import every case module of this package and return all registered factories."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(CASES)
