r"""Primitives over a short last axis (a spline's K bins), for the kernels of the fast layer.

NumPy reduces a short last axis with a per-row loop, slow for short rows (timings in
docs/performance.md), so sums and cumulative sums become matrix products with a ones
vector or an upper-triangular ones matrix, and a maximum K - 1 element-wise maxima. A
gather of one entry per row (``take_bin``) has a one-hot product as its VJP instead of
autograd's scatter (``np.add.at``). Each is checked against the NumPy reduction it
replaces (``tests/test_fast.py``).

Notes
-----
Lecture: Constructing flows, "Splines" (the knots are cumulative sums of the bin sizes).
For a (rows, K) matrix A: sum = A 1, cumsum = A U with U_ij = [i <= j] (exclusive:
[i < j]); the VJPs are G 1^T and G U^T. Cost O(rows K) and O(rows K^2).
"""

from __future__ import annotations

import math

import autograd.numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

__all__ = ["unbroadcast", "bin_index", "take_bin", "sum_last", "cumsum_last", "max_last"]


def unbroadcast(g, shape):
    """Sum g over the axes that broadcasting added or stretched, back to ``shape``."""
    while g.ndim > len(shape):
        g = np.sum(g, axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = np.sum(g, axis=axis, keepdims=True)
    return g


def bin_index(v, knots):
    """k with knots_k <= v < knots_{k+1}, for v (...,) and knots (..., K + 1) covering v.

    v has passed interior knot k iff v >= knots_k, so the count of passed interior knots is
    the bin; v on the right end goes to the last bin. Comparisons carry no gradient.
    """
    raw_v, raw_knots = getval(v), getval(knots)
    passed = raw_v[..., None] >= raw_knots[..., 1:-1]  # (..., K - 1)
    return sum_last(passed.astype(raw_v.dtype))[..., 0].astype("int64")


@primitive
def take_bin(table, index):
    """table[..., index] per element: table (..., K + 1), integer index (...,); the leading
    axes of the table broadcast against those of the index."""
    lead = (1,) * (index.ndim + 1 - table.ndim)
    return np.take_along_axis(np.reshape(table, lead + table.shape), index[..., None], -1)[..., 0]


def _take_bin_vjp(ans, table, index):
    def vjp(g):
        # the bin numbers 0..K as a small vector of the table's own array type
        bins = np.cumsum(np.ones_like(table[(0,) * (table.ndim - 1)])) - 1.0  # (K + 1,)
        return unbroadcast(g[..., None] * (bins == index[..., None]), np.shape(table))

    return vjp


defvjp(take_bin, _take_bin_vjp)


def _rows(a):
    """a (..., K) as a matrix (rows, K), for one BLAS call over all leading axes."""
    # the row count written out: -1 is ambiguous when K = 0 (a one-bin spline's interior)
    return np.reshape(a, (math.prod(a.shape[:-1]), a.shape[-1]))


@primitive
def sum_last(a):
    """sum(a, axis=-1, keepdims=True), as a product with a ones vector (fast for short K)."""
    ones = np.ones_like(a, shape=(a.shape[-1], 1))
    return np.reshape(_rows(a) @ ones, a.shape[:-1] + (1,))


defvjp(sum_last, lambda ans, a: lambda g: g * np.ones_like(a))


def _upper_ones(a, exclusive: bool):
    k = a.shape[-1]
    # U_ij = [i <= j], or [i < j] for the exclusive sum
    return np.triu(np.ones_like(a, shape=(k, k)), 1 if exclusive else 0)


@primitive
def cumsum_last(a, exclusive: bool = False):
    """cumsum(a, axis=-1), as the product a U with U_ij = [i <= j] (fast for short K); with
    ``exclusive``, entry k is the sum of the entries before k (U_ij = [i < j])."""
    return np.reshape(_rows(a) @ _upper_ones(a, exclusive), a.shape)


defvjp(cumsum_last, lambda ans, a, exclusive=False: lambda g: np.reshape(
    _rows(g) @ _upper_ones(a, exclusive).T, a.shape))


def max_last(a):
    """max(a, axis=-1, keepdims=True) as K - 1 element-wise maxima; no gradient (it serves
    as a stability shift, whose value does not change a softmax)."""
    raw = getval(a)
    m = raw[..., 0]
    for j in range(1, raw.shape[-1]):
        m = np.maximum(m, raw[..., j])
    return m[..., None]


