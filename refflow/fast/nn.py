r"""Kernels of the dense layers: ``refflow.nn.dense`` and ``refflow.nn.masked_dense`` as one
autograd node each, y = act(x W + b), with a hand-written VJP.

What fusing buys over the reference (a matmul, an add and an activation, three nodes):

1. the VJP reuses the output: tanh'(a) = 1 - y^2 and relu'(a) = [y > 0], so the
   pre-activation is never kept and no second tanh is evaluated;
2. the gradient at the pre-activation, g act'(a), is computed once and shared by the three
   input gradients (autograd's generic graph unbroadcasts it for the bias with extra
   bookkeeping);
3. ReLU's gradient is one multiplication by the mask y > 0 instead of the generic VJP of
   ``maximum`` (two comparisons and a balance term);
4. a matmul with inner dimension 1 becomes a broadcast product (BLAS's slow path);
5. a MADE mask multiplies the weight once per call, and the weight gradient is masked.

Activations other than tanh, ReLU and the identity run the reference.

Notes
-----
Lecture: "Coupling flows" and "Autoregressive flows" (the conditioners Theta). With
y = act(x W + b) and G = dL/dy:

.. math::

    \bar A = G \odot \mathrm{act}'(A), \qquad
    \frac{\partial L}{\partial x} = \bar A W^\top, \quad
    \frac{\partial L}{\partial W} = x^\top \bar A, \quad
    \frac{\partial L}{\partial b} = \textstyle\sum_n \bar A_n

The VJP is written in differentiable operations (no in-place updates), so a gradient of a
gradient (a residual block's Jacobian inside a loss) passes through it. Cost: the
reference's O(N D_in D_out), with fewer temporaries.

References
----------
1. D. Maclaurin, D. Duvenaud, M. Johnson, J. Townsend. Autograd (software), 2015-2024.
"""

from __future__ import annotations

from typing import Any

import autograd.numpy as np
from autograd.extend import defvjp_argnums, primitive

from refflow import nn
from refflow.fast.registry import kernel

__all__ = ["fused_dense", "fused_masked_dense", "FUSED_ACTIVATIONS"]


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
    # BLAS is much slower than a broadcast product when the inner dimension is 1
    a = x * w[0] if w.shape[0] == 1 else x @ w
    # the product is a fresh array (the primitive sees raw arrays): the bias goes in place
    # unless it would enlarge it. A vector bias never does (it has a's last size or fails);
    # np.broadcast_shapes costs several microseconds, a tenth of a small layer
    if getattr(b, "ndim", 0) != 1 and np.broadcast_shapes(a.shape, np.shape(b)) != a.shape:
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


def _dense_grads(ga, x, w, argnums, b_shape):
    """Gradients (x, w, b) of x W + b from ga = dL/d(pre-activation), only those asked for."""
    grads = {}
    # the common case, x (N, D_in) and b (D_out,), is taken without reshapes or broadcasts:
    # at batch 256 each avoided call is a measurable share of the VJP
    plain = x.ndim == 2 and x.shape[0] == ga.shape[0] and ga.ndim == 2
    if 0 in argnums:
        g_x = np.sum(ga * w[0], axis=-1, keepdims=True) if w.shape[0] == 1 else ga @ w.T
        grads[0] = g_x if plain else _sum_to_shape(g_x, x.shape)
    if 1 in argnums:
        if plain:
            grads[1] = x.T @ ga
        else:
            # all leading axes are batch axes: fold them into one for a single matmul
            x2 = np.reshape(np.broadcast_to(x, ga.shape[:-1] + (w.shape[0],)),
                            (-1, w.shape[0]))
            grads[1] = x2.T @ np.reshape(ga, (-1, w.shape[1]))
    if 2 in argnums:
        grads[2] = (np.sum(ga, axis=0) if ga.ndim == 2 and tuple(b_shape) == ga.shape[1:]
                    else _sum_to_shape(ga, b_shape))
    return grads


@primitive
def fused_dense(x, w, b, activation: str = "identity"):
    """act(x W + b) as one node; act in ``FUSED_ACTIVATIONS``."""
    return _activate(_linear(x, w, b), activation)


def _dense_vjp(argnums, y, args, kwargs):
    x, w, b = args[0], args[1], args[2]
    activation = args[3] if len(args) > 3 else kwargs.get("activation", "identity")

    def vjp(g):
        ga = _pre_activation_grad(g, y, activation)
        grads = _dense_grads(ga, x, w, argnums, np.shape(b))
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(fused_dense, _dense_vjp)


@primitive
def fused_masked_dense(x, w, mask, b, activation: str = "identity"):
    """act(x (W * M) + b) as one node; the mask M is a constant (its gradient is zero)."""
    return _activate(_linear(x, w * mask, b), activation)


def _masked_dense_vjp(argnums, y, args, kwargs):
    x, w, mask, b = args[0], args[1], args[2], args[3]
    activation = args[4] if len(args) > 4 else kwargs.get("activation", "identity")
    # argument positions (x, w, mask, b) -> dense's (x, w, -, b)
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


defvjp_argnums(fused_masked_dense, _masked_dense_vjp)


@kernel("dense", "numpy")
@kernel("dense", "cupy")
def dense(x, w, b, activation: str = "identity"):
    """``refflow.nn.dense`` as one node for tanh, ReLU and the identity; the reference
    for the other activations."""
    if activation not in _ACT:
        return nn.dense.reference(x, w, b, activation)
    return fused_dense(x, w, b, activation)


@kernel("masked_dense", "numpy")
@kernel("masked_dense", "cupy")
def masked_dense(x, w, mask, b, activation: str = "identity"):
    """``refflow.nn.masked_dense`` as one node for tanh, ReLU and the identity."""
    if activation not in _ACT:
        return nn.masked_dense.reference(x, w, mask, b, activation)
    return fused_masked_dense(x, w, mask, b, activation)
