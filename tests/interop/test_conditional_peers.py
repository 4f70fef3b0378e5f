"""Conditional flows of zuko (MAF, NSF) and nflows (MAF) through check_bijection(context=...).

Small on purpose (D 3, C 2, 8 rows): each correct flow passes at one context per row; each
broken wrapper fails the check that names its bug.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
zuko = pytest.importorskip("zuko")
nflows = pytest.importorskip("nflows")

from nflows.transforms import (  # noqa: E402
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    RandomPermutation,
)

from refflow.testing import check_bijection  # noqa: E402

D, C, N = 3, 2, 8


def _rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, D, generator=g, dtype=torch.float64)
    c = 2.0 * torch.randn(N, C, generator=g, dtype=torch.float64)
    return z, c


def _zuko(name):
    """(forward, inverse) of zuko's conditional flow: the transform built at each context."""
    torch.manual_seed(0)
    flow = getattr(zuko.flows, name)(D, C, transforms=2, hidden_features=(16,)).double()

    def forward(z, c):
        return flow.transform(c).call_and_ladj(z)

    def inverse(x, c):
        t = flow.transform(c)
        z = t.inv(x)
        return z, -t.log_abs_det_jacobian(z, x)

    return forward, inverse


def _nflows():
    """(forward, inverse) of nflows' conditional MAF (its forward is the density direction)."""
    torch.manual_seed(0)
    t = CompositeTransform([MaskedAffineAutoregressiveTransform(D, 16, context_features=C),
                            RandomPermutation(D),
                            MaskedAffineAutoregressiveTransform(D, 16, context_features=C)])
    t = t.double()
    return (lambda z, c: t(z, c)), (lambda x, c: t.inverse(x, c))


@pytest.mark.parametrize("name", ["MAF", "NSF"])
def test_zuko_conditional_flows_pass(name):
    z, c = _rows()
    report = check_bijection(*_zuko(name), inputs=z, context=c)
    assert report.ok, report.table()


def test_nflows_conditional_maf_passes():
    z, c = _rows()
    report = check_bijection(*_nflows(), inputs=z, context=c)
    assert report.ok, report.table()
    assert check_bijection(*_nflows(), inputs=z, context=c[0]).ok  # one context for all


def test_an_inverse_at_another_context_fails_the_round_trip():
    forward, inverse = _zuko("MAF")
    z, c = _rows()
    report = check_bijection(forward, lambda x, cc: inverse(x, cc + 0.1), inputs=z, context=c)
    assert "round_trip" in report.failed


def test_a_log_det_taken_at_another_context_fails_log_det():
    forward, inverse = _nflows()
    z, c = _rows()

    def wrong(z, cc):
        x, _ = forward(z, cc)
        return x, forward(z, torch.zeros_like(cc))[1]

    report = check_bijection(wrong, inverse, inputs=z, context=c)
    assert "log_det" in report.failed


def test_contexts_batched_into_one_fail_batch_independence():
    forward, inverse = _zuko("NSF")
    z, c = _rows()

    def pooled(z, cc):  # every row conditioned on the batch's mean context
        return forward(z, cc.mean(dim=0, keepdim=True).expand_as(cc))

    report = check_bijection(pooled, None, inputs=z, context=c)
    assert "batch_independence" in report.failed
