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
