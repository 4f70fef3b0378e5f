"""refflow's own bijections against zuko's and nflows' with the same parameters.

Same knots for the rational-quadratic spline, the same matrix for the LU-factorised
linear map: outputs, inverses and log-dets must agree to rounding.
"""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")
zuko = pytest.importorskip("zuko")

from refflow.affine import LUAffine  # noqa: E402

elementwise = pytest.importorskip("refflow.elementwise")

BOUND = 3.0


def _zuko_spline(seed=0, dim=3, bins=6):
    g = torch.Generator().manual_seed(seed)
    w, h, d = (torch.randn(dim, k, generator=g, dtype=torch.float64) for k in (bins, bins,
                                                                               bins - 1))
    return zuko.transforms.MonotonicRQSTransform(w, h, d, bound=BOUND)


def _refflow_spline(t):
    """refflow's spline with the knots of zuko's transform t."""
    xs, ys, ds = (v.numpy() for v in (t.horizontal, t.vertical, t.derivatives))
    return elementwise.RationalQuadraticSpline(numpy.diff(xs, axis=-1), numpy.diff(ys, axis=-1),
                                               ds[:, 1:-1], bound=BOUND)


def _points(dim=3, n=200):
    z = numpy.random.default_rng(1).uniform(-4.0, 4.0, (n, dim))  # bins and both tails
    return numpy.concatenate([z, numpy.full((1, dim), BOUND), numpy.full((1, dim), -BOUND)])


def test_spline_matches_zuko_with_the_same_knots():
    t = _zuko_spline()
    f = _refflow_spline(t)
    z = _points()
    x_t, ladj_t = t.call_and_ladj(torch.from_numpy(z))
    x, ld = f.forward(z)
    numpy.testing.assert_allclose(x, x_t.numpy(), rtol=0, atol=1e-12)
    numpy.testing.assert_allclose(ld, ladj_t.sum(-1).numpy(), rtol=0, atol=1e-10)
    z_back, ld_inv = f.inverse(x)
    numpy.testing.assert_allclose(z_back, t.inv(x_t).numpy(), rtol=0, atol=1e-10)
    numpy.testing.assert_allclose(ld_inv, -ld, rtol=0, atol=1e-10)


def test_spline_matches_nflows_with_the_same_knots():
    pytest.importorskip("nflows")
    from nflows.transforms.splines.rational_quadratic import (
        unconstrained_rational_quadratic_spline,
    )

    t = _zuko_spline(seed=2)
    f = _refflow_spline(t)
    # nflows maps softmax(logits) to widths and min_derivative + softplus(u) to derivatives;
    # with zero minimums, the logits are log(width / 2B) and u = log(expm1(derivative))
    widths = torch.log(torch.diff(t.horizontal, dim=-1) / (2 * BOUND))
    heights = torch.log(torch.diff(t.vertical, dim=-1) / (2 * BOUND))
    derivs = torch.log(torch.expm1(t.derivatives[:, 1:-1]))
    z = _points()
    n = len(z)

    def nflows_spline(v, inverse):
        return unconstrained_rational_quadratic_spline(
            torch.from_numpy(v), widths.expand(n, -1, -1), heights.expand(n, -1, -1),
            derivs.expand(n, -1, -1), inverse=inverse, tails="linear", tail_bound=BOUND,
            min_bin_width=0.0, min_bin_height=0.0, min_derivative=0.0)

    x_n, ld_n = nflows_spline(z, False)
    x, ld = f.forward(z)
    numpy.testing.assert_allclose(x, x_n.numpy(), rtol=0, atol=1e-10)
    numpy.testing.assert_allclose(ld, ld_n.sum(-1).numpy(), rtol=0, atol=1e-9)
    z_n, _ = nflows_spline(x, True)
    numpy.testing.assert_allclose(f.inverse(x)[0], z_n.numpy(), rtol=0, atol=1e-9)


def test_lu_linear_matches_zuko_with_the_same_matrix():
    g = torch.Generator().manual_seed(3)
    LU = 0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    LU = LU + torch.diag(torch.exp(torch.randn(4, generator=g, dtype=torch.float64)))
    t = zuko.transforms.LULinearTransform(LU)
    # zuko: x = L_z U_z z, L_z lower with diagonal l, U_z unit upper. refflow: x = L (U + diag d) z
    # with L unit lower: L = L_z diag(1/l), d = l, U = diag(l) (U_z - I).
    Lz, Uz = t.L.numpy(), t.U.numpy()
    diag = numpy.diagonal(Lz).copy()
    f = LUAffine(numpy.arange(4), Lz / diag, diag[:, None] * numpy.triu(Uz, 1), diag,
                 numpy.zeros(4))
    z = _points(dim=4, n=20)
    x_t, ladj = t.call_and_ladj(torch.from_numpy(z))
    x, ld = f.forward(z)
    numpy.testing.assert_allclose(x, x_t.numpy(), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(ld, ladj.numpy(), rtol=0, atol=1e-12)
    numpy.testing.assert_allclose(f.inverse(x)[0], t.inv(x_t).numpy(), rtol=1e-10, atol=1e-10)
