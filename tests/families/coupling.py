"""Registry factories for the coupling family: contiguous splits and masks, vectors and images.

Conditioners use tanh so that the finite-difference Jacobians see no ReLU kinks; the image
cases use a small 4 x 4 x 2 event (32 coordinates).
"""

from __future__ import annotations

from refflow.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    Scaling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from refflow.elementwise import RationalQuadraticSpline, ScalarAffine
from tests.registry import Case, example

IMAGE = (4, 4, 2)


@example("Coupling", min_dim=2)
def _coupling(rng, dim):
    return Case(bijection=Coupling.init(rng, dim, ScalarAffine, hidden=(8,)))


@example("Coupling[spline-mask]", min_dim=2)
def _coupling_spline(rng, dim):
    static = {"bins": 4, "bound": 3.0}
    f = Coupling.init(rng, dim, RationalQuadraticSpline, static=static,
                      split=alternating_mask(dim), hidden=(8,))
    # knots move with the conditioner's output: central differences lose ~h at a knot
    return Case(bijection=f, fd_atol=1e-4)


@example("Coupling[image]")
def _coupling_image(rng, dim):
    f = Coupling.init(rng, IMAGE, ScalarAffine, split=checkerboard_mask(IMAGE), hidden=(4,))
    return Case(bijection=f, event_shape=IMAGE)


@example("AdditiveCoupling", min_dim=2)
def _additive(rng, dim):
    return Case(bijection=AdditiveCoupling.init(rng, dim, hidden=(8,), activation="tanh"))


@example("AdditiveCoupling[mask]", min_dim=2)
def _additive_mask(rng, dim):
    f = AdditiveCoupling.init(rng, dim, split=alternating_mask(dim, parity=1), hidden=(8,),
                              activation="tanh")
    return Case(bijection=f)


@example("AffineCoupling", min_dim=2)
def _affine(rng, dim):
    return Case(bijection=AffineCoupling.init(rng, dim, hidden=(8, 8)))


@example("AffineCoupling[checkerboard]")
def _affine_checkerboard(rng, dim):
    f = AffineCoupling.init(rng, IMAGE, split=checkerboard_mask(IMAGE, parity=1), hidden=(4,))
    return Case(bijection=f, event_shape=IMAGE)


@example("AffineCoupling[channel-mask]")
def _affine_channel(rng, dim):
    f = AffineCoupling.init(rng, IMAGE, split=channel_mask(IMAGE, parity=1), hidden=(4,))
    return Case(bijection=f, event_shape=IMAGE)


@example("AffineCoupling[channel-split]")
def _affine_channel_split(rng, dim):
    shape = (2, 3, dim + 1)  # non-square, at least 2 channels
    f = AffineCoupling.init(rng, shape, split=1, hidden=(4,), scale_bound=None)
    return Case(bijection=f, event_shape=shape)


@example("Scaling")
def _scaling(rng, dim):
    return Case(bijection=Scaling.init(rng, dim))


@example("Scaling[image]")
def _scaling_image(rng, dim):
    return Case(bijection=Scaling.init(rng, (2, 3, dim)), event_shape=(2, 3, dim))


# conditional cases: the generic suite passes a context of shape (N, context_dim)


@example("AffineCoupling[context]", min_dim=2)
def _affine_context(rng, dim):
    return Case(bijection=AffineCoupling.init(rng, dim, hidden=(8,), context_dim=2),
                context_dim=2)


@example("Coupling[spline-context]", min_dim=2)
def _coupling_spline_context(rng, dim):
    static = {"bins": 4, "bound": 3.0}
    f = Coupling.init(rng, dim, RationalQuadraticSpline, static=static, hidden=(8,),
                      context_dim=3)
    # knots move with the conditioner's output: central differences lose ~h at a knot
    return Case(bijection=f, fd_atol=1e-4, context_dim=3)


@example("AdditiveCoupling[context]", min_dim=2)
def _additive_context(rng, dim):
    f = AdditiveCoupling.init(rng, dim, split=alternating_mask(dim), hidden=(8,),
                              activation="tanh", context_dim=1)
    return Case(bijection=f, context_dim=1)


@example("AffineCoupling[image-context]")
def _affine_image_context(rng, dim):
    f = AffineCoupling.init(rng, IMAGE, split=checkerboard_mask(IMAGE), hidden=(4,),
                            context_dim=2)
    return Case(bijection=f, event_shape=IMAGE, context_dim=2)
