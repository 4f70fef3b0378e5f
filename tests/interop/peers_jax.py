"""JAX arrays through check_bijection (run explicitly: ``pytest tests/interop/peers_jax.py``).

Not collected by the default suite (the file name does not start with ``test_``): jax is
not in the ``test`` or ``interop`` extras, and a skipped test must not count as a pass.
Needs ``pip install "refflow[peers]"`` or ``jax[cpu]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy
import pytest

from refflow.testing import check_bijection
from tests.test_testing import Z, _triangular, _verdicts


def _pair(slope=0.3, sign=1.0):
    def forward(z):
        x = jnp.where(z > 0, z, slope * z) + jnp.sinh(0.5 * z)
        d = jnp.where(z > 0, 1.0, slope) + 0.5 * jnp.cosh(0.5 * z)
        return x, sign * jnp.sum(jnp.log(d), axis=-1)

    def inverse(x):  # Newton's method, to rounding
        z = x / 2
        for _ in range(60):
            fz, _ = forward(z)
            z = z - (fz - x) / (jnp.where(z > 0, 1.0, slope) + 0.5 * jnp.cosh(0.5 * z))
        return z, -forward(z)[1]

    return forward, inverse


def test_jax_arrays_in_float32_get_float32_tolerances_and_autodiff():
    z = jnp.asarray(numpy.random.default_rng(0).standard_normal((12, 2)))
    report = check_bijection(*_pair(), inputs=z)
    assert report.ok, report.table()
    assert report.meta["arrays"] == "jax" and report.meta["dtype"] == "float32"
    assert "jax autodiff confirmed" in report["log_det"].detail


def test_jax_float64_with_x64_and_a_flipped_sign():
    jax.config.update("jax_enable_x64", True)
    try:
        z = jnp.asarray(numpy.random.default_rng(1).standard_normal((12, 2)))
        good = check_bijection(*_pair(), inputs=z)
        assert good.ok and good.meta["dtype"] == "float64", good.table()
        bad = check_bijection(*_pair(sign=-1.0), inputs=z)
        assert "log_det" in bad.failed
    finally:
        jax.config.update("jax_enable_x64", False)


def test_jax_inputs_give_the_numpy_report_and_complex_arrays_are_refused():
    # float32: what JAX keeps whether or not another test enabled x64
    z = Z.astype(numpy.float32)
    for error in (0.0, numpy.log(2.0)):
        reference = check_bijection(*_triangular(numpy, error), inputs=z)
        report = check_bijection(*_triangular(jnp, error), inputs=jnp.asarray(z))
        assert report.meta["arrays"] == "jax"
        assert _verdicts(report) == _verdicts(reference), report.table()
    assert reference.failed == ["log_det", "inverse_log_det"]
    with pytest.raises(ValueError, match="^inputs: .*JAX array of dtype complex64"):
        check_bijection(*_triangular(jnp), inputs=jnp.asarray(z + 1j))
