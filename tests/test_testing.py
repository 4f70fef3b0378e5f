"""refflow.testing: correct bijections pass, each classic log-det or inverse bug is named.

The broken variants reproduce bugs peer libraries shipped (see docs/verify.md): a flipped
log-det sign, a missing H*W factor, a wrong branch of a piecewise map, an inverse off by
1e-3, a map coupling the rows of a batch, and a cache returning another input's result.
"""

from __future__ import annotations

import subprocess
import sys

import autograd.numpy as anp
import numpy
import pytest
from hypothesis import given, settings

from refflow import backend as B
from refflow.affine import Affine, Diagonal
from refflow.testing import (
    CHECKS,
    assert_bijection,
    check_bijection,
    check_gradients,
    strategies,
    verify_main,
)

RNG = numpy.random.default_rng(1)
W1, W2 = 0.6 * RNG.standard_normal((2, 8)), 0.6 * RNG.standard_normal((8, 4))


# ---------------------------------------------------------------- correct maps, in NumPy


def coupling_forward(z, sign=1.0):
    """RealNVP on D = 4: x_b = z_b exp(s(z_a)) + t(z_a), log_det = sum s."""
    st = numpy.tanh(z[:, :2] @ W1) @ W2
    s, t = numpy.tanh(st[:, :2]), st[:, 2:]
    return numpy.concatenate([z[:, :2], z[:, 2:] * numpy.exp(s) + t], 1), sign * s.sum(1)


def coupling_inverse(x, sign=1.0):
    st = numpy.tanh(x[:, :2] @ W1) @ W2
    s, t = numpy.tanh(st[:, :2]), st[:, 2:]
    return numpy.concatenate([x[:, :2], (x[:, 2:] - t) * numpy.exp(-s)], 1), -sign * s.sum(1)


def leaky_forward(z, a=0.3, broken=False):
    x = numpy.where(z > 0, z, a * z)
    negative = (z < 0) if not broken else (z > 0)  # broken: log a charged on the wrong side
    return x, numpy.sum(negative * numpy.log(a), axis=1)


def leaky_inverse(x, a=0.3):
    return numpy.where(x > 0, x, x / a), -numpy.sum((x < 0) * numpy.log(a), axis=1)


def autoregressive_forward(z):
    """x_i = z_i exp(alpha_i(z_<i)) + mu_i(z_<i), the lecture's MAF step, D = 3."""
    alpha = numpy.stack([0 * z[:, 0], 0.5 * numpy.tanh(z[:, 0]),
                         0.3 * numpy.sin(z[:, 0] + z[:, 1])], 1)
    mu = numpy.stack([0 * z[:, 0] + 1.0, z[:, 0] ** 2 / 4, numpy.cos(z[:, 1])], 1)
    return z * numpy.exp(alpha) + mu, alpha.sum(1)


def autoregressive_inverse(x):
    z = numpy.zeros_like(x)
    for _ in range(3):  # pass k makes coordinates < k exact
        alpha = numpy.stack([0 * z[:, 0], 0.5 * numpy.tanh(z[:, 0]),
                             0.3 * numpy.sin(z[:, 0] + z[:, 1])], 1)
        mu = numpy.stack([0 * z[:, 0] + 1.0, z[:, 0] ** 2 / 4, numpy.cos(z[:, 1])], 1)
        z = (x - mu) * numpy.exp(-alpha)
    return z, -alpha.sum(1)


SCALE = numpy.array([0.5, 3.0])  # per-channel scale of an image map


def image_forward(z, hw=True):
    """ActNorm-like per-channel scale on (N, H, W, C); log_det = H W sum log s."""
    h, w = z.shape[1:3]
    factor = h * w if hw else 1
    return z * SCALE, numpy.full(z.shape[0], factor * numpy.sum(numpy.log(SCALE)))


def image_inverse(x):
    h, w = x.shape[1:3]
    return x / SCALE, numpy.full(x.shape[0], -h * w * numpy.sum(numpy.log(SCALE)))


# ---------------------------------------------------------------- correct maps pass


@pytest.mark.parametrize("case", ["coupling", "leaky", "autoregressive", "affine", "diagonal"])
def test_correct_bijections_pass(case):
    maps = {
        "coupling": (coupling_forward, coupling_inverse, 4, None),
        "leaky": (leaky_forward, leaky_inverse, 3, "diagonal"),
        "autoregressive": (autoregressive_forward, autoregressive_inverse, 3, "lower"),
        "affine": (Affine(numpy.array([[2.0, 1.0], [0.5, 3.0]]), numpy.ones(2)), None, 2, None),
        "diagonal": (Diagonal(numpy.array([0.5, 3.0]), numpy.zeros(2)), None, 2, "diagonal"),
    }
    fwd, inv, dim, structure = maps[case]
    report = check_bijection(fwd, inv, dim=dim, structure=structure)
    assert report.ok, report.table()
    assert report["structure"].passed is (None if structure is None else True)


def test_image_shaped_inputs_pass():
    z = RNG.standard_normal((3, 4, 4, 2))
    report = assert_bijection(image_forward, image_inverse, inputs=z)
    assert report.meta["D"] == 32


def test_density_normalises_in_one_and_two_dimensions():
    for fwd, inv, dim in [(leaky_forward, leaky_inverse, 1), (coupling_2d, coupling_2d_inv, 2)]:
        report = check_bijection(fwd, inv, dim=dim, density="normal")
        assert report["normalization"].passed, report.table()


def coupling_2d(z):
    s = numpy.tanh(z[:, :1])
    return numpy.concatenate([z[:, :1], z[:, 1:] * numpy.exp(s) + z[:, :1] ** 2], 1), s[:, 0]


def coupling_2d_inv(x):
    s = numpy.tanh(x[:, :1])
    return numpy.concatenate([x[:, :1], (x[:, 1:] - x[:, :1] ** 2) * numpy.exp(-s)], 1), -s[:, 0]


# ---------------------------------------------------------------- each bug is named


def test_flipped_log_det_sign_fails_log_det():
    report = check_bijection(lambda z: coupling_forward(z, -1.0),
                             lambda x: coupling_inverse(x, -1.0), dim=4)
    assert "log_det" in report.failed
    assert report["round_trip"].passed and report["inverse_log_det"].passed


def test_dropped_hw_factor_fails_log_det():
    z = RNG.standard_normal((3, 4, 4, 2))
    report = check_bijection(lambda v: image_forward(v, hw=False), image_inverse, inputs=z)
    assert report.failed == ["log_det", "inverse_log_det"]
    assert report["round_trip"].passed


def test_dropped_factor_on_flattened_image_fails_log_det():
    shape = (4, 4, 2)

    def fwd(z):
        x, ld = image_forward(z.reshape((-1,) + shape), hw=False)
        return x.reshape(len(z), -1), ld

    report = check_bijection(fwd, dim=32, n=4)
    assert report.failed == ["log_det"]


def test_wrong_branch_fails_log_det_and_names_a_row_on_that_branch():
    report = check_bijection(lambda z: leaky_forward(z, broken=True), leaky_inverse, dim=2)
    assert "log_det" in report.failed
    assert report["log_det"].input.max() > 0  # the broken branch is the positive one


def test_normalization_catches_a_wrong_inverse_log_det():
    def inv(x):
        z, ld = leaky_inverse(x)
        return z, -ld  # density direction only: the inverse log-det has the wrong sign

    report = check_bijection(leaky_forward, inv, dim=1, density="normal")
    assert {"inverse_log_det", "normalization"} <= set(report.failed)
    assert report["log_det"].passed


def test_inverse_off_by_1e_3_fails_round_trip():
    report = check_bijection(coupling_forward,
                             lambda x: (coupling_inverse(x)[0] + 1e-3, coupling_inverse(x)[1]),
                             dim=4)
    assert report.failed == ["round_trip"]
    assert 5e-4 < report["round_trip"].error < 2e-3


def test_batch_coupled_map_fails_batch_independence():
    def fwd(z):  # shifts every row by the batch mean: not a per-row bijection
        return z + 0.5 * numpy.mean(z, axis=0), numpy.zeros(len(z))

    report = check_bijection(fwd, dim=2)
    assert "batch_independence" in report.failed


class CachedInverse:
    """Caches the last forward pair and trusts it for any input of the same shape."""

    def __init__(self):
        self.cache = None

    def forward(self, z):
        x, ld = coupling_forward(z)
        self.cache = (x.shape, z, -ld)
        return x, ld

    def inverse(self, x):
        if self.cache is not None and self.cache[0] == x.shape:
            return self.cache[1], self.cache[2]
        return coupling_inverse(x)


def test_cache_returning_another_inputs_result_fails_stateless():
    report = check_bijection(CachedInverse(), dim=4)
    assert "stateless" in report.failed
    # the round trip alone misses it: the cache answers exactly the call that follows forward
    assert report["round_trip"].passed and report["log_det"].passed


def test_structure_violation_is_named():
    report = check_bijection(coupling_forward, coupling_inverse, dim=4, structure="diagonal")
    assert report.failed == ["structure"]
    assert "dx_" in report["structure"].detail


# ---------------------------------------------------------------- the report and the API


def test_report_table_vocabulary_and_reproduction():
    report = check_bijection(lambda z: coupling_forward(z, -1.0), coupling_inverse, dim=4)
    table = str(report)
    assert table == report.table() and "FAIL" in table and "worst input" in table
    assert list(CHECKS)[: len(report.names)] == report.names
    worst = report["log_det"]
    x, ld = coupling_forward(worst.input.reshape(1, -1), -1.0)
    assert abs(float(ld[0]) - (-float(coupling_forward(worst.input.reshape(1, -1))[1][0]))) < 1e-12
    with pytest.raises(AssertionError, match="log_det"):
        assert_bijection(lambda z: coupling_forward(z, -1.0), coupling_inverse, dim=4)


def test_log_det_shape_n_by_1_is_reported_and_checked():
    report = check_bijection(lambda z: (2 * z, numpy.full((len(z), 1), 2 * numpy.log(2))), dim=2)
    assert report.failed == ["shapes"]
    assert "reshape" in report["shapes"].detail


def test_exceptions_in_user_code_become_failures():
    def inv(x):
        raise RuntimeError("not implemented")

    report = check_bijection(coupling_forward, inv, dim=4)
    assert report.failed == ["exceptions"]
    assert "not implemented" in report["exceptions"].detail and report["exceptions"].row == 0
    assert report["round_trip"].passed is None and report["log_det"].passed


def test_float32_inputs_get_float32_tolerances():
    z = RNG.standard_normal((8, 4)).astype(numpy.float32)

    def fwd(v):
        x, ld = coupling_forward(v.astype(numpy.float64))
        return x.astype(numpy.float32), ld.astype(numpy.float32)

    def inv(v):
        x, ld = coupling_inverse(v.astype(numpy.float64))
        return x.astype(numpy.float32), ld.astype(numpy.float32)

    report = check_bijection(fwd, inv, inputs=z)
    assert report.ok, report.table()
    assert report.meta["dtype"] == "float32"


@pytest.mark.parametrize("bad, match", [
    (dict(dim=0), "dim"), (dict(dim=2, n=0), "n"), (dict(inputs=numpy.ones(3)), "inputs"),
    (dict(dim=2, tol={"logdet": 1.0}), "tol"), (dict(dim=2, structure="banded"), "structure"),
    (dict(dim=2, rng="seed"), "rng"),
])
def test_bad_arguments_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        check_bijection(coupling_forward, **bad)


def test_user_tolerance_overrides_the_derived_one():
    inv = lambda x: (coupling_inverse(x)[0] + 1e-6, coupling_inverse(x)[1])  # noqa: E731
    assert "round_trip" in check_bijection(coupling_forward, inv, dim=4).failed
    assert check_bijection(coupling_forward, inv, dim=4, tol={"round_trip": 1e-5}).ok


@settings(max_examples=5, deadline=None)
@given(z=strategies.points(2, edges=(-1.0, 0.5, 1.0)))
def test_strategies_reach_edges_and_tails(z):
    assert z.ndim == 2 and z.shape[1] == 2 and numpy.all(numpy.isfinite(z))
    assert check_bijection(autoregressive_forward_2d, autoregressive_inverse_2d, inputs=z).ok


def autoregressive_forward_2d(z):
    return numpy.stack([z[:, 0], z[:, 1] + numpy.sin(z[:, 0])], 1), numpy.zeros(len(z))


def autoregressive_inverse_2d(x):
    return numpy.stack([x[:, 0], x[:, 1] - numpy.sin(x[:, 0])], 1), numpy.zeros(len(x))


# ---------------------------------------------------------------- gradients


def test_check_gradients_passes_and_catches_a_wrong_gradient():
    from autograd.extend import defvjp, primitive

    @primitive
    def cube(x):
        return x ** 3

    defvjp(cube, lambda ans, x: lambda g: g * 2 * x ** 2)  # should be 3 x^2

    p = [numpy.array([0.3, -1.2, 0.7]), B.rng(0).standard_normal((10, 10))]
    good = check_gradients(lambda q: anp.sum(anp.tanh(q[0]) ** 2) + anp.sum(q[1] ** 3), p)
    assert good.ok, good.table()
    bad = check_gradients(lambda q: anp.sum(cube(q[0])) + anp.sum(q[1] ** 2), p)
    assert bad.failed == ["gradients"] and bad["gradients"].row == 0
    with pytest.raises(ValueError, match="params"):
        check_gradients(lambda q: 0.0, numpy.ones(3))


# ---------------------------------------------------------------- refflow verify


def test_verify_main_exit_codes(capsys):
    assert verify_main(["refflow.affine:Diagonal", "--dim", "3", "--n", "4"]) == 0
    assert "check_bijection: ok" in capsys.readouterr().out
    assert verify_main(["tests.test_testing:broken_factory", "--dim", "2"]) == 1
    assert "FAILED log_det" in capsys.readouterr().out
    assert verify_main(["no_colon"]) == 2
    assert verify_main(["refflow.affine:Nothing"]) == 2
    assert verify_main(["refflow.affine:Diagonal", "--dim", "x"]) == 2
    assert "error" in capsys.readouterr().err


def broken_factory(dim):
    """A factory for `refflow verify`: the coupling with its log-det sign flipped."""
    scale = numpy.linspace(0.5, 3.0, dim)
    return (lambda z: (z * scale, -numpy.full(len(z), numpy.sum(numpy.log(scale)))),
            lambda x: (x / scale, numpy.full(len(x), numpy.sum(numpy.log(scale)))))


def test_python_dash_m_runs_verify():
    out = subprocess.run([sys.executable, "-m", "refflow.testing", "refflow.affine:Affine",
                          "--dim", "2", "--n", "3"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "inverse_function_theorem" in out.stdout


# ---------------------------------------------------------------- issue 15: no false alarm


def test_exact_kink_is_inconclusive_by_differences_and_decided_by_autodiff():
    # at z = 0 exactly every central difference of a leaky ReLU is the average slope (1 + a)/2
    # whatever the step: a confident wrong reference; the one-sided slopes reveal the kink
    z = numpy.array([[0.0, 1.0], [0.5, -0.7], [-1.2, 2.0]])
    plain = check_bijection(leaky_forward, leaky_inverse, inputs=z)
    assert "log_det" in plain.inconclusive and not plain.ok and not plain.failed
    assert "rows [0]" in plain["log_det"].detail

    def fwd(v, a=0.3):  # the same map in autograd.numpy: autodiff takes one side's slope
        return anp.where(v > 0, v, a * v), anp.sum((v < 0) * numpy.log(a), axis=1)

    def inv(v, a=0.3):
        return anp.where(v > 0, v, v / a), -anp.sum((v < 0) * numpy.log(a), axis=1)

    z[0, 0] = 1e-300  # the library's branch at 0 is z > 0: evaluate on that side
    decided = check_bijection(fwd, inv, inputs=z)
    assert decided.ok, decided.table()
    assert "autodiff confirmed" in decided["log_det"].detail


def test_steep_narrow_spline_is_not_a_false_alarm():
    # a monotone map with a feature 1e-3 wide and slope 1/400 inside it: its inverse has
    # slope 400 over an x-interval of 2.5e-6, narrower than a fixed eps^(1/5) step
    w = 1e-3

    def fwd(z):
        x = z - (1 - 1 / 400) * w * numpy.tanh(z / w)
        d = 1 - (1 - 1 / 400) / numpy.cosh(z / w) ** 2
        return x, numpy.sum(numpy.log(d), axis=1)

    def inv(x):  # Newton from the outer branch, to rounding
        z = x.copy()
        for _ in range(200):
            z = z - (fwd(z)[0] - x) / (1 - (1 - 1 / 400) / numpy.cosh(z / w) ** 2)
        return z, -fwd(z)[1]

    z = numpy.array([[1e-4, 0.5], [-2e-4, 3.0], [0.7, 2e-5], [-1.5, -3e-4]])
    report = check_bijection(fwd, inv, inputs=z)
    assert report.ok, report.table()


# ---------------------------------------------------------------- issue 15: new checks


def planar(u, w=None, b=0.2, fixed=False):
    """A planar flow f(z) = z + u_hat tanh(w.z + b); the u_hat constraint keeps w.u_hat >= -1."""
    w = numpy.array([1.0, 0.5]) if w is None else w
    if fixed:
        wu = w @ u
        u = u + (-1.0 + numpy.log1p(numpy.exp(wu)) - wu) * w / (w @ w)

    def fwd(z):
        a = z @ w + b
        x = z + numpy.tanh(a)[:, None] * u
        return x, numpy.log(numpy.abs(1 + (1 - numpy.tanh(a) ** 2) * (w @ u)))

    return fwd


def test_planar_flow_without_its_constraint_fails_orientation():
    u = numpy.array([-2.0, -1.0])  # w.u = -2.5: det J = 1 - 2.5 sech^2 changes sign
    report = check_bijection(planar(u), dim=2, n=32)
    assert "orientation" in report.failed, report.table()
    assert report["log_det"].passed is not False  # the log|det| is right on every row
    assert "< 0 on rows" in report["orientation"].detail or "> 0 on rows" in \
        report["orientation"].detail
    fixed = check_bijection(planar(u, fixed=True), dim=2, n=32)
    assert fixed.ok, fixed.table()


def tail_nan_forward(z, fixed=False):
    """x = 2 z with log-det D log 2, where the scale is averaged over the entries inside
    [-3, 3]: NaN when a batch has none (a tail row alone, or a batch of tail rows)."""
    inside = numpy.abs(z) < 3.0
    if fixed and not inside.any():
        scale = 2.0
    else:
        with numpy.errstate(invalid="ignore"):
            scale = numpy.mean(numpy.where(inside, 2.0, numpy.nan)[inside]) if inside.any() \
                else numpy.nan
    return scale * z, numpy.full(len(z), z.shape[1] * numpy.log(scale))


def test_nan_only_for_tail_rows_together_or_alone_fails_isolation():
    z = RNG.standard_normal((12, 2))
    z[[3, 9]] = [[4.0, -3.5], [-5.0, 3.2]]  # two tail rows, in a batch with ordinary ones
    inv = lambda x: (x / 2.0, numpy.full(len(x), -2 * numpy.log(2.0)))  # noqa: E731
    report = check_bijection(tail_nan_forward, inv, inputs=z)
    assert "isolation" in report.failed and report["finite"].passed
    assert report["isolation"].row in (3, 9)
    fixed = check_bijection(lambda v: tail_nan_forward(v, fixed=True), inv, inputs=z)
    assert fixed.ok, fixed.table()


class SeparateLogDet:
    """zuko/pyro style: ``t(z)``, ``t.inv(x)`` and ``t.log_abs_det_jacobian(z, x)``; the
    broken version returns the log-det its last transform call cached, whatever (z, x):
    right whenever the caller asks for it just after the matching transform call."""

    def __init__(self, cached):
        self.cached, self.last = cached, None

    def __call__(self, z):
        x, self.last = coupling_forward(z)
        return x

    def inv(self, x):
        z, ld_inv = coupling_inverse(x)
        self.last = -ld_inv
        return z

    def log_abs_det_jacobian(self, z, x):
        if self.cached and self.last is not None:
            return self.last
        return coupling_forward(z)[1]


def test_log_det_cached_from_the_last_call_fails_call_order():
    t = SeparateLogDet(cached=True)
    report = check_bijection(t, t.inv, log_det=t.log_abs_det_jacobian, dim=4)
    assert report.failed == ["call_order"], report.table()
    assert "log_det(A) after" in report["call_order"].detail
    t = SeparateLogDet(cached=False)
    fixed = check_bijection(t, t.inv, log_det=t.log_abs_det_jacobian, dim=4)
    assert fixed.ok, fixed.table()


def test_forward_raising_on_the_batch_is_a_failed_check_naming_text_and_row():
    def fwd(z, fixed=False):
        if not fixed and numpy.any(numpy.abs(z) > 5.0):
            raise FloatingPointError("spline: input outside the table")
        return coupling_forward(z)

    z = RNG.standard_normal((10, 4))
    z[6, 2] = 6.0
    report = check_bijection(fwd, coupling_inverse, inputs=z)
    assert report.failed == ["exceptions"]
    assert report["exceptions"].row == 6
    assert "outside the table" in report["exceptions"].detail
    assert check_bijection(lambda v: fwd(v, True), coupling_inverse, inputs=z).ok


@pytest.mark.parametrize("convention", ["scalar", "per coordinate", "per coordinate, no batch"])
def test_broadcasting_log_dets_are_accepted_and_reported(convention):
    scale = numpy.array([0.5, 3.0])

    def fwd(z, factor=1.0):
        ld = factor * numpy.log(scale)
        ld = {"scalar": numpy.sum(ld), "per coordinate": numpy.broadcast_to(ld, z.shape),
              "per coordinate, no batch": ld}[convention]
        return z * scale, ld

    report = check_bijection(fwd, dim=2)
    assert report.ok, report.table()
    assert convention.split(",")[0] in report.meta["forward log_det"]
    assert "log_det" in check_bijection(lambda z: fwd(z, 2.0), dim=2).failed


# ---------------------------------------------------------------- issue 16: test power


class ShapeCache:
    """A forward-only map whose cache is keyed on the set of input rows: the same rows in
    another order hit it and get the first order's result."""

    def __init__(self):
        self.cache = {}

    def __call__(self, z):
        key = tuple(sorted(map(tuple, z.tolist())))
        if key not in self.cache:
            self.cache[key] = coupling_forward(z)
        return self.cache[key]


def test_stateless_forward_only_pair_catches_a_shape_keyed_cache():
    report = check_bijection(ShapeCache(), dim=4)
    assert "stateless" in report.failed
    assert report["stateless"].detail.startswith("forward of the rows in reverse order")


def test_round_trip_tolerance_is_within_100x_of_a_1e_7_error():
    # the inverse is off by 1e-7: 10-100 times the derived tolerance, not 1e5 times
    inv = lambda x: (coupling_inverse(x)[0] + 1e-7, coupling_inverse(x)[1])  # noqa: E731
    result = check_bijection(coupling_forward, inv, dim=4)["round_trip"]
    assert result.passed is False
    assert 1.0 < result.error / result.tol < 100.0
    inv = lambda x: (coupling_inverse(x)[0] + 1e-10, coupling_inverse(x)[1])  # noqa: E731
    assert check_bijection(coupling_forward, inv, dim=4)["round_trip"].passed


def raising_factory(dim):
    """A factory for `refflow verify` that fails."""
    raise RuntimeError(f"no such flow for dim {dim}")


def test_verify_factory_raising_or_module_exiting_is_one_line_and_nonzero(tmp_path, capsys,
                                                                          monkeypatch):
    assert verify_main(["tests.test_testing:raising_factory"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: no such flow for dim 2" in err
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "raises_on_import.py").write_text("raise KeyError('config')\n")
    monkeypatch.chdir(tmp_path)
    assert verify_main(["exits_on_import:f"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sys.exit(0)" in err
    assert verify_main(["raises_on_import:f"]) == 2
    assert "KeyError" in capsys.readouterr().err


# --- catalog sweeps (refflow.testing.catalog, refflow verify --catalog) ---------------------

def _catalog_table():
    """A stand-in adapter table: NumPy maps, one correct, one with a dropped log 2, one
    whose construction raises."""
    import types

    from refflow.testing.catalog import Entry

    def affine(ld_factor):
        def build(dim, scale, seed):
            a = 1.0 + scale * numpy.random.default_rng(seed).random(dim)  # positive scales
            return {"forward": lambda z: (a * z, ld_factor * numpy.full(len(z),
                                                                         numpy.log(a).sum())),
                    "inverse": lambda x: (x / a, numpy.full(len(x), -numpy.log(a).sum()))}
        return build

    def broken(dim, scale, seed):
        raise RuntimeError("cannot build")

    return types.SimpleNamespace(FRAMEWORK="numpy", ENTRIES=(
        Entry("scale", affine(1.0)), Entry("scale, half log-det", affine(0.5)),
        Entry("unbuildable", broken)), EXCLUDED=())


def test_catalog_inputs_are_32_float64_rows_with_8_tail_rows():
    from refflow.testing.catalog import sweep_inputs

    z = sweep_inputs(3, seed=1, framework="numpy")
    assert z.shape == (32, 3) and z.dtype == numpy.float64
    tails = z[::4]
    assert numpy.all(numpy.abs(tails) <= 4.0) and numpy.abs(tails).max() > 2.5
    assert numpy.array_equal(z, sweep_inputs(3, seed=1, framework="numpy"))
    with pytest.raises(ValueError, match="framework"):
        sweep_inputs(3, seed=1, framework="cupy")


def test_catalog_load_names_the_argument():
    from refflow.testing.catalog import load

    with pytest.raises(ValueError, match="library"):
        load("tensorflow_probability")


def test_catalog_sweep_rows_name_the_failure_and_the_build_error(monkeypatch):
    from refflow.testing import catalog

    monkeypatch.setattr(catalog, "load", lambda library: _catalog_table())
    rows = catalog.sweep("fake", dims=(2,), scales=(0.5,), seeds=(0, 1))
    status = {(r.name, r.seed): r.status for r in rows}
    assert status == {("scale", 0): "ok", ("scale", 1): "ok",
                      ("scale, half log-det", 0): "FAIL", ("scale, half log-det", 1): "FAIL",
                      ("unbuildable", 0): "FAIL", ("unbuildable", 1): "FAIL"}
    assert all("log_det" in r.report.failed for r in rows if r.name.startswith("scale,"))
    assert all(r.error == "RuntimeError: cannot build" for r in rows if r.name == "unbuildable")
    text = catalog.conformance_table(rows)
    assert "log_det (FAIL)" in text and "RuntimeError: cannot build" in text
    assert catalog.summary("fake", rows, 1.0) == \
        "fake: 3 transforms, 6 runs: 2 ok, 4 failed, 0 inconclusive, 1 s"
    with pytest.raises(ValueError, match="names"):
        catalog.sweep("fake", names=["no such transform"])


def test_verify_catalog_exit_status(monkeypatch, capsys):
    from refflow.testing import catalog

    monkeypatch.setattr(catalog, "load", lambda library: _catalog_table())
    assert verify_main(["--catalog", "zuko", "--dims", "2", "--scales", "0.3",
                        "--only", "scale"]) == 0
    out = capsys.readouterr().out
    assert "zuko: 1 transforms, 1 runs: 1 ok, 0 failed" in out
    assert verify_main(["--catalog", "zuko", "--dims", "2", "--only", "scale",
                        "scale, half log-det"]) == 1
    assert verify_main(["--catalog", "zuko", "--dims", "0"]) == 2


def test_verify_catalog_missing_library_is_one_line_and_exit_2(monkeypatch, capsys):
    # a None entry in sys.modules makes the import raise ImportError, as an absent package;
    # jax too, so that the table's import does not switch on x64 for the rest of the run
    monkeypatch.setitem(sys.modules, "jax", None)
    monkeypatch.setitem(sys.modules, "flowjax", None)
    monkeypatch.delitem(sys.modules, "refflow.testing.catalog._flowjax", raising=False)
    assert verify_main(["--catalog", "flowjax"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flowjax" in err[0] and "refflow[peers]" in err[0]


def test_inverse_raising_outside_its_open_image_is_not_a_failure():
    # nflows' Tanh raises InputOutsideDomain for |x| >= 1: the finite-difference probes
    # around x = tanh(4) = 0.99933 step past 1. The rows themselves are fine: no check may
    # fail, the forward Jacobian still decides log_det, and what needs J_inv is inconclusive.
    def inverse(x):
        if numpy.abs(x).max() >= 1:
            raise ValueError("outside (-1, 1)")
        return numpy.arctanh(x), -numpy.log1p(-x * x).sum(-1)

    z = numpy.array([[0.3, -0.5], [4.0, -3.9], [1.0, 2.0]])
    report = check_bijection(lambda z: (numpy.tanh(z), numpy.log1p(-numpy.tanh(z) ** 2)
                                        .sum(-1)), inverse, inputs=z)
    assert report.failed == []
    assert report["log_det"].passed and report["round_trip"].passed
    assert "inverse_function_theorem" in report.inconclusive
    assert "outside (-1, 1)" in report["inverse_function_theorem"].detail
    bad = check_bijection(lambda z: (numpy.tanh(z), numpy.log1p(-numpy.tanh(z) ** 2).sum(-1)
                                     + 0.1), inverse, inputs=z)
    assert "log_det" in bad.failed


# ---------------------------------------------------------------- inputs and contexts


class _ForeignTensor:
    """A tensor of a library refflow does not know: a shape and a dtype, no ``__array__``."""

    shape, dtype = (4, 2), "foreign.float64"


def _triangular(xp, log_det_error=0.0):
    """x_0 = 2 z_0 + 1, x_1 = 3 z_1 + sin(z_0), log_det = log 6, in the namespace ``xp``
    (numpy, torch or jax.numpy: the same code, so reports can be compared)."""
    def forward(z):
        x = xp.stack([2.0 * z[:, 0] + 1.0, 3.0 * z[:, 1] + xp.sin(z[:, 0])], 1)
        return x, 0.0 * z[:, 0] + (numpy.log(6.0) + log_det_error)

    def inverse(x):
        z0 = (x[:, 0] - 1.0) / 2.0
        return xp.stack([z0, (x[:, 1] - xp.sin(z0)) / 3.0], 1), 0.0 * x[:, 0] - numpy.log(6.0)

    return forward, inverse


def _verdicts(report):
    meta = {k: v for k, v in report.meta.items() if k != "arrays"}
    return [(c.name, c.status) for c in report.checks], meta


Z = numpy.random.default_rng(3).standard_normal((6, 2))


@pytest.mark.parametrize("bad, found", [
    (Z + 1j, "dtype complex128"), (Z.astype(object), "dtype object"),
    (Z.astype(str), "text"), (Z.astype(bytes), "bytes"),
    ([[1.0 + 1j, 2.0]], "list that NumPy reads as dtype complex128"),
    ([["1.0", "2.0"]], "list that NumPy reads as dtype <U3"),
    ([[1.0, 2.0], [3.0]], "list that cannot be converted"),
    (_ForeignTensor(), "_ForeignTensor \\(shape \\(4, 2\\), dtype 'foreign.float64'\\) with no "
                       "conversion"),
    (Z.astype("datetime64[s]"), "dates"), (numpy.ma.masked_array(Z, Z > 1), "masked entries"),
    (numpy.where(Z > 1, numpy.nan, Z), "finite values"), (Z * numpy.inf, "finite values"),
])
def test_malformed_inputs_are_refused_naming_inputs(bad, found):
    forward, inverse = _triangular(numpy)
    for check in (check_bijection, assert_bijection):
        with pytest.raises(ValueError, match=f"^inputs: .*{found}"):
            check(forward, inverse, inputs=bad)


def test_lists_and_integers_are_converted_and_judged_as_arrays():
    forward, inverse = _triangular(numpy)
    reference = check_bijection(forward, inverse, inputs=Z)
    assert reference.ok, reference.table()
    assert _verdicts(check_bijection(forward, inverse, inputs=Z.tolist())) == _verdicts(reference)
    ints = check_bijection(forward, inverse, inputs=numpy.round(3 * Z).astype(numpy.int32))
    assert ints.ok and ints.meta["dtype"] == "float64"


@pytest.mark.parametrize("bad, found", [
    (Z[:, :1] + 1j, "complex"), (Z[:, :1].astype(object), "object"),
    (Z[:, :1].astype(str), "text"), (_ForeignTensor(), "_ForeignTensor"),
    ([1.0 + 2j], "complex"), (Z[:, :1] * numpy.nan, "finite values"),
])
def test_malformed_contexts_are_refused_naming_context(bad, found):
    def forward(z, c):
        return z * 2.0 + c[:, :1], numpy.full(len(z), 2 * numpy.log(2.0))

    def inverse(x, c):
        return (x - c[:, :1]) / 2.0, numpy.full(len(x), -2 * numpy.log(2.0))

    assert check_bijection(forward, inverse, inputs=Z, context=Z[:, :1]).ok
    with pytest.raises(ValueError, match=f"^context: .*{found}"):
        check_bijection(forward, inverse, inputs=Z, context=bad)


def test_torch_inputs_give_the_numpy_report_and_complex_tensors_are_refused():
    torch = pytest.importorskip("torch", reason="torch comes with the interop extra")
    for error in (0.0, numpy.log(2.0)):  # a correct map, and one whose log-det is off
        reference = check_bijection(*_triangular(numpy, error), inputs=Z)
        report = check_bijection(*_triangular(torch, error), inputs=torch.from_numpy(Z))
        assert report.meta["arrays"] == "torch"
        assert _verdicts(report) == _verdicts(reference), report.table()
    assert reference.failed == ["log_det", "inverse_log_det"]
    forward, inverse = _triangular(torch)
    with pytest.raises(ValueError, match="^inputs: .*torch tensor of dtype torch.complex128"):
        check_bijection(forward, inverse, inputs=torch.from_numpy(Z + 1j))
    with pytest.raises(ValueError, match="^inputs: .*torch.bfloat16"):
        check_bijection(forward, inverse, inputs=torch.from_numpy(Z).bfloat16())
    with pytest.raises(ValueError, match="^inputs: .*torch.nn.modules.linear.Linear"):
        check_bijection(forward, inverse, inputs=torch.nn.Linear(2, 2))


@pytest.mark.parametrize("where", ["output", "log_det"])
def test_complex_results_fail_unless_their_imaginary_parts_are_zero(where):
    """An imaginary part in a forward's output or log-det is a finding (numpy.asarray would
    drop it with a warning and the report would pass); complex values with zero imaginary
    parts are a dtype choice and get the real report."""
    forward, inverse = _triangular(numpy)
    reference = check_bijection(forward, inverse, inputs=Z)

    def complex_forward(imag):
        def f(z):
            x, ld = forward(z)
            if where == "output":
                return x + imag * 1j * z, ld
            return x, ld + imag * 1j
        return f

    report = check_bijection(complex_forward(0.5), inverse, inputs=Z)
    largest = 0.5 * numpy.abs(Z).max() if where == "output" else 0.5
    details = " ".join(c.detail for c in report.checks if c.name in report.failed)
    assert not report.ok and f"complex values, largest |imaginary part| {largest:.3g}" in \
        details, report.table()
    zero = check_bijection(complex_forward(0.0), inverse, inputs=Z)
    assert _verdicts(zero) == _verdicts(reference), zero.table()
