"""Conditional MADE / MAF / IAF / SlowMAF: a context c enters every layer of the conditioner.

Each test compares with an independent computation: central differences written here (in x,
z and c), an autograd Jacobian, the masked network written out with NumPy on [h, c], the
fast layer against the reference, and the strict stand-in array against NumPy.
"""

from __future__ import annotations

import autograd
import autograd.numpy as anp
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow import backend as B
from refflow import fast
from refflow.autoregressive import IAF, MADE, MAF, SlowMAF
from refflow.core import Flow
from refflow.distributions import StandardNormal
from refflow.elementwise import RationalQuadraticSpline
from refflow.nn import MaskedMLP
from refflow.tree import map_arrays, partition

small = settings(max_examples=12, deadline=None)
SPLINE = {"transformer": RationalQuadraticSpline, "bins": 4, "bound": 3.0}


def _rank(order):
    rank = numpy.empty(len(order), dtype=int)
    rank[list(order)] = numpy.arange(len(order))
    return rank


def _fd(f, a, h=1e-6):
    """d f(a) / d a by central differences: shape f(a).shape + a.shape."""
    a = numpy.asarray(a, dtype=float)
    columns = []
    for k in range(a.size):
        e = numpy.zeros(a.size)
        e[k] = h
        e = e.reshape(a.shape)
        columns.append((numpy.asarray(f(a + e)) - numpy.asarray(f(a - e))) / (2 * h))
    return numpy.stack(columns, axis=-1).reshape(numpy.shape(f(a)) + a.shape)


def _flows(rng, dim, c, hidden=(9, 7), order="random"):
    return {
        "MAF": MAF.init(rng, dim, hidden=hidden, order=order, context_dim=c),
        "IAF": IAF.init(rng, dim, hidden=hidden, order=order, context_dim=c),
        "MAF[spline]": MAF.init(rng, dim, hidden=hidden, order=order, context_dim=c, **SPLINE),
        "IAF[spline]": IAF.init(rng, dim, hidden=hidden, order=order, context_dim=c, **SPLINE),
        "SlowMAF": SlowMAF.init(rng, dim, hidden=(6,), context_dim=c),
    }


def _slogdet_fd(f, z, c):
    """log|det J| per row from a central-difference Jacobian of v -> f(v, c[n])."""
    return numpy.array([numpy.linalg.slogdet(_fd(lambda v, n=n: f(v, c[n])[0], z[n]))[1]
                        for n in range(len(z))])


@small
@given(seed=st.integers(0, 10**6), dim=st.integers(1, 5), p=st.integers(1, 3),
       hidden=st.sampled_from([(), (7,), (6, 5)]), c=st.integers(1, 3),
       order=st.sampled_from(["natural", "reversed", "random"]))
def test_made_with_a_context_is_autoregressive_in_x_and_reads_all_of_c(seed, dim, p, hidden, c,
                                                                      order):
    rng = B.rng(seed)
    made = MADE.init(rng, dim, hidden=hidden, outputs_per_dim=p, order=order, context_dim=c)
    assert made.context_dim == c
    x, ctx = rng.standard_normal((3, dim)), rng.standard_normal((3, c))
    later = _rank(made.order)[None, :] >= _rank(made.order)[:, None]  # [i, j]: j not before i
    for x_n, c_n in zip(x, ctx):
        def in_x(v, c_n=c_n):
            return made(v, c_n)

        def in_c(cc, x_n=x_n):
            return made(x_n, cc)

        j_auto, j_fd = autograd.jacobian(in_x)(x_n), _fd(in_x, x_n)  # (D, P, D)
        for J in (j_auto, j_fd):
            assert numpy.abs(numpy.moveaxis(J, 1, 0)[:, later]).max(initial=0.0) < 1e-12, \
                "theta_i depends on some x_j with j >= i in the order"
        numpy.testing.assert_allclose(j_auto, j_fd, atol=1e-7)
        # the order does not constrain c: every coordinate's block reads the context
        dc_auto = autograd.jacobian(in_c)(c_n)  # (D, P, C)
        numpy.testing.assert_allclose(dc_auto, _fd(in_c, c_n), atol=1e-7)
        assert numpy.all(numpy.abs(dc_auto).reshape(dim, -1).max(axis=1) > 1e-6), \
            "some theta_i does not depend on the context"


def test_made_context_is_an_unmasked_input_of_every_layer():
    """The network written out with NumPy: h_l = tanh([h_{l-1}, c] (W_l * M_l) + b_l), the
    context rows of every mask all ones."""
    rng = B.rng(3)
    made = MADE.init(rng, 4, hidden=(6, 5), outputs_per_dim=2, order="random", context_dim=3)
    x, c = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    net = made.net
    h = x
    for i, (w, m, b) in enumerate(zip(net.weights, net.masks, net.biases)):
        assert numpy.all(m[-3:] == 1.0), "the context is masked"
        h = numpy.concatenate([h, c], axis=-1) @ (w * m) + b
        h = numpy.tanh(h) if i < len(net.weights) - 1 else h
    numpy.testing.assert_allclose(made(x, c), h.reshape(7, 4, 2), atol=1e-13)
    for i in range(4):
        numpy.testing.assert_allclose(made.block(x, i, c)[:, 0], h.reshape(7, 4, 2)[:, i],
                                      atol=1e-13)


@pytest.mark.parametrize("name", ["MAF", "IAF", "MAF[spline]", "IAF[spline]", "SlowMAF"])
def test_log_dets_match_finite_difference_jacobians_and_round_trips_at_a_context(name):
    rng = B.rng(11)
    flow = _flows(rng, 4, 3)[name]
    z, c = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    x, log_det = flow.forward(z, c)
    numpy.testing.assert_allclose(log_det, _slogdet_fd(flow.forward, z, c), atol=1e-6)
    z_back, inv_log_det = flow.inverse(x, c)
    numpy.testing.assert_allclose(z_back, z, atol=1e-10)
    numpy.testing.assert_allclose(inv_log_det, -log_det, atol=1e-10)
    numpy.testing.assert_allclose(inv_log_det, _slogdet_fd(flow.inverse, x, c), atol=1e-6)
    x2 = rng.standard_normal((5, 4))
    z2, _ = flow.inverse(x2, c)
    numpy.testing.assert_allclose(flow.forward(z2, c)[0], x2, atol=1e-10)


@pytest.mark.parametrize("name", ["MAF", "IAF", "MAF[spline]", "IAF[spline]", "SlowMAF"])
def test_a_context_changes_the_map_and_one_row_equals_it_repeated(name):
    rng = B.rng(12)
    flow = _flows(rng, 3, 2)[name]
    z, c = rng.standard_normal((6, 3)), rng.standard_normal((2, 2))
    x_a, ld_a = flow.forward(z, c[0])
    x_b, _ = flow.forward(z, c[1])
    assert numpy.all(numpy.abs(x_a - x_b).max(axis=-1) > 1e-6), "the context changed nothing"
    x_rep, ld_rep = flow.forward(z, numpy.tile(c[0], (6, 1)))
    numpy.testing.assert_allclose(x_rep, x_a, atol=1e-13)
    numpy.testing.assert_allclose(ld_rep, ld_a, atol=1e-13)
    for ctx in (c[0], numpy.tile(c[0], (6, 1))):
        z_back, ld_back = flow.inverse(x_a, ctx)
        numpy.testing.assert_allclose(z_back, z, atol=1e-10)
        numpy.testing.assert_allclose(ld_back, -ld_a, atol=1e-10)
    # leading batch axes: a (2, 3, C) context for (2, 3, D) data, row by row
    x3, ld3 = flow.forward(z.reshape(2, 3, 3), numpy.tile(c[0], (2, 3, 1)))
    numpy.testing.assert_allclose(x3.reshape(6, 3), x_a, atol=1e-13)
    numpy.testing.assert_allclose(ld3.reshape(6), ld_a, atol=1e-13)


@pytest.mark.parametrize("name", ["MAF", "IAF", "SlowMAF"])
def test_missing_extra_or_misshapen_contexts_raise(name):
    """A conditional bijection raises without its context or with a misshapen one; an
    unconditional one passes a context by (as ``Compose`` hands it to every part), and the
    flow around it refuses the context."""
    rng = B.rng(13)
    conditional, plain = _flows(rng, 3, 2)[name], _flows(rng, 3, 0)[name]
    assert (conditional.context_dim, plain.context_dim) == (2, 0)
    z = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="context: .*takes no context"):
        Flow(StandardNormal(3), plain).log_prob(z, context=rng.standard_normal((4, 2)))
    for method in ("forward", "inverse"):
        with pytest.raises(ValueError, match=rf"context: {name} expects a context of dimension 2"):
            getattr(conditional, method)(z)
        for u, v in zip(getattr(plain, method)(z, rng.standard_normal((4, 2))),
                        getattr(plain, method)(z)):
            numpy.testing.assert_array_equal(u, v)
        with pytest.raises(ValueError, match=rf"context: {name} expects a context of dimension 2 "
                           "in its last axis"):
            getattr(conditional, method)(z, rng.standard_normal((4, 3)))
        with pytest.raises(ValueError, match=rf"context: {name} expects shape \(2,\) or"):
            getattr(conditional, method)(z, rng.standard_normal((5, 2)))


def test_made_context_validation():
    rng = B.rng(14)
    made = MADE.init(rng, 3, hidden=(5,), context_dim=2)
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="context: MADE expects a context of dimension 2"):
        made(x)
    with pytest.raises(ValueError, match="context: MADE expects"):
        made.block(x, 0)
    with pytest.raises(ValueError, match="context: MADE takes no context"):
        MADE.init(rng, 3, hidden=(5,))(x, rng.standard_normal((4, 2)))
    with pytest.raises(ValueError, match="context_dim"):
        MADE.init(rng, 3, context_dim=-1)
    with pytest.raises(ValueError, match="context_dim"):
        MAF.init(rng, 3, context_dim=1.5)
    with pytest.raises(ValueError, match="context_dim"):
        SlowMAF.init(rng, 3, context_dim=-2)
    # every layer must carry the same C context rows
    net = made.net
    short = MaskedMLP((net.weights[0], net.weights[1][:-1]), net.biases,
                      (net.masks[0], net.masks[1][:-1]), net.activation)
    with pytest.raises(ValueError, match="net: expected 2 context rows in every layer"):
        MADE(short, made.order, made.outputs_per_dim)
    with pytest.raises(ValueError, match="made: expected an unconditional MADE"):
        SlowMAF.from_made(made)


def _context_loss(flow, method, v, weights):
    def loss(c):
        u, log_det = getattr(flow, method)(v, c)
        return anp.sum(weights * u) + anp.sum(anp.sin(log_det))
    return loss


@pytest.mark.parametrize("name", ["MAF", "IAF", "MAF[spline]", "SlowMAF"])
@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_gradient_with_respect_to_the_context_matches_finite_differences(name, method):
    rng = B.rng(15)
    flow = _flows(rng, 3, 2)[name]
    v, c, weights = (rng.standard_normal(s) for s in ((4, 3), (4, 2), (4, 3)))
    for ctx in (c, c[0]):  # one row per sample, and one row broadcast to all
        loss = _context_loss(flow, method, v, weights)
        numpy.testing.assert_allclose(autograd.grad(loss)(ctx), _fd(loss, ctx), atol=1e-6)


def _nll(flow, x, c):
    """-mean log p(x | c) with a standard normal base, written out here."""
    z, log_det = flow.inverse(x, c)
    return -anp.mean(-0.5 * anp.sum(z**2, axis=-1) - 0.5 * x.shape[-1] * numpy.log(2 * numpy.pi)
                     + log_det)


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_conditional_fast_layer_equals_its_reference(cls):
    """Fast layer on and off: values both ways, parameter and context gradients of an NLL."""
    rng = B.rng(16)
    flow = cls.init(rng, 4, hidden=(8, 8), order="random", context_dim=3)
    x, c = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    leaves, rebuild = partition(flow)
    results = {}
    for flag in (True, False):
        with fast.enabled(flag):
            results[flag] = (flow.inverse(x, c)[0], flow.inverse(x, c)[1], flow.forward(x, c)[0],
                             autograd.grad(lambda p: _nll(rebuild(p), x, c))(leaves),
                             autograd.grad(lambda cc: _nll(flow, x, cc))(c))
    for a, b in zip(results[True][:3], results[False][:3]):
        numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(results[True][3] + [results[True][4]], results[False][3] + [results[False][4]]):
        numpy.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_short_conditional_training_learns_a_shift_by_the_context():
    """x | c ~ N(2c, 0.5^2 I): after a few hundred Adam steps the conditional MAF's NLL is
    close to the exact conditional entropy, D (log(0.5) + (1 + log 2 pi) / 2), which an
    unconditional model of the marginal (variance 4 + 0.25) cannot reach."""
    rng = B.rng(17)
    flow = MAF.init(rng, 2, hidden=(16,), context_dim=2)
    c = rng.standard_normal((512, 2))
    x = 2.0 * c + 0.5 * rng.standard_normal((512, 2))
    leaves, rebuild = partition(flow)
    grad = autograd.grad(lambda p: _nll(rebuild(p), x, c))
    m = [numpy.zeros_like(p) for p in leaves]
    s = [numpy.zeros_like(p) for p in leaves]
    for t in range(1, 401):
        g = grad(leaves)
        m = [0.9 * a + 0.1 * b for a, b in zip(m, g)]
        s = [0.999 * a + 0.001 * b**2 for a, b in zip(s, g)]
        leaves = [p - 0.02 * (a / (1 - 0.9**t)) / (numpy.sqrt(b / (1 - 0.999**t)) + 1e-8)
                  for p, a, b in zip(leaves, m, s)]
    entropy = 2 * (numpy.log(0.5) + 0.5 * (1 + numpy.log(2 * numpy.pi)))
    marginal = 2 * (0.5 * numpy.log(4.25) + 0.5 * (1 + numpy.log(2 * numpy.pi)))
    trained = float(_nll(rebuild(leaves), x, c))
    assert trained < entropy + 0.15 < marginal, (trained, entropy, marginal)


@pytest.mark.standin
@pytest.mark.parametrize("name", ["MAF", "IAF", "SlowMAF"])
def test_conditional_flows_run_on_the_strict_stand_in(name):
    from tests.strict import StrictArray

    rng = B.rng(18)
    flow = _flows(rng, 3, 2)[name]
    x, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))

    def to_strict(a):
        return StrictArray(B.to_numpy(a)) if B.is_array(a) else a

    flow_s, x_s, c_s = map_arrays(to_strict, flow), to_strict(x), to_strict(c)
    for method in ("forward", "inverse"):
        for u_s, u in zip(getattr(flow_s, method)(x_s, c_s), getattr(flow, method)(x, c)):
            assert isinstance(u_s, StrictArray), f"{method} left the device array type"
            numpy.testing.assert_allclose(u_s.get(), u, atol=1e-10)
        # a single context row broadcast to the batch
        u_s, _ = getattr(flow_s, method)(x_s, to_strict(c[0]))
        numpy.testing.assert_allclose(u_s.get(), getattr(flow, method)(x, c[0])[0], atol=1e-10)
    leaves, rebuild = partition(flow)
    leaves_s, rebuild_s = partition(flow_s)
    g = autograd.grad(lambda p, cc: _nll(rebuild(p), x, cc), (0, 1))(leaves, c)
    g_s = autograd.grad(lambda p, cc: _nll(rebuild_s(p), x_s, cc), (0, 1))(leaves_s, c_s)
    for a, b in zip(list(g_s[0]) + [g_s[1]], list(g[0]) + [g[1]]):
        assert isinstance(a, StrictArray), "a gradient left the device array type"
        numpy.testing.assert_allclose(a.get(), b, atol=1e-9)
