"""Affine flows: relations between the classes and the lecture's identities.

The generic suite (test_properties.py) already checks every class against finite
differences; here each structured class is compared with the general ``Affine`` built from
the same matrix, ``Affine`` with ``numpy.linalg``, and bad input with clear errors.
"""

from __future__ import annotations

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow import backend as B
from refflow.affine import Affine, Diagonal, LUAffine, Permutation, Reverse, Triangular
from refflow.core import Compose, Flow, Inverse
from refflow.distributions import StandardNormal
from refflow.jacobian import jacobian
from refflow.tree import partition

seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 6)
few = settings(max_examples=15, deadline=None)


def host(x):
    return B.to_numpy(x)


def close(a, b, atol=1e-10, rtol=1e-10):
    numpy.testing.assert_allclose(host(a), host(b), atol=atol, rtol=rtol)


def permutation_matrix(perm):
    """P with (P v)_i = v_{perm[i]}, i.e. P[i, perm[i]] = 1, built independently of the class."""
    perm = host(perm)
    return numpy.eye(len(perm))[perm]


@few
@given(seed=seeds, dim=dims)
def test_affine_log_det_matches_numpy_slogdet(seed, dim):
    rng = B.rng(seed)
    A = rng.standard_normal((dim, dim)) + 0.1 * B.eye(dim)
    f = Affine(A, rng.standard_normal(dim))
    z = rng.standard_normal((3, dim))
    expected = numpy.linalg.slogdet(host(A))[1]
    close(f.forward(z)[1], numpy.full(3, expected), atol=1e-9)
    close(f.inverse(z)[1], numpy.full(3, -expected), atol=1e-9)
    close(f.forward(z)[0], host(z) @ host(A).T + host(f.b))
    # the solve is backward stable: compare residuals, which do not grow with cond(A)
    residual = host(f.inverse(z)[0]) @ host(A).T + host(f.b) - host(z)
    assert numpy.abs(residual).max() <= 1e-12 * (1 + numpy.abs(host(A)).sum() * numpy.abs(
        host(f.inverse(z)[0])).max())


@few
@given(seed=seeds, dim=dims, k=st.integers(2, 4))
def test_composition_of_affine_maps_is_one_affine_map(seed, dim, k):
    """f_K o ... o f_1 with f_k(z) = A_k z + b_k is z -> A z + b, A = A_K ... A_1."""
    rng = B.rng(seed)
    maps = [Affine.init(rng, dim) for _ in range(k)]
    A, b = numpy.eye(dim), numpy.zeros(dim)
    for f in maps:
        A, b = host(f.A) @ A, host(f.A) @ b + host(f.b)
    one = Affine(B.asarray(A), B.asarray(b))
    chain = Compose(*maps)
    z = rng.standard_normal((5, dim))
    x, log_det = chain.forward(z)
    x_one, log_det_one = one.forward(z)
    close(x, x_one, atol=1e-10)
    close(log_det, log_det_one, atol=1e-10)
    z_back, log_det_back = chain.inverse(x)
    close(z_back, z, atol=1e-9)
    close(log_det_back, one.inverse(x)[1], atol=1e-10)


@few
@given(seed=seeds, dim=dims)
def test_triangular_equals_affine_with_the_same_matrix(seed, dim):
    rng = B.rng(seed)
    f = Triangular.init(rng, dim)
    g = Affine(f.T, f.b)
    z = rng.standard_normal((4, dim))
    for got, want in ((f.forward(z), g.forward(z)), (f.inverse(z), g.inverse(z))):
        close(got[0], want[0], atol=1e-10)
        close(got[1], want[1], atol=1e-10)


@few
@given(seed=seeds, dim=dims)
def test_lu_affine_equals_affine_with_p_l_u(seed, dim):
    rng = B.rng(seed)
    f = LUAffine.init(rng, dim)
    U = host(f.U) + numpy.diag(host(f.d))
    A = permutation_matrix(f.perm) @ host(f.L) @ U
    g = Affine(B.asarray(A), f.b)
    z = rng.standard_normal((4, dim))
    for got, want in ((f.forward(z), g.forward(z)), (f.inverse(z), g.inverse(z))):
        close(got[0], want[0], atol=1e-10)
        close(got[1], want[1], atol=1e-10)


@few
@given(seed=seeds, dim=dims)
def test_lu_affine_stays_invertible_for_any_unconstrained_parameters(seed, dim):
    """Arbitrary leaves (as a gradient step could produce) rebuild to a valid P L U."""
    rng = B.rng(seed)
    leaves, rebuild = partition(LUAffine.init(rng, dim))
    f = rebuild([2.0 * rng.standard_normal(leaf.shape) for leaf in leaves])
    L, U, d = host(f.L), host(f.U), host(f.d)
    numpy.testing.assert_array_equal(numpy.diag(L), numpy.ones(dim))
    # U is rebuilt strictly upper: no parameter on its diagonal that nothing reads
    numpy.testing.assert_array_equal(numpy.tril(U), numpy.zeros((dim, dim)))
    LUAffine(f.perm, f.L, f.U, f.d, f.b)                   # the constructor accepts it
    assert numpy.all(d > 0)
    A = permutation_matrix(f.perm) @ L @ (U + numpy.diag(d))
    z = rng.standard_normal((3, dim))
    close(f.forward(z)[1], numpy.full(3, numpy.linalg.slogdet(A)[1]), atol=1e-9)
    close(f.inverse(f.forward(z)[0])[0], z, atol=1e-6, rtol=1e-6)


def test_lu_affine_does_not_cover_every_invertible_matrix():
    """P L (U + diag d) needs P^T A to have positive leading principal minors: -I (D = 2)
    fails for both permutations, so no LUAffine represents it (as its docstring says)."""
    A = -numpy.eye(2)
    for perm in ([0, 1], [1, 0]):
        minors = [numpy.linalg.det((permutation_matrix(numpy.array(perm)).T @ A)[:k, :k])
                  for k in (1, 2)]
        assert min(minors) <= 0


def test_diagonal_and_permutations_equal_affine_with_their_matrix():
    rng = B.rng(3)
    dim = 5
    z = rng.standard_normal((4, dim))
    diag = Diagonal.init(rng, dim)
    perm = Permutation.init(rng, dim)
    cases = (
        (diag, numpy.diag(host(diag.scale)), host(diag.shift)),
        (perm, permutation_matrix(perm.perm), numpy.zeros(dim)),
        (Reverse(), numpy.eye(dim)[::-1], numpy.zeros(dim)),
    )
    for f, A, b in cases:
        g = Affine(B.asarray(A), B.asarray(b))
        for got, want in ((f.forward(z), g.forward(z)), (f.inverse(z), g.inverse(z))):
            close(got[0], want[0], atol=1e-12)
            close(got[1], want[1], atol=1e-12)


FAMILY = (Affine, Diagonal, Triangular, LUAffine, Permutation, Reverse)


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_inverse_function_theorem(cls):
    """J_{f^{-1}}(f(z)) J_f(z) = I (lecture: "According to the inverse function theorem")."""
    rng = B.rng(11)
    f = cls.init(rng, 4)
    z = rng.standard_normal((3, 4))
    x = f.forward(z)[0]
    J_f = host(jacobian(lambda v: f.forward(v)[0], z))
    J_inv = host(jacobian(lambda v: f.inverse(v)[0], x))
    close(J_inv @ J_f, numpy.broadcast_to(numpy.eye(4), (3, 4, 4)), atol=1e-10)


def test_composition_adds_log_dets():
    """log|det J_{f2 o f1}(z)| = log|det J_{f1}(z)| + log|det J_{f2}(f1(z))|."""
    rng = B.rng(5)
    f1, f2, f3 = Affine.init(rng, 3), Triangular.init(rng, 3), LUAffine.init(rng, 3)
    z = rng.standard_normal((6, 3))
    x1, ld1 = f1.forward(z)
    x2, ld2 = f2.forward(x1)
    x3, ld3 = f3.forward(x2)
    x, ld = Compose(f1, f2, f3).forward(z)
    close(x, x3)
    close(ld, ld1 + ld2 + ld3, atol=1e-12)
    J = host(jacobian(lambda v: Compose(f1, f2, f3).forward(v)[0], z))
    close(ld, numpy.linalg.slogdet(J)[1], atol=1e-10)
    # and through a flow: log p(x) = log p_z(z) - sum_k log|det J_{f_k}|
    flow = Flow(StandardNormal(3), Compose(f1, f2, f3))
    close(flow.log_prob(x), StandardNormal(3).log_prob(z) - ld, atol=1e-10)


def test_inverse_swaps_directions():
    rng = B.rng(2)
    f = Triangular.init(rng, 3)
    z = rng.standard_normal((2, 3))
    for got, want in ((Inverse(f).forward(z), f.inverse(z)), (Inverse(f).inverse(z), f.forward(z))):
        close(got[0], want[0], atol=0)
        close(got[1], want[1], atol=0)


def test_batch_shapes_with_several_leading_axes():
    rng = B.rng(4)
    z = rng.standard_normal((2, 3, 4))
    for cls in FAMILY:
        f = cls.init(rng, 4)
        x, ld = f.forward(z)
        assert x.shape == (2, 3, 4) and ld.shape == (2, 3), cls.__name__
        close(f.inverse(x)[0], z, atol=1e-10)


def test_init_is_reproducible_and_well_conditioned():
    for cls in (Affine, Triangular, LUAffine):
        a, b = cls.init(B.rng(9), 6), cls.init(B.rng(9), 6)
        for la, lb in zip(partition(a)[0], partition(b)[0]):
            numpy.testing.assert_array_equal(host(la), host(lb))
        A = host(jacobian(lambda v, f=a: f.forward(v)[0], B.rng(0).standard_normal((1, 6))))[0]
        assert numpy.linalg.cond(A) < 20, cls.__name__


# ---------------------------------------------------------------- bad input


def arr(x):
    return B.asarray(x)


BAD = [
    (lambda: Affine(arr([[1.0, 2.0], [2.0, 4.0]]), arr([0.0, 0.0])), "A", "invertible"),
    (lambda: Affine(arr([[0.0, 0.0], [0.0, 0.0]]), arr([0.0, 0.0])), "A", "invertible"),
    (lambda: Affine(arr([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), arr([0.0, 0.0])), "A", "square"),
    (lambda: Affine(arr([1.0, 2.0]), arr([0.0, 0.0])), "A", "2-d"),
    (lambda: Affine(arr([[1.0, numpy.nan], [0.0, 1.0]]), arr([0.0, 0.0])), "A", "finite"),
    (lambda: Affine(arr([[1.0, 0.0], [0.0, 1.0]]), arr([0.0, 0.0, 0.0])), "b", "shape"),
    (lambda: Affine(arr([[1.0, 0.0], [0.0, 1.0]]), arr([numpy.inf, 0.0])), "b", "finite"),
    (lambda: Diagonal(arr([1.0, 0.0]), arr([0.0, 0.0])), "scale", "positive"),
    (lambda: Diagonal(arr([1.0, -2.0]), arr([0.0, 0.0])), "scale", "positive"),
    (lambda: Diagonal(arr([1.0, numpy.nan]), arr([0.0, 0.0])), "scale", "finite"),
    (lambda: Diagonal(arr([1.0, 1.0]), arr([0.0])), "shift", "shape"),
    (lambda: Triangular(arr([[1.0, 1.0], [0.0, 1.0]]), arr([0.0, 0.0])), "T", "lower"),
    (lambda: Triangular(arr([[1.0, 0.0], [1.0, 0.0]]), arr([0.0, 0.0])), "T", "nonzero"),
    (lambda: Triangular(arr([[1.0, 0.0], [numpy.nan, 1.0]]), arr([0.0, 0.0])), "T", "finite"),
    (lambda: Permutation(arr([0, 0, 1])), "perm", "permutation"),
    (lambda: Permutation(arr([0, 3, 1])), "perm", "permutation"),
    (lambda: Permutation(arr([0.0, 1.0])), "perm", "integer"),
    (lambda: Permutation(arr([[0, 1]])), "perm", "1-d"),
    (lambda: LUAffine(arr([0, 1]), arr([[2.0, 0.0], [0.5, 1.0]]), arr([[0.0, 1.0], [0.0, 0.0]]),
                      arr([1.0, 1.0]), arr([0.0, 0.0])), "L", "unit"),
    (lambda: LUAffine(arr([0, 1]), arr([[1.0, 0.0], [0.5, 1.0]]), arr([[1.0, 1.0], [0.0, 0.0]]),
                      arr([1.0, 1.0]), arr([0.0, 0.0])), "U", "strictly upper"),
    (lambda: LUAffine(arr([0, 1]), arr([[1.0, 0.0], [0.5, 1.0]]), arr([[0.0, 1.0], [0.0, 0.0]]),
                      arr([1.0, 0.0]), arr([0.0, 0.0])), "d", "positive"),
    (lambda: LUAffine(arr([0, 1, 2]), arr([[1.0, 0.0], [0.5, 1.0]]),
                      arr([[0.0, 1.0], [0.0, 0.0]]), arr([1.0, 1.0]), arr([0.0, 0.0])), "L", "3"),
]


@pytest.mark.parametrize("make, name, words", BAD, ids=[f"{n}-{w}" for _, n, w in BAD])
def test_bad_parameters_raise_value_error_naming_the_argument(make, name, words):
    with pytest.raises(ValueError, match=rf"^{name}: .*{words}"):
        make()


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_wrong_event_size_raises_value_error(cls):
    f = cls.init(B.rng(0), 3)
    if cls is Reverse:  # it has no size to check against; a 0-d input is what it rejects
        with pytest.raises(ValueError, match="^z: "):
            f.forward(B.asarray(1.0))
        return
    with pytest.raises(ValueError, match="^z: .*trailing shape"):
        f.forward(B.zeros((2, 4)))
    with pytest.raises(ValueError, match="^x: .*trailing shape"):
        f.inverse(B.zeros((2, 4)))


def test_init_rejects_a_bad_dim():
    for cls in FAMILY:
        for dim in (0, -1, 2.5):
            with pytest.raises(ValueError, match="^dim: "):
                cls.init(B.rng(0), dim)


def test_flow_rejects_bad_x_and_n():
    flow = Flow(StandardNormal(2), Affine.init(B.rng(0), 2))
    for bad in (B.zeros((3, 3)), B.zeros(3), B.asarray([[numpy.nan, 0.0]])):
        with pytest.raises(ValueError, match="^x: "):
            flow.log_prob(bad)
    for n in (0, -2, 2.5, "3"):
        with pytest.raises(ValueError, match="^n: "):
            flow.sample(n, B.rng(0))
        with pytest.raises(ValueError, match="^n: "):
            flow.sample_and_log_prob(n, B.rng(0))


def test_float32_round_trip_tolerance():
    """float32 parameters and data: measured round-trip error of the solves stays ~1e-6."""
    rng = B.rng(8)
    z = rng.standard_normal((50, 6), dtype=numpy.float32)
    for cls in (Affine, Triangular, LUAffine):
        f = cls.init(rng, 6)
        leaves, rebuild = partition(f)
        f32 = rebuild([leaf.astype(numpy.float32) for leaf in leaves])
        x, ld = f32.forward(z)
        z_back, ld_inv = f32.inverse(x)
        assert x.dtype == z_back.dtype == numpy.float32, cls.__name__
        close(z_back, z, atol=1e-5, rtol=1e-5)
        close(ld + ld_inv, numpy.zeros(50), atol=1e-6)


@pytest.mark.parametrize("cls", [Affine, Diagonal, Triangular, LUAffine, Permutation, Reverse])
def test_context_is_passed_by(cls):
    """No conditioner: a context, one row per sample or one shared row, changes no bit."""
    rng = B.rng(11)
    f = cls.init(rng, 4)
    z = rng.standard_normal((7, 4))
    for context in (rng.standard_normal((7, 3)), rng.standard_normal((2,))):
        for method in (f.forward, f.inverse):
            plain = method(z)
            given_context = method(z, context=context)
            for a, b in zip(plain, given_context):
                assert numpy.array_equal(host(a), host(b))
