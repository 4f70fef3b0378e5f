"""Glow family: LU 1x1 conv == full with W = P L U, the H*W factor against finite differences,
ActNorm's data-dependent initialisation (nested, inverted, constant channels), Squeeze's index
formula, and the multi-scale Glow's shapes and sampling."""

from __future__ import annotations

import numpy
import pytest

from refflow import backend as B
from refflow.core import Compose, Flow, Inverse
from refflow.distributions import StandardNormal
from refflow.glow import (
    ActNorm,
    Glow,
    GlowStep,
    Invertible1x1Conv,
    LUInvertible1x1Conv,
    Squeeze,
    _squeeze,
    init_from_data,
)
from refflow.jacobian import numerical_jacobian
from refflow.tree import map_arrays


def _host(x):
    return B.to_numpy(x)


def test_lu_conv_equals_full_conv_with_w_plu():
    rng = B.rng(0)
    lu = LUInvertible1x1Conv.init(rng, (3, 3, 4))
    p, low, up = (_host(a) for a in (lu.perm, lu.lower, lu.upper))
    w = p @ low @ (up + numpy.diag(_host(lu.sign) * _host(lu.scale)))
    full = Invertible1x1Conv(B.asarray(w))
    z = rng.standard_normal((5, 3, 3, 4))
    x1, ld1 = lu.forward(z)
    x2, ld2 = full.forward(z)
    numpy.testing.assert_allclose(_host(x1), _host(x2), atol=1e-13)
    numpy.testing.assert_allclose(_host(ld1), _host(ld2), atol=1e-12)
    numpy.testing.assert_allclose(_host(lu.inverse(x1)[0]), _host(full.inverse(x1)[0]),
                                  atol=1e-12)


@pytest.mark.parametrize("cls", [Invertible1x1Conv, LUInvertible1x1Conv])
def test_1x1_conv_log_det_is_hw_times_log_det_w(cls):
    """Against log|det| of the finite-difference Jacobian of the whole (3, 4, C) image map."""
    rng = B.rng(1)
    shape = (3, 4, 3)
    f = cls.init(rng, shape)
    # composed with a channel scaling, so that log|det| != 0 and a missing factor shows
    scaled = Compose(f, ActNorm(B.zeros(3), B.asarray([0.5, 2.0, 3.0])))
    z = rng.standard_normal((2,) + shape)
    _, ld = f.forward(z)
    jac = _host(numerical_jacobian(lambda v: f.forward(v)[0], z))
    numpy.testing.assert_allclose(_host(ld), numpy.linalg.slogdet(jac)[1], atol=1e-7)
    w = _host(f.weight() if cls is LUInvertible1x1Conv else f.weight)
    numpy.testing.assert_allclose(_host(ld), 12 * numpy.linalg.slogdet(w)[1], atol=1e-10)
    _, ld_s = scaled.forward(z)
    jac_s = _host(numpy.linalg.slogdet(_host(numerical_jacobian(
        lambda v: scaled.forward(v)[0], z)))[1])
    numpy.testing.assert_allclose(_host(ld_s), jac_s, atol=1e-7)
    assert abs(_host(ld_s)[0] - _host(ld)[0]) > 1.0  # the ActNorm's 12 log 3 is visible


def _channel_stats(h):
    h = _host(h).reshape(-1, h.shape[-1])
    return h.mean(axis=0), h.std(axis=0)


def test_init_from_data_standardises_every_actnorm_in_order():
    rng = B.rng(2)
    shape = (4, 4, 3)
    first, conv, second = ActNorm.init(rng, shape), Invertible1x1Conv.init(rng, shape), \
        ActNorm.init(rng, shape)
    flow = Flow(StandardNormal(shape), Compose(first, conv, second))
    x = 5.0 + B.asarray([1.0, 3.0, 0.2]) * rng.standard_normal((400,) + shape)
    new = init_from_data(flow, x)
    a1, c, a2 = new.bijection.bijections
    assert a1 is not first and a2 is not second and flow.bijection[0] is first  # a new flow
    h = a2.inverse(x)[0]  # the data meets the last layer first
    mean, std = _channel_stats(h)
    numpy.testing.assert_allclose(mean, 0.0, atol=1e-12)
    numpy.testing.assert_allclose(std, 1.0, atol=1e-12)
    h = a1.inverse(c.inverse(h)[0])[0]
    mean, std = _channel_stats(h)
    numpy.testing.assert_allclose(mean, 0.0, atol=1e-12)
    numpy.testing.assert_allclose(std, 1.0, atol=1e-12)


def test_init_from_data_inside_inverse_standardises_the_forward_output():
    rng = B.rng(3)
    x = -2.0 + 4.0 * rng.standard_normal((300, 2, 2, 2))
    f = init_from_data(Inverse(ActNorm.init(rng, (2, 2, 2))), x)
    mean, std = _channel_stats(f.inverse(x)[0])
    numpy.testing.assert_allclose(mean, 0.0, atol=1e-12)
    numpy.testing.assert_allclose(std, 1.0, atol=1e-12)


def test_init_from_data_constant_channel_gives_no_nan():
    rng = B.rng(4)
    x = rng.standard_normal((50, 3, 3, 2)) * B.asarray([1.0, 0.0]) + B.asarray([0.0, 7.0])
    f = init_from_data(ActNorm.init(rng, (3, 3, 2)), x)
    h, ld = f.inverse(x)
    assert numpy.isfinite(_host(h)).all() and numpy.isfinite(_host(ld)).all()
    numpy.testing.assert_allclose(_host(h)[..., 1], 0.0, atol=1e-12)
    numpy.testing.assert_allclose(_channel_stats(h)[1][0], 1.0, atol=1e-12)


def test_init_from_data_reaches_into_glow_levels():
    rng = B.rng(5)
    glow = Glow.init(rng, (8, 8, 1), levels=2, steps=2, hidden=8, zero_last=True)
    x = 3.0 + 2.0 * rng.standard_normal((200, 8, 8, 1))
    glow = init_from_data(glow, x)
    h = _squeeze(x)
    for step in glow.levels[0]:
        a = step.actnorm.inverse(h)[0]
        mean, std = _channel_stats(a)
        numpy.testing.assert_allclose(mean, 0.0, atol=1e-10)
        numpy.testing.assert_allclose(std, 1.0, atol=1e-10)
        h = step.inverse(h)[0]
    h = _squeeze(h[..., : h.shape[-1] // 2])  # into level 2
    mean, std = _channel_stats(glow.levels[1][0].actnorm.inverse(h)[0])
    numpy.testing.assert_allclose(mean, 0.0, atol=1e-10)
    numpy.testing.assert_allclose(std, 1.0, atol=1e-10)


def test_squeeze_index_formula_and_inverse():
    rng = B.rng(6)
    z = _host(rng.standard_normal((2, 4, 6, 3)))
    x, ld = Squeeze().forward(B.asarray(z))
    x = _host(x)
    assert x.shape == (2, 2, 3, 12)
    for a in range(2):
        for b in range(2):
            numpy.testing.assert_array_equal(x[:, :, :, 6 * a + 3 * b: 6 * a + 3 * b + 3],
                                             z[:, a::2, b::2, :])
    numpy.testing.assert_array_equal(_host(Squeeze().inverse(B.asarray(x))[0]), z)
    numpy.testing.assert_array_equal(_host(ld), 0.0)


def test_glow_latent_shape_log_det_and_sampling():
    rng = B.rng(7)
    glow = Glow.init(rng, (8, 8, 2), levels=3, steps=1, hidden=4)
    x = rng.standard_normal((3, 8, 8, 2))
    z, ld = glow.inverse(x)
    assert z.shape == x.shape
    numpy.testing.assert_allclose(_host(glow.forward(z)[0]), _host(x), atol=1e-10)
    # squeezes and splits are permutations: the log-det is the steps' sum
    steps_ld = 0.0
    h = x
    for level, steps in enumerate(glow.levels):
        h = _squeeze(h)
        for step in steps:
            h, step_ld = step.inverse(h)
            steps_ld = steps_ld + step_ld
        h = h[..., : h.shape[-1] // 2] if level < 2 else h
    numpy.testing.assert_allclose(_host(ld), _host(steps_ld), atol=1e-12)
    flow = Flow(StandardNormal((8, 8, 2)), glow)
    sample, log_p = flow.sample_and_log_prob(4, B.rng(8))
    assert sample.shape == (4, 8, 8, 2)
    numpy.testing.assert_allclose(_host(flow.log_prob(sample)), _host(log_p), atol=1e-8)


def test_lu_conv_float32_round_trip():
    """Measured: the LU inverse keeps float32 round trips at ~1e-6 for C = 16."""
    rng = B.rng(9)
    f = LUInvertible1x1Conv.init(rng, (4, 4, 16))
    f32 = map_arrays(lambda a: a.astype("float32") if a.dtype == "float64" else a, f)
    z = rng.standard_normal((8, 4, 4, 16), dtype="float32")
    x, _ = f32.forward(z)
    assert x.dtype == numpy.float32
    assert numpy.abs(_host(f32.inverse(x)[0]) - _host(z)).max() < 1e-5


def test_bad_arguments_raise_value_errors():
    rng = B.rng(10)
    with pytest.raises(ValueError, match="weight"):
        Invertible1x1Conv(B.asarray([[1.0, 2.0], [2.0, 4.0]]))
    with pytest.raises(ValueError, match="scale"):
        ActNorm(B.zeros(2), B.asarray([1.0, 0.0]))
    with pytest.raises(ValueError, match="dim"):
        Glow.init(rng, (6, 6, 1), levels=2)
    with pytest.raises(ValueError, match="dim"):
        GlowStep.init(rng, (4, 4, 1))
    with pytest.raises(ValueError, match="z"):
        Squeeze().forward(B.zeros((1, 3, 4, 1)))
    with pytest.raises(ValueError, match="min_scale"):
        init_from_data(ActNorm.init(rng, 2), B.zeros((3, 2)), min_scale=0.0)


# ------------------------------------------------------------------- wrong channel counts


@pytest.mark.parametrize("make", [
    lambda rng: GlowStep.init(rng, (4, 4, 2), hidden=4),
    lambda rng: GlowStep.init(rng, (4, 4, 2), hidden=4, lu=False),
    lambda rng: ActNorm.init(rng, (4, 4, 2)),
    lambda rng: Invertible1x1Conv.init(rng, (4, 4, 2)),
    lambda rng: LUInvertible1x1Conv.init(rng, (4, 4, 2)),
])
def test_a_wrong_channel_count_is_a_value_error_naming_the_argument(make):
    """Was a NumPy broadcast error (the per-channel parameters met C = 3 channels)."""
    f = make(B.rng(41))
    for shape in ((2, 4, 4, 3), (2, 4, 4, 1)):
        v = B.rng(42).standard_normal(shape)
        with pytest.raises(ValueError, match="^z: expected"):
            f.forward(v)
        with pytest.raises(ValueError, match="^x: expected"):
            f.inverse(v)
    # the spatial size is free: a 1x1 convolution and a ConvNet take any H and W
    x, log_det = f.forward(B.rng(43).standard_normal((2, 6, 2, 2)))
    assert x.shape == (2, 6, 2, 2) and log_det.shape == (2,)


# ------------------------------------------------------------------------ conditional Glow

C = 3  # the context dimension of the conditional cases


def _conditional(kind: str):
    rng = B.rng(51)
    if kind == "step":
        return GlowStep.init(rng, (4, 4, 2), hidden=4, activation="tanh", context_dim=C)
    return Glow.init(rng, (4, 4, 2), levels=2, steps=2, hidden=4, activation="tanh",
                     context_dim=C)


def _fd_log_det(f, z, c, h=1e-6):
    """log|det| of the central-difference Jacobian of z -> f.forward(z, c), row by row
    (NumPy's slogdet; one batched call of 2 D perturbed copies per row)."""
    out = []
    for zi, ci in zip(z, c):
        d = zi.size
        steps = h * numpy.eye(d)
        rows = numpy.concatenate([zi.reshape(-1) + steps, zi.reshape(-1) - steps])
        x = _host(f.forward(B.asarray(rows.reshape((2 * d,) + zi.shape)),
                            B.asarray(numpy.tile(ci, (2 * d, 1))))[0]).reshape(2 * d, d)
        out.append(numpy.linalg.slogdet((x[:d] - x[d:]) / (2 * h))[1])
    return numpy.array(out)


@pytest.mark.parametrize("kind", ["step", "glow"])
def test_conditional_glow_log_det_round_trips_and_broadcast(kind):
    f = _conditional(kind)
    assert f.context_dim == C
    rng = numpy.random.default_rng(52)
    z, c = rng.standard_normal((3, 4, 4, 2)), rng.standard_normal((3, C))
    x, log_det = (_host(a) for a in f.forward(B.asarray(z), B.asarray(c)))
    numpy.testing.assert_allclose(log_det, _fd_log_det(f, z, c), atol=1e-6)
    z_back, log_det_inv = (_host(a) for a in f.inverse(B.asarray(x), B.asarray(c)))
    numpy.testing.assert_allclose(z_back, z, atol=1e-11)
    numpy.testing.assert_allclose(log_det_inv, -log_det, atol=1e-11)
    # a context changes the map; one (C,) row equals the same row repeated
    other = _host(f.forward(B.asarray(z), B.asarray(c + 1.0))[0])
    assert numpy.abs(other - x).max() > 1e-3
    for method in (f.forward, f.inverse):
        one, rows = method(B.asarray(z), B.asarray(c[1])), method(
            B.asarray(z), B.asarray(numpy.tile(c[1], (3, 1))))
        for u, v in zip(one, rows):
            numpy.testing.assert_allclose(_host(u), _host(v), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kind", ["step", "glow"])
def test_conditional_glow_context_errors_and_gradient(kind):
    import autograd
    import autograd.numpy as anp

    f = _conditional(kind)
    rng = numpy.random.default_rng(53)
    z, c = B.asarray(rng.standard_normal((3, 4, 4, 2))), rng.standard_normal((3, C))
    for method in (f.forward, f.inverse):
        with pytest.raises(ValueError, match=f"^context: .*expects a context of dimension {C}"):
            method(z)
        for bad in ((3, C + 1), (2, C), (3, 4, 4, C)):
            with pytest.raises(ValueError, match="^context: "):
                method(z, B.asarray(rng.standard_normal(bad)))
    # d loss / d context against central differences along a random direction
    w, v = B.asarray(rng.standard_normal((3, 4, 4, 2))), B.asarray(rng.standard_normal(3))
    dc, h = rng.standard_normal((3, C)), 1e-5
    for method in (f.forward, f.inverse):
        def loss(ctx, method=method):
            u, log_det = method(z, ctx)
            return anp.sum(w * u) + anp.sum(v * log_det)

        analytic = float(numpy.sum(_host(autograd.grad(loss)(B.asarray(c))) * dc))
        numeric = float(loss(B.asarray(c + h * dc)) - loss(B.asarray(c - h * dc))) / (2 * h)
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


def test_glow_layers_pass_a_context_by_and_steps_must_agree():
    rng = B.rng(54)
    z, c = rng.standard_normal((2, 4, 4, 2)), rng.standard_normal((2, C))
    for f in (ActNorm.init(rng, (4, 4, 2)), Invertible1x1Conv.init(rng, (4, 4, 2)),
              LUInvertible1x1Conv.init(rng, (4, 4, 2)), Squeeze(),
              GlowStep.init(rng, (4, 4, 2), hidden=4)):
        assert getattr(f, "context_dim", 0) == 0
        for method in ("forward", "inverse"):
            v = z if method == "forward" or not isinstance(f, Squeeze) else _squeeze(z)
            for u, w in zip(getattr(f, method)(v, context=c), getattr(f, method)(v)):
                numpy.testing.assert_array_equal(_host(u), _host(w))
    two = GlowStep.init(rng, (2, 2, 8), hidden=4, context_dim=2)
    three = GlowStep.init(rng, (2, 2, 8), hidden=4, context_dim=3)
    with pytest.raises(ValueError, match="^levels: "):
        Glow(((two,), (three,)))
    # unconditional steps beside conditional ones: the flow's C is the conditional steps'
    plain = GlowStep.init(rng, (2, 2, 8), hidden=4)
    assert Glow(((two, plain),)).context_dim == 2
    with pytest.raises(ValueError, match="^context_dim: "):
        GlowStep.init(rng, (4, 4, 2), context_dim=-1)


def test_init_from_data_passes_the_context_to_the_couplings_on_the_way():
    rng = B.rng(55)
    glow = _conditional("glow")
    x = 3.0 + 2.0 * rng.standard_normal((200, 4, 4, 2))
    c = rng.standard_normal((200, C))
    # the second step's ActNorm lies behind the first step's conditional coupling
    with pytest.raises(ValueError, match="^context: "):
        init_from_data(glow, x)
    glow = init_from_data(glow, x, context=c)
    h = _squeeze(x)
    for step in glow.levels[0]:
        mean, std = _channel_stats(step.actnorm.inverse(h)[0])
        numpy.testing.assert_allclose(mean, 0.0, atol=1e-10)
        numpy.testing.assert_allclose(std, 1.0, atol=1e-10)
        h = step.inverse(h, context=c)[0]


@pytest.mark.standin
@pytest.mark.parametrize("kind", ["step", "glow"])
def test_conditional_glow_on_the_strict_stand_in(kind):
    import autograd
    import autograd.numpy as anp

    from refflow.tree import partition
    from tests.strict import StrictArray

    f = _conditional(kind)
    f_s = map_arrays(lambda a: StrictArray(_host(a)) if B.is_array(a) else a, f)
    rng = numpy.random.default_rng(56)
    z, c = rng.standard_normal((2, 4, 4, 2)), rng.standard_normal((2, C))
    for ctx in (c, c[0]):
        for name in ("forward", "inverse"):
            got = getattr(f_s, name)(StrictArray(z), StrictArray(ctx))
            for u, v in zip(got, getattr(f, name)(z, ctx)):
                assert isinstance(u, StrictArray)
                numpy.testing.assert_allclose(u.get(), v, rtol=1e-10, atol=1e-10)
    leaves, rebuild = partition(f)
    leaves_s, rebuild_s = partition(f_s)

    def loss(params, ctx, flow_of, zz):
        x, log_det = flow_of(params).inverse(zz, ctx)
        return anp.sum(x ** 2) + anp.sum(log_det)

    g = autograd.grad(loss, (0, 1))(leaves, c, rebuild, z)
    g_s = autograd.grad(loss, (0, 1))(leaves_s, StrictArray(c), rebuild_s, StrictArray(z))
    for a, b in zip(list(g_s[0]) + [g_s[1]], list(g[0]) + [g[1]]):
        assert isinstance(a, StrictArray)
        numpy.testing.assert_allclose(a.get(), b, rtol=1e-9, atol=1e-9)
