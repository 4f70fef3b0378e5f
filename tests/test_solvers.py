"""Tests of refflow.solvers against closed forms, numpy.linalg.solve and finite differences."""

import autograd.numpy as anp
import numpy
import pytest
from autograd import grad
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow.solvers import (
    ConvergenceError,
    bisect_increasing,
    fixed_point,
    invert_increasing,
    invert_residual,
)
from tests.strict import StrictArray

SETTINGS = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**31 - 1)
EPS = numpy.finfo(numpy.float64).eps


def central_difference(f, theta, h=1e-6):
    """d f / d theta for a scalar function f of an array theta, by central differences."""
    out = numpy.zeros_like(theta)
    for i in numpy.ndindex(theta.shape):
        e = numpy.zeros_like(theta)
        e[i] = h
        out[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return out


def contraction(rng, d, lipschitz):
    """A d x d matrix with spectral norm exactly `lipschitz`."""
    a = rng.standard_normal((d, d))
    return a * (lipschitz / numpy.linalg.norm(a, 2))


# ----------------------------------------------------------------- bisect_increasing


def test_convergence_error_is_an_arithmetic_and_runtime_error():
    assert issubclass(ConvergenceError, ArithmeticError)
    assert issubclass(ConvergenceError, RuntimeError)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 5), d=st.integers(1, 4))
def test_bisection_recovers_cubic_and_sinh_with_bracket_growth(seed, n, d):
    rng = numpy.random.default_rng(seed)
    a_true = rng.uniform(-30, 30, size=(n, d))
    for g in (lambda a: a + a**3, anp.sinh):
        target = g(a_true)
        # [-0.5, 0.5] contains almost none of the roots: the bracket has to grow.
        a = bisect_increasing(g, target, -0.5, 0.5)
        assert a.shape == (n, d) and a.dtype == target.dtype
        tol = 4 * EPS * numpy.maximum(1, numpy.abs(a_true))
        assert numpy.all(numpy.abs(a - a_true) <= tol)
        a = bisect_increasing(g, target, -0.5, 0.5, tol=1e-9)
        assert numpy.all(numpy.abs(a - a_true) <= 1e-9)


def test_bisection_array_bracket_and_float32():
    target = numpy.linspace(-5, 5, 12, dtype=numpy.float32).reshape(3, 4)
    lo = numpy.full((3, 1), -1.0, dtype=numpy.float32)
    a = bisect_increasing(lambda a: a + a**3, target, lo, numpy.float64(1.0))
    assert a.dtype == numpy.float32
    assert numpy.allclose(a + a**3, target, rtol=1e-5, atol=1e-5)


def test_bisection_raises_when_max_iter_is_too_small():
    with pytest.raises(ConvergenceError, match="max_iter=5 .* width"):
        bisect_increasing(numpy.sinh, numpy.ones((2, 3)), -1.0, 1.0, max_iter=5)


def test_bisection_raises_when_the_target_is_out_of_range():
    target = numpy.array([[0.5, 2.0], [-0.1, 0.3]])  # tanh never reaches 2
    with pytest.raises(ConvergenceError, match="could not bracket 1 of 4"):
        bisect_increasing(numpy.tanh, target, -1.0, 1.0, max_expand=20)


def test_bisection_rejects_bad_input():
    with pytest.raises(ValueError, match="lo, hi"):
        bisect_increasing(numpy.sinh, numpy.ones(3), 1.0, -1.0)
    with pytest.raises(ValueError, match="target"):
        bisect_increasing(numpy.sinh, numpy.array([1.0, numpy.nan]), -1.0, 1.0)
    with pytest.raises(ValueError, match="max_iter"):
        bisect_increasing(numpy.sinh, numpy.ones(3), -1.0, 1.0, max_iter=0)


# ----------------------------------------------------------------- invert_increasing


def perturbation(z, theta):
    """The lecture's h(z) = a z + b + c / (1 + (d z + e)^2), invertible for a > 0.65 |c| d."""
    a, b, c, d, e = theta[0], theta[1], theta[2], theta[3], theta[4]
    return a * z + b + c / (1 + (d * z + e) ** 2)


def perturbation_slope(z, theta):
    a, c, d, e = theta[0], theta[2], theta[3], theta[4]
    u = d * z + e
    return a - 2 * c * d * u / (1 + u**2) ** 2


@SETTINGS
@given(seed=seeds)
def test_inverse_gradients_match_implicit_function_theorem_and_finite_differences(seed):
    rng = numpy.random.default_rng(seed)
    theta = numpy.array([1.5, 0.3, rng.uniform(-1, 1), rng.uniform(0.5, 1.5), 0.2])
    x = rng.uniform(-4, 4, size=(3, 2))
    w = rng.standard_normal((3, 2))

    def loss(x, theta):
        z = invert_increasing(lambda z: perturbation(z, theta), x, -1.0, 1.0)
        return anp.sum(w * z)

    z = invert_increasing(lambda z: perturbation(z, theta), x, -1.0, 1.0)
    assert numpy.allclose(perturbation(z, theta), x, atol=1e-13)
    # dz/dx = 1 / h'(z), h' by central differences
    dh_dz = (perturbation(z + 1e-6, theta) - perturbation(z - 1e-6, theta)) / 2e-6
    assert numpy.allclose(grad(loss, 0)(x, theta), w / dh_dz, atol=1e-7)
    assert numpy.allclose(grad(loss, 0)(x, theta), central_difference(lambda v: loss(v, theta), x),
                          atol=1e-6)
    assert numpy.allclose(grad(loss, 1)(x, theta), central_difference(lambda t: loss(x, t), theta),
                          atol=1e-6)


def test_inverse_with_explicit_derivative_and_planar_scalar_equation():
    # Planar's inverse along w: w.x = alpha + (w.u) tanh(alpha + b), increasing for w.u > -1.
    wu, b = anp.array(-0.8), anp.array(0.4)
    target = numpy.linspace(-3, 3, 7)

    def loss(wu):
        alpha = invert_increasing(lambda a: a + wu * anp.tanh(a + b), target, -1.0, 1.0,
                                  dh=lambda a: 1 + wu * (1 - anp.tanh(a + b) ** 2))
        return anp.sum(alpha**2)

    alpha = invert_increasing(lambda a: a + wu * numpy.tanh(a + b), target, -1.0, 1.0)
    assert numpy.allclose(alpha + wu * numpy.tanh(alpha + b), target, atol=1e-13)
    fd = central_difference(lambda v: loss(v), numpy.asarray(wu))
    assert numpy.allclose(grad(loss)(wu), fd, atol=1e-6)


# ----------------------------------------------------------------- fixed_point


@settings(max_examples=10, deadline=None)
@given(seed=seeds, lipschitz=st.sampled_from([0.5, 0.9, 0.99]), n=st.integers(1, 4),
       d=st.integers(1, 5))
def test_fixed_point_error_is_within_tol_for_linear_contractions(seed, lipschitz, n, d):
    rng = numpy.random.default_rng(seed)
    a = contraction(rng, d, lipschitz)
    b = rng.standard_normal((n, d)) * 3
    tol = 1e-8
    x, iterations = fixed_point(lambda x: x @ a.T + b, numpy.zeros((n, d)), lipschitz=lipschitz,
                                tol=tol)
    x_star = numpy.linalg.solve(numpy.eye(d) - a, b.T).T
    assert numpy.all(numpy.linalg.norm(x - x_star, axis=-1) <= tol)
    # a-priori Banach bound on the iterations needed from x0 = 0
    first_step = numpy.max(numpy.linalg.norm(b, axis=-1))
    bound = numpy.log(tol * (1 - lipschitz) / first_step) / numpy.log(lipschitz) + 2
    assert 1 <= iterations <= max(bound, 1)


def test_fixed_point_on_images_and_float32():
    x0 = numpy.zeros((2, 3, 3, 2), dtype=numpy.float32)
    x, iterations = fixed_point(lambda x: 0.5 * x + 1, x0, lipschitz=0.5, event_ndim=3, tol=1e-5)
    assert x.dtype == numpy.float32 and iterations > 1
    assert numpy.all(numpy.linalg.norm((x - 2).reshape(2, -1), axis=-1) <= 1e-5)


def test_fixed_point_raises_on_max_iter_with_the_bound():
    with pytest.raises(ConvergenceError, match="bound .* reached"):
        fixed_point(lambda x: 0.99 * x + 1, numpy.zeros((2, 2)), lipschitz=0.99, max_iter=20)


@pytest.mark.parametrize("lipschitz", [1.0, 1.5, -0.1, numpy.nan])
def test_fixed_point_rejects_lipschitz_outside_banach_range(lipschitz):
    with pytest.raises(ValueError, match="lipschitz"):
        fixed_point(lambda x: x, numpy.zeros((1, 2)), lipschitz=lipschitz)


def test_naive_squared_step_rule_stops_too_early_but_the_banach_bound_does_not():
    # pitfalls.md: residual-flows/normflows stop when step^2 < tol, i.e. |step| < sqrt(tol).
    lipschitz, tol, b = 0.97, 1e-6, 1.0

    def g(x):
        return lipschitz * x + b

    x_star = b / (1 - lipschitz)
    x_prev, x = 0.0, g(0.0)
    while (x - x_prev) ** 2 >= tol:
        x_prev, x = x, g(x)
    naive_error = abs(x - x_star)
    assert naive_error > 10 * tol  # about L / (1 - L) * sqrt(tol) = 3e-2

    ours, _ = fixed_point(g, numpy.zeros((1, 1)), lipschitz=lipschitz, tol=tol)
    assert abs(ours[0, 0] - x_star) <= tol


# ----------------------------------------------------------------- invert_residual


def residual_block(z, w, c):
    return anp.tanh(z @ w + c)  # Lip <= ||w||_2, tanh' <= 1


def test_residual_inverse_and_its_gradients_match_finite_differences():
    rng = numpy.random.default_rng(0)
    d, lip = 3, 0.8
    w, c = contraction(rng, d, lip), rng.standard_normal(d) * 0.5
    x, v = rng.standard_normal((4, d)), rng.standard_normal((4, d))

    def loss(x, w, c):
        return anp.sum(v * invert_residual(residual_block, x, w, c, lipschitz=lip, tol=1e-12))

    z = invert_residual(residual_block, x, w, c, lipschitz=lip, tol=1e-12)
    assert numpy.allclose(z + residual_block(z, w, c), x, atol=1e-11)
    for argnum, arg in enumerate((x, w, c)):
        def f(a, argnum=argnum):
            args = [x, w, c]
            args[argnum] = a
            return loss(*args)
        assert numpy.allclose(grad(loss, argnum)(x, w, c), central_difference(f, arg), atol=1e-6)


def test_residual_inverse_gradient_solves_the_adjoint_once(monkeypatch):
    """One forward solve and one adjoint solve, however many arguments take gradients."""
    from refflow import solvers

    rng = numpy.random.default_rng(1)
    d, lip = 3, 0.9
    ws = [contraction(rng, d, 0.9 ** (1 / 3)) for _ in range(3)]
    bs = [0.3 * rng.standard_normal(d) for _ in range(3)]
    x, v = rng.standard_normal((5, d)), rng.standard_normal((5, d))

    def mlp(z, *params):                      # 3 layers, Lip <= 0.9
        for w, b in zip(params[:3], params[3:]):
            z = anp.tanh(z @ w + b)
        return z

    def loss(x, *params):
        return anp.sum(v * invert_residual(mlp, x, *params, lipschitz=lip, tol=1e-12))

    calls = []
    original = solvers.fixed_point

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(solvers, "fixed_point", counting)
    args = [x] + ws + bs
    grads = grad(loss, tuple(range(7)))(*args)
    assert len(calls) == 2
    monkeypatch.setattr(solvers, "fixed_point", original)
    for i, (g, arg) in enumerate(zip(grads, args)):
        def f(a, i=i):
            return loss(*(args[:i] + [a] + args[i + 1:]))
        assert numpy.allclose(g, central_difference(f, arg), atol=1e-6)


# ----------------------------------------------------------------- strict stand-in array


@pytest.mark.standin
def test_solvers_run_on_the_strict_device_stand_in():
    target = StrictArray(numpy.linspace(-5, 5, 6).reshape(2, 3))
    a = bisect_increasing(lambda a: a + a**3, target, -1.0, 1.0)
    assert isinstance(a, StrictArray)
    assert numpy.allclose(a.get() + a.get() ** 3, target.get())

    theta = StrictArray(numpy.array([1.2, 0.1, 0.5, 1.0, 0.0]))

    def loss(x, theta):
        # dh given: autograd's nested VJPs put a concrete stand-in left of a Box, which
        # tests/strict.py rejects (CuPy accepts it)
        return anp.sum(invert_increasing(lambda z: perturbation(z, theta), x, -1.0, 1.0,
                                         dh=lambda z: perturbation_slope(z, theta)))

    on_host = grad(loss, (0, 1))(target.get(), theta.get())
    for g, expected in zip(grad(loss, (0, 1))(target, theta), on_host, strict=True):
        assert isinstance(g, StrictArray) and numpy.allclose(g.get(), expected, atol=1e-12)

    x, _ = fixed_point(lambda x: 0.5 * x + 1.0, StrictArray(numpy.zeros((2, 3))), lipschitz=0.5)
    assert isinstance(x, StrictArray) and numpy.allclose(x.get(), 2.0)



# ------------------------------------------------------- brackets collapsed by rounding


def test_bisection_accepts_a_bracket_that_rounding_collapsed():
    """lo == hi is a valid start (at 1e30 the +-1 margins of a bracket vanish): it grows from
    a few ulps. Against the closed-form root of a + a^3 = t."""
    root = numpy.array([1e30, -3e12, 2.0])
    target = root + root ** 3
    a = bisect_increasing(lambda a: a + a ** 3, target, root, root)
    numpy.testing.assert_allclose(a, root, rtol=1e-15)
    a = bisect_increasing(lambda a: a + a ** 3, target, root * 1.5, root * 1.5)
    numpy.testing.assert_allclose(a, root, rtol=1e-14)
    with pytest.raises(ValueError, match="lo <= hi"):
        bisect_increasing(lambda a: a, target, 1.0, 0.0)


@pytest.mark.parametrize("value", [1e30, -1e30, 1e200, -1e300])
@pytest.mark.parametrize("family", ["Perturbation", "Monotone"])
def test_elementwise_maps_invert_their_own_output_far_out(family, value):
    """Was ``lo, hi: expected lo < hi`` (the class's bracket collapsed to one number)."""
    from refflow import backend as B
    from refflow import elementwise

    f = getattr(elementwise, family).init(B.rng(5), 3)
    z = numpy.array([[value, value / 7.0, -value]])
    x, log_det = f.forward(z)
    assert numpy.isfinite(B.to_numpy(x)).all()
    z_back, log_det_inv = f.inverse(x)
    numpy.testing.assert_allclose(B.to_numpy(z_back), z, rtol=1e-14)
    numpy.testing.assert_allclose(B.to_numpy(log_det_inv), -B.to_numpy(log_det), rtol=1e-12)


def test_an_inverse_beyond_the_float_range_names_the_argument():
    """h(z) = z / 4 has its inverse of 1e308 at 4e308 = inf: a ValueError about x."""
    x = numpy.array([1.0, 1e308])
    with pytest.raises(ValueError, match="^x: the solution"):
        invert_increasing(lambda z: z / 4, x, 4 * x - 1.0, 4 * x + 1.0)
