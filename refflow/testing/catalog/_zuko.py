"""zuko 1.6: adapter table (the transforms of ``zuko.flows`` and ``zuko.transforms``).

Convention: ``torch.distributions.Transform``: ``t(z)``, ``t.inv(x)`` and the log-det by a
call of its own, ``t.log_abs_det_jacobian(z, x)``, one value per coordinate for the
element-wise transforms (summed by check_bijection). A flow's transform is
``flow.transform()``, the map from data x to the base's z: that map is the bijection checked.
The parametrised element-wise transforms take raw parameter tensors: N(0, s^2) around
zero, one set per coordinate.
"""

from __future__ import annotations

import torch
import zuko

from refflow.testing.catalog import Entry
from refflow.testing.catalog._torch import distribution_pair, perturbed, randn

FRAMEWORK = "torch"
T = zuko.transforms


def _flow(cls, **kwargs):
    def build(dim: int, scale: float, seed: int) -> dict:
        torch.manual_seed(seed)
        flow = perturbed(cls(dim, **kwargs), scale, seed)
        return distribution_pair(flow.transform())
    return build


def _elementwise(make):
    def build(dim: int, scale: float, seed: int) -> dict:
        return distribution_pair(make(dim, scale, seed))
    return build


def _rqs(d, s, k):
    return T.MonotonicRQSTransform(randn(d, 8, scale=s, seed=k), randn(d, 8, scale=s, seed=k + 1),
                                   randn(d, 7, scale=s, seed=k + 2))


def _lu(d, s, k):
    return T.LULinearTransform(torch.eye(d, dtype=torch.float64) + randn(d, d, scale=s, seed=k))


def _sin_g(x):
    """A positive integrand for UnconstrainedMonotonicTransform: exp of a bounded wave."""
    return torch.exp(0.5 * torch.sin(x))


NET = {"hidden_features": (16, 16)}

ENTRIES = (
    Entry("MAF", _flow(zuko.flows.MAF, transforms=2, **NET)),
    Entry("MAF randperm", _flow(zuko.flows.MAF, transforms=2, randperm=True, **NET)),
    Entry("NSF (autoregressive)", _flow(zuko.flows.NSF, transforms=2, **NET)),
    Entry("NSF passes=2 (coupling)", _flow(zuko.flows.NSF, transforms=2, passes=2, **NET)),
    Entry("NAF", _flow(zuko.flows.NAF, transforms=1, signal=8,
                       network={"hidden_features": (16, 16)}, **NET)),
    Entry("UNAF", _flow(zuko.flows.UNAF, transforms=1, signal=8,
                        network={"hidden_features": (16, 16)}, **NET)),
    Entry("SOSPF", _flow(zuko.flows.SOSPF, transforms=1, **NET)),
    Entry("BPF", _flow(zuko.flows.BPF, transforms=1, **NET)),
    Entry("GF", _flow(zuko.flows.GF, transforms=2)),
    Entry("RealNVP", _flow(zuko.flows.RealNVP, transforms=2, **NET)),
    Entry("NICE", _flow(zuko.flows.NICE, transforms=2, **NET)),
    Entry("CNF (FreeFormJacobianTransform)", _flow(zuko.flows.CNF, hidden_features=(16, 16))),
    Entry("MonotonicAffineTransform", _elementwise(lambda d, s, k: T.MonotonicAffineTransform(
        randn(d, scale=s, seed=k), randn(d, scale=s, seed=k + 1)))),
    Entry("MonotonicRQSTransform", _elementwise(_rqs)),
    Entry("BernsteinTransform", _elementwise(
        lambda d, s, k: T.BernsteinTransform(randn(d, 12, scale=s, seed=k)))),
    Entry("BoundedBernsteinTransform", _elementwise(
        lambda d, s, k: T.BoundedBernsteinTransform(randn(d, 12, scale=s, seed=k)))),
    Entry("SOSPolynomialTransform", _elementwise(
        lambda d, s, k: T.SOSPolynomialTransform(randn(d, 3, 5, scale=s, seed=k)))),
    Entry("GaussianizationTransform", _elementwise(lambda d, s, k: T.GaussianizationTransform(
        randn(d, 8, scale=s, seed=k), randn(d, 8, scale=s, seed=k + 1)))),
    Entry("UnconstrainedMonotonicTransform", _elementwise(
        lambda d, s, k: T.UnconstrainedMonotonicTransform(_sin_g, phi=()))),
    Entry("SignedPowerTransform", _elementwise(
        lambda d, s, k: T.SignedPowerTransform(randn(d, scale=s, seed=k)))),
    Entry("SoftclipTransform", _elementwise(lambda d, s, k: T.SoftclipTransform(4.0))),
    Entry("AdditiveTransform", _elementwise(
        lambda d, s, k: T.AdditiveTransform(randn(d, scale=s, seed=k)))),
    Entry("LULinearTransform", _elementwise(_lu)),
    Entry("RotationTransform", _elementwise(
        lambda d, s, k: T.RotationTransform(randn(d, d, scale=s, seed=k)))),
    Entry("PermutationTransform", _elementwise(
        lambda d, s, k: T.PermutationTransform(torch.randperm(d, generator=torch.Generator()
                                                              .manual_seed(k))))),
    Entry("AffineTransform (torch)", _elementwise(lambda d, s, k: T.AffineTransform(
        randn(d, scale=s, seed=k), randn(d, scale=s, seed=k + 1, offset=1.0)))),
    Entry("ExpTransform (torch)", _elementwise(lambda d, s, k: T.ExpTransform())),
    Entry("SigmoidTransform (torch)", _elementwise(lambda d, s, k: T.SigmoidTransform())),
    Entry("TanhTransform (torch)", _elementwise(lambda d, s, k: T.TanhTransform())),
    Entry("SoftplusTransform (torch)", _elementwise(lambda d, s, k: T.SoftplusTransform())),
    Entry("CumulativeDistributionTransform (torch)", _elementwise(
        lambda d, s, k: T.CumulativeDistributionTransform(torch.distributions.Normal(
            randn(d, scale=s, seed=k), torch.ones(d, dtype=torch.float64))))),
)

EXCLUDED = (
    ("NCSF, CircularShiftTransform", "circular: a bijection of [-B, B)^D (a torus), not of R^D"),
    ("GMM", "a distribution, not a transform"),
    ("AbsTransform", "not injective"),
    ("PowerTransform, CosTransform, SinTransform",
     "domain smaller than R (x > 0, [0, pi], [-pi/2, pi/2])"),
    ("SoftmaxTransform, StickBreakingTransform, CorrCholeskyTransform, "
     "LowerCholeskyTransform, PositiveDefiniteTransform, ReshapeTransform",
     "change of dimension or onto structured matrices, not R^D -> R^D"),
    ("ComposedTransform, ComposeTransform, CatTransform, StackTransform, DependentTransform, "
     "IndependentTransform", "containers of other transforms (the flows exercise them)"),
    ("Transform, AutoregressiveTransform, CouplingTransform, MonotonicTransform, "
     "FreeFormJacobianTransform", "generic, built by the flows above (MAF, NSF, NAF, CNF)"),
    ("IdentityTransform, identity_transform", "no parameters: the identity"),
)
