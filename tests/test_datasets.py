"""Toy data, closed-form densities, digits and the bits/dim bookkeeping of refflow.datasets.

Densities are checked against independent computations (scipy.stats, 2-D quadrature) and
against histograms of the samplers, so a sampler and its log_prob cannot drift apart.
"""

import math

import numpy
import pytest
from scipy import special, stats

from refflow import backend as B
from refflow import datasets as D
from tests.strict import StrictArray, strict

TOY = sorted(D.DATASETS)


def host(x):
    return B.to_numpy(x)


@pytest.mark.parametrize("name", TOY)
def test_toy_shape_dtype_and_seeding(name):
    sample = D.DATASETS[name]
    a = host(sample(257, B.rng(3)))
    assert a.shape == (257, 2) and a.dtype == numpy.float64
    assert numpy.all(numpy.isfinite(a))
    numpy.testing.assert_array_equal(a, host(sample(257, B.rng(3))))
    assert not numpy.allclose(a, host(sample(257, B.rng(4))))
    assert host(sample(1, B.rng(0))).shape == (1, 2)


@pytest.mark.parametrize("name", TOY)
@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_toy_rejects_bad_n(name, n):
    with pytest.raises(ValueError, match="n:"):
        D.DATASETS[name](n, B.rng(0))


class _StrictRng:
    """B.rng(seed) whose draws come back as strict stand-in (device-like) arrays."""

    def __init__(self, seed):
        self._rng = B.rng(seed)

    def __getattr__(self, name):
        draw = getattr(self._rng, name)
        return lambda *args, **kwargs: strict(draw(*args, **kwargs))


@pytest.mark.standin
@pytest.mark.parametrize("name", TOY)
def test_toy_runs_on_the_strict_stand_in(name):
    out = D.DATASETS[name](64, _StrictRng(7))
    assert isinstance(out, StrictArray)
    numpy.testing.assert_array_equal(out.get(), host(D.DATASETS[name](64, B.rng(7))))


@pytest.mark.standin
def test_dequantize_runs_on_the_strict_stand_in():
    x = numpy.arange(17.0).reshape(1, 17)
    y = D.dequantize(strict(x), _StrictRng(0))
    assert isinstance(y, StrictArray)
    numpy.testing.assert_array_equal(y.get(), host(D.dequantize(B.asarray(x), B.rng(0))))


def test_toy_rejects_bad_rng():
    with pytest.raises(ValueError, match="rng:"):
        D.moons(10, 0)


def test_moons_are_centred():
    x = host(D.moons(100_000, B.rng(1)))
    # each coordinate has standard deviation below 1, so 5 standard errors < 0.016
    numpy.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.016)


def test_circles_radii():
    r = numpy.linalg.norm(host(D.circles(20_000, B.rng(2), noise=0.0)), axis=1)
    numpy.testing.assert_allclose(numpy.sort(numpy.unique(r.round(12))), [1.0, 2.0])


def test_maf_toy_moments_and_entropy():
    n = 200_000
    x = host(D.maf_toy(n, B.rng(5)))
    x1, x2 = x[:, 0], x[:, 1]
    # Var x2 = 4 (standard error sqrt(2 * 4^2 / n)); E x1 = E[x2^2] / 4 = 1 (Var x1 = 3)
    assert abs(x2.var() - 4.0) < 5 * math.sqrt(32 / n)
    assert abs(x1.mean() - 1.0) < 5 * math.sqrt(3 / n)
    residual = x1 - x2**2 / 4
    assert abs(residual.mean()) < 5 / math.sqrt(n)
    assert abs(residual.var() - 1.0) < 5 * math.sqrt(2 / n)
    # E[-log p] is the entropy log(2 pi e) + log 2 = 3.531; -log p has variance 1 here
    nll = -host(D.maf_toy_log_prob(B.asarray(x)))
    assert abs(nll.mean() - (math.log(2 * math.pi * math.e) + math.log(2))) < 5 / math.sqrt(n)
    assert abs(math.log(2 * math.pi * math.e) + math.log(2) - 3.531) < 5e-4


def _mixture_logpdf(x, radius=2.0, scale=0.25):
    centres = radius * numpy.exp(2j * numpy.pi * numpy.arange(8) / 8)
    logs = [stats.multivariate_normal(mean=[c.real, c.imag], cov=scale**2).logpdf(x)
            for c in centres]
    return special.logsumexp(numpy.stack(logs), axis=0) - math.log(8)


def test_eight_gaussians_log_prob_matches_scipy_mixture():
    rng = numpy.random.default_rng(0)
    x = numpy.concatenate([rng.uniform(-4, 4, (200, 2)), [[30.0, -40.0], [0.0, 0.0]]])
    numpy.testing.assert_allclose(host(D.eight_gaussians_log_prob(B.asarray(x))),
                                  _mixture_logpdf(x), rtol=1e-12, atol=1e-12)
    wide = D.eight_gaussians_log_prob(B.asarray(x), radius=3.0, scale=0.5)
    numpy.testing.assert_allclose(host(wide), _mixture_logpdf(x, 3.0, 0.5), rtol=1e-12)


def test_maf_toy_log_prob_matches_scipy():
    rng = numpy.random.default_rng(1)
    x = rng.normal(size=(100, 2)) * 3
    expected = stats.norm(0, 2).logpdf(x[:, 1]) + stats.norm(x[:, 1] ** 2 / 4, 1).logpdf(x[:, 0])
    numpy.testing.assert_allclose(host(D.maf_toy_log_prob(B.asarray(x))), expected, rtol=1e-12)


def test_checkerboard_log_prob_cells():
    centres = numpy.array([[-3, -3], [-1, -3], [-3, -1], [3, 3], [1, 3], [0.5, -10]], float)
    lp = host(D.checkerboard_log_prob(B.asarray(centres)))
    numpy.testing.assert_array_equal(lp, [-math.log(32), -numpy.inf, -numpy.inf,
                                          -math.log(32), -numpy.inf, -numpy.inf])
    samples = D.checkerboard(5000, B.rng(0))
    numpy.testing.assert_array_equal(host(D.checkerboard_log_prob(samples)), -math.log(32))


@pytest.mark.standin
def test_log_probs_run_on_the_strict_stand_in():
    x = host(D.eight_gaussians(50, B.rng(0)))
    for log_prob in D.LOG_PROBS.values():
        out = log_prob(strict(x))
        assert isinstance(out, StrictArray)
        numpy.testing.assert_array_equal(out.get(), host(log_prob(B.asarray(x))))


# box (x1_lo, x1_hi, x2_lo, x2_hi) that holds all but a negligible part of the mass
_SUPPORT = {
    "eight_gaussians": (-5.0, 5.0, -5.0, 5.0),
    "checkerboard": (-4.0, 4.0, -4.0, 4.0),
    "maf_toy": (-8.0, 72.0, -16.0, 16.0),
}


def _midpoints(lo, hi, n):
    return lo + (numpy.arange(n) + 0.5) * (hi - lo) / n


@pytest.mark.parametrize("name", sorted(D.LOG_PROBS))
def test_log_prob_integrates_to_one(name):
    a1, b1, a2, b2 = _SUPPORT[name]
    n1, n2 = 800, 400  # multiples of 4: midpoints never fall on checkerboard edges
    g1, g2 = numpy.meshgrid(_midpoints(a1, b1, n1), _midpoints(a2, b2, n2), indexing="ij")
    lp = host(D.LOG_PROBS[name](B.asarray(numpy.stack([g1, g2], axis=-1))))
    mass = numpy.exp(special.logsumexp(lp)) * (b1 - a1) * (b2 - a2) / (n1 * n2)
    assert abs(mass - 1.0) < 1e-8


# histogram box and bins per axis; everything outside the box is one extra bin
_HISTOGRAM = {
    "eight_gaussians": ((-3.0, 3.0, -3.0, 3.0), (12, 12)),
    "checkerboard": ((-4.0, 4.0, -4.0, 4.0), (8, 8)),
    "maf_toy": ((-4.0, 16.0, -8.0, 8.0), (10, 8)),
}


@pytest.mark.parametrize("name", sorted(D.LOG_PROBS))
def test_samples_match_log_prob_histogram(name):
    (a1, b1, a2, b2), (k1, k2) = _HISTOGRAM[name]
    n, sub = 40_000, 16
    x = host(D.DATASETS[name](n, B.rng(11)))
    counts, _, _ = numpy.histogram2d(x[:, 0], x[:, 1], bins=(k1, k2), range=((a1, b1), (a2, b2)))
    # expected bin probabilities: midpoint rule with sub x sub points per bin
    g1, g2 = numpy.meshgrid(_midpoints(a1, b1, k1 * sub), _midpoints(a2, b2, k2 * sub),
                            indexing="ij")
    dens = numpy.exp(host(D.LOG_PROBS[name](B.asarray(numpy.stack([g1, g2], axis=-1)))))
    cell = (b1 - a1) * (b2 - a2) / (k1 * k2 * sub * sub)
    prob = dens.reshape(k1, sub, k2, sub).sum(axis=(1, 3)) * cell
    observed = numpy.append(counts.ravel(), n - counts.sum())
    expected = n * numpy.append(prob.ravel(), max(1.0 - prob.sum(), 0.0))
    used = expected > 20
    assert observed[~used].sum() <= 5 * max(expected[~used].sum(), 1.0)
    chi2 = numpy.sum((observed[used] - expected[used]) ** 2 / expected[used])
    assert stats.chi2.sf(chi2, used.sum() - 1) > 1e-3


# ------------------------------------------------------------------------ digits


def test_digits_shapes_values_and_split():
    from sklearn.datasets import load_digits

    train, test = host(D.digits("train")), host(D.digits("test"))
    assert train.shape == (1438, 8, 8, 1) and test.shape == (359, 8, 8, 1)
    assert train.dtype == numpy.float64
    both = numpy.concatenate([train, test])
    assert both.min() == 0 and both.max() == 16 and numpy.all(both == both.round())
    # the split is a partition of the bundled data: same multiset of (unique) images
    bundle = load_digits()
    full = bundle.images.reshape(len(bundle.images), -1)
    assert len(numpy.unique(full, axis=0)) == len(full)
    numpy.testing.assert_array_equal(numpy.unique(both.reshape(len(both), -1), axis=0),
                                     numpy.unique(full, axis=0))
    label = {row.tobytes(): y for row, y in zip(full, bundle.target, strict=True)}
    test_labels = [label[row.tobytes()] for row in test.reshape(len(test), -1)]
    assert min(numpy.bincount(test_labels, minlength=10)) >= 20
    numpy.testing.assert_array_equal(train, host(D.digits("train")))


def test_digits_rng_shuffles_rows_only():
    plain = host(D.digits("test"))
    shuffled = host(D.digits("test", rng=B.rng(0)))
    assert not numpy.array_equal(plain, shuffled)
    key = lambda a: numpy.unique(a.reshape(len(a), -1), axis=0)  # noqa: E731
    numpy.testing.assert_array_equal(key(plain), key(shuffled))
    numpy.testing.assert_array_equal(shuffled, host(D.digits("test", rng=B.rng(0))))


def test_digits_rejects_bad_split():
    with pytest.raises(ValueError, match="split:"):
        D.digits("validation")


def test_dequantize_stays_in_its_cell():
    x = D.digits("test")
    y = host(D.dequantize(x, B.rng(0)))
    assert y.shape == (359, 8, 8, 1) and y.min() >= 0 and y.max() < 1
    numpy.testing.assert_array_equal(numpy.floor(y * 17), host(x))
    noise = y * 17 - host(x)  # u ~ U[0, 1): mean 1/2, standard deviation 0.29
    assert abs(noise.mean() - 0.5) < 5 * 0.29 / math.sqrt(noise.size)


@pytest.mark.parametrize("bad", [[[17.0]], [[0.5]], [[-1.0]]])
def test_dequantize_rejects_values_off_the_levels(bad):
    with pytest.raises(ValueError, match="x:"):
        D.dequantize(B.asarray(bad), B.rng(0))


def test_dequantize_rejects_bad_levels():
    with pytest.raises(ValueError, match="levels:"):
        D.dequantize(B.asarray([[0.0]]), B.rng(0), levels=1)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1e-6])
def test_logit_transform_round_trip_and_log_det(alpha):
    y = numpy.random.default_rng(0).uniform(0.01, 0.99, (6, 3, 2))
    t, logdet = D.logit_transform(B.asarray(y), alpha)
    assert host(logdet).shape == (6,)
    numpy.testing.assert_allclose(host(D.logit_inverse(t, alpha)), y, rtol=1e-12, atol=1e-14)
    # independent: central differences of the element-wise map, summed per sample
    eps = 1e-6
    plus, _ = D.logit_transform(B.asarray(y + eps), alpha)
    minus, _ = D.logit_transform(B.asarray(y - eps), alpha)
    slope = (host(plus) - host(minus)) / (2 * eps)
    numpy.testing.assert_allclose(host(logdet), numpy.log(slope).sum(axis=(1, 2)), rtol=1e-7)


@pytest.mark.standin
def test_logit_transform_on_the_strict_stand_in():
    y = numpy.random.default_rng(1).uniform(0, 1, (4, 8, 8, 1))
    t, logdet = D.logit_transform(strict(y))
    t_ref, logdet_ref = D.logit_transform(B.asarray(y))
    numpy.testing.assert_array_equal(t.get(), host(t_ref))
    numpy.testing.assert_array_equal(logdet.get(), host(logdet_ref))
    numpy.testing.assert_allclose(D.logit_inverse(t).get(), y, rtol=1e-12)


@pytest.mark.parametrize("alpha", [-0.1, 0.5])
def test_logit_transform_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha:"):
        D.logit_transform(B.asarray([[0.5]]), alpha)
    with pytest.raises(ValueError, match="alpha:"):
        D.logit_inverse(B.asarray([[0.5]]), alpha)


def test_bits_per_dim_of_a_uniform_model_is_log2_levels():
    # a model uniform on [0, 1)^D in y needs no preprocessing: log q = 0
    bpd = host(D.bits_per_dim(B.asarray([0.0, 0.0]), B.asarray([0.0, 0.0]), 17, 64))
    numpy.testing.assert_allclose(bpd, math.log2(17), rtol=1e-15)


def test_bits_per_dim_of_a_uniform_model_through_the_logit():
    # the uniform model in y, seen in logit space: t = logit(alpha + (1 - 2 alpha) y) has
    # density prod_d sigma(t_d) sigma(-t_d) / (1 - 2 alpha), written here with scipy
    alpha = 0.05
    y = D.dequantize(D.digits("test"), B.rng(2))
    t, logdet = D.logit_transform(y, alpha)
    t = host(t).reshape(359, -1)
    log_q = (special.log_expit(t) + special.log_expit(-t)).sum(axis=1) - 64 * math.log(0.9)
    bpd = host(D.bits_per_dim(B.asarray(log_q), logdet, D.DIGITS_LEVELS, 64))
    numpy.testing.assert_allclose(bpd, math.log2(17), rtol=1e-12)


def test_bits_per_dim_converts_nats_per_pixel():
    # a model twice as dense as uniform in y gains exactly 1 / D bits per dimension
    bpd = host(D.bits_per_dim(B.asarray([math.log(2.0)]), B.asarray([0.0]), 17, 64))
    numpy.testing.assert_allclose(bpd, math.log2(17) - 1 / 64, rtol=1e-14)


@pytest.mark.parametrize(("levels", "dim", "match"), [(1, 64, "levels:"), (17, 0, "dim:")])
def test_bits_per_dim_rejects_bad_sizes(levels, dim, match):
    with pytest.raises(ValueError, match=match):
        D.bits_per_dim(B.asarray([0.0]), B.asarray([0.0]), levels, dim)
