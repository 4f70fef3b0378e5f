"""The registry of bijections: every public bijection registers one factory here.

A factory ``(rng, dim) -> Case`` owns all knowledge about its bijection: well-conditioned
parameters, the input domain, the tolerance. The generic suite (``test_properties.py``)
runs every registered case; it never asks for a case by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REGISTRY: dict[str, Callable[..., Case]] = {}


@dataclass
class Case:
    """One registered example of a bijection.

    bijection : the object under test.
    inputs : ``(rng, n) -> z`` in the forward domain (default: standard normal draws).
    event_shape : the event shape (default ``(dim,)``).
    atol, rtol : tolerances for round trips and log-dets (float64).
    fd_atol : tolerance for the finite-difference Jacobian comparisons.
    grad : whether parameter gradients are checked against finite differences.
    context_dim : C > 0 for a conditional bijection: the generic suite then passes a context
        of shape (N, C) to ``forward``/``inverse`` and checks every property at it.
    """

    bijection: Any
    inputs: Callable | None = None
    event_shape: tuple | None = None
    atol: float = 1e-8
    rtol: float = 1e-6
    fd_atol: float = 1e-5
    grad: bool = True
    context_dim: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class Entry:
    name: str
    factory: Callable
    min_dim: int = 1
    max_dim: int = 6


ENTRIES: dict[str, Entry] = {}


def example(name: str, min_dim: int = 1, max_dim: int = 6):
    """Register a factory ``(rng, dim) -> Case`` for the public bijection class ``name``."""

    def deco(factory):
        if name in ENTRIES:
            raise ValueError(f"{name} registered twice")
        ENTRIES[name] = Entry(name, factory, min_dim, max_dim)
        REGISTRY[name] = factory
        return factory

    return deco


def load_all() -> dict[str, Entry]:
    """Import every module of ``tests/families`` so that their factories register."""
    from tests import families

    for info in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f"tests.families.{info.name}")
    return ENTRIES
