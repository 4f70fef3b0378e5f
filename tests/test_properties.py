"""The generic suite: every registered bijection against independent computations.

For each registry entry and hypothesis draws of (seed, dim, batch): shapes; round trips
both ways; log_det against log|det| of the finite-difference Jacobian, per sample, in both
directions; inverse log_det == -forward log_det; Compose(f, Inverse(f)) is the identity
with log_det 0; autograd gradients of a scalar loss against finite differences; rows of a
batch are independent; float32 keeps its dtype; and the same forward, inverse and gradient
on the strict stand-in array type, compared with the NumPy run (marked ``standin``: it runs in
a pytest process of its own, ``pytest --standin``).

A conditional case (``Case.context_dim`` C > 0) runs every property with a context of shape
(N, C) drawn from N(0, 1): the Jacobians are taken in z at that fixed context, and the
gradients are checked with respect to the parameters, z and the context. On top of that,
``test_context_protocol`` checks the context's errors (missing, wrong C) and, for the
unconditional cases, that a context is accepted and passed by; ``test_context_batching``
that a row's output and log-det do not depend on how the contexts are batched (the row
alone, among other contexts, one (C,) context for all rows). Conditional cases draw fewer
examples (``COND_EXAMPLES``) to keep the suite's time in check.

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
from hypothesis import given, settings
from hypothesis import strategies as st

import refflow
from refflow import backend as B
from refflow import fast
from refflow.core import Compose, Inverse, context_dim_of
from refflow.tree import map_arrays, partition
from tests.registry import load_all
from tests.strict import StrictArray

ENTRIES = load_all()
NAMES = sorted(ENTRIES)
MODES = ["fast", "reference"]

draws = st.fixed_dictionaries(
    {"seed": st.integers(0, 2**31 - 1), "dim_u": st.floats(0, 1), "batch": st.integers(1, 4)}
)


def _context_dim(name):
    """The registered context dimension of an entry, from one instance at its smallest dim."""
    entry = ENTRIES[name]
    return entry.factory(B.rng(0), entry.min_dim).context_dim


CONTEXT_DIMS = {name: _context_dim(name) for name in NAMES}
UNCONDITIONAL = [n for n in NAMES if not CONTEXT_DIMS[n]]
CONDITIONAL = [n for n in NAMES if CONTEXT_DIMS[n]]
#: hypothesis examples per conditional case and test: half the profile's (8 -> 4), since
#: their conditioners are the slowest cases and they rerun checks the unconditional ones have
COND_EXAMPLES = max(1, settings.default.max_examples // 2)


def properties(check, marks=()):
    """Two tests of one property ``check(name, draw)``, each over the cases x {fast on, off}:
    the unconditional cases with the profile's examples, the conditional ones (with a
    context) with ``COND_EXAMPLES``. Ids stay ``name-mode``."""

    def run(name, mode, draw):
        with fast.enabled(mode == "fast"):
            check(name, draw)

    def plain(name, mode, draw):
        run(name, mode, draw)

    def with_context(name, mode, draw):
        run(name, mode, draw)

    tests = []
    for test, names, extra in ((plain, UNCONDITIONAL, ()),
                               (with_context, CONDITIONAL,
                                (settings(max_examples=COND_EXAMPLES),))):
        test.__doc__ = check.__doc__
        test = given(draw=draws)(test)
        for deco in extra:
            test = deco(test)
        test = pytest.mark.parametrize("name", names)(test)
        test = pytest.mark.parametrize("mode", MODES)(test)
        for mark in marks:
            test = mark(test)
        tests.append(test)
    return tests


def build(name, draw):
    """Instantiate a registered case: (case, z, event_shape, context).

    ``context`` is None for an unconditional case, else (N, C) drawn from N(0, 1).
    """
    entry = ENTRIES[name]
    dim = entry.min_dim + int(draw["dim_u"] * (entry.max_dim - entry.min_dim) + 0.5)
    rng = B.rng(draw["seed"])
    case = entry.factory(rng, dim)
    event_shape = tuple(case.event_shape or (dim,))
    n = draw["batch"]
    z = case.inputs(rng, n) if case.inputs else rng.standard_normal((n,) + event_shape)
    c = rng.standard_normal((n, case.context_dim)) if case.context_dim else None
    return case, z, event_shape, c


def fwd(f, z, c):
    """f.forward(z) at context c (the keyword is left out for an unconditional case)."""
    return f.forward(z) if c is None else f.forward(z, context=c)


def inv(f, x, c):
    """f.inverse(x) at context c."""
    return f.inverse(x) if c is None else f.inverse(x, context=c)


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




def _shapes_and_round_trips(name, draw):
    """Shapes, inverse(forward(z)) == z, forward(inverse(x)) == x, log-dets opposite."""
    case, z, event_shape, c = build(name, draw)
    f = case.bijection
    x, ld = fwd(f, z, c)
    batch_shape = z.shape[: z.ndim - len(event_shape)]
    # a reshaping bijection (Squeeze) declares its output event shape
    out_event = tuple(case.extra.get("out_event_shape", event_shape))
    assert x.shape == batch_shape + out_event
    assert tuple(numpy.shape(ld)) == batch_shape
    z_back, ld_inv = inv(f, x, c)
    assert_close(z_back, z, case.atol, case.rtol, "inverse(forward(z))")
    x_again, _ = fwd(f, z_back, c)
    assert_close(x_again, x, case.atol, case.rtol, "forward(inverse(x))")
    assert_close(ld_inv, -ld, case.atol, case.rtol, "inverse log_det == -forward log_det")


test_shapes_and_round_trips, test_shapes_and_round_trips_with_context = properties(
    _shapes_and_round_trips)


def _log_det_matches_finite_differences(name, draw):
    """log_det == log|det| of the FD Jacobian in z (at the fixed context), both directions."""
    case, z, _, c = build(name, draw)
    f = case.bijection
    x, ld = fwd(f, z, c)
    fd = fd_logabsdet(lambda v: fwd(f, v, c)[0], z)
    assert_close(ld, fd, case.fd_atol, case.fd_atol, "forward log_det vs finite differences")
    _, ld_inv = inv(f, x, c)
    fd_inv = fd_logabsdet(lambda v: inv(f, v, c)[0], x)
    assert_close(ld_inv, fd_inv, case.fd_atol, case.fd_atol, "inverse log_det vs FD")


(test_log_det_matches_finite_differences,
 test_log_det_matches_finite_differences_with_context) = properties(
    _log_det_matches_finite_differences)


def _compose_with_inverse_is_identity(name, draw):
    """Compose(f, Inverse(f)) is the identity with log_det 0 (the context passed to both)."""
    case, z, _, c = build(name, draw)
    identity = Compose(case.bijection, Inverse(case.bijection))
    assert context_dim_of(identity) == case.context_dim
    out, ld = fwd(identity, z, c)
    assert_close(out, z, case.atol, case.rtol, "Compose(f, Inverse(f))")
    assert_close(ld, numpy.zeros(numpy.shape(ld)), case.atol, 0, "log_det")


(test_compose_with_inverse_is_identity,
 test_compose_with_inverse_is_identity_with_context) = properties(
    _compose_with_inverse_is_identity)


def _rows_are_independent(name, draw):
    """Changing row 0 (its z, and its context) leaves the other rows' outputs unchanged."""
    case, z, _, c = build(name, dict(draw, batch=max(2, draw["batch"])))
    f = case.bijection
    x, ld = fwd(f, z, c)
    first = case.inputs(B.rng(draw["seed"] + 1), 1) if case.inputs else z[:1] * 0.5 + 0.1
    z2 = anp.concatenate([first, z[1:]], axis=0)
    c2 = None if c is None else anp.concatenate([c[:1] * -2.0 + 0.3, c[1:]], axis=0)
    x2, ld2 = fwd(f, z2, c2)
    assert_close(x2[1:], x[1:], 1e-10, 1e-10, "other rows' outputs")
    assert_close(ld2[1:], ld[1:], 1e-10, 1e-10, "other rows' log_dets")


test_rows_are_independent, test_rows_are_independent_with_context = properties(
    _rows_are_independent)


def _loss(f, z, weights, c=None):
    x, ld = fwd(f, z, c)
    zi, ld_inv = inv(f, x, c)
    return anp.sum(x * weights) + anp.sum(ld) + 0.5 * anp.sum(zi * weights) + 0.25 * anp.sum(ld_inv)


def _gradients_match_finite_differences(name, draw):
    """Autograd's directional derivative in (parameters, z, context) against central FD."""
    case, z, _, c = build(name, draw)
    if not case.grad:
        return
    leaves, rebuild = partition(case.bijection)
    rng = B.rng(draw["seed"] + 7)
    weights = rng.standard_normal(z.shape)

    def loss(params, zz, cc):
        return _loss(rebuild(params), zz, weights, cc)

    # a bijection without parameters (Reverse) still has a gradient with respect to z
    grads = autograd.grad(loss, 0)(leaves, z, c) if leaves else []
    grad_z = autograd.grad(loss, 1)(leaves, z, c)
    grad_c = autograd.grad(loss, 2)(leaves, z, c) if c is not None else None
    directions = [rng.standard_normal(leaf.shape) for leaf in leaves]
    dz = rng.standard_normal(z.shape)
    dc = rng.standard_normal(c.shape) if c is not None else None
    h = 1e-5
    analytic = sum(float(host(anp.sum(g * d))) for g, d in zip(grads, directions))
    analytic += float(host(anp.sum(grad_z * dz)))
    if c is not None:
        analytic += float(host(anp.sum(grad_c * dc)))
    plus = loss([p + h * d for p, d in zip(leaves, directions)], z + h * dz,
                None if c is None else c + h * dc)
    minus = loss([p - h * d for p, d in zip(leaves, directions)], z - h * dz,
                 None if c is None else c - h * dc)
    numeric = float(host(plus - minus)) / (2 * h)
    for g in list(grads) + [grad_z] + ([] if c is None else [grad_c]):
        assert numpy.all(numpy.isfinite(host(g))), "non-finite gradient"
    tol = case.fd_atol * 10 * max(1.0, abs(numeric))
    assert abs(analytic - numeric) <= tol, f"directional derivative {analytic} vs FD {numeric}"
    if c is not None:
        # the context's own share, alone: a gradient that ignored c would pass the sum above
        # only if c's share were small, so check it separately
        numeric_c = float(host(loss(leaves, z, c + h * dc) - loss(leaves, z, c - h * dc)))
        numeric_c /= 2 * h
        analytic_c = float(host(anp.sum(grad_c * dc)))
        tol_c = case.fd_atol * 10 * max(1.0, abs(numeric_c))
        assert abs(analytic_c - numeric_c) <= tol_c, (
            f"context directional derivative {analytic_c} vs FD {numeric_c}")


(test_gradients_match_finite_differences,
 test_gradients_match_finite_differences_with_context) = properties(
    _gradients_match_finite_differences)


def _to_strict(x):
    return StrictArray(host(x)) if B.is_array(x) else x


def _strict_stand_in(name, draw):
    """Forward, inverse and a gradient on a CuPy-like array type give the NumPy numbers."""
    case, z, _, c = build(name, draw)
    f = case.bijection
    f_s = map_arrays(_to_strict, f)
    z_s = _to_strict(z)
    c_s = None if c is None else _to_strict(c)
    x, ld = fwd(f, z, c)
    x_s, ld_s = fwd(f_s, z_s, c_s)
    assert isinstance(x_s, StrictArray), "forward left the device array type"
    assert isinstance(ld_s, StrictArray), "forward log_det left the device array type"
    assert_close(x_s.get(), x, 1e-10, 1e-10, "strict forward")
    assert_close(B.to_numpy(ld_s), ld, 1e-10, 1e-10, "strict forward log_det")
    z_b, ld_b = inv(f_s, x_s, c_s)
    assert isinstance(z_b, StrictArray) and isinstance(ld_b, StrictArray), "inverse left it"
    z_ref, ld_ref = inv(f, x, c)
    assert_close(B.to_numpy(z_b), z_ref, 1e-10, 1e-10, "strict inverse")
    assert_close(B.to_numpy(ld_b), ld_ref, 1e-10, 1e-10, "strict inverse log_det")
    leaves, rebuild = partition(f)
    if not case.grad or not leaves:
        return
    weights = B.rng(1).standard_normal(z.shape)
    leaves_s, rebuild_s = partition(f_s)
    g = autograd.grad(lambda p: _loss(rebuild(p), z, weights, c))(leaves)
    g_s = autograd.grad(lambda p: _loss(rebuild_s(p), z_s, _to_strict(weights), c_s))(leaves_s)
    for a, b in zip(g_s, g):
        assert isinstance(a, StrictArray), "gradient left the device array type"
        assert_close(a.get(), b, 1e-9, 1e-9, "strict gradient")
    if c is not None:
        gc = autograd.grad(lambda cc: _loss(f, z, weights, cc))(c)
        gc_s = autograd.grad(lambda cc: _loss(f_s, z_s, _to_strict(weights), cc))(c_s)
        assert isinstance(gc_s, StrictArray), "context gradient left the device array type"
        assert_close(gc_s.get(), gc, 1e-9, 1e-9, "strict context gradient")


test_strict_stand_in, test_strict_stand_in_with_context = properties(
    _strict_stand_in, marks=(pytest.mark.standin,))


def _to_float32(x):
    return x.astype(numpy.float32) if B.is_array(x) and x.dtype == numpy.float64 else x


def _float32_keeps_dtype(name, draw):
    """A float32 flow on float32 data computes in float32 and round-trips to 1e-3."""
    case, z, _, c = build(name, draw)
    f32 = map_arrays(_to_float32, case.bijection)
    z32 = _to_float32(z)
    c32 = None if c is None else _to_float32(c)
    x, ld = fwd(f32, z32, c32)
    assert x.dtype == numpy.float32, f"forward output is {x.dtype}"
    z_back, ld_inv = inv(f32, x, c32)
    assert z_back.dtype == numpy.float32, f"inverse output is {z_back.dtype}"
    for what, v in (("forward log_det", ld), ("inverse log_det", ld_inv)):
        assert numpy.asarray(host(v)).dtype == numpy.float32, f"{what} is {host(v).dtype}"
    assert_close(z_back, z32, 1e-3, 1e-3, "float32 round trip")
    leaves, rebuild = partition(f32)
    if case.grad and leaves:
        grads = autograd.grad(lambda p: _loss(rebuild(p), z32, anp.ones_like(z32), c32))(leaves)
        for g in grads:
            assert g.dtype == numpy.float32, f"gradient dtype {g.dtype} in a float32 run"
    if c32 is not None:
        gc = autograd.grad(lambda cc: _loss(f32, z32, anp.ones_like(z32), cc))(c32)
        assert gc.dtype == numpy.float32, f"context gradient dtype {gc.dtype}"


test_float32_keeps_dtype, test_float32_keeps_dtype_with_context = properties(
    _float32_keeps_dtype)


def _context_protocol(name, draw):
    """A conditional case refuses a missing context or a wrong C (ValueError naming
    ``context``) and reports its C; an unconditional one accepts a context and passes it by."""
    case, z, _, c = build(name, draw)
    f = case.bijection
    assert context_dim_of(f) == case.context_dim, "context_dim differs from the registry's"
    if c is None:
        x, ld = f.forward(z)
        other = B.rng(draw["seed"] + 3).standard_normal((z.shape[0], 2))
        for context in (None, other):
            x_c, ld_c = f.forward(z, context=context)
            assert_close(x_c, x, 0, 0, f"forward with context {type(context).__name__}")
            assert_close(ld_c, ld, 0, 0, "forward log_det with a context")
            z_ref, ld_ref = f.inverse(x)
            z_c, ld_ic = f.inverse(x, context=context)
            assert_close(z_c, z_ref, 0, 0, "inverse with a context")
            assert_close(ld_ic, ld_ref, 0, 0, "inverse log_det with a context")
        return
    for method, value in ((f.forward, z), (f.inverse, fwd(f, z, c)[0])):
        with pytest.raises(ValueError, match="context"):
            method(value)
        with pytest.raises(ValueError, match="context"):
            method(value, context=anp.concatenate([c, c[:, :1]], axis=1))


test_context_protocol, test_context_protocol_with_context = properties(_context_protocol)


def _context_batching(name, draw):
    """A row's output and log-det do not depend on how the contexts are batched: the row
    alone equals the row in the batch, and one (C,) context equals it repeated per row."""
    case, z, _, c = build(name, dict(draw, batch=max(2, draw["batch"])))
    if c is None:
        return
    f = case.bijection
    x, ld = fwd(f, z, c)
    for i in range(z.shape[0]):
        x_i, ld_i = fwd(f, z[i:i + 1], c[i:i + 1])
        assert_close(x_i, x[i:i + 1], 1e-10, 1e-10, f"row {i} alone vs in the batch")
        assert_close(ld_i, ld[i:i + 1], 1e-10, 1e-10, f"row {i}'s log_det alone")
    z_all, ld_inv = inv(f, x, c)
    z_1, ld_inv_1 = inv(f, x[1:2], c[1:2])
    assert_close(z_1, z_all[1:2], 1e-10, 1e-10, "inverse of a row alone")
    assert_close(ld_inv_1, ld_inv[1:2], 1e-10, 1e-10, "inverse log_det of a row alone")
    one = c[0]
    tiled = anp.concatenate([c[:1]] * z.shape[0], axis=0)
    x_b, ld_b = fwd(f, z, one)
    x_t, ld_t = fwd(f, z, tiled)
    assert x_b.shape == x_t.shape and numpy.shape(ld_b) == numpy.shape(ld_t)
    assert_close(x_b, x_t, 1e-10, 1e-10, "forward at a (C,) context vs the same row per row")
    assert_close(ld_b, ld_t, 1e-10, 1e-10, "log_det at a (C,) context vs repeated rows")
    z_b, ld_ib = inv(f, x_b, one)
    assert_close(z_b, z, case.atol, case.rtol, "inverse at a (C,) context")
    assert_close(ld_ib, -ld_b, case.atol, case.rtol, "inverse log_det at a (C,) context")


_, test_context_batching = properties(_context_batching)


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
