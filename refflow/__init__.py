"""refflow: the readable reference implementation of normalizing flows.

Every construct of the lecture, from scratch in NumPy style, differentiated by autograd, and
running unchanged on the GPU through CuPy (``refflow.set_backend("cupy")``).
"""

from __future__ import annotations

import importlib

from refflow import backend
from refflow.backend import set_backend

__version__ = "0.1.0"

# Lecture order; each module's __all__ is re-exported here.
_MODULES = (
    "linalg", "jacobian", "tree", "parallel", "distributions", "core", "affine", "elementwise",
    "solvers", "nn", "coupling", "glow", "autoregressive", "residual", "train",
    "potentials", "datasets", "io", "testing",
)

__all__ = ["backend", "set_backend", "__version__"]
for _name in _MODULES:
    try:
        _module = importlib.import_module(f"refflow.{_name}")
    except ModuleNotFoundError as _exc:  # a family not written yet
        if _exc.name != f"refflow.{_name}":
            raise
        continue
    for _public in getattr(_module, "__all__", ()):
        globals()[_public] = getattr(_module, _public)
        __all__.append(_public)
