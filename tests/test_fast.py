"""refflow.fused: each primitive against autograd's gradient of the plain version it replaces,
against central finite differences, in float32 (no float64 creep) and float64, and on the
strict stand-in array (every output and gradient stays a device array)."""

from __future__ import annotations

import contextlib

import autograd
import autograd.numpy as anp
import numpy
import pytest

from refflow import backend as B
from refflow.elementwise import MIN_BIN, MIN_DERIVATIVE, RationalQuadraticSpline
from refflow.fused import (
    FUSED_ACTIVATIONS,
    affine_coupling,
    affine_coupling_log_det,
    affine_log_det,
    affine_transformer,
    bin_index,
    cumsum_last,
    dense,
    masked_dense,
    max_last,
    spline_bin_index,
    spline_bins,
    spline_slopes,
    sum_last,
    take_bin,
    tanh_bound,
)
from refflow.nn import MLP, MaskedMLP
from tests.strict import StrictArray


def _act(name):
    return {"tanh": anp.tanh, "relu": lambda a: anp.maximum(a, 0.0),
            "identity": lambda a: a}[name]


# the readable definitions
def plain_dense(x, w, b, activation):
    return _act(activation)(x @ w + b)


def plain_masked_dense(x, w, m, b, activation):
    return _act(activation)(x @ (w * m) + b)


def plain_affine_transformer(v, theta, inverse):
    mu, alpha = theta[..., 0], theta[..., 1]
    if inverse:
        return (v - mu) * anp.exp(-alpha), -anp.sum(alpha, axis=-1)
    return v * anp.exp(alpha) + mu, anp.sum(alpha, axis=-1)


def plain_affine_coupling(v, out, split, bound, inverse):
    k = out.shape[-1] // 2
    s, t = out[..., :k], out[..., k:]
    if bound is not None:
        s = bound * anp.tanh(s / bound)
    v_b, v_a = v[..., :split], v[..., split:]
    new_a = (v_a - t) * anp.exp(-s) if inverse else v_a * anp.exp(s) + t
    log_det = anp.sum(s, axis=-1)
    return anp.concatenate([v_b, new_a], axis=-1), -log_det if inverse else log_det


def _with_log_det(f):
    """(out, log_det) -> one array (..., D + 1), for the generic checks."""
    def g(*args):
        out, log_det = f(*args)
        return anp.concatenate([out, log_det[..., None]], axis=-1)
    return g


def plain_spline_bins(logits, total):
    e = anp.exp(logits - anp.max(logits, axis=-1, keepdims=True))
    p = e / anp.sum(e, axis=-1, keepdims=True)
    return total * (MIN_BIN + (1.0 - logits.shape[-1] * MIN_BIN) * p)


def plain_spline_slopes(t):
    return MIN_DERIVATIVE + (1.0 - MIN_DERIVATIVE) * anp.logaddexp(t, 0.0) / numpy.log(2.0)


@contextlib.contextmanager
def _spline_path(fused):
    saved = RationalQuadraticSpline.fused
    RationalQuadraticSpline.fused = fused
    try:
        yield
    finally:
        RationalQuadraticSpline.fused = saved


def spline_of_theta(inverse, fused, bound=3.0):
    """(v, theta) -> stacked (h(v), log h'(v)) (or the inverse) through the fused primitives
    or through the readable code of RationalQuadraticSpline."""
    def f(v, theta):
        with _spline_path(fused):
            spline = RationalQuadraticSpline.from_unconstrained(theta, bound=bound)
            return anp.stack((spline._inverse if inverse else spline._forward)(v))
    return f


def _cases(rng, dtype):
    """(name, fused, plain, args, argnums) with inputs of the given dtype."""
    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    mask = (rng.random((3, 5)) > 0.4).astype(dtype)
    out = []
    for act in FUSED_ACTIVATIONS:
        for d_in, lead in ((3, (4,)), (1, (4,)), (3, (2, 4))):
            out.append((f"dense-{act}-{d_in}-{len(lead)}",
                        lambda x, w, b, a=act: dense(x, w, b, a),
                        lambda x, w, b, a=act: plain_dense(x, w, b, a),
                        (r(*lead, d_in), r(d_in, 5), r(5)), (0, 1, 2)))
        out.append((f"masked-{act}",
                    lambda x, w, b, a=act: masked_dense(x, w, mask, b, activation=a),
                    lambda x, w, b, a=act: plain_masked_dense(x, w, mask, b, a),
                    (r(4, 3), r(3, 5), r(5)), (0, 1, 2)))
    out.append(("tanh-bound", lambda s: tanh_bound(s, 2.0), lambda s: 2.0 * anp.tanh(s / 2.0),
                (3.0 * r(4, 3),), (0,)))
    for inverse in (False, True):
        way = "inverse" if inverse else "forward"
        out.append((f"affine-transformer-{way}",
                     _with_log_det(lambda v, th, i=inverse: (affine_transformer(v, th, i),
                                                             affine_log_det(th, i))),
                     _with_log_det(lambda v, th, i=inverse: plain_affine_transformer(v, th, i)),
                     (r(4, 3), r(4, 3, 2)), (0, 1)))
        for bound in (None, 2.0):
            out.append((f"affine-coupling-{way}-{bound}",
                         _with_log_det(lambda v, o, i=inverse, b=bound: (
                             affine_coupling(v, o, 2, b, i), affine_coupling_log_det(o, b, i))),
                         _with_log_det(lambda v, o, i=inverse, b=bound: plain_affine_coupling(
                             v, o, 2, b, i)),
                         (r(4, 5), 2.0 * r(4, 6)), (0, 1)))
    out.append(("spline-bins", lambda a: spline_bins(a, 6.0, MIN_BIN),
                lambda a: plain_spline_bins(a, 6.0), (2.0 * r(4, 3, 8),), (0,)))
    out.append(("spline-slopes", lambda t: spline_slopes(t, MIN_DERIVATIVE),
                plain_spline_slopes, (4.0 * r(4, 3, 7),), (0,)))
    # v inside and outside [-3, 3] (exactly on +-3, log h' has a kink: see the test below);
    # theta per sample or shared
    v = 2.0 * r(4, 3)
    v[0, 0], v[1, 1] = 3.5, -4.0
    for inverse in (False, True):
        for kind, theta_shape in (("per-sample", (4, 3, 23)), ("shared", (3, 23))):
            out.append((f"spline-{'inverse' if inverse else 'forward'}-{kind}",
                        spline_of_theta(inverse, True), spline_of_theta(inverse, False),
                        (v, 1.5 * r(*theta_shape)), (0, 1)))
    return out


CASE_NAMES = [c[0] for c in _cases(numpy.random.default_rng(0), "float64")]


def _case(name, dtype, seed=0):
    return next(c for c in _cases(numpy.random.default_rng(seed), dtype) if c[0] == name)


def _loss(f, weights):
    return lambda *args: anp.sum(weights * f(*args))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_matches_autograd_of_plain_version_float64(name):
    _, fused, plain, args, argnums = _case(name, "float64")
    weights = numpy.random.default_rng(1).standard_normal(numpy.shape(plain(*args)))
    numpy.testing.assert_allclose(fused(*args), plain(*args), rtol=1e-13, atol=1e-13)
    for i in argnums:
        g_fused = autograd.grad(_loss(fused, weights), i)(*args)
        g_plain = autograd.grad(_loss(plain, weights), i)(*args)
        assert g_fused.shape == numpy.shape(args[i])
        numpy.testing.assert_allclose(g_fused, g_plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_matches_finite_differences(name):
    _, fused, _, args, argnums = _case(name, "float64")
    if "relu" in name:  # keep pre-activations away from the kink at 0
        args = (args[0], args[1], args[2] + 0.05 * numpy.sign(args[2]))
    weights = numpy.random.default_rng(2).standard_normal(numpy.shape(fused(*args)))
    loss = _loss(fused, weights)
    eps = 1e-6
    for i in argnums:
        grad = autograd.grad(loss, i)(*args)
        direction = numpy.random.default_rng(3 + i).standard_normal(numpy.shape(args[i]))
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + eps * direction, args[i] - eps * direction
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert abs(numpy.sum(grad * direction) - fd) <= 1e-6 * (1 + abs(fd))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_float32_stays_float32_and_agrees(name):
    _, fused, plain, args, argnums = _case(name, "float32")
    weights = numpy.random.default_rng(1).standard_normal(numpy.shape(plain(*args)))
    weights = weights.astype("float32")
    assert fused(*args).dtype == numpy.float32
    args64 = tuple(a.astype("float64") for a in args)
    for i in argnums:
        g32 = autograd.grad(_loss(fused, weights), i)(*args)
        assert g32.dtype == numpy.float32, f"gradient {i} became {g32.dtype}"
        g64 = autograd.grad(_loss(plain, weights.astype("float64")), i)(*args64)
        numpy.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-4)


# the masked cases bind their mask inside the case: test_masked_mlp_on_strict_arrays_and_float32
@pytest.mark.parametrize("name", [n for n in CASE_NAMES if "masked" not in n])
def test_strict_stand_in(name):
    _, fused, _, args, argnums = _case(name, "float64")
    weights = numpy.random.default_rng(1).standard_normal(numpy.shape(fused(*args)))
    strict_args = tuple(StrictArray(a) for a in args)
    out = fused(*strict_args)
    assert isinstance(out, StrictArray)
    for i in argnums:
        g = autograd.grad(_loss(fused, StrictArray(weights)), i)(*strict_args)
        assert isinstance(g, StrictArray), f"gradient {i} left the device array type"
        numpy.testing.assert_allclose(B.to_numpy(g),
                                      autograd.grad(_loss(fused, weights), i)(*args),
                                      rtol=1e-13, atol=1e-13)


def _plain_mlp(net, x, masks=None):
    h = x
    masks = masks or [None] * len(net.weights)
    for i, (w, b, m) in enumerate(zip(net.weights, net.biases, masks)):
        h = h @ (w if m is None else w * m) + b
        if i < len(net.weights) - 1:
            h = _act(net.activation)(h)
    return h


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("sizes", [[1, 8, 3], [4, 8, 8, 6]])
def test_mlp_fast_path_equals_plain_layers(activation, sizes):
    net = MLP.init(B.rng(0), sizes, activation=activation)
    x = B.rng(1).standard_normal((5, sizes[0]))
    numpy.testing.assert_allclose(net(x), _plain_mlp(net, x), rtol=1e-12, atol=1e-12)
    loss = lambda ws: anp.sum(MLP(ws, net.biases, activation)(x) ** 2)  # noqa: E731
    plain = lambda ws: anp.sum(_plain_mlp(MLP(ws, net.biases, activation), x) ** 2)  # noqa: E731
    for a, b in zip(autograd.grad(loss)(net.weights), autograd.grad(plain)(net.weights)):
        numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _masked_net(dtype="float64"):
    rng = numpy.random.default_rng(0)
    shapes = [(3, 6), (6, 6), (6, 4)]
    weights = tuple(rng.standard_normal(s).astype(dtype) for s in shapes)
    biases = tuple(rng.standard_normal(s[1]).astype(dtype) for s in shapes)
    masks = tuple((rng.random(s) > 0.5).astype(dtype) for s in shapes)
    return MaskedMLP(weights, biases, masks, "tanh")


def test_masked_mlp_gradient_is_masked_and_equals_plain():
    net = _masked_net()
    x = numpy.random.default_rng(1).standard_normal((5, 3))
    numpy.testing.assert_allclose(net(x), _plain_mlp(net, x, net.masks), rtol=1e-12)

    def loss(ws, fast):
        new = MaskedMLP(ws, net.biases, net.masks, "tanh")
        return anp.sum((new(x) if fast else _plain_mlp(new, x, net.masks)) ** 2)

    for g, g_plain, m in zip(autograd.grad(loss)(net.weights, True),
                             autograd.grad(loss)(net.weights, False), net.masks):
        numpy.testing.assert_allclose(g, g_plain, rtol=1e-12, atol=1e-12)
        assert not numpy.any(g[m == 0]), "a cut connection received a gradient"


def test_masked_mlp_on_strict_arrays_and_float32():
    for dtype in ("float64", "float32"):
        net = _masked_net(dtype)
        x = numpy.random.default_rng(1).standard_normal((5, 3)).astype(dtype)
        wrap = lambda t: tuple(StrictArray(a) for a in t)  # noqa: E731
        strict_net = MaskedMLP(wrap(net.weights), wrap(net.biases), wrap(net.masks), "tanh")

        def loss(ws, model, inputs):
            return anp.sum(MaskedMLP(ws, model.biases, model.masks, "tanh")(inputs) ** 2)

        grads = autograd.grad(loss)(strict_net.weights, strict_net, StrictArray(x))
        reference = autograd.grad(loss)(net.weights, net, x)
        for g, ref in zip(grads, reference):
            assert isinstance(g, StrictArray) and g.dtype == numpy.dtype(dtype)
            numpy.testing.assert_allclose(B.to_numpy(g), ref, rtol=1e-5)


# the readable bin search: a one-hot of the bin and a product-sum per table
def _onehot(v, knots):
    k = knots.shape[-1] - 1
    passed = (v[..., None] >= knots[..., 1:-1]).astype(v.dtype)  # (..., K - 1)
    one = anp.ones_like(passed[..., :1])
    return anp.concatenate([one, passed], -1) - anp.concatenate([passed, 0.0 * one], -1)[..., :k]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("table_shape", [(4, 3, 6), (3, 6)])
def test_take_bin_equals_one_hot_pick(dtype, table_shape):
    rng = numpy.random.default_rng(0)
    knots = numpy.sort(rng.standard_normal((4, 3, 6)), axis=-1).astype(dtype)
    v = (knots[..., 0] + (knots[..., -1] - knots[..., 0]) * rng.random((4, 3))).astype(dtype)
    v[0, 0] = knots[0, 0, 2]  # exactly on a knot: the bin to its right
    v[1, 1] = knots[1, 1, -1]  # the right end: the last bin
    table = rng.standard_normal(table_shape).astype(dtype)
    index = bin_index(v, knots)
    onehot = _onehot(v, knots)
    numpy.testing.assert_array_equal(index, numpy.argmax(onehot, axis=-1))
    numpy.testing.assert_array_equal(index[0, 0], 2)
    numpy.testing.assert_array_equal(index[1, 1], 4)
    weights = rng.standard_normal((4, 3)).astype(dtype)
    pick = lambda t: anp.sum(weights * anp.sum(t[..., :-1] * onehot, -1))  # noqa: E731
    fast = lambda t: anp.sum(weights * take_bin(t, index))  # noqa: E731
    assert fast(table) == pytest.approx(pick(table), rel=1e-6)
    g = autograd.grad(fast)(table)
    assert g.shape == table.shape and g.dtype == numpy.dtype(dtype)
    numpy.testing.assert_allclose(g, autograd.grad(pick)(table), rtol=1e-6, atol=1e-6)
    strict_g = autograd.grad(lambda t: anp.sum(StrictArray(weights) * take_bin(
        t, StrictArray(index))))(StrictArray(table))
    assert isinstance(strict_g, StrictArray)
    numpy.testing.assert_allclose(B.to_numpy(strict_g), g, rtol=1e-6)


REDUCTIONS = {
    "sum_last": (sum_last, lambda a: anp.sum(a, axis=-1, keepdims=True)),
    "cumsum_last": (cumsum_last, lambda a: anp.cumsum(a, axis=-1)),
    "cumsum_last-exclusive": (lambda a: cumsum_last(a, True),
                              lambda a: anp.cumsum(a, axis=-1) - a),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_last_axis_reductions(name, dtype):
    fast, plain = REDUCTIONS[name]
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((4, 3, 8)).astype(dtype)
    weights = rng.standard_normal(numpy.shape(plain(a))).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    numpy.testing.assert_allclose(fast(a), plain(a), rtol=tol, atol=tol)
    loss = lambda f: lambda x: anp.sum(weights * f(x))  # noqa: E731
    g = autograd.grad(loss(fast))(a)
    assert g.dtype == numpy.dtype(dtype)
    numpy.testing.assert_allclose(g, autograd.grad(loss(plain))(a), rtol=tol, atol=tol)
    # finite differences (float64): both maps are linear, so central differences are exact
    a64, w64 = a.astype("float64"), weights.astype("float64")
    direction = rng.standard_normal(a.shape)
    fd = (numpy.sum(w64 * fast(a64 + 1e-3 * direction))
          - numpy.sum(w64 * fast(a64 - 1e-3 * direction))) / 2e-3
    grad64 = autograd.grad(lambda x: anp.sum(w64 * fast(x)))(a64)
    assert numpy.sum(grad64 * direction) == pytest.approx(fd, rel=1e-9)
    strict_g = autograd.grad(lambda x: anp.sum(StrictArray(weights) * fast(x)))(StrictArray(a))
    assert isinstance(strict_g, StrictArray)
    numpy.testing.assert_allclose(B.to_numpy(strict_g), g, rtol=tol, atol=tol)


def test_max_last_is_the_max_and_carries_no_gradient():
    a = numpy.random.default_rng(0).standard_normal((4, 3, 8))
    numpy.testing.assert_array_equal(max_last(a), numpy.max(a, axis=-1, keepdims=True))
    assert isinstance(max_last(StrictArray(a)), StrictArray)
    # a softmax shifted by max_last has the gradient of the unshifted one
    def softmax(x, shift):
        e = anp.exp(x - shift(x))
        return e / anp.sum(e, axis=-1, keepdims=True)
    w = numpy.random.default_rng(1).standard_normal(a.shape)
    g = autograd.grad(lambda x: anp.sum(w * softmax(x, max_last)))(a)
    g_plain = autograd.grad(lambda x: anp.sum(w * softmax(x, lambda y: 0.0)))(a)
    numpy.testing.assert_allclose(g, g_plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_per_sample_biases_get_per_sample_gradients(masked):
    """A bias of shape (N, H) (a context added per sample) must not be summed over rows."""
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((5, 3))
    w0, w1 = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    b1 = rng.standard_normal(2)
    masks = (numpy.ones((3, 4)), numpy.ones((4, 2)))

    def loss(b0):
        net = (MaskedMLP((w0, w1), (b0, b1), masks, "tanh") if masked
               else MLP((w0, w1), (b0, b1), "tanh"))
        return anp.sum(net(x) ** 2)

    b0 = rng.standard_normal((5, 4))
    g = autograd.grad(loss)(b0)
    assert g.shape == (5, 4)
    h = 1e-6
    fd = numpy.zeros_like(b0)
    for idx in numpy.ndindex(*b0.shape):
        e = numpy.zeros_like(b0)
        e[idx] = h
        fd[idx] = (loss(b0 + e) - loss(b0 - e)) / (2 * h)
    numpy.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spline_bin_index_equals_searchsorted(inverse, dtype):
    rng = numpy.random.default_rng(4)
    theta = rng.standard_normal((50, 3, 23)).astype(dtype)
    spline = RationalQuadraticSpline.from_unconstrained(theta, bound=3.0)
    xs, ys, _ = (B.to_numpy(a) for a in spline.knots())
    knots = ys if inverse else xs
    v = rng.uniform(-3.5, 3.5, (50, 3)).astype(dtype)
    v[0, 0], v[1, 1] = knots[0, 0, 3], knots[1, 1, 5]  # exactly on a knot: the bin to its right
    index = spline_bin_index(v, spline.widths, spline.heights, 3.0, inverse)
    assert index.shape == v.shape
    for n, d in numpy.ndindex(*v.shape):
        # outside (-3, 3) the identity tail ignores the bin: the search then uses v = 0
        inside = v[n, d] if -3.0 < v[n, d] < 3.0 else 0.0
        expected = numpy.searchsorted(knots[n, d, 1:-1], inside, side="right")
        assert index[n, d] == expected, (n, d)


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_inverse_of_forward_through_the_fused_path(inverse):
    rng = numpy.random.default_rng(5)
    theta = 2.0 * rng.standard_normal((64, 4, 23))
    z = rng.uniform(-3.2, 3.2, (64, 4))
    spline = RationalQuadraticSpline.from_unconstrained(theta, bound=3.0)
    x, log_d = spline._forward(z)
    z_back, log_d_back = spline._inverse(x)
    numpy.testing.assert_allclose(z_back, z, atol=1e-10)
    numpy.testing.assert_allclose(log_d_back, log_d, atol=1e-9)
    # and h' against central differences of h
    eps = 1e-6
    slope = (spline._forward(z + eps)[0] - spline._forward(z - eps)[0]) / (2 * eps)
    numpy.testing.assert_allclose(numpy.exp(log_d), slope, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spline_on_the_bound_and_outside_is_the_identity(fused, dtype):
    theta = numpy.random.default_rng(6).standard_normal((5, 2, 23)).astype(dtype)
    v = numpy.array([[-3.0, 3.0], [-7.0, 7.5], [3.0, -3.0], [-3.0, 4.0], [9.0, -3.0]], dtype)
    for inverse in (False, True):
        out = spline_of_theta(inverse, fused)(v, theta)
        numpy.testing.assert_array_equal(out[0], v)   # h(+-B) = +-B exactly, h(z) = z outside
        numpy.testing.assert_array_equal(out[1], 0.0)
        assert out.dtype == numpy.dtype(dtype)
        # no gradient reaches theta from the tails
        g = autograd.grad(lambda t, inv=inverse: anp.sum(spline_of_theta(inv, fused)(v, t)))(theta)
        numpy.testing.assert_array_equal(g, 0.0)


def _flows(rng):
    """Flows whose layers take a fused path, built small; float64."""
    from refflow.affine import Reverse
    from refflow.autoregressive import MAF
    from refflow.core import Compose, Flow
    from refflow.coupling import AffineCoupling
    from refflow.distributions import StandardNormal

    return {
        "realnvp": Flow(StandardNormal(3), Compose(
            AffineCoupling.init(rng, 3, hidden=(8,), activation="relu"), Reverse(),
            AffineCoupling.init(rng, 3, hidden=(8,), scale_bound=None))),
        "maf": Flow(StandardNormal(3), Compose(MAF.init(rng, 3, hidden=(8,)), Reverse(),
                                               MAF.init(rng, 3, hidden=(8,), order="random"))),
        "spline-maf": Flow(StandardNormal(3), MAF.init(
            rng, 3, hidden=(8,), transformer=RationalQuadraticSpline, bins=4, bound=2.5)),
    }


@pytest.mark.parametrize("name", ["realnvp", "maf", "spline-maf"])
def test_flows_equal_their_readable_definition(name, monkeypatch):
    """log_prob, sampling and the parameter gradient of whole flows, fused path against the
    readable code of each class (its ``fused`` switch off)."""
    from refflow.autoregressive import _LectureAffine
    from refflow.coupling import AffineCoupling
    from refflow.train import nll
    from refflow.tree import partition

    flow = _flows(B.rng(3))[name]
    x = 1.2 * B.rng(4).standard_normal((7, 3))
    leaves, rebuild = partition(flow)

    def run():
        loss = autograd.grad(lambda p: nll(rebuild(p), x))(leaves)
        return flow.log_prob(x), flow.sample(5, B.rng(5)), loss

    fast = run()
    for cls in (AffineCoupling, _LectureAffine, RationalQuadraticSpline):
        monkeypatch.setattr(cls, "fused", False)
    readable = run()
    numpy.testing.assert_allclose(fast[0], readable[0], rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(fast[1], readable[1], rtol=1e-12, atol=1e-12)
    for g_fast, g_readable in zip(fast[2], readable[2]):
        numpy.testing.assert_allclose(g_fast, g_readable, rtol=1e-10, atol=1e-12)
