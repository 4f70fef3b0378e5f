"""pytest's collection at the repository root: modules that need an optional library.

``--doctest-modules`` imports every module under ``refflow/`` and ``tests/`` to look for
doctests. The verifier's catalog adapters (``refflow/testing/catalog/_LIB.py``) and the
peer-only test files (``tests/interop/peers_*.py``, run explicitly) import their library at
the top, so they are left out of the collection where that library is not installed (the
README's test command installs torch, zuko and nflows, not the other peers).
"""

from __future__ import annotations

import importlib.util

_NEEDS = {
    "refflow/testing/catalog/_torch.py": ("torch",),
    "refflow/testing/catalog/_zuko.py": ("torch", "zuko"),
    "refflow/testing/catalog/_nflows.py": ("torch", "nflows"),
    "refflow/testing/catalog/_normflows.py": ("torch", "normflows"),
    "refflow/testing/catalog/_pyro.py": ("torch", "pyro"),
    "refflow/testing/catalog/_flowjax.py": ("jax", "equinox", "flowjax"),
    "tests/interop/peers_jax.py": ("jax",),
    "tests/interop/peers_catalog.py": ("torch", "normflows", "pyro", "jax", "flowjax"),
}

collect_ignore = [path for path, modules in _NEEDS.items()
                  if any(importlib.util.find_spec(m) is None for m in modules)]
