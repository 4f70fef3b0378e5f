"""nflows 0.14: adapter table (the transforms of ``nflows.transforms``).

Convention: ``t(u) -> (v, log|det dv/du|)`` and ``t.inverse(v) -> (u, log|det du/dv|)``;
the transform itself is the bijection checked (its forward is the density direction
x -> z in an nflows ``Flow``). nflows initialises the last layers of its conditioners at
zero (the identity map): every parameter is perturbed by N(0, s^2). Splines use linear tails
at +-3 (``tails="linear", tail_bound=3``), so that they are maps of R^D.
"""

from __future__ import annotations

import torch
from nflows import transforms as N
from nflows.nn.nets import ResidualNet

from refflow.testing.catalog import Entry
from refflow.testing.catalog._torch import perturbed

FRAMEWORK = "torch"
SPLINE = {"tails": "linear", "tail_bound": 3.0}


def _pair(make):
    def build(dim: int, scale: float, seed: int) -> dict:
        torch.manual_seed(seed)
        t = perturbed(make(dim), scale, seed)
        return {"forward": t, "inverse": t.inverse}
    return build


def _net(i, o):
    return ResidualNet(i, o, hidden_features=16, num_blocks=1)


def _mask(d):
    return torch.arange(d) % 2


def _coupling(cls, **kwargs):
    return _pair(lambda d: cls(_mask(d), _net, **kwargs))


def _autoregressive(cls, **kwargs):
    return _pair(lambda d: cls(features=d, hidden_features=16, num_blocks=1, **kwargs))


ENTRIES = (
    Entry("AffineCouplingTransform", _coupling(N.AffineCouplingTransform)),
    Entry("AdditiveCouplingTransform", _coupling(N.AdditiveCouplingTransform)),
    Entry("PiecewiseRationalQuadraticCouplingTransform",
          _coupling(N.PiecewiseRationalQuadraticCouplingTransform, num_bins=6, **SPLINE)),
    Entry("PiecewiseQuadraticCouplingTransform",
          _coupling(N.PiecewiseQuadraticCouplingTransform, num_bins=6, **SPLINE)),
    Entry("PiecewiseCubicCouplingTransform",
          _coupling(N.PiecewiseCubicCouplingTransform, num_bins=6, **SPLINE)),
    Entry("PiecewiseLinearCouplingTransform",
          _coupling(N.PiecewiseLinearCouplingTransform, num_bins=6, **SPLINE)),
    Entry("MaskedAffineAutoregressiveTransform",
          _autoregressive(N.MaskedAffineAutoregressiveTransform)),
    Entry("MaskedPiecewiseRationalQuadraticAutoregressiveTransform",
          _autoregressive(N.MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
                          num_bins=6, **SPLINE)),
    Entry("MaskedPiecewiseQuadraticAutoregressiveTransform",
          _autoregressive(N.MaskedPiecewiseQuadraticAutoregressiveTransform,
                          num_bins=6, **SPLINE)),
    Entry("PiecewiseRationalQuadraticCDF",
          _pair(lambda d: N.PiecewiseRationalQuadraticCDF((d,), num_bins=6, **SPLINE))),
    Entry("PiecewiseQuadraticCDF",
          _pair(lambda d: N.PiecewiseQuadraticCDF((d,), num_bins=6, **SPLINE))),
    Entry("PiecewiseCubicCDF", _pair(lambda d: N.PiecewiseCubicCDF((d,), num_bins=6, **SPLINE))),
    Entry("PiecewiseLinearCDF", _pair(lambda d: N.PiecewiseLinearCDF((d,), num_bins=6, **SPLINE))),
    Entry("LULinear", _pair(lambda d: N.LULinear(d, identity_init=False))),
    Entry("QRLinear", _pair(lambda d: N.QRLinear(d, num_householder=2 * d))),
    Entry("SVDLinear", _pair(lambda d: N.SVDLinear(d, num_householder=2 * d))),
    Entry("NaiveLinear", _pair(lambda d: N.NaiveLinear(d))),
    Entry("HouseholderSequence", _pair(lambda d: N.HouseholderSequence(d, num_transforms=d))),
    Entry("ActNorm", _pair(lambda d: N.ActNorm(d))),
    Entry("BatchNorm (eval)", _pair(lambda d: N.BatchNorm(d))),
    Entry("PointwiseAffineTransform", _pair(lambda d: N.PointwiseAffineTransform(
        shift=torch.linspace(-1, 1, d), scale=torch.linspace(0.5, 2, d)))),
    Entry("AffineScalarTransform", _pair(lambda d: N.AffineScalarTransform(shift=0.3,
                                                                           scale=1.7))),
    Entry("LeakyReLU(0.01)", _pair(lambda d: N.LeakyReLU(negative_slope=0.01))),
    Entry("LeakyReLU(0.3)", _pair(lambda d: N.LeakyReLU(negative_slope=0.3))),
    Entry("LogTanh", _pair(lambda d: N.LogTanh(cut_point=1))),
    Entry("Sigmoid", _pair(lambda d: N.Sigmoid())),
    Entry("Tanh", _pair(lambda d: N.Tanh())),
    Entry("RandomPermutation", _pair(lambda d: N.RandomPermutation(d))),
    Entry("ReversePermutation", _pair(lambda d: N.ReversePermutation(d))),
)

EXCLUDED = (
    ("MaskedPiecewiseLinearAutoregressiveTransform, MaskedPiecewiseCubicAutoregressiveTransform",
     "no tails option: a bijection of [0, 1]^D only"),
    ("Logit", "domain (0, 1)^D"),
    ("GatedLinearUnit", "needs a context (the gate): not a map of R^D alone"),
    ("OneByOneConvolution, SqueezeTransform, MultiscaleCompositeTransform",
     "image tensors (N, C, H, W) or a change of shape (LULinear covers the 1x1 convolution's "
     "map)"),
    ("CompositeTransform, CompositeCDFTransform, InverseTransform",
     "containers of other transforms"),
    ("Permutation, Transform", "generic (RandomPermutation, ReversePermutation cover it)"),
    ("AffineTransform", "an alias of PointwiseAffineTransform"),
    ("IdentityTransform", "no parameters: the identity"),
)
