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
