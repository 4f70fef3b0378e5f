r"""The fast layer: fused kernels that replace named reference functions, behind one switch.

The family modules (``refflow/elementwise.py``, ``coupling.py``, ...) hold the definitions;
a function there marked ``@replaceable("name")`` may be replaced, when the fast layer is on,
by a kernel registered here for that name and the array backend of the call. Every kernel is
tested against the function it replaces (``tests/test_fast.py``, generated from the registry).

Switch: ``refflow.fast.enabled(False)`` (a context manager), ``set_enabled``, ``is_enabled``,
or ``REFFLOW_FAST=0`` in the environment; on by default.
"""

from refflow.fast.registry import (
    enabled,
    is_enabled,
    kernel,
    kernels,
    references,
    replaceable,
    replaceables,
    set_enabled,
)

__all__ = [
    "enabled",
    "set_enabled",
    "is_enabled",
    "replaceable",
    "kernel",
    "kernels",
    "references",
    "replaceables",
]
