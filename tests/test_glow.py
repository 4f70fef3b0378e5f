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
