"""The lecture's change-of-variables examples, computed with refflow and checked in print.

1. The unit cube [0, 1]^3 scaled by A = 2I: the density of x is 1/8 inside [0, 2]^3.
2. x = 0.75 z + 1 with z ~ N(0, 1) has the density of N(1, 0.75^2).
3. An affine flow x = A z + b fitted by maximum likelihood to 2-D Gaussian data recovers the
   data's mean b and covariance A A^T.

Run: ``python examples/change_of_variables.py`` (a few seconds).
"""

from __future__ import annotations

import math

import numpy
import scipy.stats

from refflow import backend as B
from refflow.affine import Affine, Diagonal
from refflow.core import Flow
from refflow.distributions import StandardNormal, Uniform
from refflow.train import fit


def unit_cube() -> None:
    flow = Flow(Uniform(B.zeros(3), B.ones(3)), Affine(2.0 * B.eye(3), B.zeros(3)))
    points = B.asarray([[0.5, 1.0, 1.5], [1.9, 0.1, 1.0], [2.5, 1.0, 1.0]])
    density = numpy.exp(B.to_numpy(flow.log_prob(points)))
    print("1. unit cube scaled by A = 2I")
    for x, p in zip(B.to_numpy(points), density):
        expected = 1 / 8 if numpy.all((0 <= x) & (x <= 2)) else 0.0
        print(f"   p({x}) = {p:.6f}   closed form {expected:.6f}")
    x = B.to_numpy(flow.sample(10000, B.rng(0)))
    print(f"   10000 samples lie in [{x.min():.4f}, {x.max():.4f}]^3 (expected within [0, 2])")


def scalar_normal() -> None:
    flow = Flow(StandardNormal(1), Diagonal(B.asarray([0.75]), B.asarray([1.0])))
    grid = numpy.array([-1.0, 0.0, 1.0, 1.75, 3.0])
    ours = B.to_numpy(flow.log_prob(B.asarray(grid[:, None])))
    theirs = scipy.stats.norm(loc=1.0, scale=0.75).logpdf(grid)
    print("2. x = 0.75 z + 1, z ~ N(0, 1)  (0.75 is the standard deviation)")
    for x, a, b in zip(grid, ours, theirs):
        print(f"   log p({x:5.2f}) = {a:.12f}   scipy N(1, 0.75^2): {b:.12f}")
    log_det = float(B.to_numpy(flow.bijection.inverse(B.asarray([[0.0]]))[1])[0])
    print(f"   |d f^-1 / dx| = {math.exp(log_det):.12f}   lecture: 4/3 = {4 / 3:.12f}")


def fitted_gaussian() -> None:
    mean = numpy.array([1.0, -2.0])
    cov = numpy.array([[2.0, 0.6], [0.6, 0.5]])
    n = 2000
    data = B.rng(1).standard_normal((n, 2)) @ B.asarray(numpy.linalg.cholesky(cov).T)
    data = data + B.asarray(mean)
    flow = Flow(StandardNormal(2), Affine(B.eye(2), B.zeros(2)))
    flow, history = fit(flow, data, steps=200, batch_size=n, lr=0.1, rng=B.rng(2))
    A, b = B.to_numpy(flow.bijection.A), B.to_numpy(flow.bijection.b)
    x = B.to_numpy(data)
    print(f"3. affine flow fitted to {n} samples of N(mean, cov)")
    print(f"   NLL: {history['loss'][0]:.4f} -> {history['loss'][-1]:.4f}")
    print(f"   true mean {mean}   sample mean {x.mean(axis=0).round(4)}   fitted b {b.round(4)}")
    print("   true cov, sample cov (1/N), fitted A A^T:")
    for row in zip(cov, numpy.cov(x.T, bias=True), A @ A.T):
        print("     " + "   ".join(numpy.array2string(r, precision=4) for r in row))


if __name__ == "__main__":
    unit_cube()
    scalar_normal()
    fitted_gaussian()
