"""Residual flows: lecture identities, estimator statistics, fixed-point accuracy, constraints.

The generic suite (test_properties.py) already checks round trips, log-dets against finite
differences, gradients and the strict stand-in for every registered residual bijection.
Here: relations between the classes, the power series against the exact log-det, the
stochastic estimators against their expectations, the certified Lipschitz bound.
"""

from __future__ import annotations

import math

import autograd
import autograd.numpy as anp
import numpy
import pytest

from refflow import backend as B
from refflow.core import Compose, Flow
from refflow.distributions import StandardNormal
from refflow.jacobian import jacobian, numerical_jacobian
from refflow.linalg import spectral_norm
from refflow.nn import MLP
from refflow.residual import (
    Amortised,
    ContractiveResidual,
    LowRankResidual,
    Planar,
    Radial,
    _spectral_bound,
    logdet_estimate,
)
from refflow.solvers import ConvergenceError
from refflow.tree import partition

# Two-sided z-test threshold: under the null (estimator mean = reference) the mean of
# n >= 2000 i.i.d. estimates is normal to a good approximation, so |z| > 4.5 happens with
# probability 2 (1 - Phi(4.5)) = 6.8e-6 (false-alarm rate per test; seeds are fixed).
Z_MAX = 4.5


def _block(seed=0, dim=4, coeff=0.9, hidden=(16,), **kw):
    return ContractiveResidual.init(B.rng(seed), dim, hidden=hidden, coeff=coeff, **kw)


def _stressed_block(seed=0, dim=3, coeff=0.8):
    """Orthogonal weights scaled to c and zero biases: near z = 0, J_F = c^2 Q (Q orthogonal)
    has every eigenvalue of modulus ~ c^2 = L, the slowest case for the power series."""
    rng = numpy.random.default_rng(seed)
    q1, _ = numpy.linalg.qr(rng.standard_normal((dim, dim)))
    q2, _ = numpy.linalg.qr(rng.standard_normal((dim, dim)))
    return ContractiveResidual((coeff * q1, coeff * q2), (numpy.zeros(dim), numpy.zeros(dim)),
                               coeff)


def _fd_logdet(f, z):
    """log|det| of the central-difference Jacobian by NumPy (independent of refflow)."""
    return numpy.linalg.slogdet(numerical_jacobian(lambda v: f.forward(v)[0], z))[1]


def test_planar_equals_low_rank_with_one_hidden_unit():
    rng = B.rng(3)
    dim = 5
    w = rng.standard_normal((dim,))
    v = rng.standard_normal((dim,))
    # |w|, |v| <= c: spectral normalisation leaves them unchanged, so the maps coincide
    w, v = 0.8 * w / numpy.linalg.norm(w), -0.85 * v / numpy.linalg.norm(v)
    b = numpy.array([0.3])
    planar = Planar(w, v, b)
    low = LowRankResidual(w[:, None], b, v[None, :], numpy.zeros(dim), coeff=0.9)
    z = rng.standard_normal((7, dim)) * 2
    x_p, ld_p = planar.forward(z)
    x_l, ld_l = low.forward(z)
    numpy.testing.assert_allclose(x_l, x_p, atol=1e-14)
    numpy.testing.assert_allclose(ld_l, ld_p, atol=1e-14)
    z_p, ldi_p = planar.inverse(x_p)
    z_l, ldi_l = low.inverse(x_p)
    numpy.testing.assert_allclose(z_l, z_p, atol=1e-10)
    numpy.testing.assert_allclose(ldi_l, ldi_p, atol=1e-10)


def test_low_rank_log_det_equals_dense_determinant():
    # det(I_D + J_F2 J_F1) computed densely (D x D) against the M x M identity in forward
    f = LowRankResidual.init(B.rng(1), 9, rank=3, activation="lipswish")
    z = B.rng(2).standard_normal((6, 9))
    numpy.testing.assert_allclose(f.forward(z)[1], logdet_estimate(f, z, "exact"), atol=1e-12)
    numpy.testing.assert_allclose(f.forward(z)[1], _fd_logdet(f, z), atol=1e-7)


@pytest.mark.parametrize("coeff", [0.5, 0.9])
def test_power_series_converges_to_exact_within_the_truncation_bound(coeff):
    dim = 4
    f = _block(dim=dim, coeff=coeff, hidden=(16, 16))
    z = B.rng(5).standard_normal((8, dim))
    exact = f.forward(z)[1]
    numpy.testing.assert_allclose(exact, _fd_logdet(f, z), atol=1e-7)
    L = f.lipschitz
    errors = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        series = logdet_estimate(f, z, "series", terms=n)
        err = numpy.max(numpy.abs(series - exact))
        # |tr(J^k)| <= D ||J||^k <= D L^k, summed over k > n
        assert err <= dim * L ** (n + 1) / ((n + 1) * (1 - L)) + 1e-12
        errors.append(err)
    assert errors[-1] < 1e-9
    series_block = ContractiveResidual(f.weights, f.biases, coeff, logdet="series", terms=64)
    numpy.testing.assert_allclose(series_block.forward(z)[1], exact, atol=1e-9)


def test_hutchinson_mean_is_consistent_with_the_series():
    f = _stressed_block(seed=2, coeff=0.9)
    z0 = 0.1 * B.rng(4).standard_normal((1, 3))
    n = 4000
    for terms in (1, 3, 10):
        # one probe per row of n copies of z0: n independent estimates at the same point
        est = logdet_estimate(f, anp.repeat(z0, n, axis=0), "hutchinson", terms=terms,
                              rng=B.rng(100 + terms))
        reference = float(logdet_estimate(f, z0, "series", terms=terms)[0])
        zscore = (numpy.mean(est) - reference) / (numpy.std(est, ddof=1) / math.sqrt(n))
        assert abs(zscore) < Z_MAX, (terms, zscore)
    # power: the same test tells the 10-term estimator from the 1-term series
    one_term = float(logdet_estimate(f, z0, "series", terms=1)[0])
    zscore = (numpy.mean(est) - one_term) / (numpy.std(est, ddof=1) / math.sqrt(n))
    assert abs(zscore) > Z_MAX


def test_russian_roulette_mean_is_consistent_with_the_exact_log_det():
    # L = 0.8^2: the variance is finite since L^2 < 1 - p = 1/2 (weights 2^(k - terms))
    f = _stressed_block(seed=3, coeff=0.8)
    z0 = 0.1 * B.rng(6).standard_normal((1, 3))
    n = 4000
    est = logdet_estimate(f, anp.repeat(z0, n, axis=0), "roulette", terms=2, rng=B.rng(7))
    exact = float(f.forward(z0)[1][0])
    zscore = (numpy.mean(est) - exact) / (numpy.std(est, ddof=1) / math.sqrt(n))
    assert abs(zscore) < Z_MAX
    # the truncated series at the same number of fixed terms is visibly biased
    two_terms = float(logdet_estimate(f, z0, "series", terms=2)[0])
    assert abs(two_terms - exact) > 10 * numpy.std(est, ddof=1) / math.sqrt(n)


def test_probes_average_reduces_the_variance():
    f = _block(seed=2, dim=3)
    z = anp.repeat(B.rng(4).standard_normal((1, 3)), 500, axis=0)
    one = logdet_estimate(f, z, "hutchinson", terms=5, rng=B.rng(1))
    many = logdet_estimate(f, z, "hutchinson", terms=5, rng=B.rng(1), probes=16)
    assert numpy.var(many) < numpy.var(one) / 8


@pytest.mark.parametrize("tol", [1e-6, 1e-10])
def test_fixed_point_inverse_is_within_tol(tol):
    # L = 0.97^2 = 0.94: the slope-based stop |step| < sqrt(tol) would be far off here
    f = ContractiveResidual.init(B.rng(8), 3, hidden=(32,), coeff=0.97, activation="elu")
    f = ContractiveResidual(f.weights, f.biases, 0.97, "elu", tol=tol)
    z = 3 * B.rng(9).standard_normal((50, 3))
    z_back, _ = f.inverse(f.forward(z)[0])
    assert numpy.max(numpy.linalg.norm(z_back - z, axis=-1)) <= tol + 1e-13


def test_fixed_point_reports_non_convergence():
    f = _block()
    f = ContractiveResidual(f.weights, f.biases, f.coeff, max_iter=2)
    with pytest.raises(ConvergenceError):
        f.inverse(B.rng(1).standard_normal((3, 4)))


def test_effective_weights_have_spectral_norm_at_most_c():
    rng = B.rng(10)
    for shape in [(2, 64), (64, 64), (64, 2), (5, 7)]:
        W = 3 * rng.standard_normal(shape)
        sigma = numpy.linalg.svd(W, compute_uv=False)
        bound = float(_spectral_bound(W))
        r = min(shape)
        assert sigma[0] <= bound <= sigma[0] * r ** (1 / 256) * (1 + 1e-12)
        assert abs(float(spectral_norm(W)) - sigma[0]) < 1e-8 * sigma[0]
    f = ContractiveResidual.init(rng, 6, hidden=(64, 64), coeff=0.9)
    for w in f.effective_weights():
        assert numpy.linalg.svd(w, compute_uv=False)[0] <= 0.9 * (1 + 1e-12)


def test_residual_is_a_contraction_with_the_stated_constant():
    f = _block(dim=5, coeff=0.95, hidden=(32, 32), activation="lipswish")
    rng = B.rng(11)
    a, b = 2 * rng.standard_normal((500, 5)), 2 * rng.standard_normal((500, 5))
    a_near = a + 1e-3 * rng.standard_normal((500, 5))  # near pairs probe the local slope
    for p, q in ((a, b), (a, a_near)):
        ratio = (numpy.linalg.norm(f.residual(p) - f.residual(q), axis=-1)
                 / numpy.linalg.norm(p - q, axis=-1))
        assert numpy.max(ratio) <= f.lipschitz
    J = numerical_jacobian(f.residual, a[:50])
    assert numpy.max(numpy.linalg.norm(J, ord=2, axis=(-2, -1))) <= f.lipschitz


def test_planar_constraint_uses_the_squared_norm():
    rng = B.rng(12)
    for _ in range(20):
        theta = 5 * rng.standard_normal((2 * 4 + 1,))
        f = Planar.from_unconstrained(theta)
        wv = float(numpy.dot(f.w, f.v))
        wu = float(numpy.dot(theta[:4], theta[4:8]))
        # w . u_hat = -1 + softplus(w . u) exactly; dividing by |w| would break this
        assert wv == pytest.approx(-1 + numpy.logaddexp(0, wu), rel=1e-10, abs=1e-12)
        # softplus(w . u) < eps for w . u < -36: then w . v rounds to -1 (still a bijection)
        assert wv > -1 if wu > -30 else wv >= -1 - 1e-12
        if wu > -30:
            g = Planar.from_unconstrained(f.to_unconstrained())
            numpy.testing.assert_allclose(g.v, f.v, atol=1e-8)


def test_training_cannot_leave_the_valid_set():
    # a large gradient step on the unconstrained leaves still gives invertible maps
    z = B.rng(13).standard_normal((16, 3))
    for f in (Planar.init(B.rng(14), 3), Radial.init(B.rng(15), 3)):
        leaves, rebuild = partition(f)
        grads = autograd.grad(lambda p, r=rebuild: anp.sum(r(p).forward(z)[1]))(leaves)
        g = rebuild([p - 2 * d for p, d in zip(leaves, grads)])
        assert numpy.all(numpy.isfinite(g.forward(z)[1]))
        if isinstance(g, Planar):
            assert float(numpy.dot(g.w, g.v)) > -1
        else:
            assert float(g.beta[0] + g.alpha[0]) > 0
    rng = B.rng(17)
    for _ in range(20):
        f = Radial.from_unconstrained(3 * rng.standard_normal((5,)))
        assert float(f.beta[0] + f.alpha[0]) > 0 and float(f.alpha[0]) > 0
        g = Radial.from_unconstrained(f.to_unconstrained())
        numpy.testing.assert_allclose([g.alpha[0], g.beta[0]], [f.alpha[0], f.beta[0]],
                                      rtol=1e-10, atol=1e-12)


def test_radial_inverse_near_the_tight_constraint():
    f = Radial(numpy.array([0.5, -0.2]), numpy.array([0.7]), numpy.array([-0.69]))
    z = numpy.concatenate([B.rng(16).standard_normal((20, 2)), numpy.array([[0.5, -0.19]])])
    x, ld = f.forward(z)
    z_back, ld_inv = f.inverse(x)
    numpy.testing.assert_allclose(z_back, z, atol=1e-9)
    numpy.testing.assert_allclose(ld_inv, -ld, atol=1e-9)
    numpy.testing.assert_allclose(ld, _fd_logdet(f, z), atol=1e-6)


def test_radial_at_its_centre():
    """At z = z0 (r = 0): x = z0, J_f = (1 + beta / alpha) I, log|det| = D log(1 + beta / alpha)."""
    f = Radial(numpy.array([0.5, -0.2, 1.0]), numpy.array([0.7]), numpy.array([0.4]))
    z = numpy.stack([f.z0, f.z0 + 0.3])
    x, ld = f.forward(z)
    numpy.testing.assert_array_equal(x[0], f.z0)
    numpy.testing.assert_allclose(ld[0], 3 * math.log(1 + 0.4 / 0.7), rtol=1e-14)
    numpy.testing.assert_allclose(jacobian(lambda v: f.forward(v)[0], z[:1])[0],
                                  (1 + 0.4 / 0.7) * numpy.eye(3), rtol=1e-14)
    z_back, ld_inv = f.inverse(x)
    numpy.testing.assert_allclose(z_back, z, atol=1e-12)
    numpy.testing.assert_allclose(ld_inv, -ld, atol=1e-12)
    leaves, rebuild = partition(f)
    for direction in ("forward", "inverse"):
        def loss(p, v, d=direction):
            out, log_det = getattr(rebuild(p), d)(v)
            return anp.sum(out) + anp.sum(log_det)
        for g in autograd.grad(loss)(leaves, z) + [autograd.grad(loss, 1)(leaves, z)]:
            assert numpy.all(numpy.isfinite(g))


def test_gradients_through_training_loss_and_estimators_are_finite():
    flow = Flow(StandardNormal(2), Compose(_block(dim=2, hidden=(8,)),
                                           LowRankResidual.init(B.rng(1), 2, rank=1),
                                           Planar.init(B.rng(2), 2), Radial.init(B.rng(3), 2)))
    x = B.rng(4).standard_normal((32, 2))
    leaves, rebuild = partition(flow)
    grads = autograd.grad(lambda p: -anp.sum(rebuild(p).log_prob(x)) / 32)(leaves)
    assert all(numpy.all(numpy.isfinite(g)) for g in grads)
    block = _block(dim=3)
    z = B.rng(5).standard_normal((4, 3))
    leaves, rebuild = partition(block)
    for method in ("hutchinson", "roulette"):
        grads = autograd.grad(lambda p, m=method: anp.sum(logdet_estimate(
            rebuild(p), z, m, terms=4, rng=B.rng(6))))(leaves)
        assert all(numpy.all(numpy.isfinite(g)) for g in grads)
    # the series estimator's gradient matches the exact log-det's for many terms
    g_exact = autograd.grad(lambda p: anp.sum(rebuild(p).forward(z)[1]))(leaves)
    g_series = autograd.grad(lambda p: anp.sum(logdet_estimate(rebuild(p), z, "series",
                                                               terms=80)))(leaves)
    for a, b in zip(g_series, g_exact):
        numpy.testing.assert_allclose(a, b, atol=1e-8)


def test_zero_last_layer_is_the_identity_with_finite_gradients():
    """The usual identity start: a zero last layer makes F = 0 (0 / 0 in the norm bound before)."""
    f = _block(dim=3, hidden=(8,))
    f = ContractiveResidual((f.weights[0], numpy.zeros_like(f.weights[1])),
                            (f.biases[0], numpy.zeros(3)), f.coeff)
    z = B.rng(7).standard_normal((5, 3))
    x, ld = f.forward(z)
    numpy.testing.assert_array_equal(x, z)
    numpy.testing.assert_array_equal(ld, numpy.zeros(5))
    numpy.testing.assert_array_equal(f.inverse(x)[0], z)
    leaves, rebuild = partition(f)
    grads = autograd.grad(lambda p: anp.sum(rebuild(p).forward(z)[1]))(leaves)
    assert all(numpy.all(numpy.isfinite(g)) for g in grads)
    grads = autograd.grad(lambda p: anp.sum(rebuild(p).forward(z)[0] ** 2))(leaves)
    # F = tanh(z W1 + b1) W2: at W2 = 0 the gradient of sum x^2 is 2 tanh(.)^T z, unscaled
    numpy.testing.assert_allclose(grads[1], 2 * numpy.tanh(z @ f.effective_weights()[0]
                                                           + f.biases[0]).T @ z, rtol=1e-10)


def test_bad_input_raises_value_error():
    f = _block()
    with pytest.raises(ValueError, match="coeff"):
        ContractiveResidual(f.weights, f.biases, coeff=1.0)
    with pytest.raises(ValueError, match="logdet"):
        ContractiveResidual(f.weights, f.biases, logdet="hutchinson")
    with pytest.raises(ValueError, match="weights"):
        ContractiveResidual(f.weights[:1], f.biases[:1])
    with pytest.raises(ValueError, match="z"):
        f.forward(numpy.zeros((2, 3)))
    with pytest.raises(ValueError, match="rng"):
        logdet_estimate(f, numpy.zeros((2, 4)), "hutchinson")
    with pytest.raises(ValueError, match="block"):
        logdet_estimate(Planar.init(B.rng(0), 4), numpy.zeros((2, 4)), "series")
    with pytest.raises(ValueError, match="v"):
        Planar(numpy.array([1.0, 0.0]), numpy.array([-1.5, 0.0]), numpy.array([0.0]))
    with pytest.raises(ValueError, match="w"):
        Planar(numpy.zeros(2), numpy.zeros(2), numpy.array([0.0]))
    with pytest.raises(ValueError, match="beta"):
        Radial(numpy.zeros(2), numpy.array([1.0]), numpy.array([-1.0]))
    with pytest.raises(ValueError, match="alpha"):
        Radial(numpy.zeros(2), numpy.array([-1.0]), numpy.array([0.0]))


def test_forward_and_inverse_do_not_copy_the_batch_for_a_finiteness_check(monkeypatch):
    """check_finite brings the batch to the host (a device sync per step in training); the
    bijections only check shapes and let NaN propagate."""
    from refflow import checks

    flows = (_block(dim=3, hidden=(8,)), LowRankResidual.init(B.rng(1), 3),
             Planar.init(B.rng(2), 3), Radial.init(B.rng(3), 3))
    z = B.rng(8).standard_normal((4, 3))
    calls = []
    monkeypatch.setattr(checks, "check_finite", lambda name, x: calls.append(name) or x)
    for f in flows:
        f.inverse(f.forward(z)[0])
        with pytest.raises(ValueError, match="z"):
            f.forward(numpy.zeros((2, 4)))
    logdet_estimate(flows[0], z, "series", terms=3)
    assert calls == []


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_low_rank_init_shift_is_an_exact_zero(dtype):
    """Zero biases are zeros, not 0 * noise (which gives -0.0 for negative draws)."""
    f = LowRankResidual.init(B.rng(4), 8, rank=2, dtype=dtype)
    shift = B.to_numpy(f.shift)
    assert shift.dtype == dtype and shift.shape == (8,)
    assert not numpy.any(numpy.signbit(shift)) and not numpy.any(shift)


# ----------------------------------------------------------- nn's MLP, empty batches


def test_contractive_residual_is_nn_mlp_with_normalised_weights():
    """F is refflow.nn.MLP on the normalised weights: against the layers written out in
    NumPy, for each Lipschitz activation (closed forms, not nn's table)."""
    from refflow.nn import MLP

    closed = {"tanh": numpy.tanh,
              "elu": lambda a: numpy.where(a > 0, a, numpy.expm1(numpy.minimum(a, 0.0))),
              "lipswish": lambda a: a / (1.0 + numpy.exp(-a)) / 1.1}
    rng = B.rng(31)
    z = rng.standard_normal((4, 3))
    for name, act in closed.items():
        f = ContractiveResidual.init(rng, 3, hidden=(5, 6), activation=name)
        assert isinstance(f.network(), MLP)
        h = B.to_numpy(z)
        weights = [B.to_numpy(w) for w in f.effective_weights()]
        for i, (w, b) in enumerate(zip(weights, f.biases)):
            h = h @ w + B.to_numpy(b)
            if i < len(weights) - 1:
                h = act(h)
        numpy.testing.assert_allclose(B.to_numpy(f.residual(z)), h, atol=1e-13)


@pytest.mark.parametrize("make", [lambda rng: ContractiveResidual.init(rng, 3, hidden=(4,)),
                                  lambda rng: LowRankResidual.init(rng, 3, rank=2)])
def test_an_empty_batch_gives_empty_results(make):
    """Was a reshape error (the per-row Jacobian reshaped (0, -1))."""
    f = make(B.rng(32))
    empty = numpy.zeros((0, 3))
    for method in (f.forward, f.inverse):
        out, log_det = method(empty)
        assert out.shape == (0, 3) and log_det.shape == (0,)


def test_residual_rejects_non_lipschitz_activations():
    with pytest.raises(ValueError, match="activation"):
        ContractiveResidual.init(B.rng(33), 3, activation="relu6")
    with pytest.raises(ValueError, match="activation"):
        LowRankResidual.init(B.rng(33), 3, activation="sigmoid")


# ------------------------------------------------------------------ conditional blocks


def _conditional(family, seed=0, dim=3, context_dim=2):
    """A conditional block of each kind with a strong context dependence."""
    rng = B.rng(seed)
    if family is ContractiveResidual:
        f = ContractiveResidual.init(rng, dim, hidden=(16,), coeff=0.9, context_dim=context_dim)
        # context rows U scaled up: c U is a large first-layer bias
        first = numpy.concatenate([f.weights[0][:dim], 5.0 * f.weights[0][dim:]])
        return ContractiveResidual((first,) + f.weights[1:], f.biases, f.coeff,
                                   context_dim=context_dim)
    f = family.init(rng, dim, context_dim=context_dim, hidden=(8,))
    net = f.hyper
    return Amortised(family, MLP(net.weights[:-1] + (10.0 * net.weights[-1],), net.biases),
                     context_dim)


CONDITIONAL = [ContractiveResidual, Planar, Radial]


def test_contractive_context_keeps_the_lipschitz_bound_in_z_at_every_context():
    """Lip_z F(., c) < L for random and extreme c: the largest difference quotient over many
    pairs and the largest spectral norm of J_F(z, c) (autograd, and FD) stay below L."""
    f = _conditional(ContractiveResidual, dim=4, context_dim=3)
    rng = numpy.random.default_rng(0)
    L = f.lipschitz
    worst_quotient = worst_norm = 0.0
    for scale in (1.0, 10.0, 100.0):
        c = scale * rng.standard_normal(3)
        z1, z2 = rng.standard_normal((2, 2000, 4))
        z2 = z1 + rng.choice([1e-3, 0.1, 1.0], (2000, 1)) * z2  # near and far pairs
        quotient = (numpy.linalg.norm(f.residual(z1, c) - f.residual(z2, c), axis=-1)
                    / numpy.linalg.norm(z1 - z2, axis=-1))
        worst_quotient = max(worst_quotient, quotient.max())
        z = rng.standard_normal((50, 4))
        def F(z, c=c):
            return f.residual(z, c)

        for J in (jacobian(F, z), numerical_jacobian(F, z)):
            worst_norm = max(worst_norm, numpy.linalg.norm(J, 2, axis=(-2, -1)).max())
    assert worst_quotient < L and worst_norm < L + 1e-7, (worst_quotient, worst_norm, L)
    # the bound is not vacuous: a context of unit size does move F
    unit = rng.standard_normal(3)
    assert numpy.abs(f.residual(z, unit) - f.residual(z, 0 * unit)).max() > 0.1


@pytest.mark.parametrize("family", CONDITIONAL)
def test_conditional_log_det_matches_finite_differences_at_fixed_context(family):
    f = _conditional(family)
    rng = numpy.random.default_rng(1)
    z, c = rng.standard_normal((20, 3)), 3.0 * rng.standard_normal((20, 2))
    x, ld = f.forward(z, context=c)
    J = numerical_jacobian(lambda z: f.forward(z, context=c)[0], z)
    sign, fd = numpy.linalg.slogdet(J)
    assert numpy.all(sign > 0)
    numpy.testing.assert_allclose(ld, fd, atol=1e-6)
    z_back, ld_inv = f.inverse(x, context=c)
    numpy.testing.assert_allclose(z_back, z, atol=1e-8)
    numpy.testing.assert_allclose(ld_inv, -ld, atol=1e-8)


@pytest.mark.parametrize("family", CONDITIONAL)
def test_conditional_maps_are_invertible_per_sample_at_extreme_contexts(family):
    """Every row's map is a bijection: det J > 0 by FD, the constraint holds per row after the
    hypernetwork (planar w . v > -1, radial beta > -alpha), and the round trip closes."""
    f = _conditional(family)
    rng = numpy.random.default_rng(2)
    c = 50.0 * rng.standard_normal((200, 2))
    z = 2.0 * rng.standard_normal((200, 3))
    if family is Planar:
        g = f.at(c)
        assert numpy.all(numpy.sum(g.w * g.v, axis=-1) > -1)
    if family is Radial:
        g = f.at(c)
        assert numpy.all(g.beta + g.alpha > 0)
    x, ld = f.forward(z, context=c)
    sign, fd = numpy.linalg.slogdet(numerical_jacobian(lambda z: f.forward(z, context=c)[0], z))
    assert numpy.all(sign > 0) and numpy.all(numpy.isfinite(ld))
    numpy.testing.assert_allclose(ld, fd, atol=1e-5)
    numpy.testing.assert_allclose(f.inverse(x, context=c)[0], z, atol=1e-7)


@pytest.mark.parametrize("family", CONDITIONAL)
def test_gradient_with_respect_to_the_context_matches_finite_differences(family):
    f = _conditional(family)
    rng = numpy.random.default_rng(3)
    z, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    r1, r2 = rng.standard_normal((5, 3)), rng.standard_normal(5)

    def loss(c):
        x, ld = f.forward(z, context=c)
        back, ld_inv = f.inverse(z, context=c)
        return anp.sum(x * r1) + anp.sum(ld * r2) + anp.sum(back * r1) + anp.sum(ld_inv)

    analytic = autograd.grad(loss)(c)
    fd = numpy.zeros_like(c)
    for idx in numpy.ndindex(c.shape):
        step = numpy.zeros_like(c)
        step[idx] = 1e-6
        fd[idx] = (loss(c + step) - loss(c - step)) / 2e-6
    numpy.testing.assert_allclose(analytic, fd, atol=1e-6, rtol=1e-6)
    # a shared (C,) context is every row's: same values, gradient summed over rows
    shared = c[0]
    numpy.testing.assert_allclose(f.forward(z, context=shared)[0],
                                  f.forward(z, context=numpy.tile(shared, (5, 1)))[0])


@pytest.mark.parametrize("family", CONDITIONAL)
def test_context_errors_name_the_context(family):
    f = _conditional(family)
    z = numpy.zeros((4, 3))
    for bad in (None, numpy.zeros((4, 3)), numpy.zeros(5), numpy.zeros((3, 2)),
                numpy.full((4, 2), numpy.nan)):
        for method in (f.forward, f.inverse):
            with pytest.raises(ValueError, match="^context: "):
                method(z, context=bad)


@pytest.mark.parametrize("block", [
    _block(), LowRankResidual.init(B.rng(0), 4, rank=2), Planar.init(B.rng(0), 4),
    Radial.init(B.rng(0), 4)])
def test_unconditional_blocks_pass_the_context_by(block):
    z = numpy.random.default_rng(4).standard_normal((6, 4))
    for method in (block.forward, block.inverse):
        for a, b in zip(method(z), method(z, context=numpy.ones((6, 2)))):
            assert numpy.array_equal(a, b)


def test_conditional_power_series_and_estimators_take_the_context():
    """At a fixed c the series tends to the exact log-det, as in the unconditional block."""
    f = _conditional(ContractiveResidual, dim=3, context_dim=2)
    rng = numpy.random.default_rng(5)
    z, c = rng.standard_normal((4, 3)), 5.0 * rng.standard_normal((4, 2))
    exact = f.forward(z, context=c)[1]
    series = logdet_estimate(f, z, "series", terms=200, context=c)
    numpy.testing.assert_allclose(series, exact, atol=1e-8)
    with pytest.raises(ValueError, match="^context: "):
        logdet_estimate(f, z, "series")


def test_amortised_rejects_bad_parts():
    net = MLP.init(B.rng(0), [2, 7])
    with pytest.raises(ValueError, match="^family: "):
        Amortised(Compose, net, 2)
    with pytest.raises(ValueError, match="^hyper: "):
        Amortised(Planar, MLP.init(B.rng(0), [2, 6]), 2)  # 6 = 2D + 1 for no D
    with pytest.raises(ValueError, match="^hyper: "):
        Amortised(Planar, net, 3)
    with pytest.raises(ValueError, match="^context_dim: "):
        ContractiveResidual.init(B.rng(0), 2, context_dim=-1)


@pytest.mark.parametrize("family", CONDITIONAL)
def test_conditional_blocks_save_and_load(family, tmp_path):
    from refflow.io import load, save

    f = _conditional(family)
    path = tmp_path / "flow.npz"
    save(path, f)
    g = load(path)
    z, c = numpy.ones((2, 3)), numpy.ones((2, 2))
    numpy.testing.assert_array_equal(g.forward(z, context=c)[0], f.forward(z, context=c)[0])
    assert g.context_dim == 2


@pytest.mark.standin
@pytest.mark.parametrize("family", CONDITIONAL)
def test_conditional_blocks_on_the_strict_stand_in(family):
    """Forward, inverse and the context gradient on a CuPy-like array give NumPy's numbers."""
    from refflow.tree import map_arrays
    from tests.strict import StrictArray, strict

    f = _conditional(family)
    rng = numpy.random.default_rng(6)
    z, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    f_s = map_arrays(strict, f)

    def loss(f, z, c):
        x, ld = f.forward(z, context=c)
        return anp.sum(f.inverse(x, context=c)[0] * x) + anp.sum(ld)

    for method in ("forward", "inverse"):
        x, ld = getattr(f, method)(z, context=c)
        x_s, ld_s = getattr(f_s, method)(strict(z), context=strict(c))
        assert isinstance(x_s, StrictArray)
        numpy.testing.assert_allclose(x_s.get(), x, atol=1e-10)
        numpy.testing.assert_allclose(ld_s.get(), ld, atol=1e-10)
    g = autograd.grad(lambda c: loss(f, z, c))(c)
    g_s = autograd.grad(lambda c: loss(f_s, strict(z), c))(strict(c))
    assert isinstance(g_s, StrictArray)
    numpy.testing.assert_allclose(g_s.get(), g, atol=1e-8)
