"""An invertible residual network (iResNet) fitted to two moons: test NLL and inverse error.

The density direction is the residual one, as in Behrmann et al. (2019): data x is mapped
to the latent z = g(x) by blocks g_k(x) = x + F_k(x) with Lip(F_k) <= c^2 < 1, and

    log p(x) = log N(g(x); 0, I) + sum_k log det(I + J_{F_k}),

each log-det computed exactly (slogdet of the autograd Jacobian, D = 2). Sampling runs the
blocks backwards by Banach fixed-point iteration (``refflow.solvers``). In refflow's
convention (forward = generative) the flow is ``Flow(N(0, I), Inverse(Compose(blocks)))``.

Reports the test NLL (exact log-det), the same NLL with the 10-term power series, the NLL of
the best single Gaussian for reference, and the reconstruction errors of the fixed-point
inverse on test data and on fresh samples. Measured (seed 0, 600 steps, 4 blocks of one
hidden layer of 16 tanh units): test NLL 1.608 nats (10-term series: 1.610) against 1.895
for the best Gaussian; inverse errors ~3e-12. Four contractive blocks fit two moons only
coarsely: each block is bi-Lipschitz with constants 1 - L and 1 + L, so pulling the moons
apart takes many of them (Behrmann et al. used 100 blocks for their 2-D toys).
Run: ``python examples/iresnet_2d.py [--steps 600]`` (about 0.1 s of CPU per step, ~60 s).
"""

from __future__ import annotations

import argparse
import time

import numpy

from refflow import backend as B
from refflow.core import Compose, Flow, Inverse
from refflow.datasets import moons
from refflow.distributions import StandardNormal
from refflow.residual import ContractiveResidual
from refflow.train import fit, nll


def make_iresnet(rng, blocks: int = 4, hidden=(16,), coeff: float = 0.97) -> Flow:
    """``blocks`` contractive residual blocks, data -> latent, inverted for refflow's Flow.

    Narrow layers on purpose: with ||W_1|| <= c, the pre-activations of a wide layer share a
    norm of at most c |x|, so each unit stays in the nearly linear part of tanh and the
    block is nearly affine (measured: hidden 64 ends at the best Gaussian's NLL, 1.895).
    """
    parts = [ContractiveResidual.init(rng, 2, hidden=hidden, coeff=coeff, activation="tanh")
             for _ in range(blocks)]
    return Flow(StandardNormal(2), Inverse(Compose(*parts)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train = moons(4000, B.rng(args.seed))
    test = moons(2000, B.rng(args.seed + 1))
    flow = make_iresnet(B.rng(args.seed + 2))
    start = time.perf_counter()
    flow, history = fit(flow, train, steps=args.steps, batch_size=256, lr=1e-2,
                        rng=B.rng(args.seed + 3), schedule="cosine", progress=False)
    seconds = time.perf_counter() - start
    blocks = flow.bijection.bijection.bijections
    print(f"iResNet: {len(blocks)} blocks, hidden {[w.shape[1] for w in blocks[0].weights[:-1]]}, "
          f"Lip(F) <= {blocks[0].lipschitz:.2f}; {args.steps} Adam steps in {seconds:.0f} s")
    print(f"  train NLL, first/last batch  {history['loss'][0]:.3f} / {history['loss'][-1]:.3f}")
    print(f"  test NLL (exact log-det)      {float(B.to_numpy(nll(flow, test))):.4f} nats")
    centred = B.to_numpy(test) - B.to_numpy(test).mean(axis=0)
    cov = centred.T @ centred / centred.shape[0]
    gauss = 0.5 * numpy.linalg.slogdet(2 * numpy.pi * numpy.e * cov)[1]
    print(f"  best Gaussian, for reference  {gauss:.4f} nats")
    series = [ContractiveResidual(b.weights, b.biases, b.coeff, b.activation, "series", 10)
              for b in blocks]
    flow_series = Flow(flow.base, Inverse(Compose(*series)))
    print(f"  test NLL (10-term series)     {float(B.to_numpy(nll(flow_series, test))):.4f} nats")

    # the inverse direction is the fixed-point one: x -> z is explicit, z -> x iterates
    z, _ = flow.bijection.inverse(test)
    x_back, _ = flow.bijection.forward(z)
    err_test = numpy.max(numpy.abs(B.to_numpy(x_back - test)))
    samples = flow.sample(2000, B.rng(args.seed + 4))
    z_s, _ = flow.bijection.inverse(samples)
    z_again = flow.base.sample(2000, B.rng(args.seed + 4))
    err_samples = numpy.max(numpy.abs(B.to_numpy(z_s - z_again)))
    print(f"  max |g^-1(g(x)) - x| on test  {err_test:.2e}")
    print(f"  max |g(g^-1(z)) - z| samples  {err_samples:.2e}  (fixed-point tol 4e-11 per block)")


if __name__ == "__main__":
    main()
