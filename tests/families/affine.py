"""Registry factories for the affine family, and for ``Compose`` / ``Inverse`` built from it."""

from __future__ import annotations

from refflow.affine import Affine, Diagonal, LUAffine, Permutation, Reverse, Triangular
from refflow.core import Compose, Inverse
from tests.registry import Case, example


@example("Affine")
def _affine(rng, dim):
    return Case(bijection=Affine.init(rng, dim))


@example("Diagonal")
def _diagonal(rng, dim):
    return Case(bijection=Diagonal.init(rng, dim))


@example("Triangular")
def _triangular(rng, dim):
    # init draws diagonal signs at random, so negative t_ii (the |.| in the log-det) occur
    return Case(bijection=Triangular.init(rng, dim))


@example("LUAffine")
def _lu_affine(rng, dim):
    return Case(bijection=LUAffine.init(rng, dim))


@example("Permutation")
def _permutation(rng, dim):
    return Case(bijection=Permutation.init(rng, dim))


@example("Reverse")
def _reverse(rng, dim):
    return Case(bijection=Reverse.init(rng, dim))


@example("Compose")
def _compose(rng, dim):
    # f1 first: an order-sensitive chain (the maps do not commute)
    return Case(
        bijection=Compose(
            Affine.init(rng, dim), Permutation.init(rng, dim), Diagonal.init(rng, dim)
        )
    )


@example("Inverse")
def _inverse(rng, dim):
    return Case(bijection=Inverse(Triangular.init(rng, dim)))
