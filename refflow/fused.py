r"""Deprecated: the old home of the fused primitives, kept as aliases for one release.

The kernels now live in the fast layer, ``refflow.fast`` (``refflow.fast.nn``,
``refflow.fast.spline``, ``refflow.fast.lastaxis``), each registered as the replacement of
one named reference function and switched by ``refflow.fast.enabled``. The names below
keep working; new code imports from ``refflow.fast``. The affine updates of couplings and
MAF stay here until their kernels move to the fast layer.

Examples
--------
>>> import numpy
>>> x, w, b = numpy.ones((2, 3)), numpy.full((3, 4), 0.5), numpy.zeros(4)
>>> dense(x, w, b, "tanh").round(4).tolist()[0]
[0.9051, 0.9051, 0.9051, 0.9051]
"""

from __future__ import annotations

import threading

import autograd.numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive

from refflow.fast.lastaxis import (
    bin_index,
    cumsum_last,
    max_last,
    sum_last,
    take_bin,
)
from refflow.fast.lastaxis import unbroadcast as _unbroadcast
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


@primitive
def tanh_bound(s, bound: float):
    """bound * tanh(s / bound): s near 0 unchanged, |result| < bound (a soft bound)."""
    return bound * np.tanh(s / bound)


# from the output y: d/ds = 1 - (y / bound)^2; autograd's tanh VJP divides by cosh^2 instead
defvjp(tanh_bound, lambda y, s, bound: lambda g: g * (1.0 - (y / bound) ** 2))


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
