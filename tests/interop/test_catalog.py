"""The catalog sweep on one or two transforms per installed library (torch, zuko, nflows).

The full sweeps (``refflow verify --catalog LIB``) take minutes; docs/conformance.md holds
their tables. normflows, pyro and flowjax: tests/interop/peers_catalog.py (run explicitly).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from refflow.testing import catalog  # noqa: E402


@pytest.mark.parametrize("library, name", [
    pytest.param("zuko", "NSF passes=2 (coupling)"),
    pytest.param("zuko", "MonotonicRQSTransform"),
    pytest.param("nflows", "PiecewiseRationalQuadraticCouplingTransform"),
    pytest.param("nflows", "LeakyReLU(0.01)"),
])
@pytest.mark.parametrize("dim", [2, 5])
def test_catalogued_transforms_pass(library, name, dim):
    pytest.importorskip(library)
    rows = catalog.sweep(library, dims=(dim,), scales=(0.2,), names=[name])
    assert [r.status for r in rows] == ["ok"], catalog.conformance_table(rows)


def test_nflows_tanh_is_not_a_false_alarm():
    # its inverse raises outside (-1, 1), where finite-difference probes land near x = +-1
    pytest.importorskip("nflows")
    rows = catalog.sweep("nflows", dims=(2,), scales=(0.2,), names=["Tanh"])
    assert rows[0].report.failed == [], catalog.conformance_table(rows)


def test_nflows_naive_linear_inverse_is_named_as_raising():
    # a genuine peer bug: NaiveLinear.inverse calls torch.solve, removed from torch
    pytest.importorskip("nflows")
    rows = catalog.sweep("nflows", dims=(2,), scales=(0.2,), names=["NaiveLinear"])
    report = rows[0].report
    assert report.failed == ["exceptions"] and "torch.solve" in report["exceptions"].detail


def test_every_table_entry_name_is_unique():
    for library in ("zuko", "nflows"):
        pytest.importorskip(library)
        names = [e.name for e in catalog.load(library).ENTRIES]
        assert len(names) == len(set(names)) and names


def test_nflows_linear_spline_float32_inverse_is_caught():
    # a genuine peer bug (docs/conformance.md): the inverse's bin boundaries are float32
    # (torch.linspace at the default dtype), so a float64 round trip is only good to ~1e-7
    pytest.importorskip("nflows")
    rows = catalog.sweep("nflows", dims=(2,), scales=(0.2,), names=["PiecewiseLinearCDF"])
    report = rows[0].report
    assert "round_trip" in report.failed and report["round_trip"].error > 1e-9, \
        catalog.conformance_table(rows)
