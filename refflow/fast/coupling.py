r"""Fused kernels for RealNVP's affine coupling: the replacement of ``coupling.affine_coupling``.

The reference (``refflow.coupling.affine_coupling``) takes about a dozen autograd nodes per
call: two slices of the conditioner's output, the bound, an exponential, the update, the split
of z and the merge, the sum. Here it is three primitives with hand-written VJPs:

1. ``bounded_scale(out, bound)``: s = a tanh(s_raw / a) from the first half of out, computed
   once per call; its VJP reads tanh' from the output, 1 - (s / a)^2 (no cosh);
2. ``coupling_update(v, out, s, split, inverse)``: split, update and merge in one node; the
   VJP of exp(s) reuses the output, d x^A / d s = x^A - t;
3. ``signed_sum(s, inverse)``: the log-det, +-sum_j s_j.

The bounded scale is an explicit argument of the update and of the log-det: nothing is
remembered between calls. The update and its log-det are separate primitives (a primitive
returning a tuple costs autograd two more nodes and a zero-filled tuple per output in the
backward pass).

Notes
-----
Lecture: "Coupling flows", RealNVP. For x^A = z^A exp(s) + t and a cotangent G:

.. math::

    \frac{\partial L}{\partial z^A} = G e^{s}, \quad
    \frac{\partial L}{\partial t} = G, \quad
    \frac{\partial L}{\partial s} = G (x^A - t), \quad
    \frac{\partial s}{\partial s_{raw}} = 1 - (s / a)^2

and for the inverse z^A = (x^A - t) e^{-s}: d/dx^A = e^{-s}, d/dt = -e^{-s}, d/ds = -z^A.

Examples
--------
>>> import numpy
>>> from refflow.coupling import affine_coupling
>>> z, out = numpy.ones((2, 4)), numpy.zeros((2, 4))
>>> x, log_det = affine_coupling_kernel(z, out, 2, 2.0)
>>> bool((x == affine_coupling.reference(z, out, 2, 2.0)[0]).all()), log_det.tolist()
(True, [0.0, 0.0])
"""

from __future__ import annotations

from typing import Any

import autograd.numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive

from refflow.fast.lastaxis import unbroadcast
from refflow.fast.registry import kernel

__all__ = [
    "affine_coupling_kernel",
    "bounded_scale",
    "coupling_update",
    "signed_sum",
    "tanh_bound",
    "affine_coupling",
    "affine_coupling_log_det",
]


@primitive
def tanh_bound(s, bound: float):
    """bound * tanh(s / bound): s near 0 unchanged, |result| < bound (a soft bound)."""
    return bound * np.tanh(s / bound)


# from the output y: d/ds = 1 - (y / bound)^2; autograd's tanh VJP divides by cosh^2 instead
defvjp(tanh_bound, lambda y, s, bound: lambda g: g * (1.0 - (y / bound) ** 2))


@primitive
def bounded_scale(out, bound: Any):
    """s = bound tanh(s_raw / bound) (s_raw when ``bound`` is None), s_raw the first half of
    the last axis of out = (s_raw, t)."""
    s = out[..., : out.shape[-1] // 2]
    return s if bound is None else bound * np.tanh(s / bound)


def _bounded_scale_vjp(s, out, bound):
    def vjp(g):
        g_s = g if bound is None else g * (1.0 - (s / bound) ** 2)
        return np.concatenate([g_s, np.zeros_like(g_s)], axis=-1)

    return vjp


defvjp(bounded_scale, _bounded_scale_vjp)


@primitive
def coupling_update(v, out, s, split: int, inverse: bool = False):
    """(v^B, v^A exp(s) + t), or (v^B, (v^A - t) exp(-s)) when ``inverse``: v^B = v[..., :split],
    t the second half of the last axis of out = (s_raw, t), s the bounded scale."""
    t = out[..., out.shape[-1] // 2:]
    v_a = v[..., split:]
    # the second operation in place on the first one's result (a fresh array)
    if inverse:
        new_a = v_a - t
        new_a *= np.exp(-s)
    else:
        new_a = v_a * np.exp(s)
        new_a += t
    return np.concatenate([v[..., :split], new_a], axis=-1)


def _coupling_update_vjp(argnums, ans, args, kwargs):
    v, out, s, split = args[:4]
    inverse = args[4] if len(args) > 4 else kwargs.get("inverse", False)

    def vjp(g):
        g_a, new_a = g[..., split:], ans[..., split:]
        if inverse:
            # z^A = (x^A - t) e^{-s}: d/dx^A = e^{-s}, d/dt = -e^{-s}, d/ds = -z^A
            g_v_a = g_a * np.exp(-s)
            g_t, g_s = -g_v_a, -g_a * new_a
        else:
            # x^A = z^A e^{s} + t: d/dz^A = e^{s}, d/dt = 1, d/ds = x^A - t
            g_v_a = g_a * np.exp(s)
            g_t, g_s = g_a, g_a * (new_a - out[..., out.shape[-1] // 2:])
        grads = {}
        if 0 in argnums:
            grads[0] = unbroadcast(np.concatenate([g[..., :split], g_v_a], axis=-1),
                                    v.shape)
        if 1 in argnums:
            g_t = unbroadcast(g_t, out.shape[:-1] + (out.shape[-1] // 2,))
            grads[1] = np.concatenate([np.zeros_like(g_t), g_t], axis=-1)
        if 2 in argnums:
            grads[2] = unbroadcast(g_s, s.shape)
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(coupling_update, _coupling_update_vjp)


@primitive
def signed_sum(s, inverse: bool = False):
    """sum_j s_j over the last axis, negated when ``inverse``."""
    total = np.sum(s, axis=-1)
    return -total if inverse else total


defvjp(signed_sum, lambda ans, s, inverse=False: lambda g: (
    (-g if inverse else g)[..., None] + np.zeros_like(s)))


@kernel("affine_coupling", "numpy")
def affine_coupling_kernel(z, out, split: int, bound: Any, inverse: bool = False):
    """``refflow.coupling.affine_coupling`` as three fused nodes sharing one bounded scale."""
    s = bounded_scale(out, bound)
    return coupling_update(z, out, s, split, inverse), signed_sum(s, inverse)


def affine_coupling(v, out, split: int, bound: Any, inverse: bool = False):
    """The updated v alone (the first output of ``affine_coupling_kernel``; the signature of
    the former ``refflow.fused.affine_coupling``)."""
    return coupling_update(v, out, bounded_scale(out, bound), split, inverse)


def affine_coupling_log_det(out, bound: Any, inverse: bool = False):
    """The log-det alone (the second output of ``affine_coupling_kernel``; the former
    ``refflow.fused.affine_coupling_log_det``, which now computes its own bounded scale)."""
    return signed_sum(bounded_scale(out, bound), inverse)
