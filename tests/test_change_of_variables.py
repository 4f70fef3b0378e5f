"""The lecture's worked examples of the change of variables, against closed forms and scipy.

1. The unit cube [0, 1]^3 scaled by A = 2I: uniform on [0, 2]^3, density 1/8.
2. x = 0.75 z + 1 with z ~ N(0, 1): N(1, 0.75^2) (0.75 is the standard deviation, erratum).
3. Affine flows keep Gaussians Gaussian: N(mu, Sigma) -> N(A mu + b, A Sigma A^T).
4. Maximum likelihood with an affine flow recovers a Gaussian's mean and covariance.
"""

from __future__ import annotations

import math

import numpy
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refflow import backend as B
from refflow.affine import Affine, Diagonal, LUAffine, Triangular
from refflow.core import Flow
from refflow.distributions import DiagonalNormal, StandardNormal, Uniform
from refflow.train import fit

few = settings(max_examples=15, deadline=None)


def host(x):
    return B.to_numpy(x)


# ---------------------------------------------------------------- 1. the unit cube


def cube_flows():
    cube = Uniform(B.zeros(3), B.ones(3))
    return (
        Flow(cube, Affine(2.0 * B.eye(3), B.zeros(3))),
        Flow(cube, Diagonal(B.full(3, 2.0), B.zeros(3))),
    )


def test_unit_cube_scaled_by_two_has_density_one_eighth_inside():
    x = B.rng(0).uniform(0.0, 2.0, (200, 3))
    for flow in cube_flows():
        p = numpy.exp(host(flow.log_prob(x)))
        numpy.testing.assert_allclose(p, numpy.full(200, 1 / 8), rtol=1e-14)
        # the lecture's volumes: p(z) V_Z = p(x) V_X = 1 with V_Z = 1, V_X = 2^3
        numpy.testing.assert_allclose(p * 2.0**3, 1.0, rtol=1e-14)
        # det A = 8, so the inverse map shrinks volumes by 1/8
        numpy.testing.assert_allclose(host(flow.bijection.inverse(x)[1]), -math.log(8.0),
                                      rtol=1e-14)


def test_unit_cube_scaled_by_two_has_density_zero_outside():
    outside = B.asarray([[2.5, 1.0, 1.0], [-0.1, 1.0, 1.0], [1.0, 1.0, 2.0001], [-3.0, 5.0, 0.0]])
    for flow in cube_flows():
        lp = host(flow.log_prob(outside))
        assert numpy.all(numpy.isneginf(lp)), lp


def test_scaled_cube_integrates_to_one_and_samples_fill_it():
    flow = cube_flows()[0]
    # Monte Carlo mass over the box [-1, 3]^3 (volume 64), which contains [0, 2]^3
    n = 40000
    u = B.rng(1).uniform(-1.0, 3.0, (n, 3))
    inside = numpy.exp(host(flow.log_prob(u)))
    mass = 64.0 * inside.mean()
    se = 64.0 * inside.std() / math.sqrt(n)
    assert abs(mass - 1.0) < 5 * se, (mass, se)
    x = host(flow.sample(2000, B.rng(2)))
    assert x.shape == (2000, 3)
    assert x.min() >= 0.0 and x.max() <= 2.0
    assert x.min() < 0.01 and x.max() > 1.99  # the whole side length 2 is reached


# ---------------------------------------------------------------- 2. x = 0.75 z + 1


def scalar_flows():
    return (
        Flow(StandardNormal(1), Diagonal(B.asarray([0.75]), B.asarray([1.0]))),
        Flow(StandardNormal(1), Affine(B.asarray([[0.75]]), B.asarray([1.0]))),
    )


def test_scalar_affine_gives_normal_with_standard_deviation_075():
    grid = numpy.linspace(-3.0, 5.0, 81)
    expected = scipy.stats.norm(loc=1.0, scale=0.75).logpdf(grid)
    for flow in scalar_flows():
        lp = host(flow.log_prob(B.asarray(grid[:, None])))
        numpy.testing.assert_allclose(lp, expected, rtol=1e-13, atol=1e-13)
        # the lecture's |d f^{-1}/dx| = 4/3 at every x
        log_det = host(flow.bijection.inverse(B.asarray(grid[:, None]))[1])
        numpy.testing.assert_allclose(log_det, math.log(4.0 / 3.0), rtol=1e-14)
        # and not variance 0.75: the slide's N(1, 0.75) read as a variance would be wrong
        wrong = scipy.stats.norm(loc=1.0, scale=math.sqrt(0.75)).logpdf(grid)
        assert numpy.abs(lp - wrong).max() > 0.1


def test_scalar_affine_samples_follow_the_normal():
    n = 20000
    for flow in scalar_flows():
        x = host(flow.sample(n, B.rng(3)))[:, 0]
        assert abs(x.mean() - 1.0) < 5 * 0.75 / math.sqrt(n)
        assert abs(x.std() - 0.75) < 5 * 0.75 / math.sqrt(2 * n)
        assert scipy.stats.kstest(x, scipy.stats.norm(1.0, 0.75).cdf).pvalue > 1e-3


# ---------------------------------------------------------------- 3. Gaussians stay Gaussian


def matrix_of(f):
    """The matrix A of an affine bijection, read from the images of the basis vectors."""
    dim = f.b.shape[-1]
    return (host(f.forward(B.eye(dim))[0]) - host(f.b)).T


@few
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 5),
       cls=st.sampled_from([Affine, Triangular, LUAffine]))
def test_affine_flow_of_standard_normal_is_normal_a_at(seed, dim, cls):
    """Flow(N(0, I), z -> A z + b) has density N(b, A A^T)."""
    rng = B.rng(seed)
    f = cls.init(rng, dim)
    A, b = matrix_of(f), host(f.b)
    x = rng.normal(0.0, 2.0, (20, dim))
    expected = scipy.stats.multivariate_normal(b, A @ A.T).logpdf(host(x)).reshape(20)
    lp = host(Flow(StandardNormal(dim), f).log_prob(x))
    numpy.testing.assert_allclose(lp, expected, rtol=1e-9, atol=1e-9)


@few
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 5))
def test_affine_flow_of_a_normal_is_normal_a_mu_plus_b(seed, dim):
    """The lecture's N(mu, Sigma) -> N(A mu + b, A Sigma A^T), with a general A."""
    rng = B.rng(seed)
    mu, s = rng.standard_normal(dim), numpy.exp(rng.uniform(-0.5, 0.5, dim))
    A = rng.standard_normal((dim, dim))
    assume(numpy.linalg.cond(host(A)) < 1e3)  # scipy's covariance check needs a clear rank
    b = rng.standard_normal(dim)
    flow = Flow(DiagonalNormal(mu, B.asarray(s)), Affine(A, b))
    A_, mu_ = host(A), host(mu)
    target = scipy.stats.multivariate_normal(A_ @ mu_ + host(b), A_ @ numpy.diag(s**2) @ A_.T)
    x = rng.normal(0.0, 2.0, (20, dim))
    numpy.testing.assert_allclose(host(flow.log_prob(x)),
                                  target.logpdf(host(x)).reshape(20), rtol=1e-9, atol=1e-8)


def test_affine_flow_samples_have_covariance_a_at():
    rng = B.rng(4)
    f = Affine.init(rng, 3)
    A, b = host(f.A), host(f.b)
    n = 20000
    x, lp = Flow(StandardNormal(3), f).sample_and_log_prob(n, rng)
    x = host(x)
    cov = A @ A.T
    se_mean = numpy.sqrt(numpy.diag(cov) / n)
    assert numpy.all(numpy.abs(x.mean(axis=0) - b) < 5 * se_mean)
    se_cov = numpy.sqrt((numpy.outer(numpy.diag(cov), numpy.diag(cov)) + cov**2) / n)
    assert numpy.all(numpy.abs(numpy.cov(x.T) - cov) < 5 * se_cov)
    numpy.testing.assert_allclose(host(lp), scipy.stats.multivariate_normal(b, cov).logpdf(x),
                                  rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- 4. fitting by maximum likelihood


def test_fitted_affine_flow_recovers_mean_and_covariance():
    """The MLE of N(b, A A^T) is the sample mean and the (1/N) sample covariance."""
    mu = numpy.array([1.0, -2.0])
    cov = numpy.array([[2.0, 0.6], [0.6, 0.5]])
    n = 2000
    data = B.rng(5).standard_normal((n, 2)) @ B.asarray(numpy.linalg.cholesky(cov).T)
    data = data + B.asarray(mu)
    flow = Flow(StandardNormal(2), Affine(B.eye(2), B.zeros(2)))
    flow, history = fit(flow, data, steps=150, batch_size=n, lr=0.1, rng=B.rng(6))
    A, b = host(flow.bijection.A), host(flow.bijection.b)
    x = host(data)
    numpy.testing.assert_allclose(b, x.mean(axis=0), atol=2e-3)
    numpy.testing.assert_allclose(A @ A.T, numpy.cov(x.T, bias=True), atol=5e-3)
    assert numpy.all(numpy.abs(b - mu) < 5 * numpy.sqrt(numpy.diag(cov) / n))
    se_cov = numpy.sqrt((numpy.outer(numpy.diag(cov), numpy.diag(cov)) + cov**2) / n)
    assert numpy.all(numpy.abs(A @ A.T - cov) < 5 * se_cov)
    assert history["loss"][-1] < history["loss"][0]
