"""Autoregressive flows: MADE's masks through the Jacobian, MAF/IAF relations, the lecture's model.

Each test compares with an independent computation: autograd Jacobians of the conditioner
and of the flows, scipy.stats.norm per coordinate, counted conditioner calls, and training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import autograd
import autograd.numpy as anp
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from refflow import backend as B
from refflow.affine import Reverse
from refflow.autoregressive import IAF, MADE, MAF, SlowMAF
from refflow.core import Compose, Flow, Inverse
from refflow.datasets import maf_toy
from refflow.distributions import StandardNormal
from refflow.elementwise import RationalQuadraticSpline
from refflow.jacobian import jacobian
from refflow.train import fit, nll
from tests.test_coupling import CountedAffine as _Counted

orders = st.sampled_from(["natural", "reversed", "random"])
hiddens = st.sampled_from([(), (7,), (9, 6), (5, 5, 5)])
small = settings(max_examples=15, deadline=None)


def _rank(order):
    rank = numpy.empty(len(order), dtype=int)
    rank[list(order)] = numpy.arange(len(order))
    return rank


def _made_jacobians(made, x):
    """d theta_{i,p} / d x_j for each p, by autograd: a list of (N, D, D) host arrays."""
    return [B.to_numpy(jacobian(lambda v, p=p: made(v)[..., p], x))
            for p in range(made.outputs_per_dim)]


@small
@given(seed=st.integers(0, 10**6), dim=st.integers(1, 7), p=st.integers(1, 3),
       hidden=hiddens, order=orders)
def test_made_is_autoregressive_through_the_jacobian(seed, dim, p, hidden, order):
    rng = B.rng(seed)
    made = MADE.init(rng, dim, hidden=hidden, outputs_per_dim=p, order=order)
    x = rng.standard_normal((3, dim))
    rank = _rank(made.order)
    later = rank[None, :] >= rank[:, None]  # [i, j]: x_j is not before x_i
    for J in _made_jacobians(made, x):
        assert numpy.all(J[:, later] == 0.0), "theta_i depends on some x_j with j >= i"
        # MADE cuts nothing else: every hidden degree 1..D-1 is present when the layers are
        # wide enough, so every earlier x_j reaches theta_i
        if all(h >= dim - 1 for h in hidden):
            assert numpy.all(J[:, ~later] != 0.0), "an allowed connection was cut"


def test_made_orders_and_validation():
    rng = B.rng(0)
    assert MADE.init(rng, 4, order="reversed").order == (3, 2, 1, 0)
    assert MADE.init(rng, 3, order=[2, 0, 1]).order == (2, 0, 1)
    assert sorted(MADE.init(rng, 5, order="random").order) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="order"):
        MADE.init(rng, 3, order=[0, 0, 1])
    with pytest.raises(ValueError, match="order"):
        MADE.init(rng, 3, order="sideways")
    with pytest.raises(ValueError, match="dim"):
        MADE.init(rng, 0)
    with pytest.raises(ValueError, match="outputs_per_dim"):
        MAF(MADE.init(rng, 3, outputs_per_dim=3))
    with pytest.raises(ValueError, match="outputs_per_dim"):
        IAF(MADE.init(rng, 3), RationalQuadraticSpline, {"bins": 4})
    assert MAF.init(rng, 3, transformer=RationalQuadraticSpline, bins=4).made.outputs_per_dim == 11
    with pytest.raises(ValueError, match="transformer"):
        MAF(MADE.init(rng, 3), transformer=object)
    with pytest.raises(ValueError, match="z"):
        MAF.init(rng, 3, hidden=(4,)).forward(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match="x"):
        IAF.init(rng, 3, hidden=(4,)).inverse(rng.standard_normal((2, 4)))


def _flows(rng, dim, hidden, order):
    spline = {"transformer": RationalQuadraticSpline, "bins": 4, "bound": 2.0}
    return [MAF.init(rng, dim, hidden=hidden, order=order),
            IAF.init(rng, dim, hidden=hidden, order=order),
            MAF.init(rng, dim, hidden=hidden, order=order, **spline),
            IAF.init(rng, dim, hidden=hidden, order=order, **spline)]


@small
@given(seed=st.integers(0, 10**6), dim=st.integers(1, 6), hidden=hiddens, order=orders)
def test_jacobians_are_triangular_with_log_det_the_sum_of_log_derivatives(seed, dim, hidden,
                                                                          order):
    rng = B.rng(seed)
    for flow in _flows(rng, dim, hidden, order):
        z = rng.standard_normal((3, dim))
        x, log_det = flow.forward(z)
        perm = list(flow.made.order)
        for f, at, ld in ((lambda v, b=flow: b.forward(v)[0], z, log_det),
                          (lambda v, b=flow: b.inverse(v)[0], x, -log_det)):
            J = B.to_numpy(jacobian(f, at))[:, perm][:, :, perm]  # rows, columns in the order
            assert numpy.all(numpy.triu(J, 1) == 0.0), "Jacobian not triangular in the order"
            diag = numpy.diagonal(J, axis1=1, axis2=2)
            numpy.testing.assert_allclose(B.to_numpy(ld), numpy.log(numpy.abs(diag)).sum(-1),
                                          atol=1e-10)
            numpy.testing.assert_allclose(numpy.linalg.slogdet(J)[1], B.to_numpy(ld), atol=1e-10)


@dataclass(frozen=True, eq=False)
class _Tilde:
    """The lecture's IAF conditioner from a MAF's: (mu~, alpha~) = (-mu exp(-alpha), -alpha)."""

    made: MADE

    @property
    def dim(self):
        return self.made.dim

    @property
    def outputs_per_dim(self):
        return 2

    def __call__(self, v):
        theta = self.made(v)
        mu, alpha = theta[..., 0], theta[..., 1]
        return anp.stack([-mu * anp.exp(-alpha), -alpha], axis=-1)


@small
@given(seed=st.integers(0, 10**6), dim=st.integers(1, 6), order=orders)
def test_iaf_with_tilde_parameters_is_the_inverse_of_maf(seed, dim, order):
    rng = B.rng(seed)
    made = MADE.init(rng, dim, hidden=(10, 10), order=order)
    maf, iaf = MAF(made), IAF(_Tilde(made))
    inverse_maf = Inverse(maf)
    v = rng.standard_normal((4, dim))
    pairs = ((iaf.forward(v), inverse_maf.forward(v)), (iaf.inverse(v), inverse_maf.inverse(v)))
    for a, b in pairs:
        numpy.testing.assert_allclose(B.to_numpy(a[0]), B.to_numpy(b[0]), atol=1e-12, rtol=1e-12)
        numpy.testing.assert_allclose(B.to_numpy(a[1]), B.to_numpy(b[1]), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("hidden", [(), (6,), (6, 5)])
def test_slow_maf_with_matching_networks_equals_maf(hidden):
    rng = B.rng(3)
    made = MADE.init(rng, 5, hidden=hidden)
    maf, slow = MAF(made), SlowMAF.from_made(made)
    assert len(slow.nets) == 4
    z = rng.standard_normal((6, 5))
    for a, b in ((slow.forward(z), maf.forward(z)), (slow.inverse(z), maf.inverse(z))):
        numpy.testing.assert_allclose(B.to_numpy(a[0]), B.to_numpy(b[0]), atol=1e-12)
        numpy.testing.assert_allclose(B.to_numpy(a[1]), B.to_numpy(b[1]), atol=1e-12)
    with pytest.raises(ValueError, match="natural"):
        SlowMAF.from_made(MADE.init(rng, 3, order="reversed"))


@pytest.mark.parametrize("order", ["natural", "random"])
def test_one_layer_maf_is_the_lectures_gaussian_autoregressive_model(order):
    """log p(x) = sum_i log N(x_i | mu_i(x_<i), exp(alpha_i(x_<i))^2), coordinate by coordinate."""
    rng = B.rng(11)
    dim = 4
    maf = MAF.init(rng, dim, hidden=(16,), order=order)
    x = rng.standard_normal((5, dim))
    expected = numpy.zeros(5)
    host_x = B.to_numpy(x)
    for k, i in enumerate(maf.made.order):
        # theta_i from x_<i alone: every coordinate not before i is replaced by noise
        before = list(maf.made.order[:k])
        noisy = rng.standard_normal((5, dim))
        keep = numpy.zeros(dim, dtype=bool)
        keep[before] = True
        conditioned = B.asarray(numpy.where(keep, host_x, B.to_numpy(noisy)))
        theta = B.to_numpy(maf.made(conditioned))[:, i]
        expected += norm.logpdf(host_x[:, i], loc=theta[:, 0], scale=numpy.exp(theta[:, 1]))
    got = Flow(StandardNormal(dim), maf).log_prob(x)
    numpy.testing.assert_allclose(B.to_numpy(got), expected, atol=1e-12)


class _Counting:
    """A conditioner wrapper that counts its calls (test-local state, never in the library)."""

    def __init__(self, made: Any):
        self.made, self.calls = made, 0
        self.dim, self.outputs_per_dim = made.dim, made.outputs_per_dim

    def __call__(self, v):
        self.calls += 1
        return self.made(v)


@pytest.mark.parametrize("order", ["natural", "reversed", "random"])
@pytest.mark.parametrize("dim", [1, 3, 9])
def test_pass_counts(order, dim):
    rng = B.rng(dim)
    z = rng.standard_normal((2, dim))
    expected = {(MAF, "forward"): dim, (MAF, "inverse"): 1,
                (IAF, "forward"): 1, (IAF, "inverse"): dim}
    for cls in (MAF, IAF):
        counting = _Counting(MADE.init(rng, dim, hidden=(8,), order=order))
        flow = cls(counting)
        for method in ("forward", "inverse"):
            counting.calls = 0
            getattr(flow, method)(z)
            assert counting.calls == expected[cls, method], (cls.__name__, method)


def test_leading_batch_axes():
    rng = B.rng(5)
    maf = MAF.init(rng, 3, hidden=(8,), order="random")
    z = rng.standard_normal((2, 4, 3))
    x, ld = maf.forward(z)
    assert x.shape == (2, 4, 3) and ld.shape == (2, 4)
    x_flat, ld_flat = maf.forward(anp.reshape(z, (8, 3)))
    numpy.testing.assert_allclose(B.to_numpy(x).reshape(8, 3), B.to_numpy(x_flat), atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(ld).reshape(8), B.to_numpy(ld_flat), atol=1e-13)


def test_short_training_on_the_maf_toy_lowers_the_nll():
    rng = B.rng(0)
    data, test = maf_toy(2000, rng), maf_toy(2000, rng)
    flow = Flow(StandardNormal(2), Compose(MAF.init(rng, 2, hidden=(32, 32)), Reverse(),
                                           MAF.init(rng, 2, hidden=(32, 32))))
    before = float(B.to_numpy(nll(flow, test)))
    flow, history = fit(flow, data, steps=300, batch_size=256, lr=3e-3, rng=B.rng(1))
    after = float(B.to_numpy(nll(flow, test)))
    # entropy 3.531 nats is the floor; a start near N(0, I) sits far above it
    assert after < before - 1.0, (before, after)
    assert after < 3.9, after


def test_forward_and_inverse_do_not_copy_the_batch_for_a_finiteness_check(monkeypatch):
    """check_finite brings the batch to the host (a device sync per step in training); the
    bijections only check shapes and let NaN propagate."""
    from refflow import checks

    flows = [cls.init(B.rng(0), 3, hidden=(8,)) for cls in (MAF, IAF, SlowMAF)]
    z = B.rng(8).standard_normal((4, 3))
    calls = []
    monkeypatch.setattr(checks, "check_finite", lambda name, x: calls.append(name) or x)
    for f in flows:
        f.inverse(f.forward(z)[0])
        with pytest.raises(ValueError, match="z"):
            f.forward(numpy.zeros((2, 4)))
    assert calls == []


def test_default_transformer_is_scalar_affine_with_theta_reordered():
    """The lecture's (mu, alpha) affine map equals ScalarAffine on theta = (alpha, mu)."""
    from refflow.elementwise import ScalarAffine

    made = MADE.init(B.rng(2), 3, hidden=(8,), outputs_per_dim=2)
    z = B.rng(3).standard_normal((4, 3))
    x, ld = MAF(made).forward(z)
    swapped = MAF(lambda v: made(v)[..., ::-1], ScalarAffine)
    x2, ld2 = swapped.forward(z)
    numpy.testing.assert_allclose(B.to_numpy(x2), B.to_numpy(x), atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(ld2), B.to_numpy(ld), atol=1e-13)


@pytest.mark.parametrize("transformer", [None, RationalQuadraticSpline])
@pytest.mark.parametrize("order", ["natural", "random"])
def test_block_passes_equal_full_passes(transformer, order):
    """With a MADE, the D-pass direction computes one coordinate per pass (MADE.block); a
    generic conditioner gets D full passes. Values and gradients must agree."""
    from refflow.nn import MaskedMLP

    rng = B.rng(7)
    dim = 4
    options = {"bins": 5, "bound": 3.0} if transformer else {}
    made = MADE.init(rng, dim, hidden=(8, 8), order=order, outputs_per_dim=(
        RationalQuadraticSpline.num_params(5) if transformer else 2))
    v = 1.5 * rng.standard_normal((6, dim))
    theta = made(v)
    for i in range(dim):
        numpy.testing.assert_allclose(made.block(v, i), theta[..., i:i + 1, :], atol=1e-14)

    def run(cls, generic, w0, v):
        net = MaskedMLP((w0,) + made.net.weights[1:], made.net.biases, made.net.masks,
                        made.net.activation)
        m = MADE(net, made.order, made.outputs_per_dim)
        flow = cls(_Counting(m) if generic else m, transformer, options)
        return flow.forward(v) if cls is MAF else flow.inverse(v)

    w0 = made.net.weights[0]
    for cls in (MAF, IAF):
        u_block, ld_block = run(cls, False, w0, v)
        u_full, ld_full = run(cls, True, w0, v)
        numpy.testing.assert_allclose(u_block, u_full, atol=1e-12)
        numpy.testing.assert_allclose(ld_block, ld_full, atol=1e-12)
        weights = rng.standard_normal((6, dim))

        def loss(w, x, cls=cls, generic=False, weights=weights):
            u, log_det = run(cls, generic, w, x)
            return anp.sum(weights * u) + anp.sum(log_det)

        for argnum in (0, 1):  # the first weight matrix, the input
            block = autograd.grad(loss, argnum)(w0, v)
            full = autograd.grad(lambda w, x, cls=cls: loss(w, x, cls, True), argnum)(w0, v)
            numpy.testing.assert_allclose(block, full, atol=1e-11)


# ------------------------------------------------------ the transformer protocol, one call


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_transformer_is_called_once_per_pass(cls):
    """The one-pass direction calls the transformer once; the sequential one once per
    coordinate (one MADE block each). Values against x = z a + b, a = exp(theta_0), written
    out from the conditioner."""
    rng = B.rng(21)
    dim = 4
    f = cls.init(rng, dim, hidden=(8,), transformer=_Counted, order="random")
    v = rng.standard_normal((5, dim))
    one_pass, sequential = (f.inverse, f.forward) if cls is MAF else (f.forward, f.inverse)
    _Counted.calls = {}
    u, log_det = one_pass(v)
    one, other = ("inverse", "forward") if cls is MAF else ("forward", "inverse")
    assert _Counted.calls == {"from_unconstrained": 1, f"{one}_elementwise": 1}
    _Counted.calls = {}
    back, log_det_back = sequential(u)
    assert _Counted.calls == {"from_unconstrained": dim, f"{other}_elementwise": dim}
    theta = B.to_numpy(f.made(v))
    vh = B.to_numpy(v)
    if cls is MAF:  # u = z = (x - b) / a from theta(x)
        expected, expected_ld = (vh - theta[..., 1]) * numpy.exp(-theta[..., 0]), \
            -theta[..., 0].sum(-1)
    else:  # u = x = z a + b from theta(z)
        expected, expected_ld = vh * numpy.exp(theta[..., 0]) + theta[..., 1], \
            theta[..., 0].sum(-1)
    numpy.testing.assert_allclose(B.to_numpy(u), expected, atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(log_det), expected_ld, atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(back), vh, atol=1e-12)
    numpy.testing.assert_allclose(B.to_numpy(log_det_back), -expected_ld, atol=1e-12)


def test_slow_maf_calls_its_transformer_once_per_coordinate_and_once_for_density():
    rng = B.rng(22)
    slow = SlowMAF.init(rng, 3, hidden=(4,), transformer=_Counted)
    _Counted.calls = {}
    x, _ = slow.forward(rng.standard_normal((2, 3)))
    assert _Counted.calls == {"from_unconstrained": 3, "forward_elementwise": 3}
    _Counted.calls = {}
    slow.inverse(x)
    assert _Counted.calls == {"from_unconstrained": 1, "inverse_elementwise": 1}


def test_the_number_of_parameters_comes_from_num_params_with_the_options():
    """P = num_params(**options), for a class whose options include some that do not change P
    (the spline's bound) and with no class attribute P at all."""
    spline = MAF.init(B.rng(0), 3, hidden=(4,), transformer=RationalQuadraticSpline, bins=5,
                      bound=2.0)
    assert spline.made.outputs_per_dim == 3 * 5 - 1
    assert not hasattr(_Counted, "P")
    assert MAF.init(B.rng(0), 3, hidden=(4,), transformer=_Counted).made.outputs_per_dim == 2


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_maf_fast_layer_equals_its_reference(cls):
    """The affine transformer's kernel against the reference (fast layer off): values both
    ways and the parameter gradient of a log-density."""
    from refflow import fast
    from refflow.tree import partition

    rng = B.rng(23)
    flow = Flow(StandardNormal(4), Compose(cls.init(rng, 4, hidden=(8,)), Reverse(),
                                           cls.init(rng, 4, hidden=(8,), order="random")))
    x = rng.standard_normal((6, 4))
    leaves, rebuild = partition(flow)
    results = {}
    for flag in (True, False):
        with fast.enabled(flag):
            results[flag] = (flow.log_prob(x), flow.bijection.forward(x)[0],
                             autograd.grad(lambda p: nll(rebuild(p), x))(leaves))
    for a, b in zip(results[True][:2], results[False][:2]):
        numpy.testing.assert_allclose(B.to_numpy(a), B.to_numpy(b), rtol=1e-12, atol=1e-12)
    for a, b in zip(results[True][2], results[False][2]):
        numpy.testing.assert_allclose(B.to_numpy(a), B.to_numpy(b), rtol=1e-10, atol=1e-12)
