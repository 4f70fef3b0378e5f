"""Inputs for the dense-layer kernels (``refflow.fast.nn``): every fused activation, the
activations that fall back to the reference, an inner dimension of 1 (the broadcast-product
path), one bias per sample, an input broadcast on a non-leading axis, a one-row input
broadcast against per-sample biases and a bias of size 1 (the last two miss the kernel's
shortcut for x (N, D_in), b (D_out,) and must still get gradients of the operands' shapes).

ReLU's pre-activations are kept at least 0.05 away from its kink at 0, where the kernel
(derivative [y > 0]) and ``refflow.ops.maximum`` (ties split half and half) differ by
convention only.
"""

from __future__ import annotations

import numpy

from tests.fast_cases import case

DENSE_VARIANTS = ("tanh", "relu", "identity", "elu", "inner-1", "per-sample-bias",
                  "broadcast-middle", "broadcast-rows", "bias-1")


def _dense_inputs(rng, dtype, variant, masked):
    """(x, w, mask, b, activation) for one variant; the mask is ones unless ``masked``."""
    activation = variant if variant in ("tanh", "relu", "identity", "elu") else "tanh"
    d_in, x_shape, b_shape = 3, (4, 3), (5,)
    if variant == "inner-1":
        d_in, x_shape = 1, (4, 1)
    elif variant == "per-sample-bias":
        b_shape = (4, 5)
    elif variant == "broadcast-middle":
        # x (4, 1, 3) against a bias (2, 5): the output is (4, 2, 5), x broadcast on axis 1
        x_shape, b_shape = (4, 1, 3), (2, 5)
    elif variant == "broadcast-rows":
        x_shape, b_shape = (1, 3), (4, 5)
    elif variant == "bias-1":
        b_shape = (1,)
    while True:
        x = rng.standard_normal(x_shape)
        w = rng.standard_normal((d_in, 5))
        mask = (rng.random(w.shape) > 0.4) if masked else numpy.ones(w.shape)
        b = rng.standard_normal(b_shape)
        # redrawn until no pre-activation is within 0.05 of ReLU's kink
        if activation != "relu" or numpy.abs(x @ (w * mask) + b).min() >= 0.05:
            break
    return tuple(a.astype(dtype) for a in (x, w, mask, b)) + (activation,)


@case("dense", variants=DENSE_VARIANTS)
def _dense(rng, dtype, variant):
    x, w, _, b, activation = _dense_inputs(rng, dtype, variant, masked=False)
    return (x, w, b), {"activation": activation}, (0, 1, 2)


@case("masked_dense", variants=DENSE_VARIANTS)
def _masked_dense(rng, dtype, variant):
    x, w, mask, b, activation = _dense_inputs(rng, dtype, variant, masked=True)
    return (x, w, mask, b), {"activation": activation}, (0, 1, 3)
