"""The fast layer, generated from its registry: every (reference, kernel) pair on every case.

For each replaceable function with a kernel (``refflow.fast.kernels()``) and each input
variant of its case (``tests/fast_cases``): the kernel's values and autograd gradients
against the reference's (float64), against central finite differences of the kernel itself,
in float32 (the dtype kept, values and gradients against the float64 reference), and on the
strict stand-in (no kernel: the dispatcher runs the reference, which gives the NumPy
numbers). Tolerances: float64 values 1e-12 and gradients 1e-10 (relative to the largest
entry; the kernels reorder the arithmetic, and the spline inverse's VJP divides by h');
finite differences 1e-6 relative (step 1e-6, float64); float32 against float64 1e-4
relative to the largest entry (K-term sums and the spline's 1 / w factors), and against the
float32 reference on inputs placed exactly on kinks.
"""

from __future__ import annotations

import autograd
import autograd.numpy as anp
import numpy
import pytest
from autograd.tracer import getval

from refflow import backend as B
from refflow import fast
from refflow.elementwise import RationalQuadraticSpline, spline_knots
from refflow.fast.lastaxis import bin_index, cumsum_last, max_last, sum_last, take_bin
from refflow.fast.spline import _knots_below, spline_bin_index
from refflow.nn import MLP, MaskedMLP
from tests.fast_cases import VARIANTS_OF, load_all
from tests.strict import StrictArray

CASES = load_all()
KERNELS = fast.kernels()
REFERENCES = fast.references()
PAIRS = [(name, variant) for name in sorted(KERNELS) if name in CASES
         for variant in VARIANTS_OF[name][0]]
SMOOTH = [(name, variant) for name, variant in PAIRS if variant not in VARIANTS_OF[name][1]]
IDS = [f"{name}-{variant}" for name, variant in PAIRS]
SMOOTH_IDS = [f"{name}-{variant}" for name, variant in SMOOTH]


def _inputs(name, variant, dtype, seed=0):
    return CASES[name](numpy.random.default_rng(seed), dtype, variant)


def _outputs(out):
    """A function's output as a list of arrays (the spline returns a pair, which autograd
    boxes as one sequence when it traces a kernel)."""
    if isinstance(getval(out), tuple):
        return [out[i] for i in range(len(out))]
    return [out]


def _weights(outs, seed=1):
    rng = numpy.random.default_rng(seed)
    return [rng.standard_normal(numpy.shape(o)).astype(B.to_numpy(o).dtype) for o in outs]


def _loss(f, weights, kwargs):
    """args -> sum_i <weights_i, output_i>, a scalar whose gradient is every output's VJP."""
    def loss(*args):
        return sum(anp.sum(w * o) for w, o in zip(weights, _outputs(f(*args, **kwargs))))
    return loss


def _assert_close(actual, expected, rtol, what):
    """|actual - expected| <= rtol * max(1, max |expected|), entrywise, and equal shapes."""
    actual, expected = B.to_numpy(actual), B.to_numpy(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(numpy.max(numpy.abs(expected), initial=0.0)))
    numpy.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale, err_msg=what)


def _kernel(name):
    return KERNELS[name]["numpy"]


def test_every_kernel_has_a_case_and_every_case_a_reference():
    assert KERNELS, "no kernel registered"
    assert not sorted(set(KERNELS) - set(CASES)), "kernels without a case in tests/fast_cases"
    assert not sorted(set(CASES) - set(REFERENCES)), "cases naming no replaceable function"
    assert not sorted(set(KERNELS) - set(REFERENCES)), "kernels replacing no reference"


@pytest.mark.parametrize("name, variant", PAIRS, ids=IDS)
def test_kernel_equals_reference_float64(name, variant):
    args, kwargs, argnums = _inputs(name, variant, "float64")
    reference, kernel = REFERENCES[name], _kernel(name)
    expected = _outputs(reference(*args, **kwargs))
    for got, want in zip(_outputs(kernel(*args, **kwargs)), expected):
        assert B.to_numpy(got).dtype == numpy.float64
        _assert_close(got, want, 1e-12, f"{name} value")
    weights = _weights(expected)
    for i in argnums:
        g = autograd.grad(_loss(kernel, weights, kwargs), i)(*args)
        g_ref = autograd.grad(_loss(reference, weights, kwargs), i)(*args)
        _assert_close(g, g_ref, 1e-10, f"{name} gradient {i}")


@pytest.mark.parametrize("name, variant", PAIRS, ids=IDS)
def test_dispatch_follows_the_switch(name, variant):
    """The replaceable function runs the kernel with the fast layer on, the reference off."""
    args, kwargs, _ = _inputs(name, variant, "float64")
    dispatch = _dispatcher(name)
    with fast.enabled(True):
        on = _outputs(dispatch(*args, **kwargs))
    with fast.enabled(False):
        off = _outputs(dispatch(*args, **kwargs))
    for a, b in zip(on, _outputs(_kernel(name)(*args, **kwargs))):
        numpy.testing.assert_array_equal(a, b)
    for a, b in zip(off, _outputs(REFERENCES[name](*args, **kwargs))):
        numpy.testing.assert_array_equal(a, b)


class _OtherArray(numpy.ndarray):
    """An array type of no registered backend (its module is not numpy or cupy)."""


def test_dispatch_remembers_the_backend_per_array_type(monkeypatch):
    """The dispatcher caches the backend of an array type: a NumPy call, a call with an
    array of an unknown type (the reference runs), a traced NumPy call and a NumPy call
    again each take their own path; a cache keyed on the wrong thing would send the
    unknown type to the NumPy kernel or NumPy arrays to the reference."""
    calls = []
    numpy_kernel = fast.kernels()["dense"]["numpy"]

    def recording(*args, **kwargs):
        calls.append(type(getval(args[0])))
        return numpy_kernel(*args, **kwargs)

    monkeypatch.setitem(fast.registry._kernels["dense"], "numpy", recording)
    rng = numpy.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    dense = _dispatcher("dense")
    with fast.enabled(True):
        dense(x, w, b, "tanh")
        dense(x.view(_OtherArray), w, b, "tanh")
        autograd.grad(lambda v: anp.sum(dense(v, w, b, "tanh")))(x)
        dense(x, w, b, "tanh")
    assert calls == [numpy.ndarray, numpy.ndarray, numpy.ndarray]


def _dispatcher(name):
    """The public, replaceable function registered as ``name``."""
    return fast.replaceables()[name]


@pytest.mark.parametrize("name, variant", SMOOTH, ids=SMOOTH_IDS)
def test_kernel_gradient_matches_finite_differences(name, variant):
    args, kwargs, argnums = _inputs(name, variant, "float64")
    kernel = _kernel(name)
    loss = _loss(kernel, _weights(_outputs(kernel(*args, **kwargs)), seed=2), kwargs)
    eps = 1e-6
    for i in argnums:
        grad = autograd.grad(loss, i)(*args)
        direction = numpy.random.default_rng(3 + i).standard_normal(numpy.shape(args[i]))
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + eps * direction, args[i] - eps * direction
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert abs(numpy.sum(grad * direction) - fd) <= 1e-6 * (1 + abs(fd)), (i, fd)


@pytest.mark.parametrize("name, variant", PAIRS, ids=IDS)
def test_kernel_float32_stays_float32_and_agrees(name, variant):
    args, kwargs, argnums = _inputs(name, variant, "float32")
    args64 = tuple(a.astype("float64") if isinstance(a, numpy.ndarray) else a for a in args)
    if variant in VARIANTS_OF[name][1]:
        # on a kink (an input exactly on a float32 knot, which float64 knots may put in the
        # neighbouring bin) the float32 reference is the comparison: same knots, same bin
        args64 = args
    kernel, reference = _kernel(name), REFERENCES[name]
    out32 = _outputs(kernel(*args, **kwargs))
    expected = _outputs(reference(*args64, **kwargs))
    for got, want in zip(out32, expected):
        assert got.dtype == numpy.float32, f"{name}: output became {got.dtype}"
        _assert_close(got, want, 1e-4, f"{name} float32 value")
    weights = _weights(out32)
    for i in argnums:
        g32 = autograd.grad(_loss(kernel, weights, kwargs), i)(*args)
        assert g32.dtype == numpy.float32, f"{name}: gradient {i} became {g32.dtype}"
        weights64 = [w.astype(args64[i].dtype) for w in weights]
        g64 = autograd.grad(_loss(reference, weights64, kwargs), i)(*args64)
        _assert_close(g32, g64, 1e-4, f"{name} float32 gradient {i}")


def _strict(x):
    return StrictArray(x) if isinstance(x, numpy.ndarray) else x


@pytest.mark.standin
@pytest.mark.parametrize("name, variant", PAIRS, ids=IDS)
def test_strict_stand_in_runs_the_reference(name, variant):
    """No kernel for the stand-in: with the fast layer on, the dispatcher runs the
    reference, whose outputs and gradients stay device arrays with the NumPy numbers."""
    args, kwargs, argnums = _inputs(name, variant, "float64")
    strict_args = tuple(_strict(a) for a in args)
    dispatch, reference = _dispatcher(name), REFERENCES[name]
    expected = _outputs(reference(*args, **kwargs))
    weights = _weights(expected)
    with fast.enabled(True):
        outs = _outputs(dispatch(*strict_args, **kwargs))
        for got, want in zip(outs, expected):
            assert isinstance(got, StrictArray), f"{name}: output left the device array type"
            _assert_close(got.get(), want, 1e-13, f"{name} strict value")
        for i in argnums:
            g = autograd.grad(_loss(dispatch, [StrictArray(w) for w in weights], kwargs),
                              i)(*strict_args)
            assert isinstance(g, StrictArray), f"{name}: gradient {i} left the device type"
            g_ref = autograd.grad(_loss(reference, weights, kwargs), i)(*args)
            _assert_close(g.get(), g_ref, 1e-13, f"{name} strict gradient {i}")


# ------------------------------------------------------------------ beyond the generated pairs


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernel_knots_are_the_reference_knots_bit_for_bit(dtype):
    """The kernel's knots (one matrix product) add the bin sizes in the reference's order, so
    an input placed exactly on a reference knot falls in the same bin in both."""
    rng = numpy.random.default_rng(7)
    spline = RationalQuadraticSpline.from_unconstrained(
        (2.0 * rng.standard_normal((4000, 4, 23))).astype(dtype), bound=3.0)
    for sizes in (spline.widths, spline.heights):
        numpy.testing.assert_array_equal(_knots_below(sizes, 3.0),
                                         spline_knots(sizes, 3.0)[..., :-1])


def test_dense_kernel_is_differentiable_twice():
    """A gradient through the kernel's VJP (a residual block differentiates its Jacobian)
    equals the reference's, for the fused activations."""
    rng = numpy.random.default_rng(8)
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal(5)
    u = rng.standard_normal((4, 5))
    for activation in ("tanh", "relu", "identity"):
        def grad_norm(f, ww, act=activation):
            g = autograd.grad(lambda xx: anp.sum(u * f(xx, ww, b, activation=act)))(x)
            return anp.sum(g ** 2)
        numpy.testing.assert_allclose(autograd.grad(grad_norm, 1)(_kernel("dense"), w),
                                      autograd.grad(grad_norm, 1)(REFERENCES["dense"], w),
                                      rtol=1e-12, atol=1e-12)


def test_masked_dense_kernel_leaves_cut_connections_without_gradient():
    args, kwargs, _ = _inputs("masked_dense", "tanh", "float64")
    mask = args[2]
    g = autograd.grad(lambda w: anp.sum(_kernel("masked_dense")(args[0], w, *args[2:],
                                                                **kwargs) ** 2))(args[1])
    assert numpy.any(mask == 0) and not numpy.any(g[mask == 0])


@pytest.mark.parametrize("masked", [False, True])
def test_networks_fast_equal_reference_and_per_sample_bias_matches_fd(masked):
    """MLP and MaskedMLP with the fast layer on and off; a per-sample bias (N, H) gets its
    own gradient per row, checked against central differences."""
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((5, 3))
    w0, w1 = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    b1 = rng.standard_normal(2)
    masks = (rng.random((3, 4)) > 0.3).astype(float), numpy.ones((4, 2))

    def loss(b0):
        net = (MaskedMLP((w0, w1), (b0, b1), masks, "tanh") if masked
               else MLP((w0, w1), (b0, b1), "tanh"))
        return anp.sum(net(x) ** 2)

    b0 = rng.standard_normal((5, 4))
    with fast.enabled(True):
        g, value = autograd.grad(loss)(b0), loss(b0)
    with fast.enabled(False):
        g_ref, value_ref = autograd.grad(loss)(b0), loss(b0)
    numpy.testing.assert_allclose(value, value_ref, rtol=1e-13)
    numpy.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-13)
    h = 1e-6
    fd = numpy.zeros_like(b0)
    for idx in numpy.ndindex(*b0.shape):
        e = numpy.zeros_like(b0)
        e[idx] = h
        fd[idx] = (loss(b0 + e) - loss(b0 - e)) / (2 * h)
    numpy.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


REDUCTIONS = {
    "sum_last": (sum_last, lambda a: numpy.sum(a, axis=-1, keepdims=True)),
    "cumsum_last": (cumsum_last, lambda a: numpy.cumsum(a, axis=-1)),
    "cumsum_last-exclusive": (lambda a: cumsum_last(a, True),
                              lambda a: numpy.cumsum(a, axis=-1) - a),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_last_axis_reductions_against_numpy(name, dtype):
    """Values against NumPy's reductions; the gradient of <W, f(a)> of a linear f is
    f's transpose applied to W, written here for each: sum -> W broadcast, cumsum -> the
    reversed cumsum of W, exclusive -> that minus W."""
    fast_f, plain = REDUCTIONS[name]
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((4, 3, 8)).astype(dtype)
    weights = rng.standard_normal(numpy.shape(plain(a))).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    numpy.testing.assert_allclose(fast_f(a), plain(a), rtol=tol, atol=tol)
    g = autograd.grad(lambda x: anp.sum(weights * fast_f(x)))(a)
    assert g.dtype == numpy.dtype(dtype)
    reverse_cumsum = numpy.cumsum(weights[..., ::-1], axis=-1)[..., ::-1]
    expected = {"sum_last": numpy.broadcast_to(weights, a.shape),
                "cumsum_last": reverse_cumsum,
                "cumsum_last-exclusive": reverse_cumsum - weights}[name]
    numpy.testing.assert_allclose(g, expected, rtol=tol, atol=tol)


def test_max_last_is_the_max_and_take_bin_picks_the_bin():
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((4, 3, 8))
    numpy.testing.assert_array_equal(max_last(a), numpy.max(a, axis=-1, keepdims=True))
    knots = numpy.sort(rng.standard_normal((4, 3, 6)), axis=-1)
    v = knots[..., 0] + (knots[..., -1] - knots[..., 0]) * rng.random((4, 3))
    v[0, 0], v[1, 1] = knots[0, 0, 2], knots[1, 1, -1]   # on a knot; on the right end
    index = bin_index(v, knots)
    for n, d in numpy.ndindex(4, 3):
        assert index[n, d] == min(numpy.searchsorted(knots[n, d], v[n, d], side="right") - 1, 4)
    table = rng.standard_normal((3, 6))                      # shared by the 4 rows
    weights = rng.standard_normal((4, 3))
    g = autograd.grad(lambda t: anp.sum(weights * take_bin(t, index)))(table)
    expected = numpy.zeros_like(table)
    for n, d in numpy.ndindex(4, 3):
        expected[d, index[n, d]] += weights[n, d]
    numpy.testing.assert_allclose(g, expected, rtol=1e-13)


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


def _flows(rng):
    """Flows whose layers have kernels, built small; float64."""
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
def test_flows_fast_equal_reference(name):
    """log_prob, sampling and the parameter gradient of whole flows, fast layer on and off."""
    from refflow.train import nll
    from refflow.tree import partition

    flow = _flows(B.rng(3))[name]
    x = 1.2 * B.rng(4).standard_normal((7, 3))
    leaves, rebuild = partition(flow)

    def run():
        loss = autograd.grad(lambda p: nll(rebuild(p), x))(leaves)
        return flow.log_prob(x), flow.sample(5, B.rng(5)), loss

    with fast.enabled(True):
        on = run()
    with fast.enabled(False):
        off = run()
    numpy.testing.assert_allclose(on[0], off[0], rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(on[1], off[1], rtol=1e-12, atol=1e-12)
    for g_on, g_off in zip(on[2], off[2]):
        numpy.testing.assert_allclose(g_on, g_off, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fast_on", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spline_on_the_bound_and_outside_is_the_identity(fast_on, dtype):
    theta = numpy.random.default_rng(6).standard_normal((5, 2, 23)).astype(dtype)
    v = numpy.array([[-3.0, 3.0], [-7.0, 7.5], [3.0, -3.0], [-3.0, 4.0], [9.0, -3.0]], dtype)

    def run(t, inverse):
        spline = RationalQuadraticSpline.from_unconstrained(t, bound=3.0)
        return (spline.inverse_elementwise if inverse else spline.forward_elementwise)(v)

    with fast.enabled(fast_on):
        for inverse in (False, True):
            out, log_d = run(theta, inverse)
            numpy.testing.assert_array_equal(out, v)   # h(+-B) = +-B exactly, h(z) = z outside
            numpy.testing.assert_array_equal(log_d, 0.0)
            assert out.dtype == log_d.dtype == numpy.dtype(dtype)
            # no gradient reaches theta from the tails
            g = autograd.grad(lambda t, i=inverse: anp.sum(run(t, i)[0]) + anp.sum(run(t, i)[1]))(
                theta)
            numpy.testing.assert_array_equal(g, 0.0)
