"""pyro-ppl 1.9: adapter table (``pyro.distributions.transforms`` and its helper constructors).

Convention: ``torch.distributions.Transform``: ``t(z)``, ``t.inv(x)`` and the log-det by a
call of its own, ``t.log_abs_det_jacobian(z, x)`` (one value per coordinate for the
element-wise transforms). Block-autoregressive, neural-autoregressive, planar, polynomial,
radial and Sylvester flows have no inverse in pyro (only a cache of the last forward call):
only their forward checks run. The transforms are built by pyro's helper functions
(``affine_autoregressive(D)``, ...) and every parameter is perturbed by N(0, s^2).
"""

from __future__ import annotations

import torch
from pyro.distributions import transforms as T
from pyro.nn import AutoRegressiveNN

from refflow.testing.catalog import Entry
from refflow.testing.catalog._torch import distribution_pair, perturbed, randn

FRAMEWORK = "torch"


def _module(make, invertible=True, arguments=distribution_pair):
    def build(dim: int, scale: float, seed: int) -> dict:
        torch.manual_seed(seed)
        t = make(dim)
        if isinstance(t, torch.nn.Module):
            t = perturbed(t, scale, seed)
        pair = arguments(t)
        if not invertible:
            pair["inverse"] = None
        return pair
    return build


def _float64_default(t):
    """check_bijection's arguments for ``t``, each call run with torch's default dtype float64.

    pyro's ``AffineAutoregressive`` inverse starts from ``torch.zeros(...)`` without a dtype,
    a float32 tensor under torch's default, and then fails on a float64 module (peer bug, see
    the ``affine_autoregressive`` row); pyro's own tests set the default dtype to float64.
    This entry does the same, so that the map itself is checked, not only that crash.
    """
    def under_float64(fn):
        def call(*args):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                return fn(*args)
            finally:
                torch.set_default_dtype(previous)
        return call
    return {name: under_float64(fn) for name, fn in distribution_pair(t).items()}


def _spline_autoregressive_quadratic(d, bins=6):
    """A quadratic ``SplineAutoregressive`` with a network of the three outputs it unpacks.

    pyro's helper ``spline_autoregressive(..., order="quadratic")`` builds the linear
    spline's four-output network, which the quadratic spline cannot unpack (peer bug, see
    the ``spline_autoregressive (quadratic)`` row); this is the construction the helper
    should make.
    """
    arn = AutoRegressiveNN(d, [16], param_dims=[bins, bins, bins - 1])
    return T.SplineAutoregressive(d, arn, count_bins=bins, order="quadratic")


def _lower_cholesky_affine(d):
    tril = torch.eye(d, dtype=torch.float64) + torch.tril(randn(d, d, scale=0.3, seed=d))
    return T.LowerCholeskyAffine(randn(d, scale=1.0, seed=d + 1), tril)


ENTRIES = (
    Entry("affine_autoregressive", _module(lambda d: T.affine_autoregressive(d, [16]))),
    Entry("affine_autoregressive (default dtype float64)", _module(
        lambda d: T.affine_autoregressive(d, [16]), arguments=_float64_default)),
    Entry("affine_coupling", _module(lambda d: T.affine_coupling(d, [16]))),
    Entry("spline_autoregressive (linear)", _module(
        lambda d: T.spline_autoregressive(d, [16], count_bins=6))),
    Entry("spline_autoregressive (quadratic)", _module(
        lambda d: T.spline_autoregressive(d, [16], count_bins=6, order="quadratic"))),
    Entry("SplineAutoregressive (quadratic, 3-output network)", _module(
        _spline_autoregressive_quadratic)),
    Entry("spline_coupling", _module(lambda d: T.spline_coupling(d, hidden_dims=[16],
                                                                 count_bins=6))),
    Entry("spline (linear)", _module(lambda d: T.spline(d, count_bins=6))),
    Entry("spline (quadratic)", _module(lambda d: T.spline(d, count_bins=6,
                                                           order="quadratic"))),
    Entry("householder", _module(lambda d: T.householder(d, count_transforms=2))),
    Entry("matrix_exponential", _module(lambda d: T.matrix_exponential(d))),
    Entry("permute", _module(lambda d: T.permute(d, torch.arange(d - 1, -1, -1)))),
    Entry("batchnorm (eval)", _module(lambda d: T.batchnorm(d))),
    Entry("elu", _module(lambda d: T.elu())),
    Entry("leaky_relu", _module(lambda d: T.leaky_relu())),
    Entry("DiscreteCosineTransform", _module(lambda d: T.DiscreteCosineTransform())),
    Entry("HaarTransform", _module(lambda d: T.HaarTransform())),
    Entry("LowerCholeskyAffine", _module(_lower_cholesky_affine)),
    Entry("OrderedTransform", _module(lambda d: T.OrderedTransform())),
    Entry("block_autoregressive (forward only)", _module(
        lambda d: T.block_autoregressive(d), invertible=False)),
    Entry("neural_autoregressive (forward only)", _module(
        lambda d: T.neural_autoregressive(d, [16]), invertible=False)),
    Entry("planar (forward only)", _module(lambda d: T.planar(d), invertible=False)),
    Entry("radial (forward only)", _module(lambda d: T.radial(d), invertible=False)),
    Entry("polynomial (forward only)", _module(lambda d: T.polynomial(d, [16]),
                                               invertible=False)),
    Entry("sylvester (forward only)", _module(lambda d: T.sylvester(d, 2), invertible=False)),
    Entry("ExpTransform (torch)", _module(lambda d: T.ExpTransform())),
    Entry("SigmoidTransform (torch)", _module(lambda d: T.SigmoidTransform())),
    Entry("TanhTransform (torch)", _module(lambda d: T.TanhTransform())),
    Entry("SoftplusTransform (torch)", _module(lambda d: T.SoftplusTransform())),
)

EXCLUDED = (
    ("Conditional* and conditional_* (12 of them)", "conditional: need a context; their "
     "unconditional forms are tried"),
    ("GeneralizedChannelPermute", "image tensors (C, H, W)"),
    ("Normalize", "x / |x|: not injective"),
    ("AbsTransform", "not injective"),
    ("SimplexToOrderedTransform, PositivePowerTransform, PowerTransform, CholeskyTransform, "
     "CorrMatrixCholeskyTransform", "domain smaller than R^D (simplex, x > 0, matrices)"),
    ("SoftmaxTransform, StickBreakingTransform, CorrCholeskyTransform, CorrLCholeskyTransform, "
     "LowerCholeskyTransform, SoftplusLowerCholeskyTransform, PositiveDefiniteTransform, "
     "ReshapeTransform", "change of dimension or onto structured matrices"),
    ("ComposeTransform, ComposeTransformModule, CatTransform, StackTransform, "
     "IndependentTransform, iterated, Transform", "containers and the base class"),
    ("AffineTransform, CumulativeDistributionTransform", "torch.distributions' (tried in "
     "the zuko table)"),
    ("identity_transform", "no parameters: the identity"),
)
