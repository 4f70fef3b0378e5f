"""normflows 1.7: adapter table (the flows of ``normflows.flows``).

Convention: ``flow.forward(z) -> (z', log|det dz'/dz|)`` and
``flow.inverse(z') -> (z, log|det dz/dz'|)``, as refflow's; the forward is the sampling
direction. Planar and Radial have no inverse in normflows (``NotImplementedError``): only
their forward checks run. Every parameter is perturbed by N(0, s^2) from its initial value.
"""

from __future__ import annotations

import normflows as nf
import torch

from refflow.testing.catalog import Entry
from refflow.testing.catalog._torch import perturbed

FRAMEWORK = "torch"
F = nf.flows


def _pair(make, invertible=True):
    def build(dim: int, scale: float, seed: int) -> dict:
        torch.manual_seed(seed)
        flow = perturbed(make(dim), scale, seed)
        return {"forward": flow.forward, "inverse": flow.inverse if invertible else None}
    return build


def _actnorm(d):
    flow = F.ActNorm((d,))
    # ActNorm initialises its scale and shift from the first batch it sees: one call here
    # fixes them, so that the map checked is the same in every later call.
    flow.forward(torch.randn(64, d, dtype=torch.float32))
    return flow


def _coupling_block(d):
    half = (d + 1) // 2  # torch.chunk's split: ceil(D/2) conditioning inputs
    return F.AffineCouplingBlock(nf.nets.MLP([half, 16, 2 * (d - half)], init_zeros=True))


def _masked_affine(d):
    b = (torch.arange(d) % 2).to(torch.float32)
    return F.MaskedAffineFlow(b, nf.nets.MLP([d, 16, d], init_zeros=True),
                              nf.nets.MLP([d, 16, d], init_zeros=True))


def _residual(d):
    return F.Residual(nf.nets.LipschitzMLP([d, 16, d], init_zeros=True), brute_force=True)


ENTRIES = (
    Entry("AffineConstFlow", _pair(lambda d: F.AffineConstFlow((d,)))),
    Entry("ActNorm", _pair(_actnorm)),
    Entry("AffineCouplingBlock", _pair(_coupling_block)),
    Entry("MaskedAffineFlow", _pair(_masked_affine)),
    Entry("MaskedAffineAutoregressive", _pair(
        lambda d: F.MaskedAffineAutoregressive(d, 16, num_blocks=1))),
    Entry("AutoregressiveRationalQuadraticSpline", _pair(
        lambda d: F.AutoregressiveRationalQuadraticSpline(d, 1, 16, num_bins=6))),
    Entry("CoupledRationalQuadraticSpline", _pair(
        lambda d: F.CoupledRationalQuadraticSpline(d, 1, 16, num_bins=6))),
    Entry("InvertibleAffine (LU)", _pair(lambda d: F.InvertibleAffine(d, use_lu=True))),
    Entry("InvertibleAffine", _pair(lambda d: F.InvertibleAffine(d, use_lu=False))),
    Entry("LULinearPermute", _pair(lambda d: F.LULinearPermute(d, identity_init=False))),
    Entry("Permute (shuffle)", _pair(lambda d: F.Permute(d, mode="shuffle"))),
    Entry("Permute (swap)", _pair(lambda d: F.Permute(d, mode="swap"))),
    Entry("Planar (forward only)", _pair(lambda d: F.Planar((d,)), invertible=False),
          note="no inverse in normflows"),
    Entry("Radial (forward only)", _pair(lambda d: F.Radial((d,)), invertible=False),
          note="no inverse in normflows"),
    Entry("Residual (brute_force log-det)", _pair(_residual),
          note="inverse by fixed-point iteration"),
)

EXCLUDED = (
    ("CircularAutoregressiveRationalQuadraticSpline, CircularCoupledRationalQuadraticSpline, "
     "PeriodicWrap, PeriodicShift", "circular: a bijection of a box with periodic ends"),
    ("BatchNorm", "normalises by the statistics of the batch in every call: not a map of "
     "one row"),
    ("MetropolisHastings, HamiltonianMonteCarlo", "stochastic (MCMC) layers"),
    ("Invertible1x1Conv, GlowBlock, Squeeze, Split, Merge",
     "image tensors (N, C, H, W) or a change of shape"),
    ("AffineCoupling", "takes the split pair [z1, z2]; AffineCouplingBlock covers it"),
    ("CCAffineConst", "class-conditional: needs a label y"),
    ("Composite, Reverse, Flow", "containers and the base class"),
)
