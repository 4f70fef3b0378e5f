"""Inputs for the generated fast-layer tests: one case factory per replaceable function.

Each module of this package (one per kernel module of ``refflow.fast``) registers, for every
replaceable name it covers, a factory

    @case("name")
    def _(rng, dtype, variant): -> (args, kwargs, argnums)

``rng`` is a ``numpy.random.Generator``, ``dtype`` float64 or float32, ``variant`` one of
``VARIANTS`` ("generic": random interior inputs; "edge": the inputs where kernels go wrong:
bin edges, knots, tails, all-tail batches, operands broadcast on a non-leading axis), or of
the variants the case names itself (``@case("dense", variants=("tanh", "relu", ...))``).
Variants listed in ``kinked`` put inputs on kinks of the function (a spline's knots), where
central finite differences are no check; every other test still runs on them.
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
# name -> (its variants, the variants whose inputs sit on kinks)
VARIANTS_OF: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def case(name: str, variants: tuple[str, ...] = VARIANTS,
         kinked: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register the input factory of the replaceable function ``name``."""
    if not set(kinked) <= set(variants):
        raise ValueError(f"kinked: expected a subset of {variants}, got {kinked}")

    def register(factory: Callable) -> Callable:
        if name in CASES:
            raise ValueError(f"name: a case for {name!r} is already registered")
        CASES[name] = factory
        VARIANTS_OF[name] = (tuple(variants), tuple(kinked))
        return factory

    return register


def load_all() -> dict[str, Callable]:
    """Import every case module of this package and return all registered factories."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(CASES)
