"""Inputs for RealNVP's coupling kernel (``refflow.fast.coupling``): forward and inverse, with
and without the soft bound, the split 0 that a masked coupling uses, a conditioner output
broadcast on a non-leading axis, and saturated scales (|s_raw| far beyond the bound, where
tanh' underflows towards 0)."""

from __future__ import annotations

from tests.fast_cases import case

COUPLING_VARIANTS = ("generic", "inverse", "unbounded", "split-0", "edge", "saturated")


@case("affine_coupling", variants=COUPLING_VARIANTS)
def _affine_coupling(rng, dtype, variant):
    z_shape, out_shape, split, bound = (5, 6), (5, 8), 2, 2.0
    inverse = variant == "inverse"
    if variant == "unbounded":
        bound = None
    elif variant == "split-0":
        out_shape, split = (5, 12), 0
    elif variant == "edge":
        # one conditioner output per row, shared along axis 1 of z (4, 3, 5): the gradient of
        # out sums over that axis
        z_shape, out_shape, inverse = (4, 3, 5), (4, 1, 6), True
    z = rng.standard_normal(z_shape)
    out = rng.standard_normal(out_shape)
    if variant == "saturated":
        out[..., : out_shape[-1] // 2] *= 20.0  # s_raw / a up to ~30: tanh rounds to +-1
        bound = 1.5
    return (z.astype(dtype), out.astype(dtype), split, bound), {"inverse": inverse}, (0, 1)
