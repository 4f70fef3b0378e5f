"""refflow: the readable reference implementation of normalizing flows.

Every construct of the lecture, from scratch in NumPy style, differentiated by autograd, and
running unchanged on the GPU through CuPy (``refflow.set_backend("cupy")``).
"""

from __future__ import annotations

import dataclasses
import importlib

from refflow import backend
from refflow.backend import set_backend

__version__ = "0.1.0"

# Lecture order; each module's __all__ is re-exported here.
_MODULES = (
    "linalg", "jacobian", "tree", "parallel", "distributions", "core", "affine", "elementwise",
    "solvers", "nn", "coupling", "glow", "autoregressive", "residual", "train", "workers",
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


def _tree_repr(self) -> str:
    from refflow.tree import describe

    return describe(self)


# print(flow) shows the tree of bijections with their static configuration, parameter shapes
# and counts (refflow.tree.describe), as torch and zuko print modules, instead of every
# parameter array; the arrays stay one attribute away.
for _public in tuple(__all__):
    _obj = globals()[_public]
    if isinstance(_obj, type) and dataclasses.is_dataclass(_obj):
        _obj.__repr__ = _tree_repr
