r"""Deprecated: the old home of the fused primitives, kept as aliases for one release.

The kernels now live in the fast layer, ``refflow.fast`` (``refflow.fast.nn``,
``refflow.fast.spline``, ``refflow.fast.lastaxis``, ``refflow.fast.coupling``,
``refflow.fast.autoregressive``), each registered as the replacement of one named
reference function and switched by ``refflow.fast.enabled``. The names below keep working;
new code imports from ``refflow.fast`` or calls the reference functions, which dispatch.

Examples
--------
>>> import numpy
>>> x, w, b = numpy.ones((2, 3)), numpy.full((3, 4), 0.5), numpy.zeros(4)
>>> dense(x, w, b, "tanh").round(4).tolist()[0]
[0.9051, 0.9051, 0.9051, 0.9051]
"""

from __future__ import annotations

from refflow.fast.autoregressive import affine_log_det, affine_transformer
from refflow.fast.coupling import affine_coupling, affine_coupling_log_det, tanh_bound
from refflow.fast.lastaxis import bin_index, cumsum_last, max_last, sum_last, take_bin
from refflow.fast.nn import FUSED_ACTIVATIONS
from refflow.fast.nn import fused_dense as dense
from refflow.fast.nn import fused_masked_dense as masked_dense
from refflow.fast.spline import (
    rational_quadratic_spline,
    spline_bin_index,
    spline_bins,
    spline_slopes,
)

__all__ = [
    "dense",
    "masked_dense",
    "take_bin",
    "bin_index",
    "sum_last",
    "cumsum_last",
    "max_last",
    "tanh_bound",
    "spline_bins",
    "spline_slopes",
    "rational_quadratic_spline",
    "spline_bin_index",
    "affine_transformer",
    "affine_log_det",
    "affine_coupling",
    "affine_coupling_log_det",
    "FUSED_ACTIVATIONS",
]
