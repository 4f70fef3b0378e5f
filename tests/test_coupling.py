"""Coupling family: NICE == RealNVP with s = 0, Coupling(ScalarAffine) == AffineCoupling,
masks == contiguous splits, NICE's volume change, the im2col convolution against scipy, and
a short RealNVP fit to two moons."""

from __future__ import annotations

import autograd
import autograd.numpy
import numpy
import pytest
import scipy.signal

from refflow import backend as B
from refflow.affine import Reverse
from refflow.core import Compose, Flow
from refflow.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    Scaling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from refflow.datasets import moons
from refflow.distributions import StandardNormal
from refflow.elementwise import RationalQuadraticSpline, ScalarAffine
from refflow.nn import MLP, Conv2d, ConvNet
from refflow.train import fit, nll


def _with_last(net: MLP, weight, bias) -> MLP:
    return MLP(net.weights[:-1] + (B.asarray(weight),), net.biases[:-1] + (B.asarray(bias),),
               net.activation)


def _zero_scale_net(m: MLP) -> MLP:
    """The (s, t) conditioner with s = 0 and t = m."""
    w, b = m.weights[-1], m.biases[-1]
    return _with_last(m, numpy.concatenate([0 * w, w], axis=1), numpy.concatenate([0 * b, b]))


@pytest.mark.parametrize("masked", [False, True])
def test_additive_is_affine_with_zero_scale(masked):
    rng = B.rng(0)
    dim = 5
    split = alternating_mask(dim) if masked else 2
    nice = AdditiveCoupling.init(rng, dim, split=split, hidden=(16,), activation="tanh")
    realnvp = AffineCoupling(_zero_scale_net(nice.conditioner), split)
    z = rng.standard_normal((7, dim))
    x1, ld1 = nice.forward(z)
    x2, ld2 = realnvp.forward(z)
    numpy.testing.assert_allclose(x1, x2, atol=1e-14)
    numpy.testing.assert_array_equal(ld1, 0.0)
    numpy.testing.assert_allclose(ld2, 0.0, atol=1e-14)
    numpy.testing.assert_allclose(nice.inverse(x1)[0], realnvp.inverse(x1)[0], atol=1e-14)


@pytest.mark.parametrize("masked", [False, True])
def test_coupling_with_scalar_affine_is_affine_coupling(masked):
    rng = B.rng(1)
    dim = 6
    split = alternating_mask(dim, parity=1) if masked else 2
    realnvp = AffineCoupling.init(rng, dim, split=split, hidden=(16,), scale_bound=None)
    # RealNVP's output is (s_1..s_k, t_1..t_k); ScalarAffine reads (log a_j, b_j) per coordinate
    w, b = B.to_numpy(realnvp.conditioner.weights[-1]), B.to_numpy(realnvp.conditioner.biases[-1])
    k = w.shape[1] // 2
    order = numpy.ravel(numpy.stack([numpy.arange(k), k + numpy.arange(k)], axis=1))
    general = Coupling(_with_last(realnvp.conditioner, w[:, order], b[order]), ScalarAffine,
                       split)
    z = rng.standard_normal((9, dim))
    x1, ld1 = realnvp.forward(z)
    x2, ld2 = general.forward(z)
    numpy.testing.assert_allclose(x2, x1, atol=1e-13)
    numpy.testing.assert_allclose(ld2, ld1, atol=1e-13)
    z1, li1 = realnvp.inverse(x1)
    z2, li2 = general.inverse(x1)
    numpy.testing.assert_allclose(z2, z1, atol=1e-13)
    numpy.testing.assert_allclose(li2, li1, atol=1e-13)


def test_half_mask_equals_contiguous_split():
    """The mask path (b * z into the conditioner) and the slice path agree when wired alike."""
    rng = B.rng(2)
    dim, d = 6, 3
    split_layer = AffineCoupling.init(rng, dim, split=d, hidden=(8,))
    w1, b1 = (B.to_numpy(a) for a in (split_layer.conditioner.weights[0],
                                      split_layer.conditioner.biases[0]))
    w2, b2 = (B.to_numpy(a) for a in (split_layer.conditioner.weights[1],
                                      split_layer.conditioner.biases[1]))
    k = dim - d
    # mask net: reads all D inputs (the masked ones are 0), writes (s, t) for all D coordinates
    w1_full = numpy.concatenate([w1, numpy.ones((k, w1.shape[1]))], axis=0)
    zeros_w, zeros_b = numpy.zeros((w2.shape[0], d)), numpy.zeros(d)
    w2_full = numpy.concatenate([zeros_w, w2[:, :k], zeros_w, w2[:, k:]], axis=1)
    b2_full = numpy.concatenate([zeros_b, b2[:k], zeros_b, b2[k:]])
    net = MLP((B.asarray(w1_full), B.asarray(w2_full)), (B.asarray(b1), B.asarray(b2_full)),
              "tanh")
    mask_layer = AffineCoupling(net, half_mask(dim))
    z = rng.standard_normal((5, dim))
    for a, b in zip(split_layer.forward(z), mask_layer.forward(z)):
        numpy.testing.assert_allclose(a, b, atol=1e-13)


def test_masks():
    assert B.to_numpy(half_mask(5, first=False)).tolist() == [0, 0, 1, 1, 1]
    assert B.to_numpy(alternating_mask(4, parity=1)).tolist() == [0, 1, 0, 1]
    board = B.to_numpy(checkerboard_mask((3, 4, 2)))
    i, j = numpy.meshgrid(numpy.arange(3), numpy.arange(4), indexing="ij")
    numpy.testing.assert_array_equal(board[..., 0], (i + j) % 2 == 0)
    numpy.testing.assert_array_equal(board[..., 0], board[..., 1])
    ch = B.to_numpy(channel_mask((2, 2, 4), parity=1))
    numpy.testing.assert_array_equal(ch[1, 0], [0, 0, 1, 1])


def test_mask_copies_the_conditioning_part_exactly():
    rng = B.rng(3)
    shape = (4, 4, 2)
    b = checkerboard_mask(shape)
    f = AffineCoupling.init(rng, shape, split=b, hidden=(4,))
    z = rng.standard_normal((3,) + shape)
    x, _ = f.forward(z)
    keep = B.to_numpy(b) == 1
    numpy.testing.assert_array_equal(B.to_numpy(x)[:, keep], B.to_numpy(z)[:, keep])
    assert not numpy.allclose(B.to_numpy(x)[:, ~keep], B.to_numpy(z)[:, ~keep])


def test_nice_volume_change_is_the_scaling_alone():
    """Additive layers have unit Jacobian: NICE's log-det is sum log s whatever the input."""
    rng = B.rng(4)
    dim = 4
    scale = B.asarray([0.5, 2.0, 3.0, 0.25])
    nice = Compose(AdditiveCoupling.init(rng, dim), Reverse(), AdditiveCoupling.init(rng, dim),
                   Scaling(scale))
    _, ld = nice.forward(rng.standard_normal((6, dim)))
    numpy.testing.assert_allclose(ld, numpy.log(0.5 * 2.0 * 3.0 * 0.25), atol=1e-14)


@pytest.mark.parametrize("c_in, c_out", [(3, 2), (2, 5)])  # the scatter and gather paths
def test_conv2d_matches_scipy_correlation(c_in, c_out):
    rng = B.rng(5)
    conv = Conv2d.init(rng, c_in, c_out, kernel_size=3)
    conv = Conv2d(conv.weight, rng.standard_normal((c_out,)))
    x = rng.standard_normal((2, 5, 6, c_in))
    y = B.to_numpy(conv(x))
    w, xh = B.to_numpy(conv.weight), B.to_numpy(x)
    expected = numpy.zeros((2, 5, 6, c_out)) + B.to_numpy(conv.bias)
    for n in range(2):
        for o in range(c_out):
            for c in range(c_in):
                expected[n, :, :, o] += scipy.signal.correlate2d(xh[n, :, :, c], w[:, :, c, o],
                                                                 mode="same")
    numpy.testing.assert_allclose(y, expected, atol=1e-13)


def test_convnet_zero_last_is_zero_and_shapes():
    rng = B.rng(6)
    net = ConvNet.init(rng, [2, 8, 8, 6], zero_last=True)
    out = net(rng.standard_normal((3, 4, 4, 2)))
    assert out.shape == (3, 4, 4, 6)
    numpy.testing.assert_array_equal(B.to_numpy(out), 0.0)


def test_bad_arguments_raise_value_errors():
    rng = B.rng(7)
    net = MLP.init(rng, [2, 4])
    with pytest.raises(ValueError, match="split"):
        AffineCoupling(net, split=0)
    with pytest.raises(ValueError, match="split"):
        AffineCoupling(net, split=B.ones(4))  # a mask that keeps everything
    with pytest.raises(ValueError, match="scale"):
        Scaling(B.asarray([1.0, -1.0]))
    with pytest.raises(ValueError, match="transformer"):
        Coupling(net, int, 1)
    with pytest.raises(ValueError, match="dim"):
        AffineCoupling.init(rng, 1)
    with pytest.raises(ValueError, match="shape"):
        checkerboard_mask((4, 4))


def test_realnvp_fit_to_two_moons_lowers_the_nll():
    rng = B.rng(0)
    layers = []
    for _ in range(4):
        layers += [AffineCoupling.init(rng, 2, hidden=(32, 32), zero_last=True), Reverse()]
    flow = Flow(StandardNormal(2), Compose(*layers))
    train, test = moons(2000, B.rng(1)), moons(2000, B.rng(2))
    before = float(nll(flow, test))
    flow, history = fit(flow, train, steps=200, batch_size=256, lr=5e-3, rng=B.rng(3))
    after = float(nll(flow, test))
    # measured: 2.35 -> 1.46 nats in 200 steps (3.5 s); a fitted Gaussian scores 1.91
    assert after < 1.75, after
    assert numpy.isfinite(history["loss"]).all()
    assert after < before - 0.7, (before, after)


# ----------------------------------------------- one transformer call, reference and kernel


class CountedAffine:
    """ScalarAffine behind the transformer protocol (no class attribute P), counting each
    method call in ``calls`` (shared with tests/test_autoregressive.py)."""

    calls: dict = {}

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def num_params(cls) -> int:
        return 2

    @classmethod
    def from_unconstrained(cls, theta):
        cls.calls["from_unconstrained"] = cls.calls.get("from_unconstrained", 0) + 1
        return cls(ScalarAffine.from_unconstrained(theta))

    def forward_elementwise(self, z):
        self.calls["forward_elementwise"] = self.calls.get("forward_elementwise", 0) + 1
        return self.inner.forward_elementwise(z)

    def inverse_elementwise(self, x):
        self.calls["inverse_elementwise"] = self.calls.get("inverse_elementwise", 0) + 1
        return self.inner.inverse_elementwise(x)


@pytest.mark.parametrize("masked", [False, True])
def test_coupling_evaluates_its_transformer_once_per_call(masked):
    rng = B.rng(11)
    dim = 5
    split = alternating_mask(dim) if masked else 2
    f = Coupling.init(rng, dim, CountedAffine, split=split, hidden=(8,))
    z = rng.standard_normal((6, dim))
    CountedAffine.calls = {}
    x, log_det = f.forward(z)
    assert CountedAffine.calls == {"from_unconstrained": 1, "forward_elementwise": 1}
    CountedAffine.calls = {}
    z_back, log_det_inv = f.inverse(x)
    assert CountedAffine.calls == {"from_unconstrained": 1, "inverse_elementwise": 1}
    # the values against x^A = z^A exp(theta_0) + theta_1 written out from the conditioner
    zh = B.to_numpy(z)
    keep = B.to_numpy(split) == 1 if masked else numpy.arange(dim) < split
    z_b = zh * keep if masked else zh[:, :split]
    theta = B.to_numpy(f.conditioner(B.asarray(z_b))).reshape(6, -1, 2)
    z_a = zh if masked else zh[:, split:]
    x_a = z_a * numpy.exp(theta[..., 0]) + theta[..., 1]
    expected = numpy.where(keep, zh, x_a) if masked else numpy.concatenate([z_b, x_a], 1)
    log_a = numpy.where(keep, 0.0, theta[..., 0]) if masked else theta[..., 0]
    numpy.testing.assert_allclose(B.to_numpy(x), expected, atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(log_det), log_a.sum(-1), atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(z_back), zh, atol=1e-12)
    numpy.testing.assert_allclose(B.to_numpy(log_det_inv), -log_a.sum(-1), atol=1e-13)


@pytest.mark.parametrize("case", ["split", "mask", "image-split", "unbounded"])
def test_affine_coupling_fast_layer_equals_its_reference(case):
    """Values and parameter gradients with the fast layer on and off, against the lecture's
    lines written out here (z^A exp(s) + t with s = 2 tanh(s_raw / 2))."""
    from refflow import fast
    from refflow.tree import partition

    rng = B.rng(12)
    shape = (2, 3, 4) if case == "image-split" else (6,)
    split = alternating_mask(6, parity=1) if case == "mask" else 2
    f = AffineCoupling.init(rng, shape if case == "image-split" else 6, split=split, hidden=(8,),
                            scale_bound=None if case == "unbounded" else 2.0)
    z = rng.standard_normal((5,) + shape)
    leaves, rebuild = partition(f)

    def loss(params):
        x, log_det = rebuild(params).inverse(z)
        return autograd.numpy.sum(x ** 2) + autograd.numpy.sum(log_det)

    results = {}
    for flag in (True, False):
        with fast.enabled(flag):
            results[flag] = (f.forward(z), f.inverse(z), autograd.grad(loss)(leaves))
    for a, b in zip(results[True][:2], results[False][:2]):
        for u, v in zip(a, b):
            numpy.testing.assert_allclose(B.to_numpy(u), B.to_numpy(v), rtol=1e-12, atol=1e-12)
    for g_fast, g_ref in zip(results[True][2], results[False][2]):
        numpy.testing.assert_allclose(B.to_numpy(g_fast), B.to_numpy(g_ref), rtol=1e-10,
                                      atol=1e-12)
    # the forward pass written out
    zh = B.to_numpy(z)
    out = B.to_numpy(f.conditioner(B.asarray(zh * B.to_numpy(split) if case == "mask"
                                               else zh[..., :2])))
    k = out.shape[-1] // 2
    s, t = out[..., :k], out[..., k:]
    if case != "unbounded":
        s = 2.0 * numpy.tanh(s / 2.0)
    if case == "mask":
        active = 1.0 - B.to_numpy(split)
        s, t = s * active, t * active
        x = zh * numpy.exp(s) + t
    else:
        x = numpy.concatenate([zh[..., :2], zh[..., 2:] * numpy.exp(s) + t], axis=-1)
    log_det = s.reshape(5, -1).sum(-1)
    numpy.testing.assert_allclose(B.to_numpy(results[True][0][0]), x, atol=1e-12)
    numpy.testing.assert_allclose(B.to_numpy(results[True][0][1]), log_det, atol=1e-12)


def test_coupling_kernel_keeps_no_state_between_calls():
    """The bounded scale is an argument, not a memo: changing the conditioner's output in
    place between the update and the log-det gives the log-det of the new output (the
    former per-thread memo, keyed on the object, returned the old one)."""
    from refflow.fast.coupling import affine_coupling, affine_coupling_log_det

    rng = numpy.random.default_rng(13)
    z, out = rng.standard_normal((4, 6)), rng.standard_normal((4, 8))
    affine_coupling(z, out, 2, 2.0)
    out[..., :4] += 1.0
    numpy.testing.assert_allclose(affine_coupling_log_det(out, 2.0),
                                  numpy.sum(2.0 * numpy.tanh(out[..., :4] / 2.0), axis=-1),
                                  rtol=1e-14)


@pytest.mark.parametrize("cls, masked", [(AffineCoupling, False), (AffineCoupling, True),
                                         (AdditiveCoupling, False), (Coupling, False)])
def test_a_wrong_dimension_is_a_value_error_naming_the_argument(cls, masked):
    """Was a NumPy broadcast or reshape error: the conditioner reads z^B only, so a z with
    extra or missing coordinates reached the update."""
    rng = B.rng(14)
    split = alternating_mask(4) if masked else None
    extra = (ScalarAffine,) if cls is Coupling else ()
    f = cls.init(rng, 4, *extra, split=split, hidden=(8,))
    for bad in (3, 5, 7):
        v = rng.standard_normal((2, bad))
        with pytest.raises(ValueError, match="^z: expected"):
            f.forward(v)
        with pytest.raises(ValueError, match="^x: expected"):
            f.inverse(v)


# --------------------------------------------------------------------- conditional couplings

C = 3  # the context dimension of the conditional cases


def _conditional(case: str):
    """(layer, event shape, FD tolerance) of a conditional coupling with C = 3."""
    rng = B.rng(21)
    image = (4, 4, 2)
    spline = {"bins": 4, "bound": 3.0}
    if case == "affine-split":
        return AffineCoupling.init(rng, 5, hidden=(8,), context_dim=C), (5,), 1e-6
    if case == "affine-mask":
        return AffineCoupling.init(rng, 5, split=alternating_mask(5), hidden=(8,),
                                   context_dim=C), (5,), 1e-6
    if case == "additive":
        return AdditiveCoupling.init(rng, 5, hidden=(8,), activation="tanh",
                                     context_dim=C), (5,), 1e-6
    if case == "spline":
        # knots move with the context: central differences lose ~h across a knot
        return Coupling.init(rng, 5, RationalQuadraticSpline, static=spline, hidden=(8,),
                             context_dim=C), (5,), 1e-4
    if case == "affine-image-checkerboard":
        return AffineCoupling.init(rng, image, split=checkerboard_mask(image), hidden=(4,),
                                   context_dim=C), image, 1e-6
    if case == "coupling-image-split":
        return Coupling.init(rng, (2, 3, 4), ScalarAffine, split=2, hidden=(4,),
                             context_dim=C), (2, 3, 4), 1e-6
    raise AssertionError(case)


CONDITIONAL = ["affine-split", "affine-mask", "additive", "spline", "affine-image-checkerboard",
               "coupling-image-split"]


def _fd_log_det(f, z, c, h=1e-6):
    """log|det| of the central-difference Jacobian of z -> f.forward(z, c), row by row, with
    NumPy's slogdet: 2 D perturbed copies of one row, each with that row's context."""
    out = []
    for zi, ci in zip(z, c):
        d = zi.size
        steps = h * numpy.eye(d)
        rows = numpy.concatenate([zi.reshape(-1) + steps, zi.reshape(-1) - steps])
        x = B.to_numpy(f.forward(B.asarray(rows.reshape((2 * d,) + zi.shape)),
                                 B.asarray(numpy.tile(ci, (2 * d, 1))))[0]).reshape(2 * d, d)
        out.append(numpy.linalg.slogdet((x[:d] - x[d:]) / (2 * h))[1])
    return numpy.array(out)


@pytest.mark.parametrize("case", CONDITIONAL)
def test_conditional_log_det_and_round_trips_at_a_fixed_context(case):
    f, shape, tol = _conditional(case)
    rng = numpy.random.default_rng(22)
    z, c = rng.standard_normal((4,) + shape), rng.standard_normal((4, C))
    x, log_det = (B.to_numpy(a) for a in f.forward(B.asarray(z), B.asarray(c)))
    numpy.testing.assert_allclose(log_det, _fd_log_det(f, z, c), atol=tol)
    z_back, log_det_inv = (B.to_numpy(a) for a in f.inverse(B.asarray(x), B.asarray(c)))
    numpy.testing.assert_allclose(z_back, z, atol=1e-12)
    numpy.testing.assert_allclose(log_det_inv, -log_det, atol=1e-12)
    # the other direction: x first
    x0 = rng.standard_normal((4,) + shape)
    z0, _ = f.inverse(B.asarray(x0), B.asarray(c))
    numpy.testing.assert_allclose(B.to_numpy(f.forward(z0, B.asarray(c))[0]), x0, atol=1e-12)


@pytest.mark.parametrize("case", CONDITIONAL)
def test_a_context_changes_the_map_and_one_row_broadcasts(case):
    f, shape, _ = _conditional(case)
    rng = numpy.random.default_rng(23)
    z, c = B.asarray(rng.standard_normal((4,) + shape)), rng.standard_normal(C)
    x1 = B.to_numpy(f.forward(z, B.asarray(c))[0])
    x2 = B.to_numpy(f.forward(z, B.asarray(c + 1.0))[0])
    assert numpy.abs(x1 - x2).max() > 1e-3
    # (C,) is the same context at every row: equal to the repeated (N, C) array
    for method in (f.forward, f.inverse):
        one = method(z, B.asarray(c))
        rows = method(z, B.asarray(numpy.tile(c, (4, 1))))
        for u, v in zip(one, rows):
            numpy.testing.assert_allclose(B.to_numpy(u), B.to_numpy(v), rtol=1e-14, atol=1e-14)


def test_the_conditioner_reads_z_b_then_the_context():
    """RealNVP written out with Theta(z^B, c) = conditioner([z^B, c]), vectors and images."""
    rng = numpy.random.default_rng(24)
    f, _, _ = _conditional("affine-split")
    z, c = rng.standard_normal((6, 5)), rng.standard_normal((6, C))
    out = B.to_numpy(f.conditioner(B.asarray(numpy.concatenate([z[:, :2], c], axis=1))))
    s, t = 2.0 * numpy.tanh(out[:, :3] / 2.0), out[:, 3:]
    x, log_det = f.forward(B.asarray(z), B.asarray(c))
    numpy.testing.assert_allclose(B.to_numpy(x), numpy.concatenate(
        [z[:, :2], z[:, 2:] * numpy.exp(s) + t], axis=1), atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(log_det), s.sum(1), atol=1e-13)
    # images: c as C constant channels next to b * z
    g, shape, _ = _conditional("affine-image-checkerboard")
    z, c = rng.standard_normal((2,) + shape), rng.standard_normal((2, C))
    b = B.to_numpy(g.split)
    planes = numpy.broadcast_to(c[:, None, None, :], (2, 4, 4, C))
    out = B.to_numpy(g.conditioner(B.asarray(numpy.concatenate([b * z, planes], axis=-1))))
    s = 2.0 * numpy.tanh(out[..., :2] / 2.0) * (1 - b)
    t = out[..., 2:] * (1 - b)
    x, log_det = g.forward(B.asarray(z), B.asarray(c))
    numpy.testing.assert_allclose(B.to_numpy(x), z * numpy.exp(s) + t, atol=1e-13)
    numpy.testing.assert_allclose(B.to_numpy(log_det), s.reshape(2, -1).sum(1), atol=1e-13)


@pytest.mark.parametrize("case", CONDITIONAL)
def test_a_missing_or_wrong_context_is_a_value_error(case):
    f, shape, _ = _conditional(case)
    assert f.context_dim == C
    rng = numpy.random.default_rng(25)
    z = B.asarray(rng.standard_normal((4,) + shape))
    for method in (f.forward, f.inverse):
        with pytest.raises(ValueError, match=f"^context: .*expects a context of dimension {C}"):
            method(z)
        for bad in ((4, C - 1), (C + 1,), (5, C), (4, 1, C), (2, 2, C)):
            with pytest.raises(ValueError, match="^context: "):
                method(z, B.asarray(rng.standard_normal(bad)))
        with pytest.raises(ValueError, match="^context: "):
            method(z, (rng.standard_normal((4, C)) + 1j))
        with pytest.raises(ValueError, match="^context: "):
            method(z, rng.standard_normal((4, C)).tolist())


def test_an_unconditional_coupling_passes_a_context_by_and_context_dim_is_checked():
    rng = B.rng(26)
    f = AffineCoupling.init(rng, 4, hidden=(8,))
    assert f.context_dim == 0
    z, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    for u, v in zip(f.forward(z, context=c), f.forward(z)):
        numpy.testing.assert_array_equal(B.to_numpy(u), B.to_numpy(v))
    for cls, extra in ((AffineCoupling, ()), (AdditiveCoupling, ()), (Coupling, (ScalarAffine,))):
        for bad in (-1, 1.5, "2"):
            with pytest.raises(ValueError, match="^context_dim: "):
                cls.init(rng, 4, *extra, context_dim=bad)


@pytest.mark.parametrize("case", CONDITIONAL)
def test_gradients_with_respect_to_the_context_match_finite_differences(case):
    f, shape, tol = _conditional(case)
    rng = numpy.random.default_rng(27)
    z, c = B.asarray(rng.standard_normal((3,) + shape)), rng.standard_normal((3, C))
    w, v = B.asarray(rng.standard_normal((3,) + shape)), B.asarray(rng.standard_normal(3))
    dc, h = rng.standard_normal((3, C)), 1e-5
    for method in (f.forward, f.inverse):
        def loss(ctx, method=method):
            u, log_det = method(z, ctx)
            return autograd.numpy.sum(w * u) + autograd.numpy.sum(v * log_det)

        analytic = float(numpy.sum(B.to_numpy(autograd.grad(loss)(B.asarray(c))) * dc))
        numeric = float(loss(B.asarray(c + h * dc)) - loss(B.asarray(c - h * dc))) / (2 * h)
        assert abs(analytic - numeric) <= 10 * tol * max(1.0, abs(numeric)), (analytic, numeric)


@pytest.mark.parametrize("case", ["affine-split", "affine-mask", "affine-image-checkerboard"])
def test_conditional_affine_coupling_fast_layer_equals_its_reference(case):
    """The kernel reads the conditioner's output only: with a context, fast on and off give the
    same values and the same gradients in the parameters and in the context."""
    from refflow import fast
    from refflow.tree import partition

    f, shape, _ = _conditional(case)
    rng = numpy.random.default_rng(28)
    z, c = B.asarray(rng.standard_normal((5,) + shape)), B.asarray(rng.standard_normal((5, C)))
    leaves, rebuild = partition(f)

    def loss(params, ctx):
        x, log_det = rebuild(params).inverse(z, ctx)
        return autograd.numpy.sum(x ** 2) + autograd.numpy.sum(log_det)

    results = {}
    for flag in (True, False):
        with fast.enabled(flag):
            results[flag] = (f.forward(z, c), f.inverse(z, c),
                             autograd.grad(loss, 0)(leaves, c), autograd.grad(loss, 1)(leaves, c))
    for a, b in zip(results[True][:2], results[False][:2]):
        for u, v in zip(a, b):
            numpy.testing.assert_allclose(B.to_numpy(u), B.to_numpy(v), rtol=1e-12, atol=1e-12)
    for g_fast, g_ref in zip(results[True][2] + [results[True][3]],
                             results[False][2] + [results[False][3]]):
        numpy.testing.assert_allclose(B.to_numpy(g_fast), B.to_numpy(g_ref), rtol=1e-10,
                                      atol=1e-12)


@pytest.mark.standin
@pytest.mark.parametrize("case", ["affine-split", "affine-mask", "spline",
                                  "affine-image-checkerboard"])
def test_conditional_coupling_on_the_strict_stand_in(case):
    """Forward, inverse and gradients (parameters and context) with StrictArray z and context,
    (N, C) and (C,), give the NumPy numbers."""
    from refflow.tree import map_arrays, partition
    from tests.strict import StrictArray

    f, shape, _ = _conditional(case)
    f_s = map_arrays(lambda a: StrictArray(B.to_numpy(a)) if B.is_array(a) else a, f)
    rng = numpy.random.default_rng(29)
    z, c = rng.standard_normal((3,) + shape), rng.standard_normal((3, C))
    for ctx in (c, c[0]):
        for name in ("forward", "inverse"):
            expected = getattr(f, name)(z, ctx)
            got = getattr(f_s, name)(StrictArray(z), StrictArray(ctx))
            for u, v in zip(got, expected):
                assert isinstance(u, StrictArray)
                numpy.testing.assert_allclose(u.get(), v, rtol=1e-10, atol=1e-10)
    w = rng.standard_normal(z.shape)
    leaves, rebuild = partition(f)
    leaves_s, rebuild_s = partition(f_s)

    def loss(params, ctx, flow_of, weights, zz):
        x, log_det = flow_of(params).forward(zz, ctx)
        return autograd.numpy.sum(weights * x) + autograd.numpy.sum(log_det)

    for argnum in (0, 1):
        g = autograd.grad(loss, argnum)(leaves, c, rebuild, w, z)
        g_s = autograd.grad(loss, argnum)(leaves_s, StrictArray(c), rebuild_s, StrictArray(w),
                                          StrictArray(z))
        for a, b in zip(g_s if argnum == 0 else [g_s], g if argnum == 0 else [g]):
            assert isinstance(a, StrictArray)
            numpy.testing.assert_allclose(a.get(), b, rtol=1e-9, atol=1e-9)
