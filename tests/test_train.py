"""fit and fit_vi: closed-form optima, determinism, early stopping, schedules, clipping, errors."""

from __future__ import annotations

import math

import numpy
import pytest

from refflow import backend as B
from refflow import train
from refflow.affine import Diagonal, Triangular
from refflow.core import Flow
from refflow.distributions import StandardNormal
from refflow.train import _clip, elbo, fit, fit_vi, learning_rate, nll


def _gauss_flow(dim=1, dtype=numpy.float64):
    return Flow(StandardNormal(dim), Diagonal(numpy.ones(dim, dtype), numpy.zeros(dim, dtype)))


def test_fit_recovers_the_maximum_likelihood_gaussian():
    # the MLE of x = scale z + shift is the sample mean and the (biased) sample std
    data = B.rng(0).normal(1.5, 0.7, (400, 2))
    flow, hist = fit(_gauss_flow(2), data, steps=600, batch_size=400, lr=0.05, rng=B.rng(1))
    host = B.to_numpy(data)
    numpy.testing.assert_allclose(B.to_numpy(flow.bijection.shift), host.mean(0), atol=2e-3)
    numpy.testing.assert_allclose(B.to_numpy(flow.bijection.scale), host.std(0), atol=2e-3)
    assert len(hist["loss"]) == 600 and hist["train_nll"] is hist["loss"]
    # the optimum NLL in closed form: sum_j (log sigma_j + 1/2 log(2 pi) + 1/2)
    best = float(numpy.sum(numpy.log(host.std(0)) + 0.5 * math.log(2 * math.pi) + 0.5))
    assert abs(hist["loss"][-1] - best) < 1e-4


def test_fit_is_deterministic_for_a_seed():
    data = B.rng(0).normal(0.0, 2.0, (300, 2))
    flow = Flow(StandardNormal(2), Triangular.init(B.rng(3), 2))
    kw = dict(steps=40, batch_size=32, lr=0.01, validation=0.2, eval_every=10)
    a, ha = fit(flow, data, rng=B.rng(5), **kw)
    b, hb = fit(flow, data, rng=B.rng(5), **kw)
    assert ha["loss"] == hb["loss"] and ha["val_nll"] == hb["val_nll"]
    assert numpy.array_equal(B.to_numpy(a.bijection.T), B.to_numpy(b.bijection.T))
    c, hc = fit(flow, data, rng=B.rng(6), **kw)
    assert hc["loss"] != ha["loss"]


def test_validation_early_stopping_restores_the_best_parameters():
    data = B.rng(0).normal(1.0, 1.0, (200, 1))
    seen = {}

    def callback(step, flow, history):
        seen[step] = float(nll(flow, held_out))

    held_out = B.rng(9).normal(1.0, 1.0, (50, 1))
    # a large constant learning rate makes the validation NLL bounce: patience triggers
    flow, hist = fit(_gauss_flow(), data, steps=400, batch_size=8, lr=0.5, rng=B.rng(1),
                     validation=held_out, patience=2, eval_every=5, callback=callback)
    assert hist["stopped_early"] and hist["step"][-1] < 400
    assert hist["best_val_nll"] == min(hist["val_nll"])
    assert abs(float(nll(flow, held_out)) - hist["best_val_nll"]) < 1e-12
    assert seen[hist["best_step"]] == pytest.approx(hist["best_val_nll"], abs=1e-12)


def test_validation_fraction_and_callback_stop():
    data = B.rng(0).normal(0.0, 1.0, (100, 1))
    flow, hist = fit(_gauss_flow(), data, steps=100, batch_size=10, lr=0.01, rng=B.rng(1),
                     validation=0.25, eval_every=10, callback=lambda s, f, h: s >= 30)
    assert hist["step"] == [10, 20, 30] and len(hist["val_nll"]) == 3
    assert hist["stopped_early"]


def test_schedules():
    assert learning_rate("constant", 0.1, 7, 10) == 0.1
    assert learning_rate("cosine", 1.0, 0, 10) == 1.0
    assert learning_rate("cosine", 1.0, 10, 10) == pytest.approx(0.0)
    assert [learning_rate("step", 1.0, t, 8) for t in (0, 3, 4, 5, 6)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01])
    assert learning_rate(lambda t: 0.5 / (t + 1), 1.0, 1, 10) == 0.25
    with pytest.raises(ValueError, match="schedule"):
        learning_rate("linear", 1.0, 0, 10)
    data = B.rng(0).normal(0.0, 1.0, (64, 1))
    _, hist = fit(_gauss_flow(), data, steps=20, batch_size=64, lr=0.1, rng=B.rng(0),
                  schedule="cosine", eval_every=5)
    assert hist["lr"] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 20))
                                        for s in (4, 9, 14, 19)])


def test_clipping_by_global_norm():
    g = [numpy.array([3.0]), numpy.array([[4.0]])]
    clipped = _clip(g, 1.0)
    assert math.sqrt(sum(float(numpy.sum(c**2)) for c in clipped)) == pytest.approx(1.0)
    assert float(clipped[0][0]) == pytest.approx(0.6)
    small = _clip(g, 10.0)
    assert float(small[0][0]) == 3.0
    data = B.rng(0).normal(50.0, 1.0, (64, 1))
    _, hist = fit(_gauss_flow(), data, steps=5, batch_size=64, lr=0.1, rng=B.rng(0),
                  clip_norm=1e-3)
    assert numpy.all(numpy.isfinite(hist["loss"]))


def test_float32_training_stays_float32():
    data = B.rng(0).normal(0.0, 1.0, (64, 1), dtype=numpy.float32)
    flow = Flow(StandardNormal(1, dtype=numpy.float32),
                Diagonal(numpy.ones(1, numpy.float32), numpy.zeros(1, numpy.float32)))
    flow, _ = fit(flow, data, steps=3, batch_size=16, lr=0.01, rng=B.rng(0), clip_norm=1.0,
                  schedule="cosine")
    assert flow.bijection.scale.dtype == numpy.float32
    assert flow.bijection.shift.dtype == numpy.float32


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"batch_size": 1.5}, "batch_size"), ({"lr": -1.0}, "lr"),
    ({"lr": float("nan")}, "lr"), ({"rng": None}, "rng"), ({"validation": 1.5}, "validation"),
    ({"validation": numpy.ones((3, 2))}, "validation"), ({"clip_norm": 0.0}, "clip_norm"),
    ({"patience": 0}, "patience"), ({"schedule": "warm"}, "schedule"),
])
def test_fit_rejects_bad_arguments(kwargs, match):
    args = dict(steps=2, batch_size=4, lr=0.1, rng=B.rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit(_gauss_flow(), numpy.zeros((10, 1)), **args)


def test_fit_rejects_bad_data():
    with pytest.raises(ValueError, match="data"):
        fit(_gauss_flow(), numpy.zeros((10, 2)), steps=1, rng=B.rng(0))
    with pytest.raises(ValueError, match="data"):
        fit(_gauss_flow(), numpy.array([[0.0], [numpy.nan]]), steps=1, rng=B.rng(0))
    with pytest.raises(ValueError, match="data"):
        fit(_gauss_flow(), numpy.zeros((0, 1)), steps=1, rng=B.rng(0))
    with pytest.raises(ValueError, match="flow"):
        fit(object(), numpy.zeros((3, 1)), steps=1, rng=B.rng(0))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_is_reported():
    data = numpy.array([[0.0], [1e-300]])
    flow = Flow(StandardNormal(1), Diagonal(numpy.array([1e-300]), numpy.zeros(1)))
    with pytest.raises(FloatingPointError, match="lower lr"):
        fit(flow, data * 0 + 1e300, steps=2, batch_size=2, lr=1.0, rng=B.rng(0), eval_every=1)


def test_fit_vi_finds_a_gaussian_target_and_elbo_matches_log_z():
    # target N(mu, diag(s^2)) unnormalised: log Z = sum log(s sqrt(2 pi)); q can equal p
    mu, s = numpy.array([1.0, -2.0]), numpy.array([0.5, 2.0])

    def log_target(z):
        return -0.5 * B.xp().sum(((z - mu) / s) ** 2, axis=-1)

    q, hist = fit_vi(_gauss_flow(2), log_target, steps=600, rng=B.rng(0), batch_size=128,
                     lr=0.05, schedule="cosine", eval_every=100)
    numpy.testing.assert_allclose(B.to_numpy(q.bijection.shift), mu, atol=0.05)
    numpy.testing.assert_allclose(B.to_numpy(q.bijection.scale), s, rtol=0.05)
    log_z = float(numpy.sum(numpy.log(s * math.sqrt(2 * math.pi))))
    est, se = elbo(q, log_target, 20000, B.rng(1))
    assert est <= log_z + 3 * se and log_z - est < 0.01  # KL(q || p) >= 0, and small
    assert len(hist["elbo"]) == 600 and hist["step"][-1] == 600
    assert numpy.mean(hist["elbo"][-50:]) > numpy.mean(hist["elbo"][:50])


def test_elbo_standard_error_against_independent_monte_carlo():
    # q = N(0, 1), target N(0, 4) unnormalised: w = -z^2/8 + z^2/2 + log sqrt(2 pi),
    # E[w] = 3/8 + log sqrt(2 pi), Var[w] = (3/8)^2 Var[z^2] = 2 (3/8)^2
    q = _gauss_flow()
    est, se = elbo(q, lambda z: -0.125 * z[:, 0] ** 2, 40000, B.rng(3), batch_size=7000)
    assert se == pytest.approx(math.sqrt(2) * 0.375 / math.sqrt(40000), rel=0.05)
    assert abs(est - (0.375 + 0.5 * math.log(2 * math.pi))) < 4 * se


def test_annealing_and_vi_errors():
    target = lambda z: -0.5 * z[:, 0] ** 2  # noqa: E731
    _, hist = fit_vi(_gauss_flow(), target, steps=10, rng=B.rng(0), batch_size=8, lr=0.01,
                     anneal_steps=5, eval_every=5)
    assert len(hist["elbo"]) == 10
    with pytest.raises(ValueError, match="log_target"):
        fit_vi(_gauss_flow(), lambda z: z, steps=1, rng=B.rng(0))
    with pytest.raises(ValueError, match="log_target"):
        fit_vi(_gauss_flow(), "U1", steps=1, rng=B.rng(0))
    with pytest.raises(ValueError, match="anneal_steps"):
        fit_vi(_gauss_flow(), target, steps=1, rng=B.rng(0), anneal_steps=-1)
    with pytest.raises(ValueError, match="n"):
        elbo(_gauss_flow(), target, 0, B.rng(0))


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_patience_counts_evaluations_without_improvement(patience):
    # lr = 0: the parameters, hence the validation NLL, never change. The first evaluation
    # sets the best; each later one is an evaluation without improvement, and the
    # documented meaning stops training after exactly `patience` of them.
    data = B.rng(0).normal(0.0, 1.0, (40, 1))
    _, hist = fit(_gauss_flow(), data, steps=50, batch_size=8, lr=0.1, rng=B.rng(1),
                  validation=0.25, patience=patience, eval_every=1, schedule=lambda t: 0.0)
    assert hist["step"] == list(range(1, patience + 2))
    assert hist["best_step"] == 1 and hist["stopped_early"]
    assert len(set(hist["val_nll"])) == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_vi_refuses_a_nan_target():
    # log z is NaN for z < 0: without a check, Adam turns every parameter into NaN, even the
    # scale of a Diagonal whose constructor demands a positive one
    with pytest.raises(FloatingPointError, match="ELBO became nan at step 5"):
        fit_vi(_gauss_flow(), lambda z: B.xp().log(z[:, 0]), steps=20, rng=B.rng(0),
               batch_size=16, lr=0.01, eval_every=5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_vi_refuses_a_nan_gradient_with_a_finite_elbo():
    import autograd.numpy as anp

    def log_target(z):
        # the value is finite, the gradient of sqrt at 0 times 0 is NaN
        return -0.5 * z[:, 0] ** 2 + anp.sqrt(0.0 * anp.abs(z[:, 0]))

    with pytest.raises(FloatingPointError, match="gradient of the ELBO"):
        fit_vi(_gauss_flow(), log_target, steps=3, rng=B.rng(0), batch_size=16, lr=0.01,
               eval_every=1)


def test_numpy_integers_are_integers():
    data = B.rng(0).normal(0.0, 1.0, (32, 1))
    _, hist = fit(_gauss_flow(), data, steps=numpy.int64(4), batch_size=numpy.int32(8),
                  lr=0.1, rng=B.rng(0), eval_every=numpy.int64(2))
    assert hist["step"] == [2, 4]
    _, hist = fit_vi(_gauss_flow(), lambda z: -0.5 * z[:, 0] ** 2, steps=numpy.uint8(2),
                     rng=B.rng(0), batch_size=numpy.int64(4), eval_every=numpy.int16(1))
    assert hist["step"] == [1, 2]


def test_batches_and_split_keep_each_context_row_with_its_data_row():
    # row i of the data is (i, i) and of the context (-i): any misalignment shows
    n = 50
    data = numpy.repeat(numpy.arange(n, dtype=float)[:, None], 2, axis=1)
    context = -numpy.arange(n, dtype=float)[:, None]
    train_part, held = train._split((data, context), 0.2, B.rng(0))
    assert held[0].shape == (10, 2) and train_part[0].shape == (40, 2)
    for x, c in (train_part, held):
        numpy.testing.assert_array_equal(x[:, 0], -c[:, 0])
    seen = []
    batches = train._batches(train_part, 16, B.rng(1))
    for _ in range(6):  # more than two epochs
        x, c = next(batches)
        assert x.shape == (16, 2) and c.shape == (16, 1)
        numpy.testing.assert_array_equal(x[:, 0], -c[:, 0])
        seen.extend(x[:, 0].tolist())
    # each epoch (2 batches of 16 of 40 rows) visits distinct rows
    assert len(set(seen[:32])) == 32
    # the same generator calls as for the data alone: the unconditional batches are unchanged
    alone = train._batches(train_part[0], 16, B.rng(1))
    paired = train._batches(train_part, 16, B.rng(1))
    for _ in range(4):
        numpy.testing.assert_array_equal(next(alone), next(paired)[0])
