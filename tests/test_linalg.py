"""refflow.linalg against independent computations: NumPy/LAPACK, SciPy, closed forms,
finite differences, and the lecture's identities (Leibniz == LU, det(I + AB) = det(I + BA))."""

import math
from fractions import Fraction

import autograd.numpy as anp
import numpy
import pytest
import scipy.linalg
from autograd import grad
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow import backend, linalg
from tests.strict import StrictArray

EPS = numpy.finfo(numpy.float64).eps

seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(1, 6)
few = settings(max_examples=15, deadline=None)


def dev(x):
    return backend.asarray(x)


def host(x):
    return backend.to_numpy(x)


class _OnBackend:
    """refflow.linalg with NumPy in and out: array arguments move to the current backend
    (NumPy, or CuPy under ``--backend cupy``) and results come back to the host."""

    def __getattr__(self, name):
        fn = getattr(linalg, name)

        def call(*args, **kwargs):
            out = fn(*(dev(a) if isinstance(a, numpy.ndarray) else a for a in args), **kwargs)
            return tuple(host(o) for o in out) if isinstance(out, tuple) else host(out)

        return call


la = _OnBackend()


def dgrad(f, *args, argnum=0):
    """autograd's gradient of f at host arrays args, evaluated on the current backend."""
    return host(grad(f, argnum)(*(dev(a) for a in args)))



def random_matrix(seed, n, batch=()):
    return numpy.random.default_rng(seed).standard_normal(batch + (n, n))


def well_conditioned_triangular(seed, n, lower, batch=()):
    rng = numpy.random.default_rng(seed)
    T = rng.standard_normal(batch + (n, n))
    T = T + (2.0 + rng.uniform(size=batch + (n,)))[..., None] * numpy.eye(n)
    return numpy.tril(T) if lower else numpy.triu(T)


def central_fd(f, x, eps=1e-6):
    """d f / d x by central differences, one entry of x at a time (f: host array -> scalar)."""
    x = numpy.asarray(x, dtype=float)
    out = numpy.zeros_like(x)
    for idx in numpy.ndindex(*x.shape):
        step = numpy.zeros_like(x)
        step[idx] = eps
        out[idx] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
    return out


def leibniz_tolerance(A):
    # the Leibniz sum cancels terms as large as prod_i max_j |a_ij|; its rounding error is
    # bounded by (n + 1) eps times the sum of |terms| <= prod_i sum_j |a_ij|
    n = A.shape[-1]
    return 4 * (n + 1) * EPS * numpy.prod(numpy.sum(numpy.abs(A), axis=-1), axis=-1)


def hilbert_det(n):
    """Closed form: det H_n = c_n^4 / c_{2n}, c_n = prod_{i < n} i!."""
    c = [math.prod(math.factorial(i) for i in range(k)) for k in range(2 * n + 1)]
    return float(Fraction(c[n] ** 4, c[2 * n]))


# ------------------------------------------------------------------ determinants


@few
@given(seed=seeds, n=sizes, batch=st.sampled_from([(), (3,), (2, 2)]))
def test_leibniz_lu_and_lapack_agree(seed, n, batch):
    A = random_matrix(seed, n, batch)
    reference = numpy.linalg.det(A)
    numpy.testing.assert_allclose(la.det(A), reference, rtol=1e-10, atol=1e-13)
    numpy.testing.assert_array_less(numpy.abs(la.det_leibniz(A) - reference),
                                    leibniz_tolerance(A) + 1e-300)


@few
@given(seed=seeds, n=st.integers(2, 7))
def test_scaled_hilbert_against_closed_form(seed, n):
    rng = numpy.random.default_rng(seed)
    d1, d2 = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    i = numpy.arange(n)
    A = d1[:, None] / (i[:, None] + i[None, :] + 1.0) * d2[None, :]
    exact = numpy.prod(d1) * numpy.prod(d2) * hilbert_det(n)
    cond = numpy.linalg.cond(A)
    # LU's relative error in det grows like cond(A) * eps
    numpy.testing.assert_allclose(la.det(A), exact, rtol=50 * n * cond * EPS)
    numpy.testing.assert_allclose(numpy.linalg.det(A), exact, rtol=50 * n * cond * EPS)
    assert abs(la.det_leibniz(A) - exact) <= leibniz_tolerance(A)
    sign, logabsdet = la.slogdet(A)
    assert sign == 1.0
    numpy.testing.assert_allclose(logabsdet, math.log(exact), atol=50 * n * cond * EPS)


@few
@given(seed=seeds, n=st.integers(2, 6))
def test_vandermonde(seed, n):
    x = numpy.sort(numpy.random.default_rng(seed).uniform(-1.0, 1.0, n))
    x = x + 0.05 * numpy.arange(n)  # keep the nodes apart
    A = numpy.vander(x, increasing=True)
    exact = math.prod(x[j] - x[i] for i in range(n) for j in range(i + 1, n))
    tol = 50 * n * numpy.linalg.cond(A) * EPS
    numpy.testing.assert_allclose(la.det(A), exact, rtol=tol)
    assert abs(la.det_leibniz(A) - exact) <= leibniz_tolerance(A)
    numpy.testing.assert_allclose(la.slogdet(A)[1], numpy.linalg.slogdet(A)[1], atol=tol)


def exactly_singular(seed, n):
    """A row that is a power of two times another row, or an all-zero column."""
    rng = numpy.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    i, j = rng.choice(n, 2, replace=False)
    if rng.integers(2):
        A[j] = 2.0 ** rng.integers(-3, 4) * A[i]
    else:
        A[:, j] = 0.0
    return A


@few
@given(seed=seeds, n=st.integers(2, 6))
def test_exactly_singular(seed, n):
    A = exactly_singular(seed, n)
    assert la.det(A) == 0.0
    sign, logabsdet = la.slogdet(A)
    assert sign == 0.0 and logabsdet == -numpy.inf
    assert abs(numpy.linalg.det(A)) <= 1e-12 * numpy.prod(numpy.abs(A).sum(axis=1))
    assert abs(la.det_leibniz(A)) <= leibniz_tolerance(A)
    ref_logabsdet = numpy.linalg.slogdet(A)[1]
    # LAPACK's blocked elimination may leave a round-off pivot instead of an exact zero
    assert ref_logabsdet == -numpy.inf or ref_logabsdet < math.log(1e-12) + numpy.log(
        numpy.prod(numpy.abs(A).sum(axis=1))
    )


@few
@given(seed=seeds, n=st.integers(2, 6), rank=st.integers(0, 5))
def test_rank_deficient_product(seed, n, rank):
    rng = numpy.random.default_rng(seed)
    rank = min(rank, n - 1)
    A = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n))
    scale = numpy.prod(numpy.abs(A).sum(axis=1)) + 1.0
    assert abs(la.det(A)) <= 1e-12 * scale
    assert abs(la.det_leibniz(A)) <= 1e-12 * scale
    logabsdet = la.slogdet(A)[1]
    assert not numpy.isnan(logabsdet) and logabsdet < math.log(1e-12 * scale)


def test_singular_gives_no_warning_or_nan():
    A = numpy.array([[1.0, 0.0, 2.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    with numpy.errstate(all="raise"):
        sign, logabsdet = la.slogdet(A)
        P, L, U = la.lu(A)
    assert sign == 0.0 and logabsdet == -numpy.inf
    assert numpy.all(numpy.isfinite(L)) and numpy.all(numpy.isfinite(U))
    numpy.testing.assert_allclose(P @ L @ U, A, atol=1e-15)


@few
@given(seed=seeds, n=sizes, batch=st.sampled_from([(), (4,), (2, 3)]))
def test_slogdet_against_lapack(seed, n, batch):
    A = random_matrix(seed, n, batch)
    sign, logabsdet = la.slogdet(A)
    ref_sign, ref_logabsdet = numpy.linalg.slogdet(A)
    numpy.testing.assert_array_equal(sign, ref_sign)
    numpy.testing.assert_allclose(logabsdet, ref_logabsdet, atol=1e-10)


def test_det_leibniz_refuses_n9():
    with pytest.raises(ValueError, match="A:"):
        la.det_leibniz(numpy.ones((9, 9)))
    assert la.det_leibniz(numpy.eye(8)) == 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: la.det(numpy.ones((2, 3))),
        lambda: la.slogdet(numpy.ones(3)),
        lambda: la.lu(numpy.ones((3, 2))),
        lambda: la.solve(numpy.eye(3), numpy.ones(2)),
        lambda: la.solve_triangular(numpy.eye(3), numpy.ones((3, 2))),
        lambda: la.det_lowrank(numpy.ones((4, 2)), numpy.ones((3, 4))),
        lambda: la.spectral_norm(numpy.ones(3)),
        lambda: la.spectral_norm(numpy.ones((3, 3)), iters=0),
    ],
)
def test_bad_shapes_raise_value_error(call):
    with pytest.raises(ValueError, match=r"^(A|B|T|b|W|iters):"):
        call()


# ------------------------------------------------------------------ LU


@few
@given(seed=seeds, n=sizes, batch=st.sampled_from([(), (3,), (2, 2)]), singular=st.booleans())
def test_lu_factors(seed, n, batch, singular):
    A = exactly_singular(seed, n) + numpy.zeros(batch + (n, n)) if singular and n > 1 else (
        random_matrix(seed, n, batch)
    )
    P, L, U = la.lu(A)
    numpy.testing.assert_allclose(P @ L @ U, A, atol=1e-13)
    numpy.testing.assert_array_equal(numpy.triu(U), U)
    numpy.testing.assert_array_equal(numpy.tril(L), L)
    numpy.testing.assert_array_equal(numpy.diagonal(L, axis1=-2, axis2=-1), 1.0)
    assert numpy.all(numpy.abs(L) <= 1.0)  # partial pivoting
    assert set(numpy.unique(P)) <= {0.0, 1.0}
    numpy.testing.assert_array_equal(P.sum(axis=-1), 1.0)
    numpy.testing.assert_array_equal(P.sum(axis=-2), 1.0)


# ------------------------------------------------------------------ solves


@few
@given(seed=seeds, n=sizes, lower=st.booleans(), unit=st.booleans(), k=st.integers(1, 3))
def test_solve_triangular_against_scipy(seed, n, lower, unit, k):
    rng = numpy.random.default_rng(seed)
    T = well_conditioned_triangular(seed, n, lower)
    # the other triangle holds junk, which both solvers must ignore
    T = T + (numpy.triu(rng.standard_normal((n, n)), 1) if lower else
             numpy.tril(rng.standard_normal((n, n)), -1))
    b = rng.standard_normal((n, k))
    ref = scipy.linalg.solve_triangular(T, b, lower=lower, unit_diagonal=unit)
    x = la.solve_triangular(T, b, lower=lower, unit_diagonal=unit, columns=True)
    numpy.testing.assert_allclose(x, ref, rtol=1e-10, atol=1e-12)
    x_rows = la.solve_triangular(T, b.T, lower=lower, unit_diagonal=unit)
    numpy.testing.assert_allclose(x_rows, ref.T, rtol=1e-10, atol=1e-12)


@few
@given(seed=seeds, n=sizes, lower=st.booleans())
def test_solve_triangular_batched(seed, n, lower):
    rng = numpy.random.default_rng(seed)
    T = well_conditioned_triangular(seed, n, lower, batch=(2, 3))
    b = rng.standard_normal((2, 3, n))
    x = la.solve_triangular(T, b, lower=lower)
    for i, j in numpy.ndindex(2, 3):
        ref = scipy.linalg.solve_triangular(T[i, j], b[i, j], lower=lower)
        numpy.testing.assert_allclose(x[i, j], ref, rtol=1e-10, atol=1e-12)
    # one T against a batch of rows, the flow convention (N, D)
    x_rows = la.solve_triangular(T[0, 0], b.reshape(-1, n), lower=lower)
    ref = scipy.linalg.solve_triangular(T[0, 0], b.reshape(-1, n).T, lower=lower).T
    numpy.testing.assert_allclose(x_rows, ref, rtol=1e-10, atol=1e-12)


@few
@given(seed=seeds, n=sizes, batch=st.sampled_from([(), (3,), (2, 2)]))
def test_solve_against_numpy(seed, n, batch):
    rng = numpy.random.default_rng(seed)
    A = random_matrix(seed, n, batch) + 3 * numpy.eye(n)
    b = rng.standard_normal(batch + (n,))
    numpy.testing.assert_allclose(
        la.solve(A, b), numpy.linalg.solve(A, b[..., None])[..., 0], rtol=1e-9, atol=1e-11
    )
    B = rng.standard_normal(batch + (n, 2))
    numpy.testing.assert_allclose(
        la.solve(A, B, columns=True), numpy.linalg.solve(A, B), rtol=1e-9, atol=1e-11
    )
    if batch == ():
        rows = rng.standard_normal((5, n))
        numpy.testing.assert_allclose(
            la.solve(A, rows), numpy.linalg.solve(A, rows.T).T, rtol=1e-9, atol=1e-11
        )


# ------------------------------------------------------------------ low rank, spectral norm


@few
@given(seed=seeds, d=st.integers(1, 7), m=st.integers(1, 4), batch=st.sampled_from([(), (3,)]))
def test_det_lowrank_is_sylvester(seed, d, m, batch):
    rng = numpy.random.default_rng(seed)
    A = rng.standard_normal(batch + (d, m)) / numpy.sqrt(d)
    B = rng.standard_normal(batch + (m, d))
    full = numpy.eye(d) + A @ B
    numpy.testing.assert_allclose(la.det_lowrank(A, B), numpy.linalg.det(full),
                                  rtol=1e-9, atol=1e-12)
    numpy.testing.assert_allclose(la.logabsdet_lowrank(A, B), numpy.linalg.slogdet(full)[1],
                                  atol=1e-9)


def test_planar_special_case():
    # M = 1: det(I + v w^T) = 1 + w . v, the planar flow's determinant
    v, w = numpy.array([[0.5], [-1.0], [2.0]]), numpy.array([[1.0, 3.0, -0.25]])
    numpy.testing.assert_allclose(la.det_lowrank(v, w), 1.0 + (w @ v).item(), rtol=1e-14)


@few
@given(seed=seeds, m=st.integers(1, 6), n=st.integers(1, 6), batch=st.sampled_from([(), (3,)]))
def test_spectral_norm_against_svd(seed, m, n, batch):
    W = numpy.random.default_rng(seed).standard_normal(batch + (m, n))
    sigma = numpy.linalg.svd(W, compute_uv=False)[..., 0]
    estimate = la.spectral_norm(W, iters=20000, tol=1e-15)
    assert numpy.all(estimate <= sigma * (1 + 1e-12))  # a lower bound at every iteration
    numpy.testing.assert_allclose(estimate, sigma, rtol=1e-6)


def test_spectral_norm_structured_and_zero():
    # a ones start vector is in the null space of W here; the cos(j) start is not
    W = numpy.array([[1.0, -1.0], [2.0, -2.0]])
    numpy.testing.assert_allclose(la.spectral_norm(W), numpy.sqrt(10.0), rtol=1e-12)
    assert la.spectral_norm(numpy.zeros((3, 2))) == 0.0


# ------------------------------------------------------------------ gradients


@few
@given(seed=seeds, n=st.integers(1, 5))
def test_gradients_of_determinants(seed, n):
    A = random_matrix(seed, n) + numpy.eye(n)
    # autograd against finite differences, and against the closed form adj(A)^T
    g = dgrad(linalg.det, A)
    numpy.testing.assert_allclose(g, central_fd(la.det, A), rtol=1e-6, atol=1e-7)
    numpy.testing.assert_allclose(g, numpy.linalg.det(A) * numpy.linalg.inv(A).T,
                                  rtol=1e-8, atol=1e-10)

    def logabsdet(a):
        return linalg.slogdet(a)[1]

    numpy.testing.assert_allclose(dgrad(logabsdet, A), central_fd(lambda a: la.slogdet(a)[1], A),
                                  rtol=1e-6, atol=1e-7)
    numpy.testing.assert_allclose(dgrad(linalg.det_leibniz, A), g, rtol=1e-8, atol=1e-10)


@few
@given(seed=seeds, n=st.integers(1, 5), lower=st.booleans(), unit=st.booleans())
def test_gradients_of_solve_triangular(seed, n, lower, unit):
    rng = numpy.random.default_rng(seed)
    T = well_conditioned_triangular(seed, n, lower)
    b, w = rng.standard_normal((2, n)), rng.standard_normal((2, n))
    options = {"lower": lower, "unit_diagonal": unit}

    def loss(t, c):
        return anp.sum(dev(w) * linalg.solve_triangular(t, c, **options))

    def host_loss(t, c):
        return numpy.sum(w * la.solve_triangular(t, c, **options))

    numpy.testing.assert_allclose(dgrad(loss, T, b, argnum=0),
                                  central_fd(lambda t: host_loss(t, b), T), rtol=1e-6, atol=1e-7)
    numpy.testing.assert_allclose(dgrad(loss, T, b, argnum=1),
                                  central_fd(lambda c: host_loss(T, c), b), rtol=1e-6, atol=1e-7)


@few
@given(seed=seeds, d=st.integers(1, 5), m=st.integers(1, 3))
def test_gradients_of_lowrank(seed, d, m):
    rng = numpy.random.default_rng(seed)
    A, B = rng.standard_normal((d, m)) / d, rng.standard_normal((m, d))
    for name in ("det_lowrank", "logabsdet_lowrank"):
        f, host_f = getattr(linalg, name), getattr(la, name)
        fd_A = central_fd(lambda a, host_f=host_f: host_f(a, B), A)
        fd_B = central_fd(lambda b, host_f=host_f: host_f(A, b), B)
        numpy.testing.assert_allclose(dgrad(f, A, B, argnum=0), fd_A, rtol=1e-6, atol=1e-7)
        numpy.testing.assert_allclose(dgrad(f, A, B, argnum=1), fd_B, rtol=1e-6, atol=1e-7)


def test_gradients_of_solve_and_spectral_norm():
    rng = numpy.random.default_rng(0)
    A, b = rng.standard_normal((4, 4)) + 2 * numpy.eye(4), rng.standard_normal((3, 4))
    numpy.testing.assert_allclose(
        dgrad(lambda a: anp.sum(linalg.solve(a, dev(b)) ** 2), A),
        central_fd(lambda a: numpy.sum(la.solve(a, b) ** 2), A),
        rtol=1e-6, atol=1e-7,
    )
    W = rng.standard_normal((3, 4))
    U, _, Vt = numpy.linalg.svd(W)
    # d sigma_1 / d W = u_1 v_1^T for a simple top singular value
    numpy.testing.assert_allclose(dgrad(linalg.spectral_norm, W), numpy.outer(U[:, 0], Vt[0]),
                                  atol=1e-6)


# ------------------------------------------------------------------ batches, dtypes, backends


@few
@given(seed=seeds, n=sizes)
def test_batched_equals_per_matrix(seed, n):
    A = random_matrix(seed, n, (2, 3)) + 2 * numpy.eye(n)
    b = numpy.random.default_rng(seed + 1).standard_normal((2, 3, n))
    batched = {
        "det": la.det(A),
        "det_leibniz": la.det_leibniz(A),
        "logabsdet": la.slogdet(A)[1],
        "solve": la.solve(A, b),
        "spectral_norm": la.spectral_norm(A),
    }
    factors = la.lu(A)
    for i, j in numpy.ndindex(2, 3):
        single = {
            "det": la.det(A[i, j]),
            "det_leibniz": la.det_leibniz(A[i, j]),
            "logabsdet": la.slogdet(A[i, j])[1],
            "solve": la.solve(A[i, j], b[i, j]),
            "spectral_norm": la.spectral_norm(A[i, j]),
        }
        for key, value in single.items():
            # power iteration stops when the whole stack has converged, so later for some
            rtol = 1e-9 if key == "spectral_norm" else 1e-12
            numpy.testing.assert_allclose(batched[key][i, j], value, rtol=rtol, err_msg=key)
        for f_batched, f_single in zip(factors, la.lu(A[i, j])):
            numpy.testing.assert_array_equal(f_batched[i, j], f_single)


def test_float32_stays_float32():
    rng = numpy.random.default_rng(1)
    A = (rng.standard_normal((4, 4)) + 2 * numpy.eye(4)).astype(numpy.float32)
    b = rng.standard_normal((5, 4)).astype(numpy.float32)
    outputs = [la.det(A), la.slogdet(A)[1], la.solve(A, b), *la.lu(A),
               la.solve_triangular(A, b), la.spectral_norm(A),
               la.det_lowrank(A[:, :2], A[:2]), dgrad(lambda a: linalg.slogdet(a)[1], A)]
    assert all(o.dtype == numpy.float32 for o in outputs)
    numpy.testing.assert_allclose(la.det(A), numpy.linalg.det(A.astype(float)), rtol=1e-5)


@pytest.mark.standin
@pytest.mark.skipif(backend.get_backend() != "numpy", reason="a CPU stand-in for CuPy")
def test_strict_stand_in_array():
    """Everything runs on a device-like array that refuses conversion to NumPy."""
    rng = numpy.random.default_rng(2)
    A = rng.standard_normal((2, 3, 3)) + 2 * numpy.eye(3)
    b = rng.standard_normal((2, 3))
    S, Sb = StrictArray(A), StrictArray(b)

    def logabsdet_sum(a):
        return anp.sum(linalg.slogdet(a)[1])

    pairs = [
        (linalg.det(S), linalg.det(A)),
        (linalg.det_leibniz(S), linalg.det_leibniz(A)),
        (linalg.slogdet(S)[1], linalg.slogdet(A)[1]),
        (linalg.lu(S)[1], linalg.lu(A)[1]),
        (linalg.solve(S, Sb), linalg.solve(A, b)),
        (linalg.solve_triangular(S, Sb, lower=False), linalg.solve_triangular(A, b, lower=False)),
        (linalg.det_lowrank(S[..., :2], S[..., :2, :]),
         linalg.det_lowrank(A[..., :2], A[..., :2, :])),
        (linalg.spectral_norm(S), linalg.spectral_norm(A)),
        (grad(logabsdet_sum)(S), grad(logabsdet_sum)(A)),
        (grad(lambda a: anp.sum(linalg.solve(a, Sb)))(S),
         grad(lambda a: anp.sum(linalg.solve(a, b)))(A)),
    ]
    for strict, plain in pairs:
        assert isinstance(strict, StrictArray)
        numpy.testing.assert_allclose(strict.get(), plain, rtol=1e-12)
