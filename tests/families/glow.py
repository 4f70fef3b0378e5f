"""Registry factories for the Glow family on small images (at most 4 x 4 x 2 = 32 coordinates).

Conditioners use tanh so that the finite-difference Jacobians see no ReLU kinks.
"""

from __future__ import annotations

import dataclasses

from refflow.core import Compose, Inverse
from refflow.glow import (
    ActNorm,
    Glow,
    GlowStep,
    Invertible1x1Conv,
    LUInvertible1x1Conv,
    Squeeze,
)
from tests.registry import Case, example

IMAGE = (4, 4, 2)


@example("ActNorm")
def _actnorm(rng, dim):
    shape = (2, 3, dim)
    return Case(bijection=ActNorm.init(rng, shape), event_shape=shape)


@example("ActNorm[vector]")
def _actnorm_vector(rng, dim):
    return Case(bijection=ActNorm.init(rng, dim))


@example("Invertible1x1Conv")
def _conv(rng, dim):
    shape = (3, 2, dim)
    # not init's rotation: |det W| = 1 makes the log-det 0 whatever its H W factor, so a
    # missing factor would pass; columns scaled by 1.2..1.8 give |det W| > 1
    rotation = Invertible1x1Conv.init(rng, shape)
    weight = rotation.weight * rng.uniform(1.2, 1.8, (dim,))
    return Case(bijection=Invertible1x1Conv(weight, rotation.event_ndim), event_shape=shape)


@example("LUInvertible1x1Conv")
def _lu_conv(rng, dim):
    shape = (3, 2, dim)
    # as above: scales 1.2..1.8 instead of a rotation's |u_ii| (product 1)
    rotation = LUInvertible1x1Conv.init(rng, shape)
    conv = dataclasses.replace(rotation, scale=rotation.scale * rng.uniform(1.2, 1.8, (dim,)))
    return Case(bijection=conv, event_shape=shape)


@example("Squeeze", max_dim=3)
def _squeeze(rng, dim):
    # Squeeze changes the event shape, (2, 4, C) -> (1, 2, 4C): the generic shape test
    # compares sizes through extra["out_event_shape"]
    shape = (2, 4, dim)
    return Case(bijection=Squeeze.init(rng, shape), event_shape=shape, grad=False,
                extra={"out_event_shape": (1, 2, 4 * dim)})


@example("Squeeze[round-trip]", max_dim=3)
def _squeeze_compose(rng, dim):
    # squeeze, a channel-mixing 1x1 convolution on 4C channels, un-squeeze: shape-preserving
    shape = (2, 4, dim)
    inner = LUInvertible1x1Conv.init(rng, (1, 2, 4 * dim))
    return Case(bijection=Compose(Squeeze(), inner, Inverse(Squeeze())), event_shape=shape)


@example("GlowStep")
def _glow_step(rng, dim):
    f = GlowStep.init(rng, IMAGE, hidden=4, activation="tanh", lu=dim % 2 == 0)
    return Case(bijection=f, event_shape=IMAGE)


@example("Glow")
def _glow(rng, dim):
    f = Glow.init(rng, IMAGE, levels=2, steps=1, hidden=4, activation="tanh")
    return Case(bijection=f, event_shape=IMAGE)


# conditional cases: the generic suite passes a context of shape (N, context_dim)


@example("GlowStep[context]")
def _glow_step_context(rng, dim):
    f = GlowStep.init(rng, IMAGE, hidden=4, activation="tanh", lu=dim % 2 == 0, context_dim=2)
    return Case(bijection=f, event_shape=IMAGE, context_dim=2)


@example("Glow[context]")
def _glow_context(rng, dim):
    f = Glow.init(rng, IMAGE, levels=2, steps=1, hidden=4, activation="tanh", context_dim=3)
    return Case(bijection=f, event_shape=IMAGE, context_dim=3)
