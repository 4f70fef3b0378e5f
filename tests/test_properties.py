"""The generic suite: every registered bijection against independent computations.

For each registry entry and hypothesis draws of (seed, dim, batch): shapes; round trips
both ways; log_det against log|det| of the finite-difference Jacobian, per sample, in both
directions; inverse log_det == -forward log_det; Compose(f, Inverse(f)) is the identity
with log_det 0; autograd gradients of a scalar loss against finite differences; rows of a
batch are independent; float32 keeps its dtype; and the same forward, inverse and gradient
on the strict stand-in array type, compared with the NumPy run (marked ``standin``: it runs in
a pytest process of its own, ``pytest --standin``).

Every property runs twice per bijection, with the fast layer on and off (ids ``-fast`` and
``-reference``): the kernels of ``refflow.fast`` and the reference code they replace must
both be bijections with these properties.
"""

from __future__ import annotations

import dataclasses
import inspect

import autograd
import autograd.numpy as anp
import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refflow
from refflow import backend as B
from refflow import fast
from refflow.core import Compose, Inverse
from refflow.tree import map_arrays, partition
from tests.registry import load_all
from tests.strict import StrictArray

ENTRIES = load_all()
NAMES = sorted(ENTRIES)
MODES = ["fast", "reference"]

draws = st.fixed_dictionaries(
    {"seed": st.integers(0, 2**31 - 1), "dim_u": st.floats(0, 1), "batch": st.integers(1, 4)}
)


def build(name, draw):
    """Instantiate a registered case: (case, z, event_shape)."""
    entry = ENTRIES[name]
    dim = entry.min_dim + int(draw["dim_u"] * (entry.max_dim - entry.min_dim) + 0.5)
    rng = B.rng(draw["seed"])
    case = entry.factory(rng, dim)
    event_shape = tuple(case.event_shape or (dim,))
    n = draw["batch"]
    z = case.inputs(rng, n) if case.inputs else rng.standard_normal((n,) + event_shape)
    return case, z, event_shape


def host(x):
    return B.to_numpy(x)


def assert_close(actual, expected, atol, rtol, what):
    a, e = host(actual), host(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    err = numpy.abs(a - e)
    bound = atol + rtol * numpy.abs(e)
    assert numpy.all(numpy.isfinite(a)), f"{what}: non-finite values {a}"
    assert numpy.all(err <= bound), f"{what}: max error {err.max():.3e} (atol {atol}, rtol {rtol})"


def fd_logabsdet(f, z):
    """log|det| of a central-difference Jacobian per row, written here with NumPy's slogdet.

    Independent of refflow.jacobian and refflow.linalg: one column per coordinate, step
    eps^(1/3) * max(1, |z_j|).
    """
    zh = host(z).reshape(z.shape[0], -1)
    n, d = zh.shape
    h = numpy.finfo(zh.dtype).eps ** (1 / 3) * numpy.maximum(1.0, numpy.abs(zh))
    cols = []
    for j in range(d):
        step = numpy.zeros_like(zh)
        step[:, j] = h[:, j]
        plus = host(f(B.asarray((zh + step).reshape(z.shape)))).reshape(n, d)
        minus = host(f(B.asarray((zh - step).reshape(z.shape)))).reshape(n, d)
        cols.append((plus - minus) / (2 * h[:, j : j + 1]))
    return numpy.linalg.slogdet(numpy.stack(cols, axis=2))[1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
@given(draw=draws)
def test_shapes_and_round_trips(name, mode, draw):
    with fast.enabled(mode == "fast"):
        _shapes_and_round_trips(name, draw)


def _shapes_and_round_trips(name, draw):
    case, z, event_shape = build(name, draw)
    f = case.bijection
    x, ld = f.forward(z)
    batch_shape = z.shape[: z.ndim - len(event_shape)]
    # a reshaping bijection (Squeeze) declares its output event shape
    out_event = tuple(case.extra.get("out_event_shape", event_shape))
    assert x.shape == batch_shape + out_event
    assert tuple(numpy.shape(ld)) == batch_shape
    z_back, ld_inv = f.inverse(x)
    assert_close(z_back, z, case.atol, case.rtol, "inverse(forward(z))")
    x_again, _ = f.forward(z_back)
    assert_close(x_again, x, case.atol, case.rtol, "forward(inverse(x))")
    assert_close(ld_inv, -ld, case.atol, case.rtol, "inverse log_det == -forward log_det")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
@given(draw=draws)
def test_log_det_matches_finite_differences(name, mode, draw):
    with fast.enabled(mode == "fast"):
        _log_det_matches_finite_differences(name, draw)


def _log_det_matches_finite_differences(name, draw):
    case, z, _ = build(name, draw)
    f = case.bijection
    x, ld = f.forward(z)
    fd = fd_logabsdet(lambda v: f.forward(v)[0], z)
    assert_close(ld, fd, case.fd_atol, case.fd_atol, "forward log_det vs finite differences")
    _, ld_inv = f.inverse(x)
    fd_inv = fd_logabsdet(lambda v: f.inverse(v)[0], x)
    assert_close(ld_inv, fd_inv, case.fd_atol, case.fd_atol, "inverse log_det vs FD")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
@given(draw=draws)
def test_compose_with_inverse_is_identity(name, mode, draw):
    with fast.enabled(mode == "fast"):
        _compose_with_inverse_is_identity(name, draw)


def _compose_with_inverse_is_identity(name, draw):
    case, z, _ = build(name, draw)
    identity = Compose(case.bijection, Inverse(case.bijection))
    out, ld = identity.forward(z)
    assert_close(out, z, case.atol, case.rtol, "Compose(f, Inverse(f))")
    assert_close(ld, numpy.zeros(numpy.shape(ld)), case.atol, 0, "log_det")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
@given(draw=draws)
def test_rows_are_independent(name, mode, draw):
    with fast.enabled(mode == "fast"):
        _rows_are_independent(name, draw)


def _rows_are_independent(name, draw):
    case, z, _ = build(name, dict(draw, batch=max(2, draw["batch"])))
    f = case.bijection
    x, ld = f.forward(z)
    first = case.inputs(B.rng(draw["seed"] + 1), 1) if case.inputs else z[:1] * 0.5 + 0.1
    z2 = anp.concatenate([first, z[1:]], axis=0)
    x2, ld2 = f.forward(z2)
    assert_close(x2[1:], x[1:], 1e-10, 1e-10, "other rows' outputs")
    assert_close(ld2[1:], ld[1:], 1e-10, 1e-10, "other rows' log_dets")


def _loss(f, z, weights):
    x, ld = f.forward(z)
    zi, ld_inv = f.inverse(x)
    return anp.sum(x * weights) + anp.sum(ld) + 0.5 * anp.sum(zi * weights) + 0.25 * anp.sum(ld_inv)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
@given(draw=draws)
def test_gradients_match_finite_differences(name, mode, draw):
    with fast.enabled(mode == "fast"):
        _gradients_match_finite_differences(name, draw)


def _gradients_match_finite_differences(name, draw):
    case, z, _ = build(name, draw)
    if not case.grad:
        return
    leaves, rebuild = partition(case.bijection)
    rng = B.rng(draw["seed"] + 7)
    weights = rng.standard_normal(z.shape)

    def loss(params, zz):
        return _loss(rebuild(params), zz, weights)

    # a bijection without parameters (Reverse) still has a gradient with respect to z
    grads = autograd.grad(loss, 0)(leaves, z) if leaves else []
    grad_z = autograd.grad(loss, 1)(leaves, z)
    directions = [rng.standard_normal(leaf.shape) for leaf in leaves]
    dz = rng.standard_normal(z.shape)
    h = 1e-5
    analytic = sum(float(host(anp.sum(g * d))) for g, d in zip(grads, directions))
    analytic += float(host(anp.sum(grad_z * dz)))
    plus = loss([p + h * d for p, d in zip(leaves, directions)], z + h * dz)
    minus = loss([p - h * d for p, d in zip(leaves, directions)], z - h * dz)
    numeric = float(host(plus - minus)) / (2 * h)
    for g in list(grads) + [grad_z]:
        assert numpy.all(numpy.isfinite(host(g))), "non-finite gradient"
    tol = case.fd_atol * 10 * max(1.0, abs(numeric))
    assert abs(analytic - numeric) <= tol, f"directional derivative {analytic} vs FD {numeric}"


def _to_strict(x):
    return StrictArray(host(x)) if B.is_array(x) else x


@pytest.mark.standin
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
@given(draw=draws)
def test_strict_stand_in(name, mode, draw):
    with fast.enabled(mode == "fast"):
        _strict_stand_in(name, draw)


def _strict_stand_in(name, draw):
    """Forward, inverse and a gradient on a CuPy-like array type give the NumPy numbers."""
    case, z, _ = build(name, draw)
    f = case.bijection
    f_s = map_arrays(_to_strict, f)
    z_s = _to_strict(z)
    x, ld = f.forward(z)
    x_s, ld_s = f_s.forward(z_s)
    assert isinstance(x_s, StrictArray), "forward left the device array type"
    assert isinstance(ld_s, StrictArray), "forward log_det left the device array type"
    assert_close(x_s.get(), x, 1e-10, 1e-10, "strict forward")
    assert_close(B.to_numpy(ld_s), ld, 1e-10, 1e-10, "strict forward log_det")
    z_b, ld_b = f_s.inverse(x_s)
    assert isinstance(z_b, StrictArray) and isinstance(ld_b, StrictArray), "inverse left it"
    assert_close(B.to_numpy(z_b), f.inverse(x)[0], 1e-10, 1e-10, "strict inverse")
    assert_close(B.to_numpy(ld_b), f.inverse(x)[1], 1e-10, 1e-10, "strict inverse log_det")
    leaves, rebuild = partition(f)
    if not case.grad or not leaves:
        return
    weights = B.rng(1).standard_normal(z.shape)
    leaves_s, rebuild_s = partition(f_s)
    g = autograd.grad(lambda p: _loss(rebuild(p), z, weights))(leaves)
    g_s = autograd.grad(lambda p: _loss(rebuild_s(p), z_s, _to_strict(weights)))(leaves_s)
    for a, b in zip(g_s, g):
        assert isinstance(a, StrictArray), "gradient left the device array type"
        assert_close(a.get(), b, 1e-9, 1e-9, "strict gradient")


def _to_float32(x):
    return x.astype(numpy.float32) if B.is_array(x) and x.dtype == numpy.float64 else x


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
@given(draw=draws)
def test_float32_keeps_dtype(name, mode, draw):
    with fast.enabled(mode == "fast"):
        _float32_keeps_dtype(name, draw)


def _float32_keeps_dtype(name, draw):
    """A float32 flow on float32 data computes in float32 and round-trips to 1e-3."""
    case, z, _ = build(name, draw)
    f32 = map_arrays(_to_float32, case.bijection)
    z32 = _to_float32(z)
    x, ld = f32.forward(z32)
    assert x.dtype == numpy.float32, f"forward output is {x.dtype}"
    z_back, ld_inv = f32.inverse(x)
    assert z_back.dtype == numpy.float32, f"inverse output is {z_back.dtype}"
    for what, v in (("forward log_det", ld), ("inverse log_det", ld_inv)):
        assert numpy.asarray(host(v)).dtype == numpy.float32, f"{what} is {host(v).dtype}"
    assert_close(z_back, z32, 1e-3, 1e-3, "float32 round trip")
    leaves, rebuild = partition(f32)
    if case.grad and leaves:
        grads = autograd.grad(lambda p: _loss(rebuild(p), z32, anp.ones_like(z32)))(leaves)
        for g in grads:
            assert g.dtype == numpy.float32, f"gradient dtype {g.dtype} in a float32 run"


def _public_bijection_classes():
    out = []
    for name in refflow.__all__:
        obj = getattr(refflow, name)
        if (inspect.isclass(obj) and dataclasses.is_dataclass(obj)
                and callable(getattr(obj, "forward", None))
                and callable(getattr(obj, "inverse", None))):
            out.append(name)
    return out


def test_every_public_bijection_is_registered():
    registered = {n.split("[")[0] for n in ENTRIES}
    missing = sorted(set(_public_bijection_classes()) - registered)
    assert not missing, f"public bijections without a registry entry: {missing}"


def test_registry_names_are_public_classes():
    # "Coupling[spline]" is a second registration of the public class Coupling
    unknown = sorted(n for n in ENTRIES if not hasattr(refflow, n.split("[")[0]))
    assert not unknown, f"registry entries that are not public names: {unknown}"
