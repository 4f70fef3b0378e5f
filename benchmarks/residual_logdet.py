r"""Residual log-determinants measured: estimator bias and spread, and exact vs low-rank cost.

1. Bias and standard deviation against the exact log det(I + J_F), as functions of the
   number of terms n and of the per-layer coefficient c (Lip(F) <= L = c^2):
   - the truncated power series with exact traces (deterministic; bias only), next to its
     bound D L^(n+1) / ((n + 1)(1 - L));
   - Hutchinson's estimate of the same truncated series (one Gaussian probe per estimate);
   - the Russian-roulette estimator (``terms`` fixed terms, then a geometric number with
     stopping probability p): unbiased, at the price of a random cost.
   The block is the hard case on purpose: D x D orthogonal weights scaled to c and zero
   biases, evaluated at z ~ N(0, 0.3^2 I), where tanh' ~ 1 and every eigenvalue of J_F has
   modulus close to c^2 = L (random initialisations sit well below their bound, and their
   biases are smaller).
2. CPU time of the log-det of a low-rank block (rank M) against D: the exact dense route
   (autograd Jacobian, D reverse passes, then LU slogdet, O(D^3)) against the identity
   det(I_D + J_F2 J_F1) = det(I_M + J_F1 J_F2) (O(D M^2 + M^3)), with fitted exponents
   of time ~ D^k over the largest sizes.

Writes the tables to ``docs/residual_logdet.md`` (``--out``) and prints them.
Usage: ``python benchmarks/residual_logdet.py [--probes 256] [--repeats 3]`` (~1 minute).
Times are process CPU time (median of ``--repeats``), less sensitive to other processes
than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy

from refflow import backend as B
from refflow.residual import ContractiveResidual, LowRankResidual, logdet_estimate

DIM = 8
POINTS = 32
COEFFS = (0.5, 0.7, 0.9, 0.95)
TERMS = (1, 2, 4, 8, 16, 32)
ROULETTE_P = 0.1  # finite variance needs L^2 < 1 - p: 0.95^4 = 0.81 < 0.9
COST_DIMS = (8, 16, 32, 64, 128)
RANK = 2


def stressed_block(coeff: float, seed: int = 0) -> ContractiveResidual:
    rng = numpy.random.default_rng(seed)
    q1, _ = numpy.linalg.qr(rng.standard_normal((DIM, DIM)))
    q2, _ = numpy.linalg.qr(rng.standard_normal((DIM, DIM)))
    zeros = numpy.zeros(DIM)
    return ContractiveResidual((B.asarray(coeff * q1), B.asarray(coeff * q2)),
                               (B.asarray(zeros), B.asarray(zeros)), coeff)


def estimator_rows(probes: int) -> tuple[list, list]:
    z = 0.3 * B.rng(1).standard_normal((POINTS, DIM))
    z_rep = numpy.repeat(B.to_numpy(z), probes, axis=0)  # (POINTS * probes, D)
    series_rows, roulette_rows = [], []
    for c in COEFFS:
        f = stressed_block(c)
        L = f.lipschitz
        exact = B.to_numpy(logdet_estimate(f, z, "exact"))
        exact_rep = numpy.repeat(exact, probes)
        for n in TERMS:
            series = B.to_numpy(logdet_estimate(f, z, "series", terms=n))
            hutch = B.to_numpy(logdet_estimate(f, B.asarray(z_rep), "hutchinson", terms=n,
                                               rng=B.rng(10 + n)))
            err = hutch - exact_rep
            series_rows.append(dict(
                c=c, L=L, n=n, bound=DIM * L ** (n + 1) / ((n + 1) * (1 - L)),
                series_bias=float(numpy.mean(series - exact)),
                series_max=float(numpy.max(numpy.abs(series - exact))),
                hutch_bias=float(numpy.mean(err)),
                hutch_se=float(numpy.std(err, ddof=1) / math.sqrt(err.size)),
                hutch_std=float(numpy.std(err, ddof=1))))
        for n in (1, 4):
            rng = B.rng(100 + n)
            err = B.to_numpy(logdet_estimate(f, B.asarray(z_rep), "roulette", terms=n, rng=rng,
                                             p=ROULETTE_P)) - exact_rep
            roulette_rows.append(dict(
                c=c, L=L, n=n, mean_terms=n + (1 - ROULETTE_P) / ROULETTE_P,
                bias=float(numpy.mean(err)),
                se=float(numpy.std(err, ddof=1) / math.sqrt(err.size)),
                std=float(numpy.std(err, ddof=1))))
    return series_rows, roulette_rows


def cpu_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def slope(xs, ys) -> float:
    return float(numpy.polyfit(numpy.log(xs), numpy.log(ys), 1)[0])


def cost_rows(repeats: int, batch: int = 16) -> list:
    rows = []
    for d in COST_DIMS:
        f = LowRankResidual.init(B.rng(d), d, rank=RANK)
        z = B.rng(d + 1).standard_normal((batch, d))
        numpy.testing.assert_allclose(B.to_numpy(f.forward(z)[1]),
                                      B.to_numpy(logdet_estimate(f, z, "exact")), atol=1e-9)
        rows.append(dict(
            D=d,
            dense=cpu_time(lambda f=f, z=z: logdet_estimate(f, z, "exact"), repeats),
            lowrank=cpu_time(lambda f=f, z=z: f.forward(z), repeats)))
    return rows


def tables(series_rows, roulette_rows, cost, probes: int) -> str:
    out = [f"## 1. Estimators against the exact log-det (D = {DIM}, {POINTS} points, "
           f"{probes} probes per point)", "",
           "Bias = mean(estimate - exact) over points and probes (Hutchinson: +- its standard "
           "error); std = standard deviation of one single-probe estimate around the exact "
           "value. The series bias is deterministic; `bound` is D L^(n+1) / ((n+1)(1-L)).", "",
           "| c | L = c^2 | terms n | series bias | max abs series error | bound "
           "| Hutchinson bias | Hutchinson std |",
           "|---|---|---|---|---|---|---|---|"]
    for r in series_rows:
        out.append(f"| {r['c']} | {r['L']:.4f} | {r['n']} | {r['series_bias']:+.2e} "
                   f"| {r['series_max']:.2e} | {r['bound']:.2e} "
                   f"| {r['hutch_bias']:+.2e} +- {r['hutch_se']:.1e} | {r['hutch_std']:.3f} |")
    out += ["", f"Russian roulette (p = {ROULETTE_P}; N = n + Geometric, E[N] = n + (1-p)/p; "
            "unbiased for the full series):", "",
            "| c | L | fixed terms n | mean terms | bias +- s.e. | std |",
            "|---|---|---|---|---|---|"]
    for r in roulette_rows:
        out.append(f"| {r['c']} | {r['L']:.4f} | {r['n']} | {r['mean_terms']:.0f} "
                   f"| {r['bias']:+.2e} +- {r['se']:.1e} | {r['std']:.3f} |")
    big = [r for r in cost if r["D"] >= 32]
    k_dense = slope([r["D"] for r in big], [r["dense"] for r in big])
    k_low = slope([r["D"] for r in big], [r["lowrank"] for r in big])
    out += ["", f"## 2. Log-det cost against D (LowRankResidual, M = {RANK}, batch 16, CPU s)",
            "", "| D | exact dense: Jacobian + LU slogdet | low rank det(I_M + J_F1 J_F2) "
            "| ratio |", "|---|---|---|---|"]
    for r in cost:
        out.append(f"| {r['D']} | {r['dense']:.4f} | {r['lowrank']:.5f} "
                   f"| {r['dense'] / r['lowrank']:.0f} |")
    out += ["", f"Fitted exponents over D >= 32 (time ~ D^k): dense k = {k_dense:.2f}, "
            f"low rank k = {k_low:.2f}. refflow's LU runs D elimination steps, each a few "
            "full-array operations on (N, D, D) stacks: O(D^3) flops plus a Python overhead "
            "per step, so k approaches 3 only for large D; the low-rank route is O(D M^2) and "
            "its time at these sizes is mostly fixed overhead."]
    return "\n".join(out) + "\n"


HEADER = """# Residual flows: log-determinant estimators and costs (measured)

Generated by `python benchmarks/residual_logdet.py`; see its docstring for the setup.
Lecture: Residual flows ("the log Jacobian determinant as a power series") and residual
blocks with low-rank Jacobian (det(I_D + AB) = det(I_M + BA)).

How to read it: the truncated series is biased; its error shrinks roughly like L^n
(alternating in sign for small n) and stays within the bound, which is loose by one to three
orders of magnitude because the traces of the powers partly cancel. Hutchinson's estimate
has the *same* bias (it is unbiased for the truncated series, not for the log-det) plus the
probe noise: about 0.7 per single probe at c = 0.5 and 2 at c = 0.95, almost independent of
n (the first term's noise dominates), so beyond n ~ 8 the noise, not the truncation, limits
a single estimate. The Russian-roulette estimator's mean agrees with the exact value within
its standard error at every c, at a cost of n + (1 - p)/p terms on average and the same
spread.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/residual_logdet.md")
    args = parser.parse_args()
    series_rows, roulette_rows = estimator_rows(args.probes)
    text = HEADER + tables(series_rows, roulette_rows, cost_rows(args.repeats), args.probes)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
