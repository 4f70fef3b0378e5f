"""Inputs for MAF's affine-transformer kernel (``refflow.fast.autoregressive``): forward and
inverse, theta broadcast against v on a non-leading axis, v broadcast against theta, and
large log-scales."""

from __future__ import annotations

from tests.fast_cases import case

AFFINE_VARIANTS = ("generic", "inverse", "edge", "v-broadcast", "large-alpha")


@case("affine_transformer", variants=AFFINE_VARIANTS)
def _affine_transformer(rng, dtype, variant):
    v_shape, theta_shape, inverse = (5, 4), (5, 4, 2), variant == "inverse"
    if variant == "edge":
        # one theta per row, shared along axis 1 of v (3, 4, 5)
        v_shape, theta_shape, inverse = (3, 4, 5), (3, 1, 5, 2), True
    elif variant == "v-broadcast":
        v_shape, theta_shape = (3, 1, 5), (3, 4, 5, 2)
    v = rng.standard_normal(v_shape)
    theta = rng.standard_normal(theta_shape)
    if variant == "large-alpha":
        theta[..., 1] *= 8.0  # exp(+-alpha) from ~1e-10 to ~1e10
        inverse = True
    return (v.astype(dtype), theta.astype(dtype)), {"inverse": inverse}, (0, 1)
