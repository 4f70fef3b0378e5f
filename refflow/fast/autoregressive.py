r"""Fused kernels for MAF's affine transformer: the replacement of ``affine_transformer``.

The reference (``refflow.autoregressive.affine_transformer``) takes about eight autograd nodes
per call (two slices of theta, exp, the update, the log-derivative); here it is two
primitives with hand-written VJPs:

1. ``affine_update(v, theta, inverse)``: v exp(alpha) + mu or (v - mu) exp(-alpha) in one
   node; the VJP reuses the output (d x / d alpha = x - mu, no second exponential);
2. ``affine_log_derivative(theta, inverse)``: +-alpha, read from theta without a slice node.

They are separate primitives: a primitive returning a tuple costs autograd two more nodes and
a zero-filled tuple per output in the backward pass.

Notes
-----
Lecture: "Autoregressive flows (Masked autoregressive flows)". For x = z e^alpha + mu and a
cotangent G:

.. math::

    \frac{\partial L}{\partial z} = G e^{\alpha}, \quad
    \frac{\partial L}{\partial \mu} = G, \quad
    \frac{\partial L}{\partial \alpha} = G (x - \mu)

and for z = (x - mu) e^{-alpha}: d/dx = e^{-alpha}, d/dmu = -e^{-alpha}, d/dalpha = -z.

Examples
--------
>>> import numpy
>>> from refflow.autoregressive import affine_transformer
>>> v, theta = numpy.ones((2, 3)), numpy.zeros((2, 3, 2))
>>> x, log_d = affine_transformer_kernel(v, theta)
>>> bool((x == affine_transformer.reference(v, theta)[0]).all()), log_d.tolist()[0]
(True, [0.0, 0.0, 0.0])
"""

from __future__ import annotations

import autograd.numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive

from refflow.fast.lastaxis import unbroadcast
from refflow.fast.registry import kernel

__all__ = [
    "affine_transformer_kernel",
    "affine_update",
    "affine_log_derivative",
    "affine_transformer",
    "affine_log_det",
]


def _pair(a, b):
    """(a, b) as the last axis of one array (..., 2)."""
    return np.concatenate([a[..., None], b[..., None]], axis=-1)


@primitive
def affine_update(v, theta, inverse: bool = False):
    """v exp(alpha) + mu, or (v - mu) exp(-alpha) when ``inverse``; theta = (mu, alpha)
    packed as (..., D, 2), broadcasting against v (..., D)."""
    mu, alpha = theta[..., 0], theta[..., 1]
    if inverse:
        out = v - mu
        out *= np.exp(-alpha)
        return out
    out = v * np.exp(alpha)
    out += mu
    return out


def _affine_update_vjp(argnums, ans, args, kwargs):
    v, theta = args[0], args[1]
    inverse = args[2] if len(args) > 2 else kwargs.get("inverse", False)

    def vjp(g):
        alpha = theta[..., 1]
        g_v = g * np.exp(-alpha if inverse else alpha)
        grads = {}
        if 0 in argnums:
            grads[0] = unbroadcast(g_v, v.shape)
        if 1 in argnums:
            if inverse:
                # z = (x - mu) e^{-alpha}: dz/dmu = -e^{-alpha}, dz/dalpha = -z
                g_theta = _pair(-g_v, -g * ans)
            else:
                # x = z e^{alpha} + mu: dx/dalpha = x - mu, no second exponential
                g_theta = _pair(g + np.zeros_like(g_v), g * (ans - theta[..., 0]))
            grads[1] = unbroadcast(g_theta, theta.shape)
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(affine_update, _affine_update_vjp)


@primitive
def affine_log_derivative(theta, inverse: bool = False):
    """alpha = theta[..., 1] (..., D), or -alpha when ``inverse``."""
    alpha = theta[..., 1]
    return -alpha if inverse else alpha + 0.0  # a fresh array, not a view of theta


def _affine_log_derivative_vjp(ans, theta, inverse=False):
    def vjp(g):
        g_alpha = unbroadcast(-g if inverse else g, theta.shape[:-1])
        return _pair(np.zeros_like(g_alpha), g_alpha)

    return vjp


defvjp(affine_log_derivative, _affine_log_derivative_vjp)


@kernel("affine_transformer", "numpy")
def affine_transformer_kernel(v, theta, inverse: bool = False):
    """``refflow.autoregressive.affine_transformer`` as two fused nodes."""
    return affine_update(v, theta, inverse), affine_log_derivative(theta, inverse)


def affine_transformer(v, theta, inverse: bool = False):
    """The transformed v alone (the former ``refflow.fused.affine_transformer``)."""
    return affine_update(v, theta, inverse)


def affine_log_det(theta, inverse: bool = False):
    """sum_i alpha_i over D, negated when ``inverse`` (the former ``fused.affine_log_det``)."""
    return np.sum(affine_log_derivative(theta, inverse), axis=-1)
