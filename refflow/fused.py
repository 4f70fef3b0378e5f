r"""Fused primitives with hand-written VJPs for the hot paths: layers, affine updates, splines.

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
   maxima 0.5, 1.1 and 1.2 ms);
8. the rational-quadratic spline is three nodes instead of about seventy: the bin sizes
   (softmax), the knot slopes (softplus) and the spline itself, whose VJP is written from
   the partial derivatives of h and log h' in the bin (and for the inverse from the implicit
   function theorem: dz/dx = 1 / h'(z), dz/dtheta = -(dh/dtheta) / h'(z)). The bin search
   runs once, outside the differentiated part, and the six per-element reads of the bin's
   knots share one flat index. A batch-256 training step of a 3-layer spline MAF (D = 16)
   went from 41.5 to 25.5 ms (float32), log_prob at batch 8192 from 294 to 216 ms;
9. the affine updates of RealNVP (split, update, merge) and of MAF (x = z exp(alpha) + mu)
   are one node each, and their log-dets one more: about 17 nodes per coupling layer and 8
   per MAF layer before. The log-det is a separate primitive because a primitive returning
   a tuple costs two more nodes and a zero-filled tuple per output in the backward pass.

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

and for the affine update x = z exp(s) + t: dL/dz = G exp(s), dL/ds = G (x - t) (no
second exponential), dL/dt = G. Cost: the same O(N (D_in D_out)) as the plain layers,
with fewer temporaries.

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

import math
import threading
from typing import Any

import autograd.numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import getval

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


def _relu(a, out=None):
    return np.maximum(a, 0.0, out=out)


# name -> (activation with an ``out`` argument, its derivative written with the output
# y = act(a))
_ACT: dict[str, tuple[Any, Any]] = {
    "tanh": (np.tanh, lambda y: 1.0 - y * y),
    "relu": (_relu, lambda y: y > 0),
    "identity": (None, None),
}
FUSED_ACTIVATIONS = tuple(_ACT)


def _linear(x, w, b):
    # BLAS is ~10x slower than a broadcast product when the inner dimension is 1
    a = x * w[0] if w.shape[0] == 1 else x @ w
    # the product is a fresh array: the bias goes in place unless it would enlarge it
    if np.broadcast_shapes(a.shape, np.shape(b)) != a.shape:
        return a + b
    a += b
    return a


def _activate(a, activation: str):
    # a is the primitive's own temporary (from _linear), so the activation overwrites it
    act = _ACT[activation][0]
    return a if act is None else act(a, out=a)


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


def _unbroadcast(g, shape):
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


@primitive
def tanh_bound(s, bound: float):
    """bound * tanh(s / bound): s near 0 unchanged, |result| < bound (a soft bound)."""
    return bound * np.tanh(s / bound)


# from the output y: d/ds = 1 - (y / bound)^2; autograd's tanh VJP divides by cosh^2 instead
defvjp(tanh_bound, lambda y, s, bound: lambda g: g * (1.0 - (y / bound) ** 2))


# ------------------------------------------------------------------ rational-quadratic spline
# Inside these primitives the arrays are plain (never autograd boxes), so they update their
# own temporaries in place: at large batch each fresh array costs page faults as well as
# the arithmetic (docs/performance.md).


@primitive
def spline_bins(logits, total: float, minimum: float):
    """total * (minimum + (1 - K minimum) softmax(logits)): K bin sizes, each at least
    ``total * minimum``, summing to ``total``; softmax over the last axis (K = its length)."""
    k = logits.shape[-1]
    # a contiguous copy first (logits is a strided slice of theta): the K - 1 maxima of
    # max_last read it column by column, about 3x faster than from the strided slice
    e = np.copy(logits)
    e -= max_last(e)
    np.exp(e, out=e)
    e *= (total * (1.0 - k * minimum)) / sum_last(e)
    e += total * minimum
    return e


def _spline_bins_vjp(ans, logits, total, minimum):
    scale = total * (1.0 - logits.shape[-1] * minimum)

    def vjp(g):
        # softmax VJP: p (g - <g, p>), with p read back from the output (no second exp)
        p = (ans - total * minimum) / scale
        out = g - sum_last(g * p)
        out *= p
        out *= scale
        return out

    return vjp


defvjp(spline_bins, _spline_bins_vjp)


@primitive
def spline_slopes(t, minimum: float):
    """minimum + (1 - minimum) softplus(t) / log 2: knot derivatives > minimum, 1 at t = 0.

    softplus(t) = max(t, 0) + log1p(exp(-|t|)), with log1p(u) as log(1 + u) corrected by
    ((1 + u) - 1 - u) / (1 + u) (exact to rounding, and ~4x faster than NumPy's float32
    log1p, which has no vectorised loop).
    """
    u = np.abs(t)
    np.negative(u, out=u)
    np.exp(u, out=u)
    y = 1.0 + u
    correction = y - 1.0
    correction -= u
    correction /= y
    out = np.log(y)
    out -= correction
    out += np.maximum(t, 0.0)
    out *= (1.0 - minimum) / math.log(2.0)
    out += minimum
    return out


def _spline_slopes_vjp(ans, t, minimum):
    def vjp(g):
        # softplus' = sigmoid(t) = 1 - exp(-softplus(t)), softplus read back from the output
        softplus = (ans - minimum) * (-math.log(2.0) / (1.0 - minimum))
        out = np.expm1(softplus)
        out *= g * (-(1.0 - minimum) / math.log(2.0))
        return out

    return vjp


defvjp(spline_slopes, _spline_slopes_vjp)


def _spline_lead_shape(v, widths, heights, derivatives):
    return tuple(np.broadcast_shapes(np.shape(v), np.shape(widths)[:-1],
                                     np.shape(heights)[:-1], np.shape(derivatives)[:-1]))


def spline_bin_index(v, widths, heights, bound: float, inverse: bool = False):
    """The bin k (int64, the broadcast shape of v and the tables' leading axes) holding v,
    among the x-knots -B + sum_{j<k} widths_j (or the y-knots when ``inverse``); a value
    outside (-B, B) is searched as 0 (its output, the identity tail, ignores the bin; the
    spline maths stays finite). No gradient."""
    return _bin_of(getval(v), _knots_below(heights if inverse else widths, bound), bound)


def _knots_below(sizes, bound: float):
    """The knots -B + sum_{j<k} sizes_j, k = 0..K - 1, as RationalQuadraticSpline.knots
    computes them (so knots map to knots exactly in both paths). No gradient."""
    return cumsum_last(getval(sizes), True) - bound


def _bin_of(v, knots, bound: float):
    v_in = np.where((v > -bound) & (v < bound), v, 0.0)
    # v has passed interior knot j (1 .. K - 1) iff v >= knot j: their count is the bin
    passed = v_in[..., None] >= knots[..., 1:]
    return sum_last(passed.astype(v_in.dtype))[..., 0].astype("int64")


def _gather(table, flat, lead):
    """table[..., k] for every element, from the flat row-major index of (lead + (K,))."""
    rows = np.reshape(np.broadcast_to(table, lead + table.shape[-1:]), (-1,))
    return np.reshape(np.take(rows, flat), lead)


def _spline_bin(v, widths, heights, derivatives, k, knots_x, knots_y, bound: float):
    """Per element: (inside, v_in, x_k, w, y_k, h, d0, d1) of bin k; x_k and y_k are read
    from ``_knots_below`` (no knot table with its end knot is built)."""
    lead, bins = k.shape, widths.shape[-1]
    inside = (v > -bound) & (v < bound)
    v_in = np.where(inside, v, 0.0)
    # one flat index for all the gathers: row r of the (rows, K) view, column k_r
    row = np.reshape(np.cumsum(np.ones_like(k)), (-1,)) - 1
    k_flat = np.reshape(k, (-1,))
    flat = row * bins + k_flat
    w, h = _gather(widths, flat, lead), _gather(heights, flat, lead)
    x_k, y_k = _gather(knots_x, flat, lead), _gather(knots_y, flat, lead)
    # h'(x_k) = derivatives[k - 1], with slope 1 at both end knots (the identity tails)
    if bins == 1:
        d0 = d1 = np.ones_like(w)
    else:
        d0 = _gather(derivatives, row * (bins - 1) + np.maximum(k_flat - 1, 0), lead)
        d1 = _gather(derivatives, row * (bins - 1) + np.minimum(k_flat, bins - 2), lead)
        d0 = np.where(k > 0, d0, 1.0)
        d1 = np.where(k < bins - 1, d1, 1.0)
    return inside, v_in, x_k, w, y_k, h, d0, d1


def _spline_xi(v_in, x_k, w, y_k, h, d0, d1, inverse: bool):
    """xi = (z - x_k) / w in the bin; for the inverse, the root of the bin's quadratic."""
    if not inverse:
        return (v_in - x_k) / w
    s = h / w
    dy = v_in - y_k
    delta = d0 + d1 - 2.0 * s
    qa = h * (s - d0) + dy * delta
    qb = h * d0 - dy * delta
    qc = -s * dy
    return 2.0 * qc / (-qb - np.sqrt(np.maximum(qb * qb - 4.0 * qa * qc, 0.0)))


def rational_quadratic_spline(v, widths, heights, derivatives, bound: float,
                              inverse: bool = False):
    """(h(v), log h'(v)) of the rational-quadratic spline with identity tails outside (-B, B),
    or (h^{-1}(v), log h'(h^{-1}(v))) when ``inverse``; tables (..., K) and (..., K - 1)
    broadcast against v (...,). ``refflow.elementwise.RationalQuadraticSpline`` is the
    readable definition. The knots and the bin search are computed once, outside the
    differentiated part, and shared by the forward pass and the VJP (which differentiates
    the knots by hand)."""
    knots_x, knots_y = _knots_below(widths, bound), _knots_below(heights, bound)
    lead = _spline_lead_shape(v, widths, heights, derivatives)
    k = _bin_of(np.broadcast_to(getval(v), lead), knots_y if inverse else knots_x, bound)
    return _spline(v, widths, heights, derivatives, k, knots_x, knots_y, bound, inverse)


@primitive
def _spline(v, widths, heights, derivatives, k, knots_x, knots_y, bound, inverse):
    inside, v_in, x_k, w, y_k, h, d0, d1 = _spline_bin(
        np.broadcast_to(v, k.shape), widths, heights, derivatives, k, knots_x, knots_y, bound)
    xi = _spline_xi(v_in, x_k, w, y_k, h, d0, d1, inverse)
    s = h / w
    m = xi * (1.0 - xi)
    den = s + (d0 + d1 - 2.0 * s) * m
    num = d1 * xi * xi + 2.0 * s * m + d0 * (1.0 - xi) ** 2
    # one log of a product of bounded positive factors instead of three logs
    log_d = np.where(inside, np.log(s * s * num / (den * den)), 0.0)
    if inverse:
        return np.where(inside, x_k + xi * w, v), log_d
    return np.where(inside, y_k + h * (s * xi * xi + d0 * m) / den, v), log_d


def _spline_partials(xi, s, h, d0, d1, w, co, cl):
    """co * d(out) + cl * d(log h') with respect to (z, x_k, w, y_k, h, d0, d1), from
    out = y_k + h A / den and log h' = 2 log s + log num - 2 log den, A = s xi^2 + d0 m."""
    m = xi * (1.0 - xi)
    dm = 1.0 - 2.0 * xi
    c = d0 + d1 - 2.0 * s
    den = s + c * m
    a = s * xi * xi + d0 * m
    num = d1 * xi * xi + 2.0 * s * m + d0 * (1.0 - xi) ** 2
    ho = co * h / (den * den)          # out's partials share h / den^2
    ln, ld = cl / num, 2.0 * cl / den  # log h''s partials share 1 / num and 2 / den
    g_xi = (ho * ((2.0 * s * xi + d0 * dm) * den - a * c * dm)
            + ln * (2.0 * d1 * xi + 2.0 * s * dm - 2.0 * d0 * (1.0 - xi)) - ld * c * dm)
    g_s = ho * (xi * xi * den - a * (1.0 - 2.0 * m)) + 2.0 * cl / s + ln * 2.0 * m \
        - ld * (1.0 - 2.0 * m)
    g_d0 = ho * m * (den - a) + ln * (1.0 - xi) ** 2 - ld * m
    g_d1 = -ho * a * m + ln * xi * xi - ld * m
    # xi = (z - x_k) / w and s = h / w
    g_z = g_xi / w
    return (g_z, -g_z, -(g_z * xi + g_s * s / w), co, g_s / w + co * a / den, g_d0, g_d1)


def _scatter(at, below, g_here, g_before):
    """The gradient of a (..., K) table whose entry k is read directly (weight g_here) and
    whose entries j < k are summed into the knot (weight g_before)."""
    out = at * g_here[..., None]
    out += below * g_before[..., None]
    return out


def _spline_vjp(argnums, ans, args, kwargs):
    v, widths, heights, derivatives, k, knots_x, knots_y, bound, inverse = args

    def vjp(g):
        g_out, g_log = g
        inside, v_in, x_k, w, y_k, h, d0, d1 = _spline_bin(
            np.broadcast_to(v, k.shape), widths, heights, derivatives, k, knots_x, knots_y,
            bound)
        # for the inverse, xi from the quadratic again: (z - x_k) / w would cancel in float32
        xi = _spline_xi(v_in, x_k, w, y_k, h, d0, d1, inverse)
        s = h / w
        g_out_in = np.where(inside, g_out, 0.0)
        g_log = np.where(inside, g_log, 0.0)
        if inverse:
            # z = h^{-1}(x): dz/dx = 1 / h'(z), dz/dtheta = -(dh/dtheta) / h'(z); the log h'(z)
            # output adds g_log * d log h'/dz to the gradient at z
            g_z_total = g_out_in + g_log * _spline_partials(xi, s, h, d0, d1, w, 0.0, 1.0)[0]
            co = -g_z_total / np.exp(ans[1])
            g_v = np.where(inside, -co, g_out)
        else:
            co = g_out_in
        g_z, g_xk, g_w, g_yk, g_h, g_d0, g_d1 = _spline_partials(xi, s, h, d0, d1, w, co, g_log)
        if not inverse:
            g_v = np.where(inside, g_z, g_out)
        bins = widths.shape[-1]
        index = np.cumsum(np.ones_like(widths[(0,) * (widths.ndim - 1)])) - 1.0  # 0 .. K - 1
        kk = k[..., None]
        out = []
        for i in argnums:
            if i == 0:
                out.append(_unbroadcast(g_v, np.shape(v)))
            elif i in (1, 2):
                # x_k = -B + sum_{j<k} w_j: bin k's width directly, the ones below via x_k
                here, before = (g_w, g_xk) if i == 1 else (g_h, g_yk)
                out.append(_unbroadcast(_scatter(index == kk, index < kk, here, before),
                                        np.shape(args[i])))
            else:
                inner = index[:bins - 1]
                out.append(_unbroadcast(_scatter(inner == kk - 1, inner == kk, g_d0, g_d1),
                                        np.shape(derivatives)))
        return tuple(out)

    return vjp


defvjp_argnums(_spline, _spline_vjp)


# ------------------------------------------------------------------ affine transformers
# The update and its log-det are separate primitives: a primitive returning a tuple costs
# autograd two more nodes and a zero-filled tuple per output in the backward pass, more than
# the second pass over s or alpha that the split costs.


@primitive
def affine_transformer(v, theta, inverse: bool = False):
    """The MAF transformer with theta = (mu, alpha) packed as (..., D, 2): v exp(alpha) + mu,
    or (v - mu) exp(-alpha) when ``inverse``. ``refflow.autoregressive._LectureAffine``
    keeps the readable version; the log-det is ``affine_log_det``."""
    mu, alpha = theta[..., 0], theta[..., 1]
    if inverse:
        return (v - mu) * np.exp(-alpha)
    return v * np.exp(alpha) + mu


def _affine_transformer_vjp(argnums, ans, args, kwargs):
    v, theta = args[0], args[1]
    inverse = args[2] if len(args) > 2 else kwargs.get("inverse", False)

    def vjp(g):
        alpha = theta[..., 1]
        g_v = g * np.exp(-alpha if inverse else alpha)
        if inverse:
            # z = (x - mu) e^{-alpha}: dz/dmu = -e^{-alpha}, dz/dalpha = -z
            g_theta = _stack_pair(-g_v, -g * ans)
        else:
            # x = z e^{alpha} + mu: dx/dalpha = x - mu, no second exponential
            g_theta = _stack_pair(g, g * (ans - theta[..., 0]))
        grads = {0: _unbroadcast(g_v, np.shape(v)), 1: _unbroadcast(g_theta, np.shape(theta))}
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(affine_transformer, _affine_transformer_vjp)


def _stack_pair(a, b):
    """(a, b) as the last axis of one array (..., 2)."""
    return np.concatenate([a[..., None], b[..., None]], axis=-1)


@primitive
def affine_log_det(theta, inverse: bool = False):
    """sum_i alpha_i over the last D axis of theta = (mu, alpha) (..., D, 2); its negative
    when ``inverse``."""
    log_det = np.sum(theta[..., 1], axis=-1)
    return -log_det if inverse else log_det


def _affine_log_det_vjp(ans, theta, inverse=False):
    def vjp(g):
        g_alpha = (-g if inverse else g)[..., None] + np.zeros_like(theta[..., 1])
        return _stack_pair(np.zeros_like(g_alpha), g_alpha)

    return vjp


defvjp(affine_log_det, _affine_log_det_vjp)


_last_scale = threading.local()


def _scale(out, bound):
    """s = bound tanh(s_raw / bound) from out = (s_raw, t), remembered for the last ``out``
    (per thread): the update, the log-det and their two VJPs of one coupling call share one
    tanh instead of four (float64 tanh is ~15 ns per element in NumPy). Kept by identity
    of ``out``, which the memo holds alive, so a later array cannot take its id."""
    memo = getattr(_last_scale, "value", None)
    if memo is not None and memo[0] is out and memo[1] == bound:
        return memo[2]
    s = out[..., : out.shape[-1] // 2]
    if bound is not None:
        s = bound * np.tanh(s / bound)
    _last_scale.value = (out, bound, s)
    return s


@primitive
def affine_coupling(v, out, split: int, bound, inverse: bool = False):
    """RealNVP's coupling step on the last axis: v = (v^B, v^A) with |B| = ``split``, the
    conditioner output out = (s, t) (..., 2 |A|), s soft-bounded to bound tanh(s / bound)
    unless ``bound`` is None: (v^B, v^A exp(s) + t), or (v^B, (v^A - t) exp(-s)) when
    ``inverse``. ``refflow.coupling.AffineCoupling`` keeps the readable version; the
    log-det is ``affine_coupling_log_det``, which reuses this call's bounded s when given the
    same ``out`` object (so ``out`` must not be changed in place between the two calls)."""
    k = out.shape[-1] // 2
    s, t = _scale(out, bound), out[..., k:]
    v_a = v[..., split:]
    # the second operation in place on the first one's result (s and t have one shape)
    if inverse:
        new_a = v_a - t
        new_a *= np.exp(-s)
    else:
        new_a = v_a * np.exp(s)
        new_a += t
    return np.concatenate([v[..., :split], new_a], axis=-1)


def _affine_coupling_vjp(argnums, ans, args, kwargs):
    v, out, split, bound = args[:4]
    inverse = args[4] if len(args) > 4 else kwargs.get("inverse", False)

    def vjp(g):
        k = out.shape[-1] // 2
        s = _scale(out, bound)
        g_a, new_a = g[..., split:], ans[..., split:]
        if inverse:
            # z^A = (x^A - t) e^{-s}: d/dx^A = e^{-s}, d/dt = -e^{-s}, d/ds = -z^A
            g_v_a = g_a * np.exp(-s)
            g_t = -g_v_a
            g_s = -g_a * new_a
        else:
            # x^A = z^A e^{s} + t: d/dz^A = e^{s}, d/dt = 1, d/ds = x^A - t
            g_v_a = g_a * np.exp(s)
            g_t = g_a
            g_s = g_a * (new_a - out[..., k:])
        if bound is not None:
            g_s = g_s * (1.0 - (s / bound) ** 2)  # from the bounded value, as tanh_bound
        grads = {0: np.concatenate([g[..., :split], g_v_a], axis=-1),
                 1: np.concatenate([g_s, g_t], axis=-1)}
        return tuple(_unbroadcast(grads[i], np.shape(args[i])) for i in argnums)

    return vjp


defvjp_argnums(affine_coupling, _affine_coupling_vjp)


@primitive
def affine_coupling_log_det(out, bound, inverse: bool = False):
    """sum s over the last axis, s the first half of out = (s, t), bounded as in
    ``affine_coupling``; its negative when ``inverse``."""
    log_det = np.sum(_scale(out, bound), axis=-1)
    return -log_det if inverse else log_det


def _affine_coupling_log_det_vjp(ans, out, bound, inverse=False):
    def vjp(g):
        k = out.shape[-1] // 2
        s = out[..., :k]
        g_s = (-g if inverse else g)[..., None] + np.zeros_like(s)
        if bound is not None:
            g_s = g_s * (1.0 - (_scale(out, bound) / bound) ** 2)
        return np.concatenate([g_s, np.zeros_like(g_s)], axis=-1)

    return vjp


defvjp(affine_coupling_log_det, _affine_coupling_log_det_vjp)
