"""Inputs for the spline kernels (``refflow.fast.spline``): bins, knot slopes, and the spline
both ways, on interior points, exactly on the knots and on +-B, in the tails, with every
element of a batch in the tails, with one bin, and with tables shared by the batch or
broadcast on a non-leading axis.

The tables are built by the reference functions (``.reference``), so no kernel takes part in
making its own inputs.
"""

from __future__ import annotations

import numpy

from refflow.elementwise import (
    MIN_BIN,
    MIN_DERIVATIVE,
    spline_bins,
    spline_knots,
    spline_slopes,
)
from tests.fast_cases import case

BOUND = 3.0
SPLINE_VARIANTS = ("generic", "shared", "edge", "tails", "one-bin")


@case("spline_bins")
def _bins(rng, dtype, variant):
    logits = 2.0 * rng.standard_normal((4, 3, 8))
    if variant == "edge":
        logits[0, 0] = 0.0                                  # uniform bins
        logits[0, 1] = 700.0 * rng.standard_normal(8)       # saturated: the bins at the minimum
        logits[0, 2, :3] = logits[0, 2].max() + 1.0         # a three-way tie for the max
    return (logits.astype(dtype), 2.0 * BOUND, MIN_BIN), {}, (0,)


@case("spline_slopes")
def _slopes(rng, dtype, variant):
    t = 4.0 * rng.standard_normal((4, 3, 7))
    if variant == "edge":
        t[0, 0] = [0.0, 1e-8, -1e-8, 30.0, -30.0, 80.0, -80.0]    # exp(-|t|) underflows in float32
    return (t.astype(dtype), MIN_DERIVATIVE), {}, (0,)


def _tables(rng, shapes, bins):
    """widths, heights, derivatives from the reference parameterisation, one shape each."""
    w_shape, h_shape, d_shape = shapes
    widths = spline_bins.reference(1.5 * rng.standard_normal(w_shape + (bins,)), 2 * BOUND,
                                   MIN_BIN)
    heights = spline_bins.reference(1.5 * rng.standard_normal(h_shape + (bins,)), 2 * BOUND,
                                    MIN_BIN)
    derivatives = spline_slopes.reference(1.5 * rng.standard_normal(d_shape + (bins - 1,)),
                                          MIN_DERIVATIVE)
    return widths, heights, derivatives


def _spline_args(rng, dtype, variant, inverse):
    n, dim, bins = 6, 3, 8
    shapes = ((n, dim),) * 3
    if variant == "shared":
        shapes = ((dim,),) * 3
    elif variant == "edge":
        # widths one per sample, shared across coordinates: broadcast on the non-leading axis
        shapes = ((n, 1), (dim,), (n, dim))
    elif variant == "one-bin":
        bins = 1
    widths, heights, derivatives = (t.astype(dtype) for t in _tables(rng, shapes, bins))
    v = 2.0 * rng.standard_normal((n, dim))
    if variant == "edge":
        knots = spline_knots(heights if inverse else widths, BOUND)   # the reference's knots
        knots = numpy.broadcast_to(knots, (n, dim, bins + 1))
        pick = rng.integers(0, bins + 1, (n, dim))                    # +-B included
        on_knot = numpy.take_along_axis(knots, pick[..., None], -1)[..., 0]
        v = numpy.where(rng.random((n, dim)) < 0.6, on_knot, v)
        v[0] = [BOUND, -BOUND, 0.0]
        v[1] = [BOUND + 0.5, -BOUND - 2.0, 7.0]                       # a row all in the tails
    elif variant == "tails":
        v = numpy.sign(v) * (BOUND + 0.01 + numpy.abs(v))            # every element outside
    else:
        v[0, 0], v[1, 1] = BOUND + 0.5, -BOUND - 1.0
    return (v.astype(dtype), widths, heights, derivatives, BOUND), {}, (0, 1, 2, 3)


@case("rational_quadratic_forward", variants=SPLINE_VARIANTS, kinked=("edge",))
def _forward(rng, dtype, variant):
    return _spline_args(rng, dtype, variant, inverse=False)


@case("rational_quadratic_inverse", variants=SPLINE_VARIANTS, kinked=("edge",))
def _inverse(rng, dtype, variant):
    return _spline_args(rng, dtype, variant, inverse=True)
