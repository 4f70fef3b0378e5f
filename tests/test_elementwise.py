"""Element-wise flows against finite differences, closed forms, numpy.roots and bisection.

The generic suite (test_properties.py) checks the bijection protocol; here: h' at the points
where element-wise maps break (spline knots, +-B, tails, the perturbation at its bound, nearly
flat monotone pieces), finite gradients there, strict monotonicity, the perturbation's
invertibility bound (with the |c| erratum), the Clenshaw-Curtis accuracy, the relation to
``affine.Diagonal`` and per-sample parameters from a conditioner.
"""

from __future__ import annotations

import math

import autograd
import autograd.numpy as anp
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow import backend as B
from refflow import elementwise
from refflow.affine import Diagonal
from refflow.elementwise import (
    PERTURBATION_BOUND,
    Integral,
    Monotone,
    Perturbation,
    RationalQuadraticSpline,
    ScalarAffine,
    clenshaw_curtis,
    integrate_from_zero,
)
from refflow.solvers import bisect_increasing
from tests.families.elementwise import spline_edge_inputs

SETTINGS = settings(max_examples=10, deadline=None)
seeds = st.integers(0, 2**31 - 1)
CLASSES = [ScalarAffine, Perturbation, Monotone, Integral, RationalQuadraticSpline]
STATIC = {RationalQuadraticSpline: {"bins": 5, "bound": 2.0}, Monotone: {"hidden": 3},
          Integral: {"hidden": 3}}


def static_of(cls):
    return STATIC.get(cls, {})


def random_transformer(cls, seed, dim, scale=1.0):
    """A transformer from random raw parameters theta ~ N(0, scale^2), shape (dim, P)."""
    static = static_of(cls)
    p = cls.num_params(**static)
    theta = scale * numpy.random.default_rng(seed).standard_normal((dim, p))
    return cls.from_unconstrained(theta, **static)


def fd_derivative(h, z, step=1e-6):
    """Central difference of an element-wise map, per element."""
    return (h(z + step) - h(z - step)) / (2 * step)


def one_sided_derivatives(h, z, step):
    """Right and left derivatives by Richardson-extrapolated one-sided differences."""
    def right(s):
        return (h(z + s) - h(z)) / s

    def left(s):
        return (h(z) - h(z - s)) / s

    return 2 * right(step / 2) - right(step), 2 * left(step / 2) - left(step)


def assert_derivative_matches(f, z, atol=1e-7, rtol=1e-6):
    fd = fd_derivative(f.transform, z)
    d = f.derivative(z)
    assert numpy.all(d > 0)
    assert numpy.all(numpy.abs(d - fd) <= atol + rtol * numpy.abs(fd)), numpy.abs(d - fd).max()


# ------------------------------------------------------------------- derivatives vs FD


@SETTINGS
@given(seed=seeds, cls=st.sampled_from(CLASSES))
def test_derivative_matches_finite_differences(seed, cls):
    f = random_transformer(cls, seed, 3)
    z = 3.0 * numpy.random.default_rng(seed + 1).standard_normal((20, 3))
    # Integral: h is the 33-point quadrature, h' = g exactly; they agree to ~1e-8
    assert_derivative_matches(f, z, atol=1e-6 if cls is Integral else 1e-7)


@SETTINGS
@given(seed=seeds, cls=st.sampled_from(CLASSES))
def test_transformer_protocol_gives_value_and_log_derivative_in_one_call(seed, cls):
    # what Coupling, MAF and IAF call: the value and log|dh/dz| element-wise, both directions
    f = random_transformer(cls, seed, 3)
    z = 2.5 * numpy.random.default_rng(seed + 1).standard_normal((16, 3))
    x, log_d = f.forward_elementwise(z)
    assert x.shape == z.shape and log_d.shape == z.shape
    atol = 1e-6 if cls is Integral else 1e-7
    numpy.testing.assert_allclose(numpy.exp(log_d), fd_derivative(f.transform, z),
                                  rtol=1e-6, atol=atol)
    back, log_d_inv = f.inverse_elementwise(x)
    numpy.testing.assert_allclose(back, z, rtol=1e-7, atol=1e-7)
    # the inverse's log-derivative is log (h^{-1})'(x) = -log h'(z), by FD of h^{-1}
    numpy.testing.assert_allclose(numpy.exp(log_d_inv), fd_derivative(f.inverse_transform, x),
                                  rtol=1e-5, atol=atol)


@SETTINGS
@given(seed=seeds)
def test_spline_derivative_at_knots_ends_and_tails(seed):
    spline = random_transformer(RationalQuadraticSpline, seed, 4, scale=1.5)
    z = B.to_numpy(spline_edge_inputs(spline, B.rng(seed), 40))
    # h'' jumps at knots and +-B, so a central difference is off by O(step |jump of h''|)
    # there (5e-4 at step 1e-8 in a narrow bin). Instead: both one-sided derivatives, each
    # by Richardson extrapolation (error O(step^2)), must equal h' (h is C^1 at the knots).
    d = spline.derivative(z)
    assert numpy.all(d > 0)
    for fd in one_sided_derivatives(spline.transform, z, 1e-7):
        assert numpy.all(numpy.abs(d - fd) <= 1e-6 * numpy.maximum(1.0, d))
    xs, ys, deltas = spline.knots()
    assert numpy.array_equal(spline.transform(xs.T), ys.T)          # knots map to knots
    assert numpy.allclose(spline.derivative(xs.T), deltas.T, rtol=1e-12)
    assert numpy.allclose(spline.inverse_transform(ys.T), xs.T, atol=1e-14)


def test_perturbation_at_its_bound():
    """|c| = 0.99999 of a / (k d): the slope at u = 1/sqrt(3) is a * 1e-5, still positive."""
    g = Perturbation.from_unconstrained(numpy.array([[0.2, 0.1, 0.0, -0.3, 0.4],
                                                     [0.0, 0.0, 0.0, 0.5, -0.2]]))
    c = numpy.array([0.99999, -0.99999]) * g.a / (PERTURBATION_BOUND * g.d)  # c > 0 and c < 0
    f = Perturbation(g.a, g.b, c, g.d, g.e)                       # the constructor accepts it
    u_star = numpy.sign(f.c) / math.sqrt(3.0)                     # where h' is smallest
    z_star = ((u_star - f.e) / f.d)[None, :]
    z = numpy.concatenate([z_star, z_star + 1e-3, numpy.linspace(-4, 4, 9)[:, None] + 0 * f.a])
    d = f.derivative(z)
    assert numpy.allclose(d[0], f.a * 1e-5, rtol=1e-3)
    assert_derivative_matches(f, z, atol=1e-8, rtol=1e-5)
    x = f.transform(z)
    assert numpy.allclose(f.inverse_transform(x), z, atol=1e-9)


def test_nearly_flat_monotone_pieces():
    """alpha = 1e-6 and sigmoids far away: h' ~ 1e-6 on a plateau, still exact and invertible."""
    one = numpy.ones((1, 2))
    f = Monotone(alpha=1e-6 * one[0], beta=0 * one[0], w=5 * one, u=numpy.array([[20.0, 20.0]]),
                 v=numpy.array([[-60.0, 60.0]]))                  # steps at z = 3 and z = -3
    z = numpy.linspace(-1.0, 1.0, 11)[:, None] + numpy.zeros(1)
    d = f.derivative(z)
    assert numpy.all(d > 0) and numpy.all(d < 2e-6)
    assert_derivative_matches(f, z, atol=1e-9, rtol=1e-4)
    grid = numpy.linspace(-6, 6, 4001)[:, None]
    assert numpy.all(numpy.diff(f.transform(grid), axis=0) > 0)
    # on the plateau the inverse is ill-conditioned (dz/dx = 1e6): check h(h^-1(x)) = x
    x = f.transform(numpy.linspace(-4, 4, 17)[:, None])
    assert numpy.allclose(f.transform(f.inverse_transform(x)), x, atol=1e-12)


# ------------------------------------------------------------------- finite gradients


def _loss(theta, z, cls):
    f = cls.from_unconstrained(theta, **static_of(cls))
    x, ld = f.forward(z)
    zi, ld_inv = f.inverse(x)
    return anp.sum(x) + anp.sum(ld) + anp.sum(zi) + anp.sum(ld_inv)


@SETTINGS
@given(seed=seeds, cls=st.sampled_from(CLASSES))
def test_gradients_finite_at_edges_and_far_out(seed, cls):
    rng = numpy.random.default_rng(seed)
    f = random_transformer(cls, seed, 3, scale=2.0)
    theta = f.to_unconstrained()
    if cls is RationalQuadraticSpline:
        z = B.to_numpy(spline_edge_inputs(f, B.rng(seed), 12))
    else:
        z = rng.choice([-30.0, -3.0, 0.0, 1e-3, 3.0, 30.0], size=(12, 3))
    g_theta = autograd.grad(_loss, 0)(theta, z, cls)
    g_z = autograd.grad(_loss, 1)(theta, z, cls)
    assert numpy.all(numpy.isfinite(g_theta)) and numpy.all(numpy.isfinite(g_z))


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_spline_all_tail_batch(dtype):
    """Every input outside [-B, B]: identity, log_det 0, finite gradients (no NaN via where)."""
    f = random_transformer(RationalQuadraticSpline, 3, 2, scale=2.0)
    theta = f.to_unconstrained().astype(dtype)
    z = numpy.array([[-2.5, 7.0], [1e6, -2.0 - 1e-5], [2.0 + 1e-5, -40.0]], dtype=dtype)
    g = RationalQuadraticSpline.from_unconstrained(theta, bins=5, bound=2.0)
    x, ld = g.forward(z)
    assert x.dtype == dtype and numpy.array_equal(x, z) and numpy.array_equal(ld, 0 * ld)
    zb, ld_inv = g.inverse(z)
    assert numpy.array_equal(zb, z) and numpy.array_equal(ld_inv, 0 * ld_inv)
    g_theta = autograd.grad(_loss, 0)(theta, z, RationalQuadraticSpline)
    g_z = autograd.grad(_loss, 1)(theta, z, RationalQuadraticSpline)
    assert numpy.array_equal(g_theta, 0 * g_theta)                # no parameter is used
    assert numpy.array_equal(g_z, 2 + 0 * g_z)                   # d(x + z_inv)/dz = 2


def test_spline_ends_are_exact():
    f = random_transformer(RationalQuadraticSpline, 11, 3, scale=2.0)
    ends = numpy.array([[-2.0] * 3, [2.0] * 3])
    x, ld = f.forward(ends)
    assert numpy.array_equal(x, ends) and numpy.array_equal(ld, 0 * ld)
    assert numpy.array_equal(f.inverse(ends)[0], ends)
    inner = numpy.nextafter(ends, 0.0)                       # one ulp inside: the spline
    assert numpy.allclose(f.forward(inner)[0], ends, rtol=0, atol=1e-15)
    assert numpy.allclose(f.derivative(inner), 1.0, rtol=0, atol=1e-12)


# ------------------------------------------------------------------- monotonicity, inverses


@SETTINGS
@given(seed=seeds, cls=st.sampled_from(CLASSES))
def test_strictly_increasing_on_a_dense_grid(seed, cls):
    f = random_transformer(cls, seed, 2, scale=2.0)
    grid = numpy.linspace(-6.0, 6.0, 3001)[:, None] + numpy.zeros(2)
    assert numpy.all(numpy.diff(f.transform(grid), axis=0) > 0)
    assert numpy.all(f.derivative(grid) > 0)


@SETTINGS
@given(seed=seeds)
def test_spline_inverse_equals_bisection(seed):
    """The analytic root against an independent numerical inverse of the forward map."""
    f = random_transformer(RationalQuadraticSpline, seed, 3, scale=2.0)
    x = 1.5 * numpy.random.default_rng(seed).standard_normal((30, 3))
    z_bisect = bisect_increasing(f.transform, x, -3.0, 3.0)
    assert numpy.allclose(f.inverse_transform(x), z_bisect, atol=1e-13)


def test_perturbation_inverse_equals_cubic_root():
    """h(z) = x  <=>  (a z + b - x)(1 + (d z + e)^2) + c = 0, a cubic with one real root."""
    f = random_transformer(Perturbation, 5, 1, scale=1.0)
    a, b, c, d, e = (float(getattr(f, n)[0]) for n in "abcde")
    for x in (-3.0, -0.4, 0.0, 0.7, 5.0):
        coeffs = numpy.polymul([a, b - x], [d * d, 2 * d * e, 1 + e * e]) + [0, 0, 0, c]
        roots = numpy.roots(coeffs)
        real = roots[numpy.abs(roots.imag) < 1e-9].real
        assert real.size == 1
        assert numpy.isclose(f.inverse_transform(numpy.array([[x]]))[0, 0], real[0], atol=1e-10)


# ------------------------------------------------------------------- perturbation bound


def test_perturbation_rejects_parameters_violating_the_bound():
    one = numpy.ones(2)
    c, d = 0.8 * one, 1.5 * one
    at_bound = PERTURBATION_BOUND * c * d
    Perturbation(at_bound * 1.0001, one, c, d, one)
    with pytest.raises(ValueError, match="a: expected a > 9 / \\(8 sqrt 3\\) \\|c\\| d"):
        Perturbation(at_bound, one, c, d, one)                   # equality is not enough
    with pytest.raises(ValueError, match="a:"):
        Perturbation(0.5 * one, one, -2 * one, one, one)         # the slide's a > k c d holds
    with pytest.raises(ValueError, match="d:"):
        Perturbation(one, one, 0 * one, -one, one)
    with pytest.raises(ValueError, match="a:"):
        Perturbation(numpy.array([1.0, 0.1]), one, one, one, one)


def test_the_slides_bound_without_abs_is_not_enough():
    """Erratum: a > k c d holds for every a > 0 when c < 0, yet h' < 0 somewhere."""
    a, c, d = 0.5, -2.0, 1.0
    assert a > PERTURBATION_BOUND * c * d
    u = -1.0 / math.sqrt(3.0)
    assert a - 2 * c * d * u / (1 + u * u) ** 2 < 0


@pytest.mark.parametrize("dtype, t", [(numpy.float64, 25.0), (numpy.float32, 10.0)])
def test_perturbation_saturated_tanh_keeps_a_margin(dtype, t):
    """tanh(t_c) rounds to 1 here; c must still stay a margin below a / (k d)."""
    theta = numpy.array([[0.2, 0.1, t, -0.3, 0.4], [0.0, 0.0, -t, 0.5, -0.2]], dtype=dtype)
    f = Perturbation.from_unconstrained(theta)
    Perturbation(f.a, f.b, f.c, f.d, f.e)                         # the constructor accepts it
    u_star = numpy.sign(f.c) / math.sqrt(3.0)                     # where h' is smallest
    z = numpy.concatenate([((u_star - f.e) / f.d)[None, :],
                           numpy.linspace(-4, 4, 9)[:, None] + 0 * f.a]).astype(dtype)
    x, log_det = f.forward(z)
    assert log_det.dtype == dtype and numpy.all(numpy.isfinite(log_det))
    assert numpy.all(f.derivative(z)[0] >= 0.5e-3 * f.a)
    assert numpy.all(numpy.isfinite(f.inverse(x)[1]))


def test_perturbation_from_any_theta_is_valid():
    theta = 6.0 * numpy.random.default_rng(0).standard_normal((200, 5))
    f = Perturbation.from_unconstrained(theta)
    Perturbation(f.a, f.b, f.c, f.d, f.e)
    g = Perturbation.from_unconstrained(f.to_unconstrained())
    mask = numpy.abs(theta[:, 2]) < 5              # artanh(tanh(t)) is exact away from |t| > 5
    assert numpy.allclose(g.c[mask], f.c[mask]) and numpy.allclose(g.a, f.a)


# ------------------------------------------------------------------- quadrature


def test_clenshaw_curtis_weights():
    for nodes in (2, 3, 8, 33):
        t, w = clenshaw_curtis(nodes, numpy.zeros(1))
        assert numpy.all(w > 0) and numpy.isclose(w.sum(), 2.0)
        n = nodes - 1
        for k in range(0, n + 1, 2):                              # exact up to degree n
            assert numpy.isclose(numpy.sum(w * t**k), 2.0 / (k + 1), atol=1e-14)
    t, w = clenshaw_curtis(9, numpy.zeros(1, dtype=numpy.float32))
    assert t.dtype == numpy.float32 and w.dtype == numpy.float32


def test_integral_of_exp_matches_closed_form_and_converges():
    """int_0^z e^t dt = e^z - 1 for |z| <= 3: error below 1e-13 from 17 points on."""
    z = numpy.linspace(-3.0, 3.0, 25)
    errors = [numpy.abs(integrate_from_zero(numpy.exp, z, n) - numpy.expm1(z)).max()
              for n in (3, 5, 9, 17, 33)]
    assert errors[0] > 0.1 and errors[1] > 1e-3 and errors[2] < 1e-7
    assert all(a > b for a, b in zip(errors[:3], errors[1:4]))
    assert errors[3] < 1e-13 and errors[4] < 1e-13


def test_integral_flow_quadrature_error_falls_with_nodes():
    f = random_transformer(Integral, 2, 3)
    z = numpy.linspace(-5.0, 5.0, 41)[:, None] + numpy.zeros(3)
    theta = f.to_unconstrained()
    exact = Integral.from_unconstrained(theta, nodes=257).transform(z)
    errors = [numpy.abs(Integral.from_unconstrained(theta, nodes=n).transform(z) - exact).max()
              for n in (5, 9, 17, 33, 65)]
    assert all(a > b for a, b in zip(errors[:4], errors[1:4]))
    assert errors[3] < 1e-7 and errors[4] < 1e-12


def test_integral_with_constant_integrand_is_affine():
    """w2 = 0: g = exp(b2), so h(z) = b + exp(b2) z exactly (quadrature is exact here)."""
    rng = numpy.random.default_rng(4)
    f = Integral(offset=rng.standard_normal(3), w1=rng.standard_normal((3, 2)),
                 b1=rng.standard_normal((3, 2)), w2=numpy.zeros((3, 2)),
                 b2=rng.standard_normal(3), nodes=5)
    z = rng.standard_normal((6, 3))
    x, ld = f.forward(z)
    affine = ScalarAffine(numpy.exp(f.b2), f.offset)
    x2, ld2 = affine.forward(z)
    assert numpy.allclose(x, x2, atol=1e-14) and numpy.allclose(ld, ld2, atol=1e-14)


# ------------------------------------------------------------------- relations and API


def test_scalar_affine_equals_diagonal():
    rng = B.rng(0)
    f = ScalarAffine.init(rng, 4)
    g = Diagonal(f.a, f.b)
    z = rng.standard_normal((5, 4))
    for a, b in zip(f.forward(z) + f.inverse(z), g.forward(z) + g.inverse(z)):
        assert numpy.allclose(a, b, atol=1e-15)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_per_sample_parameters_equal_row_by_row(cls):
    """theta (N, D, P) from a conditioner == applying each row's own (D, P) parameters."""
    rng = numpy.random.default_rng(1)
    n, dim, static = 4, 3, static_of(cls)
    theta = rng.standard_normal((n, dim, cls.num_params(**static)))
    z = 2.0 * rng.standard_normal((n, dim))
    f = cls.from_unconstrained(theta, **static)
    x, ld = f.forward(z)
    zi, ld_inv = f.inverse(x)
    for i in range(n):
        row = cls.from_unconstrained(theta[i], **static)
        x_i, ld_i = row.forward(z[i:i + 1])
        assert numpy.allclose(x[i], x_i[0], atol=1e-14) and numpy.isclose(ld[i], ld_i[0])
        z_i, ld_inv_i = row.inverse(x_i)
        assert numpy.allclose(zi[i], z_i[0], atol=1e-12)
        assert numpy.isclose(ld_inv[i], ld_inv_i[0], atol=1e-12)
    assert numpy.allclose(zi, z, atol=1e-10)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_wrong_width_input_is_rejected_not_broadcast(cls):
    f = random_transformer(cls, 3, 3)                             # D = 3
    for bad in (numpy.zeros((4, 1)), numpy.zeros((4, 2)), numpy.zeros((1,))):
        with pytest.raises(ValueError, match="z: "):
            f.forward(bad)
        with pytest.raises(ValueError, match="x: "):
            f.inverse(bad)
    per_sample = cls.from_unconstrained(numpy.zeros((4, 3, cls.num_params(**static_of(cls)))),
                                        **static_of(cls))         # parameters (4, 3)
    with pytest.raises(ValueError, match="z: "):
        per_sample.forward(numpy.zeros((3,)))
    assert per_sample.forward(numpy.zeros((4, 3)))[0].shape == (4, 3)
    assert f.forward(numpy.zeros((2, 5, 3)))[1].shape == (2, 5)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_unconstrained_round_trip_and_p(cls):
    f = random_transformer(cls, 7, 3)
    theta = f.to_unconstrained()
    assert theta.shape == (3, cls.num_params(**static_of(cls)))
    assert cls.P == cls.num_params()
    g = cls.from_unconstrained(theta, **static_of(cls))
    z = numpy.random.default_rng(0).standard_normal((5, 3))
    assert numpy.allclose(g.forward(z)[0], f.forward(z)[0], atol=1e-12)
    with pytest.raises(ValueError, match="theta: expected shape"):
        cls.from_unconstrained(theta[..., :-1] if cls.P > 2 else theta[..., :1])


def test_spline_identity_at_zero_theta_and_constructor_checks():
    f = RationalQuadraticSpline.from_unconstrained(numpy.zeros((2, 3 * 4 - 1)), bound=1.5)
    z = numpy.linspace(-3, 3, 13)[:, None] + numpy.zeros(2)
    assert numpy.allclose(f.forward(z)[0], z, atol=1e-15)
    w = numpy.full((1, 4), 0.75)
    RationalQuadraticSpline(w, w, numpy.ones((1, 3)), bound=1.5)
    with pytest.raises(ValueError, match="widths: expected the bins to sum"):
        RationalQuadraticSpline(w * 1.1, w, numpy.ones((1, 3)), bound=1.5)
    with pytest.raises(ValueError, match="derivatives"):
        RationalQuadraticSpline(w, w, numpy.ones((1, 2)), bound=1.5)
    with pytest.raises(ValueError, match="bound"):
        RationalQuadraticSpline(w, w, numpy.ones((1, 3)), bound=-1.0)
    with pytest.raises(ValueError, match="a:"):
        ScalarAffine(numpy.array([0.0]), numpy.array([1.0]))


def test_spline_rejects_more_bins_than_the_minimum_width_allows(monkeypatch):
    """K MIN_BIN >= 1 leaves no room for the softmax part: widths would be <= 0 or too wide."""
    k = 1000                                                      # K MIN_BIN = 1
    with pytest.raises(ValueError, match="bins: "):
        RationalQuadraticSpline.from_unconstrained(numpy.zeros((1, 3 * k - 1)), bins=k)
    with pytest.raises(ValueError, match="bins: "):
        RationalQuadraticSpline.from_unconstrained(numpy.zeros((1, 3 * k - 1)))
    with pytest.raises(ValueError, match="bins: "):
        RationalQuadraticSpline.init(B.rng(0), 2, bins=k)
    w = numpy.full((1, k), 2.0 / k)
    with pytest.raises(ValueError, match="bins: "):
        RationalQuadraticSpline(w, w, numpy.ones((1, k - 1)), bound=1.0)
    RationalQuadraticSpline.from_unconstrained(numpy.zeros((1, 3 * 999 - 1)))
    monkeypatch.setattr(elementwise, "MIN_DERIVATIVE", 1.0)     # slope 1 at theta = 0 lost
    with pytest.raises(ValueError, match="MIN_DERIVATIVE"):
        RationalQuadraticSpline.from_unconstrained(numpy.zeros((1, 3 * 4 - 1)))


def test_one_shared_definition_of_the_scalar_helpers():
    """sigmoid, softplus and its inverse live in refflow.nn; checked against closed forms."""
    from refflow import nn, residual

    for name in ("sigmoid", "softplus", "softplus_inverse"):
        assert getattr(elementwise, name) is getattr(residual, name) is getattr(nn, name)
        assert not hasattr(elementwise, "_" + name) and not hasattr(residual, "_" + name)
    assert nn.ACTIVATIONS["sigmoid"] is nn.sigmoid and nn.ACTIVATIONS["softplus"] is nn.softplus
    t = numpy.linspace(-30.0, 30.0, 61)
    # (tanh(t/2) + 1) / 2 is accurate in absolute, not relative, terms for t << 0
    numpy.testing.assert_allclose(nn.sigmoid(t), 1.0 / (1.0 + numpy.exp(-t)), atol=1e-16)
    numpy.testing.assert_allclose(nn.softplus(t), numpy.log1p(numpy.exp(t)), rtol=1e-13)
    y = numpy.geomspace(1e-10, 700.0, 50)
    numpy.testing.assert_allclose(nn.softplus(nn.softplus_inverse(y)), y, rtol=1e-13)


def test_float32_spline_round_trip_on_knots():
    f = random_transformer(RationalQuadraticSpline, 2, 3, scale=1.5)
    theta = f.to_unconstrained().astype(numpy.float32)
    g = RationalQuadraticSpline.from_unconstrained(theta, bins=5, bound=2.0)
    z = B.to_numpy(spline_edge_inputs(g, B.rng(0), 50)).astype(numpy.float32)
    x, ld = g.forward(z)
    zb, ld_inv = g.inverse(x)
    assert x.dtype == zb.dtype == ld.dtype == numpy.float32
    # backward error: a float32 rounding of x moves z by ~eps |x| / h'(z)
    assert numpy.all(numpy.abs(zb - z) * g.derivative(z) <= 1e-6)
    assert numpy.allclose(ld, -ld_inv, atol=1e-4)


@pytest.mark.parametrize("cls", CLASSES)
def test_context_is_passed_by(cls):
    """No conditioner: a context, one row per sample or one shared row, changes no bit."""
    f = random_transformer(cls, 3, 4)
    z = B.asarray(numpy.random.default_rng(4).standard_normal((6, 4)))
    for context in (B.asarray(numpy.ones((6, 2))), B.asarray(numpy.ones(5))):
        for method in (f.forward, f.inverse):
            plain = method(z)
            given_context = method(z, context=context)
            for a, b in zip(plain, given_context):
                assert numpy.array_equal(B.to_numpy(a), B.to_numpy(b))
