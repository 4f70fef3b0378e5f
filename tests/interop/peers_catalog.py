"""The catalog sweep on normflows, pyro and flowjax (run explicitly:
``pytest tests/interop/peers_catalog.py``; needs ``pip install "refflow[peers]"``).

Not collected by the default suite (the file name does not start with ``test_``): these
libraries are not in the ``test`` or ``interop`` extras, and a skipped test must not count
as a pass.
"""

from __future__ import annotations

import pytest

from refflow.testing import catalog


@pytest.mark.parametrize("library, name", [
    ("normflows", "CoupledRationalQuadraticSpline"),
    ("normflows", "Planar (forward only)"),
    ("pyro", "spline_coupling"),
    ("pyro", "affine_coupling"),
    ("flowjax", "Coupling (RQS)"),
    ("flowjax", "Householder"),
])
def test_catalogued_transforms_pass(library, name):
    rows = catalog.sweep(library, dims=(2, 5), scales=(0.2,), names=[name])
    assert [r.status for r in rows] == ["ok", "ok"], catalog.conformance_table(rows)


@pytest.mark.parametrize("name", ["SplineAutoregressive (quadratic, 3-output network)",
                                  "affine_autoregressive (default dtype float64)"])
def test_pyro_constructions_around_its_bugs_pass(name):
    # the same maps as the failing helper rows, built the way pyro's own tests do
    import torch

    before = torch.get_default_dtype()
    rows = catalog.sweep("pyro", dims=(2, 5), scales=(0.2,), names=[name])
    assert [r.status for r in rows] == ["ok", "ok"], catalog.conformance_table(rows)
    assert torch.get_default_dtype() == before  # the float64 default is local to each call


@pytest.mark.parametrize("name, check, text", [
    ("spline_autoregressive (quadratic)", "exceptions", "too many values to unpack"),
    ("affine_autoregressive", "exceptions", "same dtype"),
    ("sylvester (forward only)", "log_det", "log_det"),
])
def test_pyro_peer_bugs_are_named(name, check, text):
    # genuine bugs of pyro 1.9 (docs/conformance.md): each fails the named check
    rows = catalog.sweep("pyro", dims=(2,), scales=(0.2,), names=[name])
    report = rows[0].report
    assert check in report.failed and text in report[check].detail, \
        catalog.conformance_table(rows)


def test_flowjax_padding_changes_no_row():
    # the adapter pads batches to few shapes (one compilation each); compare with the plain
    # vmapped map of the same bijection, row by row
    import jax
    import jax.numpy as jnp
    from flowjax import bijections as B

    from refflow.testing.catalog import _flowjax

    b = B.Householder(jnp.array([0.3, -1.2, 0.5]))
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    y, log_det = _flowjax._padded(lambda v: _flowjax._forward(b, v))(x)
    y_ref, log_det_ref = jax.vmap(b.transform_and_log_det)(x)
    assert y.shape == (5, 3) and log_det.shape == (5,)
    assert jnp.allclose(y, y_ref, rtol=0, atol=1e-15)
    assert jnp.allclose(log_det, log_det_ref, rtol=0, atol=1e-15)
