"""nflows' transforms through check_bijection: correct ones pass, broken wrappers are named."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nflows = pytest.importorskip("nflows")

from nflows import transforms as N  # noqa: E402
from nflows.nn.nets import ResidualNet  # noqa: E402

from refflow.testing import check_bijection  # noqa: E402
from tests.interop.wrappers import flip_sign, nflows_pair, perturb_inverse, sweep_inputs  # noqa: E402


def _inputs(dim, n=12, scale=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, dim, generator=g, dtype=torch.float64)


def _net(i, o):
    return ResidualNet(i, o, hidden_features=16, num_blocks=1)


def _transform(name):
    torch.manual_seed(0)
    mask = torch.tensor([1, 0, 1, 0])
    if name == "AffineCoupling":
        t = N.AffineCouplingTransform(mask, _net)
    elif name == "MAF":
        t = N.MaskedAffineAutoregressiveTransform(features=4, hidden_features=16)
    elif name == "RQSCoupling":
        t = N.PiecewiseRationalQuadraticCouplingTransform(mask, _net, num_bins=6,
                                                          tails="linear", tail_bound=3.0)
    elif name == "LULinear":
        t = N.LULinear(4, identity_init=False)
    elif name == "LeakyReLU":
        t = N.LeakyReLU(negative_slope=0.3)
    else:
        raise KeyError(name)
    t = t.double().eval()
    # nflows initialises the last layers at zero (the identity map): make them non-trivial
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return t


@pytest.mark.parametrize("name", ["AffineCoupling", "MAF", "RQSCoupling", "LULinear",
                                  "LeakyReLU"])
def test_correct_transforms_pass(name):
    report = check_bijection(*nflows_pair(_transform(name)), inputs=_inputs(4))
    assert report.ok, report.table()


def test_flipped_sign_fails_log_det():
    report = check_bijection(*flip_sign(nflows_pair(_transform("AffineCoupling"))),
                             inputs=_inputs(4))
    assert "log_det" in report.failed and report["round_trip"].passed


def test_perturbed_inverse_fails_round_trip():
    report = check_bijection(*perturb_inverse(nflows_pair(_transform("MAF"))),
                             inputs=_inputs(4))
    assert report.failed == ["round_trip"]


def test_broken_negative_branch_fails_log_det():
    forward, inverse = nflows_pair(_transform("LeakyReLU"))

    def broken(z):  # the negative branch's log(slope) charged to the positive side
        x, _ = forward(z)
        return x, (z > 0).sum(-1) * torch.log(torch.tensor(0.3, dtype=z.dtype))

    def broken_inverse(x):
        z, _ = inverse(x)
        return z, -(x > 0).sum(-1) * torch.log(torch.tensor(0.3, dtype=x.dtype))

    report = check_bijection(broken, broken_inverse, inputs=_inputs(4))
    assert report.failed == ["log_det"]


def test_steep_spline_coupling_and_leaky_relu_are_not_false_alarms():
    # issue 15: both failed inverse_function_theorem with a fixed 2e-3 step (the spline's
    # bins are narrower; the leaky ReLU's inverse slope is 100 and the step straddled 0)
    torch.manual_seed(0)
    spline = N.PiecewiseRationalQuadraticCouplingTransform(
        torch.tensor([1, 0]), _net, num_bins=8, tails="linear", tail_bound=3.0).double().eval()
    with torch.no_grad():
        for p in spline.parameters():
            p.add_(0.5 * torch.randn_like(p))
    for t in (spline, N.LeakyReLU(negative_slope=0.01)):
        report = check_bijection(*nflows_pair(t), inputs=sweep_inputs(2))
        assert report.ok, report.table()


def test_float32_log_det_of_float64_leaky_relu_does_not_coarsen_the_jacobian():
    # nflows' LeakyReLU returns a float32 log-det for float64 inputs: the log-det checks get
    # float32 tolerances, the map's finite differences keep float64 steps
    report = check_bijection(*nflows_pair(N.LeakyReLU(negative_slope=0.01)),
                             inputs=sweep_inputs(2))
    assert report.ok, report.table()
    assert report["inverse_function_theorem"].tol < 1e-8
