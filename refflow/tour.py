r"""The lecture in order: every construct built from ``init`` and checked live, then two trainings.

``CONSTRUCTS`` lists every public bijection of refflow with its lecture section and cost
class, and a factory building a sensible instance from the class's ``init``.
``check_construct`` measures, on fresh standard-normal inputs, the round-trip error
max |f^{-1}(f(z)) - z| and the gap between the bijection's log-det and log|det| of the
central-difference Jacobian (an independent computation, in float64 on the host).
``FLOWS`` builds the trainable 2-D flows the ``refflow`` command offers. ``run_tour`` is
``refflow tour``: the table, a RealNVP fitted to two moons, planar flows fitted to U1 by
variational inference, and the figures.

Notes
-----
Lecture: all of "Flow-based Models" and "Constructing flows", in their order; the two
applications (density estimation, variational inference).

Examples
--------
>>> from refflow import backend
>>> row = check_construct(CONSTRUCTS[0], backend.rng(0))
>>> row["construct"], row["roundtrip"] < 1e-10, row["logdet_gap"] < 1e-6
('Compose', True, True)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import autograd.numpy as np

from refflow import backend as B
from refflow.affine import Affine, Diagonal, LUAffine, Permutation, Reverse, Triangular
from refflow.autoregressive import IAF, MAF, SlowMAF
from refflow.core import Compose, Flow, Inverse
from refflow.coupling import AdditiveCoupling, AffineCoupling, Coupling, Scaling
from refflow.distributions import StandardNormal
from refflow.elementwise import (
    Integral,
    Monotone,
    Perturbation,
    RationalQuadraticSpline,
    ScalarAffine,
)
from refflow.glow import ActNorm, Glow, GlowStep, Invertible1x1Conv, LUInvertible1x1Conv, Squeeze
from refflow.jacobian import numerical_jacobian
from refflow.residual import ContractiveResidual, LowRankResidual, Planar, Radial

__all__ = ["Construct", "CONSTRUCTS", "FLOWS", "build_flow", "check_construct", "run_tour"]

D = 4              # vector event for the table
IMAGE = (4, 4, 2)  # image event for the Glow rows


@dataclass(frozen=True)
class Construct:
    """One row of the tour: a public bijection, where the lecture has it, what it costs."""

    name: str
    section: str
    cost: str
    build: Callable[[Any], Any]   # rng -> bijection
    event_shape: tuple = (D,)
    context_dim: int = 0          # C > 0: checked at a fixed context, one row per sample


def _c(name, section, cost, build, event_shape=(D,), context_dim=0):
    return Construct(name, section, cost, build, event_shape, context_dim)


_FBM, _AFF, _EW = "Flow-based Models", "Affine flows", "Element-wise flows"
_CPL, _GLOW, _AR = "Coupling flows", "Glow", "Autoregressive flows"
_RES = "Residual flows"

CONSTRUCTS: tuple[Construct, ...] = (
    _c("Compose", f"{_FBM}: composition theorem", "sum of the parts",
       lambda r: Compose(Diagonal.init(r, D), Affine.init(r, D))),
    _c("Inverse", f"{_FBM}: inverse function theorem", "the part's, swapped",
       lambda r: Inverse(Triangular.init(r, D))),
    _c("Affine", f"{_AFF}: x = Az + b", "log-det O(D^3), pass O(D^2)", lambda r: Affine.init(r, D)),
    _c("Diagonal", f"{_AFF}: diagonal A", "O(D)", lambda r: Diagonal.init(r, D)),
    _c("Triangular", f"{_AFF}: triangular A", "log-det O(D), inverse O(D^2)",
       lambda r: Triangular.init(r, D)),
    _c("LUAffine", f"{_AFF}: A = PLU", "log-det O(D), inverse O(D^2)",
       lambda r: LUAffine.init(r, D)),
    _c("Permutation", f"{_AFF}: permutation", "O(D), log-det 0", lambda r: Permutation.init(r, D)),
    _c("Reverse", f"{_AFF}: reversal", "O(D), log-det 0", lambda r: Reverse.init(r, D)),
    _c("ScalarAffine", f"{_EW}: h = az + b", "O(D)", lambda r: ScalarAffine.init(r, D)),
    _c("Perturbation", f"{_EW}: higher-order perturbation", "O(D), inverse by bisection",
       lambda r: Perturbation.init(r, D)),
    _c("Monotone", f"{_EW}: conical combinations", "O(DK), inverse by bisection",
       lambda r: Monotone.init(r, D)),
    _c("Integral", f"{_EW}: integration", "O(D x nodes), inverse by bisection",
       lambda r: Integral.init(r, D)),
    _c("RationalQuadraticSpline", f"{_EW}: splines", "O(DK), inverse closed form",
       lambda r: RationalQuadraticSpline.init(r, D)),
    _c("Coupling", f"{_CPL}: x^A = f(z^A; Theta(z^B))", "1 conditioner pass each way",
       lambda r: Coupling.init(r, D, RationalQuadraticSpline, static={"bins": 8, "bound": 3.0},
                               hidden=(16,))),
    _c("AdditiveCoupling", f"{_CPL}: NICE", "1 pass each way, log-det 0",
       lambda r: AdditiveCoupling.init(r, D, hidden=(16,), activation="tanh")),
    _c("Scaling", f"{_CPL}: NICE's top scaling S", "O(D)", lambda r: Scaling.init(r, D)),
    _c("AffineCoupling", f"{_CPL}: RealNVP", "1 pass each way, log-det O(D)",
       lambda r: AffineCoupling.init(r, D, hidden=(16,))),
    _c("ActNorm", f"{_GLOW}: actnorm", "O(HWC)", lambda r: ActNorm.init(r, IMAGE), IMAGE),
    _c("Invertible1x1Conv", f"{_GLOW}: invertible 1x1 convolution", "log-det O(C^3 + HWC^2)",
       lambda r: Invertible1x1Conv.init(r, IMAGE), IMAGE),
    _c("LUInvertible1x1Conv", f"{_GLOW}: 1x1 convolution, LU", "log-det O(C), pass O(HWC^2)",
       lambda r: LUInvertible1x1Conv.init(r, IMAGE), IMAGE),
    _c("Squeeze", f"{_GLOW}: squeeze (multi-scale)", "O(HWC), log-det 0",
       lambda r: Squeeze.init(r, IMAGE), IMAGE),
    _c("GlowStep", f"{_GLOW}: actnorm, 1x1 conv, coupling", "1 conv-net pass each way",
       lambda r: GlowStep.init(r, IMAGE, hidden=4, activation="tanh"), IMAGE),
    _c("Glow", f"{_GLOW}: multi-scale Glow", "L x K steps",
       lambda r: Glow.init(r, IMAGE, levels=2, steps=1, hidden=4, activation="tanh"), IMAGE),
    _c("MAF", f"{_AR}: MAF", "density 1 pass, sampling D passes",
       lambda r: MAF.init(r, D, hidden=(16,), order="random")),
    _c("SlowMAF", f"{_AR}: D separate conditioners", "D networks each way",
       lambda r: SlowMAF.init(r, D, hidden=(8,))),
    _c("IAF", f"{_AR}: IAF", "sampling 1 pass, density D passes",
       lambda r: IAF.init(r, D, hidden=(16,), order="random")),
    _c("ContractiveResidual", f"{_RES}: contraction (iResNet)",
       "log-det O(D^3) exact, inverse fixed point", lambda r: ContractiveResidual.init(r, D)),
    _c("LowRankResidual", f"{_RES}: det(I + AB) = det(I + BA)",
       "log-det O(M^3 + DM), inverse fixed point", lambda r: LowRankResidual.init(r, D, rank=2)),
    _c("Planar", f"{_RES}: planar flow", "O(D), inverse by bisection",
       lambda r: Planar.init(r, D)),
    _c("Radial", f"{_RES}: radial flow", "O(D), inverse by bisection",
       lambda r: Radial.init(r, D)),
    _c("Amortised", f"{_RES}: planar flow, parameters from a network of the context",
       "hypernetwork pass + O(D)", lambda r: Planar.init(r, D, context_dim=2, hidden=(8,)),
       context_dim=2),
)


def check_construct(construct: Construct, rng: Any, n: int = 8) -> dict:
    """Round-trip error and |log-det - finite-difference log-det| of one construct, live.

    The finite-difference log-det is numpy's slogdet of the central-difference Jacobian,
    computed on the host: nothing is shared with the bijection's own formula.
    """
    f = construct.build(rng)
    z = rng.standard_normal((n,) + tuple(construct.event_shape))
    c = rng.standard_normal((n, construct.context_dim)) if construct.context_dim else None
    x, log_det = f.forward(z, context=c)
    z_back, _ = f.inverse(x, context=c)
    roundtrip = float(np.max(np.abs(B.to_numpy(z_back) - B.to_numpy(z))))
    J = B.to_numpy(numerical_jacobian(lambda u: f.forward(u, context=c)[0], z))
    _, fd = np.linalg.slogdet(J)
    gap = float(np.max(np.abs(B.to_numpy(log_det) - fd)))
    return {"construct": construct.name, "section": construct.section,
            "roundtrip": roundtrip, "logdet_gap": gap, "cost": construct.cost}


# ----------------------------------------------------------------------- trainable 2-D flows


def _alternate(layers: list) -> list:
    """Couplings and autoregressive layers alternate with a reversal of the coordinates."""
    out = []
    for i, layer in enumerate(layers):
        out.append(layer)
        if i < len(layers) - 1:
            out.append(Reverse())
    return out


# each entry: (rng, dim, layers, hidden, context_dim) -> the bijection; context_dim C > 0
# makes every layer with a conditioner (all but NICE's Scaling) see the context
FLOWS: dict[str, Callable[..., Any]] = {
    "realnvp": lambda r, d, k, h, c=0: Compose(*_alternate(
        [AffineCoupling.init(r, d, hidden=(h, h), zero_last=True, context_dim=c)
         for _ in range(k)])),
    "nice": lambda r, d, k, h, c=0: Compose(*_alternate(
        [AdditiveCoupling.init(r, d, hidden=(h, h), activation="tanh", zero_last=True,
                               context_dim=c) for _ in range(k)]), Scaling.init(r, d)),
    "spline": lambda r, d, k, h, c=0: Compose(*_alternate(
        [Coupling.init(r, d, RationalQuadraticSpline, static={"bins": 8, "bound": 4.0},
                       hidden=(h, h), zero_last=True, context_dim=c) for _ in range(k)])),
    "maf": lambda r, d, k, h, c=0: Compose(*_alternate(
        [MAF.init(r, d, hidden=(h, h), context_dim=c) for _ in range(k)])),
    "iaf": lambda r, d, k, h, c=0: Compose(*_alternate(
        [IAF.init(r, d, hidden=(h, h), context_dim=c) for _ in range(k)])),
    # conditional planar and radial layers: parameters from a hypernetwork of c, h wide
    "planar": lambda r, d, k, h, c=0: Compose(*[Planar.init(r, d, context_dim=c, hidden=(h,))
                                                for _ in range(k)]),
    "radial": lambda r, d, k, h, c=0: Compose(*[Radial.init(r, d, context_dim=c, hidden=(h,))
                                                for _ in range(k)]),
}
FLOWS["realnvp"].__doc__ = "RealNVP: K affine couplings alternating with reversals."


def build_flow(name: str, dim: int, layers: int, rng: Any, hidden: int = 32,
               context_dim: int = 0) -> Flow:
    """``FLOWS[name]`` with ``layers`` layers on a standard normal base in dimension ``dim``.

    ``context_dim`` C > 0 builds the conditional flow p(x | c), c of C values: the flow's
    ``log_prob`` and ``sample`` then take a context (``refflow.core.Flow``).
    """
    if name not in FLOWS:
        raise ValueError(f"flow: expected one of {sorted(FLOWS)}, got {name!r}")
    return Flow(StandardNormal(dim), FLOWS[name](rng, dim, layers, hidden, context_dim))


# ----------------------------------------------------------------------------- the tour


def _table(rows: list, echo: Callable[[str], None]) -> None:
    echo(f"{'construct':<24} {'lecture':<46} {'round trip':>10} {'|ld - fd|':>10}  cost")
    for r in rows:
        echo(f"{r['construct']:<24} {r['section'][:46]:<46} {r['roundtrip']:>10.1e} "
             f"{r['logdet_gap']:>10.1e}  {r['cost']}")


def run_tour(out: str = "tour", seed: int = 0, moons_steps: int = 800,
             vi_steps: int = 600, echo: Callable[[str], None] = print) -> dict:
    """``refflow tour``: the construct table, two short trainings, figures in ``out``.

    Returns the measured numbers (also written to ``out/tour.json``).
    """
    from refflow import plot
    from refflow.datasets import moons
    from refflow.potentials import U1, reference_log_z
    from refflow.train import elbo, fit, fit_vi

    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    rng = B.rng(seed)
    echo(f"refflow tour: the lecture in order (backend: {B.get_backend()})\n")
    echo("1. Flow-based Models / Constructing flows: every construct, checked live "
         f"(D = {D}, images {IMAGE})")
    rows = [check_construct(c, rng) for c in CONSTRUCTS]
    _table(rows, echo)
    worst = max(rows, key=lambda r: r["logdet_gap"])
    echo(f"   largest log-det gap: {worst['logdet_gap']:.1e} ({worst['construct']})\n")

    echo("2. Density estimation (\"MLE problem\"): RealNVP, 6 couplings, on two moons")
    data = moons(4000, rng)
    flow = build_flow("realnvp", 2, 6, rng, hidden=32)
    flow, hist = fit(flow, data, steps=moons_steps, batch_size=256, lr=5e-3, rng=rng,
                     validation=0.1, schedule="cosine", clip_norm=10.0, eval_every=100,
                     progress=False)
    test = moons(2000, rng)
    test_nll = float(np.mean(-B.to_numpy(flow.log_prob(test))))
    echo(f"   {moons_steps} steps: validation NLL {hist['best_val_nll']:.3f}, "
         f"test NLL {test_nll:.3f} nats")
    box = (-2.5, 2.5, -2.0, 2.0)
    fig, axes = plot.figure(1, 4)
    plot.samples(data[:2000], ax=axes[0, 0], title="data x", bounds=box)
    plot.latent(flow, data[:2000], ax=axes[0, 1])
    plot.samples(flow.sample(2000, rng), ax=axes[0, 2], title="samples x = f(z)", bounds=box,
                 color="tab:green")
    plot.density(flow, bounds=box, n=120, ax=axes[0, 3], title="density p(x)")
    moons_png = os.path.join(out, "moons_realnvp.png")
    fig.savefig(moons_png, dpi=110)
    plot.curves(hist, title="RealNVP on moons", path=os.path.join(out, "moons_curves.png"))

    echo("\n3. Variational inference (the ELBO): planar flows, K = 16, on U1")
    q = build_flow("planar", 2, 16, rng)
    q, vi_hist = fit_vi(q, lambda z: -U1(z), steps=vi_steps, rng=rng, batch_size=128, lr=2e-2,
                        anneal_steps=2 * vi_steps // 3, eval_every=100, progress=False)
    est, se = elbo(q, lambda z: -U1(z), 20000, rng)
    log_z = reference_log_z("U1")
    echo(f"   {vi_steps} steps: ELBO {est:.3f} +- {se:.3f}; log Z = {log_z:.4f} (quadrature); "
         f"KL(q || p) = {log_z - est:.3f} +- {se:.3f} nats")
    fig, axes = plot.figure(1, 3)
    ubox = (-4.0, 4.0, -4.0, 4.0)
    plot.density(lambda z: -U1(z), bounds=ubox, n=120, ax=axes[0, 0], title="target exp(-U1)")
    plot.density(q, bounds=ubox, n=120, ax=axes[0, 1], title="q, planar K = 16")
    plot.samples(q.sample(2000, rng), ax=axes[0, 2], title="samples of q", bounds=ubox,
                 color="tab:green")
    vi_png = os.path.join(out, "u1_planar.png")
    fig.savefig(vi_png, dpi=110)
    plot.curves(vi_hist, title="ELBO, planar on U1", path=os.path.join(out, "u1_curves.png"))

    seconds = time.perf_counter() - start
    result = {"constructs": rows, "moons": {"steps": moons_steps, "test_nll": test_nll,
                                             "best_val_nll": hist["best_val_nll"]},
              "u1_planar": {"steps": vi_steps, "K": 16, "elbo": est, "elbo_se": se,
                            "log_z": log_z, "kl": log_z - est},
              "seconds": seconds, "backend": B.get_backend()}
    with open(os.path.join(out, "tour.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=lambda v: None if math.isnan(v) else v)
    echo(f"\nfigures: {moons_png}, {vi_png} (and *_curves.png); numbers: "
         f"{os.path.join(out, 'tour.json')}  [{seconds:.0f} s]")
    return result
