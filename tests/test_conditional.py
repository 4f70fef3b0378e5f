"""Conditional flows at the level of ``Flow`` and training (issue 17).

The protocol (a context through ``Compose``/``Inverse``/``Flow``, its errors and
broadcasting), S samples per context, the row blocks and thread split with a context, the
conditional base ``ConditionalDiagonalNormal`` against scipy, ``fit`` with a context learning
a known conditional Gaussian to within a stated margin of its exact conditional entropy,
amortised ``fit_vi``/``elbo`` against a closed-form posterior, save/load of a conditional
flow. The bijection-level properties of every conditional family are in
``test_properties.py``.
"""

from __future__ import annotations

import math
import os
import tempfile

import autograd
import autograd.numpy as anp
import numpy
import pytest
import scipy.stats

from refflow import backend as B
from refflow import parallel, train
from refflow.affine import Diagonal
from refflow.autoregressive import MAF
from refflow.core import Compose, Flow, Inverse, context_dim_of, repeat_context
from refflow.distributions import ConditionalDiagonalNormal, StandardNormal
from refflow.io import load, save
from refflow.nn import MLP
from refflow.train import elbo, fit, fit_vi, nll

D, C = 2, 3


def _maf(seed=0, dim=D, context_dim=C, hidden=(8,)):
    return MAF.init(B.rng(seed), dim, hidden=hidden, context_dim=context_dim)


def _flow(seed=0):
    """A conditional flow whose conditioner reads c in earnest (weights at full scale)."""
    return Flow(StandardNormal(D), Compose(_maf(seed), Diagonal(numpy.array([1.5, 0.5]),
                                                                numpy.array([0.2, -0.1]))))


def _data(n, seed=1):
    rng = B.rng(seed)
    return rng.standard_normal((n, D)), rng.standard_normal((n, C))


# ---------------------------------------------------------------------- the protocol


def test_context_dim_is_read_from_the_parts():
    maf = _maf()
    assert context_dim_of(maf) == C
    assert context_dim_of(Diagonal(numpy.ones(D), numpy.zeros(D))) == 0
    assert Compose(Diagonal(numpy.ones(D), numpy.zeros(D)), maf).context_dim == C
    assert Compose(Diagonal(numpy.ones(D), numpy.zeros(D))).context_dim == 0
    assert Inverse(maf).context_dim == C
    assert Compose(Inverse(Compose(maf))).context_dim == C
    assert _flow().context_dim == C
    assert Flow(StandardNormal(D), Diagonal(numpy.ones(D), numpy.zeros(D))).context_dim == 0
    base = ConditionalDiagonalNormal.init(B.rng(0), D, context_dim=C)
    assert Flow(base, Diagonal(numpy.ones(D), numpy.zeros(D))).context_dim == C


def test_parts_with_different_context_dims_are_refused():
    with pytest.raises(ValueError, match="bijections"):
        Compose(_maf(context_dim=2), _maf(context_dim=3))
    with pytest.raises(ValueError, match="base"):
        Flow(ConditionalDiagonalNormal.init(B.rng(0), D, context_dim=2), _maf(context_dim=3))


def test_compose_and_inverse_pass_the_context_to_every_part():
    f, g = _maf(0), _maf(1)
    z, c = _data(5)
    x1, ld1 = f.forward(z, context=c)
    x2, ld2 = g.forward(x1, context=c)
    x, ld = Compose(f, g).forward(z, context=c)
    numpy.testing.assert_allclose(x, x2, rtol=1e-12)
    numpy.testing.assert_allclose(ld, ld1 + ld2, rtol=1e-12)
    z_back, ld_inv = Inverse(Compose(f, g)).forward(x, context=c)
    numpy.testing.assert_allclose(z_back, z, atol=1e-10)
    numpy.testing.assert_allclose(ld_inv, -ld, atol=1e-10)


def test_log_prob_is_the_change_of_variables_at_each_context():
    flow = _flow()
    x, c = _data(6)
    z, log_det = flow.bijection.inverse(x, context=c)
    expected = scipy.stats.multivariate_normal(numpy.zeros(D)).logpdf(z) + log_det
    numpy.testing.assert_allclose(flow.log_prob(x, c), expected, rtol=1e-12)
    # the context matters: another context gives another density
    assert numpy.max(numpy.abs(flow.log_prob(x, c[::-1]) - flow.log_prob(x, c))) > 1e-3


@pytest.mark.parametrize("method", ["log_prob", "push_forward"])
def test_context_errors_name_the_context(method):
    flow = _flow()
    x, c = _data(4)
    call = getattr(flow, method)
    plain = Flow(StandardNormal(D), Diagonal(numpy.ones(D), numpy.zeros(D)))
    with pytest.raises(ValueError, match="context: .*takes no context"):
        getattr(plain, method)(x, c)
    with pytest.raises(ValueError, match="context"):  # from the conditional part
        call(x)
    with pytest.raises(ValueError, match="context: .*dimension 3"):
        call(x, c[:, :2])
    with pytest.raises(ValueError, match=r"context: this flow expects shape \(3,\)"):
        call(x, c[:3])
    with pytest.raises(ValueError, match="context"):
        call(x, numpy.full((4, C), numpy.nan))


def test_sampling_context_errors():
    flow = _flow()
    _, c = _data(4)
    with pytest.raises(ValueError, match="context"):
        flow.sample(4, B.rng(0))
    with pytest.raises(ValueError, match=r"context: this flow expects shape \(3,\)"):
        flow.sample(5, B.rng(0), context=c)
    with pytest.raises(ValueError, match="context"):
        Flow(StandardNormal(D), Diagonal(numpy.ones(D), numpy.zeros(D))).sample(
            4, B.rng(0), context=c)


def test_one_context_for_all_rows_equals_it_repeated():
    flow = _flow()
    x, c = _data(5)
    tiled = numpy.repeat(c[:1], 5, axis=0)
    expected = flow.log_prob(x, tiled)
    numpy.testing.assert_allclose(flow.log_prob(x, c[0]), expected, rtol=1e-12)
    numpy.testing.assert_allclose(flow.log_prob(x, c[:1]), expected, rtol=1e-12)
    xs, lp = flow.sample_and_log_prob(5, B.rng(3), c[0])
    xt, lpt = flow.sample_and_log_prob(5, B.rng(3), tiled)
    numpy.testing.assert_allclose(xs, xt, rtol=1e-12)
    numpy.testing.assert_allclose(lp, lpt, rtol=1e-12)


def test_sample_and_log_prob_agrees_with_log_prob_per_context():
    flow = _flow()
    _, c = _data(7)
    x, lp = flow.sample_and_log_prob(7, B.rng(2), c)
    numpy.testing.assert_allclose(lp, flow.log_prob(x, c), rtol=1e-9, atol=1e-9)


def test_s_samples_for_each_of_m_contexts():
    """sample(M * S, context=repeat_context(c, S)).reshape(M, S, D)[m] are S draws at c_m."""
    flow = _flow()
    m, s = 3, 4
    _, c = _data(m)
    assert repeat_context(c, s).shape == (m * s, C)
    x = flow.sample(m * s, B.rng(5), context=repeat_context(c, s)).reshape(m, s, D)
    z = B.rng(5).standard_normal((m * s, D)).reshape(m, s, D)  # the same base draws
    for i in range(m):
        expected, _ = flow.bijection.forward(z[i], context=c[i])
        numpy.testing.assert_allclose(x[i], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="samples"):
        repeat_context(c, 0)


def test_gradient_with_respect_to_the_context_matches_finite_differences():
    flow = _flow()
    x, c = _data(3)
    direction = B.rng(9).standard_normal(c.shape)

    def loss(cc):
        return anp.sum(flow.log_prob(x, cc) * numpy.array([1.0, -0.5, 2.0]))

    analytic = numpy.sum(autograd.grad(loss)(c) * direction)
    h = 1e-6
    numeric = (loss(c + h * direction) - loss(c - h * direction)) / (2 * h)
    assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric))


# ------------------------------------------------------------- row blocks and threads


@pytest.mark.parametrize("threads", [1, 2])
def test_row_blocks_and_threads_carry_the_context(threads):
    flow = _flow()
    n = 2 * 2 * parallel.SPLIT_MIN_ROWS + 37
    x, c = _data(n, seed=4)
    whole = flow.log_prob(x, c)
    whole_one = flow.log_prob(x, c[0])
    z = B.rng(6).standard_normal((n, D))
    pushed, pushed_lp = flow.push_forward(z, c)
    old_chunk, old_threads = parallel.get_chunk_size(), parallel.get_threads()
    try:
        parallel.set_chunk_size(1000 * (D + C))  # blocks of 1000 rows (or threads x min rows)
        parallel.set_threads(threads)
        numpy.testing.assert_allclose(flow.log_prob(x, c), whole, rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(flow.log_prob(x, c[0]), whole_one, rtol=1e-12,
                                      atol=1e-12)
        got, got_lp = flow.push_forward(z, c)
        numpy.testing.assert_allclose(got, pushed, rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(got_lp, pushed_lp, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="context"):
            flow.log_prob(x, c[:-1])  # rows that match neither N nor 1, in blocks too
        # under autograd nothing is cut: the gradient in the context is the whole batch's
        grad_c = autograd.grad(lambda cc: anp.sum(flow.log_prob(x, cc)))(c)
        grad_one = autograd.grad(lambda cc: anp.sum(flow.log_prob(x, cc)))(c[0])
    finally:
        parallel.set_chunk_size(old_chunk)
        parallel.set_threads(old_threads)
    numpy.testing.assert_allclose(grad_c, autograd.grad(
        lambda cc: anp.sum(flow.log_prob(x, cc)))(c), rtol=1e-12, atol=1e-12)
    # one (C,) context for all rows: its gradient sums the rows' gradients at that context
    grad_tiled = autograd.grad(lambda cc: anp.sum(flow.log_prob(x, cc)))(
        numpy.repeat(c[:1], n, axis=0))
    numpy.testing.assert_allclose(grad_one, numpy.sum(grad_tiled, axis=0), rtol=1e-9,
                                  atol=1e-9)


# ---------------------------------------------------------------- conditional base


def _mlp_by_hand(net, c):
    """The MLP written out with NumPy: tanh hidden layers, a linear last one."""
    h = c
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        h = h @ w + b
        if i < len(net.weights) - 1:
            h = numpy.tanh(h)
    return h


def test_conditional_diagonal_normal_against_scipy():
    rng = B.rng(0)
    net = MLP.init(rng, [C, 5, 2 * D])  # a random last layer: mean and scale vary with c
    base = ConditionalDiagonalNormal(net, C)
    z, c = _data(6)
    out = _mlp_by_hand(net, c)
    mean, scale = out[:, :D], numpy.exp(out[:, D:])
    expected = scipy.stats.norm(mean, scale).logpdf(z).sum(axis=1)
    numpy.testing.assert_allclose(base.log_prob(z, c), expected, rtol=1e-12)
    numpy.testing.assert_allclose(base.log_prob(z, c[0]),
                                  scipy.stats.norm(mean[0], scale[0]).logpdf(z).sum(axis=1),
                                  rtol=1e-12)
    assert base.event_shape == (D,)
    with pytest.raises(ValueError, match="context"):
        base.log_prob(z)
    with pytest.raises(ValueError, match="context"):
        base.log_prob(z, c[:, :2])
    with pytest.raises(ValueError, match="net"):
        ConditionalDiagonalNormal(net, C + 1)


def test_conditional_diagonal_normal_samples_follow_their_context():
    net = MLP.init(B.rng(0), [C, 5, 2 * D])
    base = ConditionalDiagonalNormal(net, C)
    c = B.rng(1).standard_normal(C)
    n = 20000
    z = base.sample(n, B.rng(2), c)
    out = _mlp_by_hand(net, c)
    mean, scale = out[:D], numpy.exp(out[D:])
    # z-scores of the sample mean and of the sample variance (4 sigma: a real error is far)
    assert numpy.all(numpy.abs(z.mean(axis=0) - mean) < 4 * scale / math.sqrt(n))
    assert numpy.all(numpy.abs(z.var(axis=0) / scale**2 - 1) < 4 * math.sqrt(2 / n))


def test_conditional_base_in_a_flow_float32():
    base = ConditionalDiagonalNormal.init(B.rng(0), D, context_dim=C, dtype=numpy.float32)
    flow = Flow(base, MAF.init(B.rng(1), D, hidden=(8,), context_dim=C, dtype=numpy.float32))
    c = B.rng(2).standard_normal((4, C)).astype(numpy.float32)
    x, lp = flow.sample_and_log_prob(4, B.rng(3), c)
    assert x.dtype == numpy.float32 and lp.dtype == numpy.float32
    numpy.testing.assert_allclose(flow.log_prob(x, c), lp, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------- training

A_TRUE = numpy.array([[1.0, -0.5], [0.5, 0.0], [-1.0, 2.0]])  # (C, D)
B_TRUE = numpy.array([0.5, -1.0])
S_TRUE = numpy.array([0.3, 0.6])


def _conditional_gaussian(n, seed):
    """x | c ~ N(c A + b, diag(s^2)), c ~ N(0, I_C): entropy of x | c is sum 0.5 log(2 pi e s^2)."""
    rng = numpy.random.default_rng(seed)
    c = rng.standard_normal((n, C))
    x = c @ A_TRUE + B_TRUE + S_TRUE * rng.standard_normal((n, D))
    return x, c


def test_fit_with_context_learns_a_known_conditional():
    """A conditional MAF fitted to x | c ~ N(c A + b, s^2) reaches a test NLL within 0.05 nats
    of the exact conditional entropy, the best any model can reach."""
    x, c = _conditional_gaussian(4000, seed=0)
    x_test, c_test = _conditional_gaussian(4000, seed=1)
    entropy = float(numpy.sum(0.5 * numpy.log(2 * math.pi * math.e * S_TRUE**2)))
    flow = Flow(StandardNormal(D), MAF.init(B.rng(0), D, hidden=(16,), context_dim=C))
    start = float(nll(flow, x_test, c_test))
    flow, history = fit(flow, x, steps=1500, batch_size=256, lr=1e-2, rng=B.rng(1),
                        context=c, validation=0.2, schedule="cosine")
    test_nll = float(nll(flow, x_test, c_test))
    assert start - entropy > 1.0  # the untrained flow is far from it
    assert abs(test_nll - entropy) < 0.05, (test_nll, entropy)
    # the validation split kept each context row with its data row: its NLL is near too
    assert abs(history["best_val_nll"] - entropy) < 0.1
    # the same numbers with nll's definition: -(1/N) sum log p(x | c)
    numpy.testing.assert_allclose(test_nll, -numpy.mean(flow.log_prob(x_test, c_test)),
                                  rtol=1e-12)


def test_fit_with_context_and_explicit_validation_pairs():
    x, c = _conditional_gaussian(300, seed=2)
    x_val, c_val = _conditional_gaussian(100, seed=3)
    flow = Flow(StandardNormal(D), MAF.init(B.rng(0), D, hidden=(4,), context_dim=C))
    fitted, history = fit(flow, x, steps=20, batch_size=100, lr=1e-2, rng=B.rng(1),
                          context=c, validation=(x_val, c_val), eval_every=10)
    assert history["best_val_nll"] == pytest.approx(float(nll(fitted, x_val, c_val)),
                                                    rel=1e-12)
    with pytest.raises(ValueError, match="validation"):
        fit(flow, x, steps=2, rng=B.rng(1), context=c, validation=x_val)
    with pytest.raises(ValueError, match="validation"):
        fit(flow, x, steps=2, rng=B.rng(1), context=c, validation=(x_val, c_val[:50]))


def test_fit_context_errors():
    x, c = _conditional_gaussian(50, seed=2)
    cond = Flow(StandardNormal(D), MAF.init(B.rng(0), D, hidden=(4,), context_dim=C))
    plain = Flow(StandardNormal(D), Diagonal(numpy.ones(D), numpy.zeros(D)))
    with pytest.raises(ValueError, match="context: the flow takes no context"):
        fit(plain, x, steps=2, rng=B.rng(0), context=c)
    with pytest.raises(ValueError, match="context: the flow expects"):
        fit(cond, x, steps=2, rng=B.rng(0))
    with pytest.raises(ValueError, match="context: expected one row per data row"):
        fit(cond, x, steps=2, rng=B.rng(0), context=c[:10])
    with pytest.raises(ValueError, match="context"):
        fit(cond, x, steps=2, rng=B.rng(0), context=c[:, :2])


SIGMA = 0.5  # x | z ~ N(z, SIGMA^2), z ~ N(0, 1)


def _log_joint(z, x):
    """log p(x, z) for the linear-Gaussian model, one x (row of the context) per z."""
    return (-0.5 * z[:, 0] ** 2 - 0.5 * ((x[:, 0] - z[:, 0]) / SIGMA) ** 2
            - math.log(2 * math.pi * SIGMA))


def _exact_posterior_q():
    """q(z | x) = N(x / (1 + s^2), s^2 / (1 + s^2)), the exact posterior, as a linear MLP."""
    k = 1.0 / (1.0 + SIGMA**2)
    net = MLP((numpy.array([[k, 0.0]]),), (numpy.array([0.0, 0.5 * math.log(SIGMA**2 * k)]),))
    return Flow(ConditionalDiagonalNormal(net, 1), Diagonal(numpy.ones(1), numpy.zeros(1)))


def test_elbo_with_context_is_log_evidence_at_the_exact_posterior():
    """At q = p(z | x) every term log p(x, z) - log q(z | x) is log p(x): the ELBO is the mean
    log-evidence of the observations, with no Monte Carlo spread."""
    x_obs = numpy.array([[-1.0], [0.3], [2.0]])
    est, se = elbo(_exact_posterior_q(), _log_joint, 50, B.rng(0), batch_size=64,
                   context=x_obs)
    evidence = scipy.stats.norm(0.0, math.sqrt(1 + SIGMA**2)).logpdf(x_obs[:, 0])
    assert est == pytest.approx(float(numpy.mean(evidence)), abs=1e-10)
    assert se < 1e-10


def test_elbo_with_context_standard_error_matches_the_spread_of_estimates():
    """The standard error with a context, sqrt(sum_m var_m / n) / M, is the spread of the
    estimate over independent runs (30 seeds: the ratio within [0.6, 1.5])."""
    q = Flow(StandardNormal(1), _maf(0, dim=1, context_dim=1, hidden=(4,)))
    x_obs = numpy.array([[-1.0], [0.3], [2.5]])
    runs = [elbo(q, _log_joint, 40, B.rng(seed), batch_size=50, context=x_obs)
            for seed in range(30)]
    estimates, errors = numpy.array([r[0] for r in runs]), numpy.array([r[1] for r in runs])
    ratio = numpy.std(estimates, ddof=1) / numpy.mean(errors)
    assert 0.6 < ratio < 1.5, ratio


def test_fit_vi_amortised_learns_the_posterior():
    """Amortised VI with a conditional q(z | x) over many observations reaches ELBO = log p(x)
    (KL 0) to within 0.02 nats, and q's mean follows x / (1 + s^2)."""
    rng = numpy.random.default_rng(0)
    z_true = rng.standard_normal((500, 1))
    x_obs = z_true + SIGMA * rng.standard_normal((500, 1))
    q = Flow(StandardNormal(1), MAF.init(B.rng(1), 1, hidden=(8,), context_dim=1))
    q, history = fit_vi(q, _log_joint, steps=600, rng=B.rng(2), batch_size=64, lr=1e-2,
                        context=x_obs, samples_per_context=4)
    assert len(history["elbo"]) == 600
    x_test = numpy.array([[-1.5], [0.0], [1.0]])
    est, se = elbo(q, _log_joint, 2000, B.rng(3), context=x_test)
    evidence = float(numpy.mean(scipy.stats.norm(0, math.sqrt(1 + SIGMA**2)).logpdf(x_test)))
    assert evidence - est < 0.02 + 3 * se, (est, evidence, se)
    draws = q.sample(3 * 2000, B.rng(4), repeat_context(x_test, 2000)).reshape(3, 2000)
    k = 1 / (1 + SIGMA**2)
    numpy.testing.assert_allclose(draws.mean(axis=1), k * x_test[:, 0], atol=0.05)
    numpy.testing.assert_allclose(draws.std(axis=1), math.sqrt(SIGMA**2 * k), atol=0.05)


def test_fit_vi_context_errors():
    q = Flow(StandardNormal(1), MAF.init(B.rng(1), 1, hidden=(4,), context_dim=1))
    x_obs = numpy.zeros((5, 1))
    with pytest.raises(ValueError, match="context: the flow expects"):
        fit_vi(q, lambda z: -z[:, 0] ** 2, steps=1, rng=B.rng(0))
    plain = Flow(StandardNormal(1), Diagonal(numpy.ones(1), numpy.zeros(1)))
    with pytest.raises(ValueError, match="samples_per_context"):
        fit_vi(plain, lambda z: -z[:, 0] ** 2, steps=1, rng=B.rng(0), samples_per_context=3)
    with pytest.raises(ValueError, match="context"):
        fit_vi(q, _log_joint, steps=1, rng=B.rng(0), context=x_obs[:, 0])
    with pytest.raises(ValueError, match="log_target"):
        fit_vi(q, lambda z, x: z, steps=1, rng=B.rng(0), context=x_obs)


def test_fit_and_fit_vi_share_one_gradient_step(monkeypatch):
    calls = []
    step = train._gradient_step

    def counting(*args, **kwargs):
        calls.append(args[0])
        return step(*args, **kwargs)

    monkeypatch.setattr(train, "_gradient_step", counting)
    x, c = _conditional_gaussian(64, seed=5)
    fit(Flow(StandardNormal(D), MAF.init(B.rng(0), D, hidden=(4,), context_dim=C)), x,
        steps=3, batch_size=32, rng=B.rng(0), context=c)
    fit_vi(Flow(StandardNormal(1), MAF.init(B.rng(1), 1, hidden=(4,), context_dim=1)),
           _log_joint, steps=2, rng=B.rng(0), batch_size=4, context=numpy.zeros((4, 1)))
    assert len(calls) == 5


def test_unconditional_fit_is_unchanged_by_the_context_machinery():
    """Without a context, fit draws the same batches as before: the mean of the first epoch's
    batches is the data mean (each row once), and the result is reproducible."""
    x, _ = _conditional_gaussian(256, seed=6)
    flow = Flow(StandardNormal(D), Diagonal(numpy.ones(D), numpy.zeros(D)))
    a, ha = fit(flow, x, steps=10, batch_size=64, rng=B.rng(0))
    b, hb = fit(flow, x, steps=10, batch_size=64, rng=B.rng(0))
    assert ha["loss"] == hb["loss"]
    batches = train._batches(x, 64, B.rng(0))
    order = B.rng(0).permutation(256)
    numpy.testing.assert_array_equal(next(batches), x[order[:64]])


# ----------------------------------------------------------------------- save / load


def test_conditional_flow_round_trips_through_save_and_load():
    base = ConditionalDiagonalNormal(MLP.init(B.rng(4), [C, 5, 2 * D]), C)
    flow = Flow(base, Compose(_maf(0), Inverse(_maf(1))))
    x, c = _data(5)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "conditional.npz")
        save(path, flow)
        loaded = load(path)
    assert loaded.context_dim == C
    numpy.testing.assert_array_equal(loaded.log_prob(x, c), flow.log_prob(x, c))
    with pytest.raises(ValueError, match="context"):
        loaded.log_prob(x)
