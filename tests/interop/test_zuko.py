"""zuko's transforms through check_bijection: correct ones pass, broken wrappers are named."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
zuko = pytest.importorskip("zuko")

from refflow.testing import check_bijection  # noqa: E402
from tests.interop.wrappers import (  # noqa: E402
    flip_sign,
    perturb_inverse,
    scale_log_det,
    sweep_inputs,
    zuko_pair,
)

T = zuko.transforms


def _inputs(dim, n=12, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, dim, generator=g, dtype=torch.float64)


def _transform(name):
    torch.manual_seed(0)
    if name == "MAF":
        return zuko.flows.MAF(3, transforms=2, hidden_features=(16, 16)).double().transform()
    if name == "RealNVP":  # affine coupling
        return zuko.flows.RealNVP(4, transforms=2, hidden_features=(16,)).double().transform()
    if name == "NSF":  # rational-quadratic spline coupling / autoregressive
        return zuko.flows.NSF(2, transforms=2, hidden_features=(16,)).double().transform()
    if name == "RQS":
        w, h, d = (torch.randn(3, k, dtype=torch.float64) for k in (6, 6, 5))
        return T.DependentTransform(T.MonotonicRQSTransform(w, h, d, bound=3.0), 1)
    if name == "LU":
        LU = torch.randn(3, 3, dtype=torch.float64) / 3 + torch.eye(3, dtype=torch.float64)
        return T.LULinearTransform(LU)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["MAF", "RealNVP", "NSF", "RQS", "LU"])
def test_correct_transforms_pass(name):
    t = _transform(name)
    dim = {"MAF": 3, "RealNVP": 4, "NSF": 2, "RQS": 3, "LU": 3}[name]
    report = check_bijection(*zuko_pair(t), inputs=_inputs(dim),
                             density="normal" if dim <= 2 else None,
                             structure="diagonal" if name == "RQS" else None)
    assert report.ok, report.table()


def test_single_maf_step_is_triangular_in_its_order():
    flow = zuko.flows.MAF(3, transforms=1, hidden_features=(16,)).double()
    t = flow.transform()
    assert check_bijection(*zuko_pair(t), inputs=_inputs(3), structure="lower").ok


def test_flipped_sign_fails_log_det():
    report = check_bijection(*flip_sign(zuko_pair(_transform("MAF"))), inputs=_inputs(3))
    assert "log_det" in report.failed and report["round_trip"].passed


def test_dropped_factor_fails_log_det():
    report = check_bijection(*scale_log_det(zuko_pair(_transform("LU")), 0.5),
                             inputs=_inputs(3))
    assert report.failed == ["log_det"]  # halved both ways: still mutually consistent


def test_perturbed_inverse_fails_round_trip():
    report = check_bijection(*perturb_inverse(zuko_pair(_transform("RealNVP"))),
                             inputs=_inputs(4))
    assert report.failed == ["round_trip"]


def test_broken_tail_branch_fails_log_det():
    forward, inverse = zuko_pair(_transform("RQS"))

    def broken(z):  # outside [-B, B] the spline is the identity; charge a slope there anyway
        x, ld = forward(z)
        return x, ld + 0.1 * (z.abs() > 3.0).sum(-1)

    report = check_bijection(broken, inverse, inputs=_inputs(3, scale=3.0))
    assert "log_det" in report.failed
    assert abs(report["log_det"].input).max() > 3.0


def test_torch_float32_inputs_are_checked_in_float32():
    t = zuko.flows.MAF(2, transforms=1, hidden_features=(8,)).transform()
    report = check_bijection(*zuko_pair(t), inputs=_inputs(2).float())
    assert report.ok, report.table()
    assert report.meta["dtype"] == "float32"


def test_steep_spline_flow_is_not_a_false_alarm():
    # issue 15: before Ridders steps and autodiff, inverse_function_theorem failed here
    # (|J_inv| in the hundreds; a fixed 2e-3 step wider than the spline's bins)
    torch.manual_seed(0)
    flow = zuko.flows.NSF(2, transforms=2, hidden_features=(16,)).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    for autodiff in (True, False):
        report = check_bijection(*zuko_pair(flow.transform()), inputs=sweep_inputs(2),
                                 autodiff=autodiff)
        assert report.ok, report.table()
