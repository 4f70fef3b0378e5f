"""The lecture's RealNVP figure on two moons: inference (data -> latent) and generation.

A RealNVP of affine couplings (alternating halves through ``Reverse``) is fitted by maximum
likelihood, then four panels are drawn:

1. data x ~ p_X (the two moons),
2. their latent codes z = f^{-1}(x): inference pushes the data to a standard normal,
3. z ~ p_Z, fresh draws from the base density,
4. x = f(z): generation pushes them back to the moons.

The lecture writes the map from data to latent as f; refflow's ``forward`` is the generative
direction (docs/reading_the_code.rst, "The protocol"), so the figure's "z = f(x)" is
``bijection.inverse`` here.

Run: ``python examples/realnvp_two_moons.py [--out DIR] [--steps N]`` (about a minute on
one core); writes ``DIR/realnvp_two_moons.png`` (default ``docs/_static``).
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from refflow import backend as B  # noqa: E402
from refflow.affine import Reverse  # noqa: E402
from refflow.core import Compose, Flow  # noqa: E402
from refflow.coupling import AffineCoupling  # noqa: E402
from refflow.datasets import moons  # noqa: E402
from refflow.distributions import StandardNormal  # noqa: E402
from refflow.train import fit, nll  # noqa: E402


def realnvp(rng, couplings: int = 6, hidden: int = 64) -> Flow:
    """x = f(z) with f = (Reverse o coupling)^couplings, each coupling starting at the identity."""
    layers = []
    for _ in range(couplings):
        layers += [AffineCoupling.init(rng, 2, hidden=(hidden, hidden), zero_last=True),
                   Reverse()]
    return Flow(StandardNormal(2), Compose(*layers))


def main(out: str, steps: int, seed: int) -> None:
    train, test = moons(4000, B.rng(seed)), moons(2000, B.rng(seed + 1))
    flow = realnvp(B.rng(seed + 2))
    start = time.process_time()
    flow, history = fit(flow, train, steps=steps, batch_size=256, lr=3e-3, rng=B.rng(seed + 3))
    seconds = time.process_time() - start
    print(f"RealNVP, {steps} steps in {seconds:.1f} s CPU: test NLL {float(nll(flow, test)):.3f} "
          f"nats (first batch {history['loss'][0]:.3f})")

    x = B.to_numpy(test)
    z = B.to_numpy(flow.bijection.inverse(test)[0])
    z_new = B.rng(seed + 4).standard_normal((2000, 2))
    x_new = B.to_numpy(flow.bijection.forward(z_new)[0])
    z_new = B.to_numpy(z_new)

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    panels = [
        (x, "Inference: x ~ p_X (data)", "tab:blue"),
        (z, "Inference: z = f^{-1}(x) (latent)", "tab:orange"),
        (z_new, "Generation: z ~ p_Z (latent)", "tab:orange"),
        (x_new, "Generation: x = f(z) (samples)", "tab:blue"),
    ]
    for ax, (points, title, colour) in zip(axes, panels):
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color=colour)
        ax.set_title(title)
        ax.set_xlim(-4, 4) if "latent" in title else ax.set_xlim(-2, 2)
        ax.set_ylim(-4, 4) if "latent" in title else ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
    fig.suptitle("RealNVP on two moons (6 affine couplings)")
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "realnvp_two_moons.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("docs", "_static"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.out, args.steps, args.seed)
