r"""Kernels of the rational-quadratic spline: the bins, the knot slopes and the spline itself,
each one autograd node with a hand-written VJP, replacing ``refflow.elementwise.spline_bins``,
``spline_slopes``, ``rational_quadratic_forward`` and ``rational_quadratic_inverse``.

What fusing buys over the reference (about seventy autograd nodes per spline call: slices,
softmax, softplus, knots, six one-hot picks over the K bins, the rational quadratic, the
``where``s):

1. three nodes instead: the bin sizes (softmax), the knot slopes (softplus) and the spline,
   whose VJP is written from the partial derivatives of h and log h' in the bin, and for the
   inverse from the implicit function theorem: dz/dx = 1 / h'(z),
   dz/dtheta = -(dh/dtheta) / h'(z);
2. the bin search runs once, outside the differentiated part, and the six per-element reads
   of the bin's knots are gathers sharing one flat index (O(1) per element instead of a
   one-hot product over the K bins);
3. the knots are exclusive cumulative sums taken as one matrix product (``lastaxis``), the
   same sums as the reference's ``cumsum``, so a knot maps to the same bin in both;
4. softplus's ``log1p`` (no vectorised float32 loop in NumPy) becomes a corrected ``log``;
5. inside the primitives the arrays are plain (never autograd boxes), so they update their own
   temporaries in place: at large batch each fresh array costs page faults as well as the
   arithmetic.

Notes
-----
Lecture: Constructing flows, "Splines". In bin k with xi = (z - x_k) / w, s = h / w,
m = xi (1 - xi) and den = s + (d0 + d1 - 2s) m:

.. math::

    h(z) = y_k + \frac{h (s \xi^2 + d_0 m)}{\mathrm{den}}, \qquad
    \log h'(z) = 2 \log s + \log(d_1 \xi^2 + 2 s m + d_0 (1 - \xi)^2) - 2 \log \mathrm{den}

Cost O(K) per element for the bins and the bin search, O(1) for the spline.

References
----------
1. C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows. NeurIPS, 2019.
"""

from __future__ import annotations

import math

import autograd.numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import getval

from refflow.fast.lastaxis import cumsum_last, max_last, sum_last, unbroadcast
from refflow.fast.registry import kernel

__all__ = ["spline_bins", "spline_slopes", "rational_quadratic_spline", "spline_bin_index"]


@primitive
def spline_bins(logits, total: float, minimum: float):
    """total * (minimum + (1 - K minimum) softmax(logits)): K bin sizes, each at least
    ``total * minimum``, summing to ``total``; softmax over the last axis (K = its length)."""
    k = logits.shape[-1]
    # a contiguous copy first (logits is a strided slice of theta): the K - 1 maxima of
    # max_last read it column by column, faster than from the strided slice
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
    ((1 + u) - 1 - u) / (1 + u) (exact to rounding, and faster than NumPy's float32
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
    """The knots -B + sum_{j<k} sizes_j, k = 0..K - 1: the sums of the reference's
    ``spline_knots``, added in the same order, so an input on a knot falls in the same bin in
    both (tests/test_fast.py checks it). No gradient."""
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
    broadcast against v (...,). ``refflow.elementwise.rational_quadratic_forward`` and
    ``rational_quadratic_inverse`` are the definition. The knots and the bin search are
    computed once, outside the differentiated part, and shared by the forward pass and the
    VJP (which differentiates the knots by hand)."""
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
                out.append(unbroadcast(g_v, np.shape(v)))
            elif i in (1, 2):
                # x_k = -B + sum_{j<k} w_j: bin k's width directly, the ones below via x_k
                here, before = (g_w, g_xk) if i == 1 else (g_h, g_yk)
                out.append(unbroadcast(_scatter(index == kk, index < kk, here, before),
                                        np.shape(args[i])))
            else:
                inner = index[:bins - 1]
                out.append(unbroadcast(_scatter(inner == kk - 1, inner == kk, g_d0, g_d1),
                                        np.shape(derivatives)))
        return tuple(out)

    return vjp


defvjp_argnums(_spline, _spline_vjp)


for _backend in ("numpy", "cupy"):
    kernel("spline_bins", _backend)(spline_bins)
    kernel("spline_slopes", _backend)(spline_slopes)


@kernel("rational_quadratic_forward", "numpy")
@kernel("rational_quadratic_forward", "cupy")
def rational_quadratic_forward(z, widths, heights, derivatives, bound: float):
    """``refflow.elementwise.rational_quadratic_forward`` as one node."""
    return rational_quadratic_spline(z, widths, heights, derivatives, bound, False)


@kernel("rational_quadratic_inverse", "numpy")
@kernel("rational_quadratic_inverse", "cupy")
def rational_quadratic_inverse(x, widths, heights, derivatives, bound: float):
    """``refflow.elementwise.rational_quadratic_inverse`` as one node."""
    return rational_quadratic_spline(x, widths, heights, derivatives, bound, True)
