r"""Fused primitives with hand-written VJPs for the hot paths: dense layers and the affine update.

Each function here is one autograd primitive computing what a few lines of plain
``autograd.numpy`` compute, and is checked against them (``tests/test_fused.py``): the
plain version stays the definition, the primitive is the fast path. What fusing buys:

1. the VJP reuses the forward output: tanh'(a) = 1 - y^2 and relu'(a) = [y > 0], so the
   pre-activation is never kept and no second tanh is evaluated;
2. the gradient at the pre-activation, g * act'(a), is computed once and shared by the
   three input gradients (autograd's generic graph builds it and then unbroadcasts it for
   the bias with extra bookkeeping);
3. ``np.maximum(a, 0)``'s generic VJP (two comparisons, a balance term) becomes one
   multiplication by the mask y > 0 (docs/performance.md, cause 3);
4. a matmul with inner dimension 1 becomes a broadcast product (cause 4);
5. a MADE mask multiplies the weight once per call, and the weight gradient is masked;
6. a spline reads its bin's knots with a gather, O(1) per element instead of a one-hot
   product and sum over the K bins, and the gather's VJP is one one-hot product instead of
   autograd's scatter (``np.add.at``, cause 2);
7. sums and cumulative sums over a short last axis (a spline's K bins) become matrix
   products with a ones vector or an upper-triangular ones matrix, and a maximum over it
   K - 1 element-wise maxima: NumPy reduces a short last axis with a slow per-row loop
   (K = 8, float32, 131072 rows: sum 11 ms, cumsum 14 ms, max 23 ms; as products or
   maxima 0.5, 1.1 and 1.2 ms).

Every primitive preserves the dtype of its inputs (float32 stays float32: only Python
scalars appear in the arithmetic) and works on any array type NumPy dispatches to (CuPy,
the strict stand-in of the tests).

Notes
-----
Lecture: "Coupling flows" and "Autoregressive flows" (the conditioners Theta and the
affine transformer). With y = act(x W + b) and G = dL/dy:

.. math::

    \bar A = G \odot \mathrm{act}'(A), \qquad
    \frac{\partial L}{\partial x} = \bar A W^\top, \quad
    \frac{\partial L}{\partial W} = x^\top \bar A, \quad
    \frac{\partial L}{\partial b} = \textstyle\sum_n \bar A_n

and for the affine update x = z exp(s) + t: dL/dz = G exp(s), dL/ds = G (x - t),
dL/dt = G. Cost: the same O(N (D_in D_out)) as the plain layers, with fewer temporaries.

References
----------
1. D. Maclaurin, D. Duvenaud, M. Johnson, J. Townsend. Autograd (software), 2015-2024.

Examples
--------
>>> import numpy
>>> x, w, b = numpy.ones((2, 3)), numpy.full((3, 4), 0.5), numpy.zeros(4)
>>> dense(x, w, b, "tanh").round(4).tolist()[0]
[0.9051, 0.9051, 0.9051, 0.9051]
"""

from __future__ import annotations

from typing import Any

import autograd.numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import getval

__all__ = [
    "dense",
    "masked_dense",
    "affine_update",
    "take_bin",
    "bin_index",
    "sum_last",
    "cumsum_last",
    "max_last",
    "tanh_bound",
    "FUSED_ACTIVATIONS",
]


def _relu(a):
    return np.maximum(a, 0.0)


# name -> (activation, its derivative written with the output y = act(a))
_ACT: dict[str, tuple[Any, Any]] = {
    "tanh": (np.tanh, lambda y: 1.0 - y * y),
    "relu": (_relu, lambda y: y > 0),
    "identity": (None, None),
}
FUSED_ACTIVATIONS = tuple(_ACT)


def _linear(x, w, b):
    # BLAS is ~10x slower than a broadcast product when the inner dimension is 1
    return x * w[0] + b if w.shape[0] == 1 else x @ w + b


def _activate(a, activation: str):
    act = _ACT[activation][0]
    return a if act is None else act(a)


def _pre_activation_grad(g, y, activation: str):
    derivative = _ACT[activation][1]
    return g if derivative is None else g * derivative(y)


def _sum_to_shape(g, shape):
    """Sum g over the axes that broadcasting added to an operand of ``shape``."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1)
    return np.reshape(np.sum(g, axis=axes), shape) if axes else g


def _dense_grads(ga, x, w, argnums, b_shape=None):
    """Gradients (x, w, b) of x W + b from ga = dL/d(pre-activation), only those asked for.

    ``b_shape`` is the bias's shape when it is not (D_out,), e.g. one bias per sample.
    """
    grads = {}
    if 0 in argnums:
        grads[0] = np.sum(ga * w[0], axis=-1, keepdims=True) if w.shape[0] == 1 else ga @ w.T
    if 1 in argnums:
        # all leading axes are batch axes: fold them into one for a single matmul
        x2, ga2 = np.reshape(x, (-1, w.shape[0])), np.reshape(ga, (-1, w.shape[1]))
        grads[1] = x2.T @ ga2
    if 2 in argnums:
        if b_shape is None or len(b_shape) == 1:
            grads[2] = np.sum(np.reshape(ga, (-1, w.shape[1])), axis=0)
        else:
            grads[2] = _sum_to_shape(ga, b_shape)
    return grads


@primitive
def dense(x, w, b, activation: str = "identity"):
    """act(x W + b) for x (..., D_in), W (D_in, D_out), b (D_out,); act in ``FUSED_ACTIVATIONS``."""
    return _activate(_linear(x, w, b), activation)


def _dense_vjp(argnums, y, args, kwargs):
    x, w, b = args[0], args[1], args[2]
    activation = args[3] if len(args) > 3 else kwargs.get("activation", "identity")

    def vjp(g):
        ga = _pre_activation_grad(g, y, activation)
        grads = _dense_grads(ga, x, w, argnums, np.shape(b))
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(dense, _dense_vjp)


@primitive
def masked_dense(x, w, mask, b, activation: str = "identity"):
    """act(x (W * M) + b): a MADE layer; the mask M (D_in, D_out) cuts connections."""
    return _activate(_linear(x, w * mask, b), activation)


def _masked_dense_vjp(argnums, y, args, kwargs):
    x, w, mask, b = args[0], args[1], args[2], args[3]
    activation = args[4] if len(args) > 4 else kwargs.get("activation", "identity")
    # argument positions (x, w, mask, b) -> dense's (x, w, -, b); the mask is static
    wanted = {0: 0, 1: 1, 3: 2}

    def vjp(g):
        ga = _pre_activation_grad(g, y, activation)
        grads = _dense_grads(ga, x, w * mask, [wanted[i] for i in argnums if i in wanted],
                             np.shape(b))
        out = []
        for i in argnums:
            if i == 2:
                out.append(np.zeros_like(mask))
            elif i == 1:
                out.append(grads[1] * mask)
            else:
                out.append(grads[wanted[i]])
        return tuple(out)

    return vjp


defvjp_argnums(masked_dense, _masked_dense_vjp)


@primitive
def affine_update(z, s, t):
    """x = z * exp(s) + t, element-wise with broadcasting (RealNVP's and MAF's update)."""
    return z * np.exp(s) + t


def _unbroadcast(g, shape):
    """Sum g over the axes that broadcasting added or stretched, back to ``shape``."""
    while g.ndim > len(shape):
        g = np.sum(g, axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = np.sum(g, axis=axis, keepdims=True)
    return g


def _affine_update_vjp(argnums, x, args, kwargs):
    z, s, t = args

    def vjp(g):
        out = []
        for i in argnums:
            if i == 0:
                out.append(_unbroadcast(g * np.exp(s), np.shape(z)))
            elif i == 1:
                # d/ds (z e^s + t) = z e^s = x - t: no second exponential
                out.append(_unbroadcast(g * (x - t), np.shape(s)))
            else:
                out.append(_unbroadcast(g, np.shape(t)))
        return tuple(out)

    return vjp


defvjp_argnums(affine_update, _affine_update_vjp)


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
        return _unbroadcast(g[..., None] * (bins == index[..., None]), np.shape(table))

    return vjp


defvjp(take_bin, _take_bin_vjp)


def _rows(a):
    """a (..., K) as a matrix (rows, K), for one BLAS call over all leading axes."""
    return np.reshape(a, (-1, a.shape[-1]))


@primitive
def sum_last(a):
    """sum(a, axis=-1, keepdims=True), as a product with a ones vector (fast for short K)."""
    ones = np.ones_like(a, shape=(a.shape[-1], 1))
    return np.reshape(_rows(a) @ ones, a.shape[:-1] + (1,))


defvjp(sum_last, lambda ans, a: lambda g: g * np.ones_like(a))


def _upper_ones(a):
    k = a.shape[-1]
    return np.triu(np.ones_like(a, shape=(k, k)))  # U_ij = [i <= j]


@primitive
def cumsum_last(a):
    """cumsum(a, axis=-1), as the product a U with U_ij = [i <= j] (fast for short K)."""
    return np.reshape(_rows(a) @ _upper_ones(a), a.shape)


defvjp(cumsum_last, lambda ans, a: lambda g: np.reshape(_rows(g) @ _upper_ones(a).T, a.shape))


def max_last(a):
    """max(a, axis=-1, keepdims=True) as K - 1 element-wise maxima; no gradient (it serves
    as a stability shift, whose value does not change a softmax)."""
    raw = getval(a)
    m = raw[..., 0]
    for j in range(1, raw.shape[-1]):
        m = np.maximum(m, raw[..., j])
    return m[..., None]


@primitive
def tanh_bound(s, bound: float):
    """bound * tanh(s / bound): s near 0 unchanged, |result| < bound (a soft bound)."""
    return bound * np.tanh(s / bound)


# from the output y: d/ds = 1 - (y / bound)^2; autograd's tanh VJP divides by cosh^2 instead
defvjp(tanh_bound, lambda y, s, bound: lambda g: g * (1.0 - (y / bound) ** 2))
