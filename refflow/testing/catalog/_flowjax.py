"""flowjax 19: adapter table (the bijections of ``flowjax.bijections``).

Convention: a bijection maps one sample: ``b.transform_and_log_det(x) -> (y, log|det|)`` and
``b.inverse_and_log_det(y) -> (x, log|det|)``; the adapter batches them with ``jax.vmap``
(compiled with ``equinox.filter_jit``, the bijection an argument) after ``paramax.unwrap``,
on batches padded to a few sizes so that compiling does not dominate the sweep. Importing
this table enables JAX's float64 (x64), as the sweep's inputs are float64. Every inexact
array of the bijection (its parameters, before their constraints are applied) is perturbed
by N(0, s^2).
Planar and BlockAutoregressiveNetwork have no inverse in flowjax: forward checks only.
"""

from __future__ import annotations

import functools

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import paramax  # noqa: E402
from flowjax import bijections as B  # noqa: E402

from refflow.testing.catalog import Entry  # noqa: E402

FRAMEWORK = "jax"


def _perturbed(bijection, scale: float, seed: int):
    params, static = eqx.partition(bijection, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(10_000 + seed), max(len(leaves), 1))
    leaves = [leaf.astype(jnp.float64) + scale * jax.random.normal(k, leaf.shape, jnp.float64)
              for leaf, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


def _padded(fn):
    """``fn`` (a compiled, vmapped map of one sample) on a batch padded to a bucket size.

    ``jax.jit`` compiles once per input shape, and ``check_bijection`` calls with about seven
    batch sizes (1, 2, 4, 16, 18, 32 rows and its finite-difference stencils), each compiled
    again for the forward, the inverse and their ``jax.jacfwd``: compiling took most of a
    sweep's time. Padding the batch with copies of its first row (inside the map's domain,
    unlike zeros for an inverse of ``Exp``) to the next power of two, at least 32, leaves
    two shapes. The rows are independent by construction (``jax.vmap`` of a per-sample map),
    so the padding changes no row's result.
    """
    def call(x):
        n = x.shape[0]
        size = max(32, 1 << (n - 1).bit_length())
        fill = jnp.broadcast_to(x[:1], (size - n,) + x.shape[1:])
        y, log_det = fn(jnp.concatenate([x, fill]))
        return y[:n], log_det[:n]
    return call


# The bijection is an argument of the compiled function, not a constant in it, so that one
# compilation serves every spread and seed of a transform at a given D (same structure,
# other parameter values).
@eqx.filter_jit
def _forward(b, x):
    return jax.vmap(b.transform_and_log_det)(x)


@eqx.filter_jit
def _inverse(b, y):
    return jax.vmap(b.inverse_and_log_det)(y)


def _pair(make, invertible=True):
    def build(dim: int, scale: float, seed: int) -> dict:
        b = paramax.unwrap(_perturbed(make(dim, jax.random.key(seed)), scale, seed))
        forward = _padded(functools.partial(_forward, b))
        inverse = _padded(functools.partial(_inverse, b)) if invertible else None
        return {"forward": forward, "inverse": inverse}
    return build


def _rqs():
    return B.RationalQuadraticSpline(knots=6, interval=3.0)


def _ones(d):
    return jnp.ones(d, dtype=jnp.float64)


ENTRIES = (
    Entry("MaskedAutoregressive (Affine)", _pair(lambda d, k: B.MaskedAutoregressive(
        k, transformer=B.Affine(), dim=d, nn_width=16, nn_depth=1))),
    Entry("MaskedAutoregressive (RQS)", _pair(lambda d, k: B.MaskedAutoregressive(
        k, transformer=_rqs(), dim=d, nn_width=16, nn_depth=1))),
    Entry("Coupling (Affine)", _pair(lambda d, k: B.Coupling(
        k, transformer=B.Affine(), untransformed_dim=d // 2, dim=d, nn_width=16, nn_depth=1))),
    Entry("Coupling (RQS)", _pair(lambda d, k: B.Coupling(
        k, transformer=_rqs(), untransformed_dim=d // 2, dim=d, nn_width=16, nn_depth=1))),
    Entry("RationalQuadraticSpline (Vmap)", _pair(lambda d, k: B.Vmap(
        eqx.filter_vmap(lambda _: _rqs())(jnp.arange(d)), in_axes=eqx.if_array(0)))),
    Entry("Affine", _pair(lambda d, k: B.Affine(jnp.zeros(d), _ones(d)))),
    Entry("Scale", _pair(lambda d, k: B.Scale(_ones(d)))),
    Entry("Loc", _pair(lambda d, k: B.Loc(jnp.zeros(d)))),
    Entry("TriangularAffine", _pair(lambda d, k: B.TriangularAffine(
        jnp.zeros(d), jnp.eye(d, dtype=jnp.float64)))),
    Entry("Householder", _pair(lambda d, k: B.Householder(jax.random.normal(k, (d,))))),
    Entry("DiscreteCosine", _pair(lambda d, k: B.DiscreteCosine((d,)))),
    Entry("Permute", _pair(lambda d, k: B.Permute(jnp.arange(d)[::-1]))),
    Entry("Flip", _pair(lambda d, k: B.Flip((d,)))),
    Entry("Exp", _pair(lambda d, k: B.Exp((d,)))),
    Entry("Tanh", _pair(lambda d, k: B.Tanh((d,)))),
    Entry("LeakyTanh", _pair(lambda d, k: B.LeakyTanh(2.0, (d,)))),
    Entry("SoftPlus", _pair(lambda d, k: B.SoftPlus((d,)))),
    Entry("Sigmoid", _pair(lambda d, k: B.Sigmoid((d,)))),
    Entry("Planar (forward only)", _pair(lambda d, k: B.Planar(k, dim=d), invertible=False)),
    Entry("Planar leaky (forward only)", _pair(
        lambda d, k: B.Planar(k, dim=d, negative_slope=0.2), invertible=False)),
    Entry("BlockAutoregressiveNetwork (forward only)", _pair(
        lambda d, k: B.BlockAutoregressiveNetwork(k, dim=d, depth=1, block_dim=4),
        invertible=False)),
)

EXCLUDED = (
    ("Power", "domain x > 0"),
    ("AdditiveCondition, EmbedCondition", "conditional: need a condition"),
    ("Reshape", "a change of shape"),
    ("Chain, Stack, Scan, Vmap, Concatenate, Sandwich, Invert, Indexed, NumericalInverse",
     "containers of other bijections (Vmap is tried around the spline)"),
    ("AbstractBijection, Identity", "the base class; no parameters"),
)
