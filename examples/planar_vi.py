r"""Rezende & Mohamed (2015), Figure 3 in spirit: planar flows K = 2, 8, 32 fitted to U1..U4.

Variational inference with a flow q: maximise ELBO = E_q[log p~(z) - log q(z)],
p~(z) = exp(-U(z)), by ``refflow.train.fit_vi`` (reparameterised Monte Carlo gradients,
the target's weight annealed from 0.01 to 1 over the first half of the steps). Reported per
target and flow: KL(q || p) = log Z - ELBO with its Monte Carlo standard error (20,000
samples), log Z by quadrature (``refflow.potentials.reference_log_z``).

* U1 is normalisable on R^2: log Z = 1.8775 and the KL is exact up to Monte Carlo error.
* U2, U3, U4 are not (exp(-U) does not decay along z1): on R^2 the ELBO is unbounded and
  q runs out of [-4, 4]^2 along the ridge. They are confined to the box by a Gaussian wall,
  p~(z) = exp(-U(z) - sum_i max(|z_i| - 4, 0)^2 / (2 * 0.2^2)), normalisable on R^2, with
  log Z by quadrature on [-5.5, 5.5]^2 (the wall adds 0.06 to 0.08 to log Z on the box).
  The KL is then exact up to Monte Carlo error; "out" is q's mass outside the box.

Comparison columns: NICE (6 additive couplings with reversals, then a diagonal scaling)
and RealNVP (6 affine couplings with reversals), hidden layers of 32 tanh units.

Writes ``planar_vi.png`` (rows U1..U4; columns: exp(-U), planar K = 2, 8, 32, NICE,
RealNVP) and ``planar_vi.json`` into ``--out`` and prints the table.
Budget: ``--steps 1500`` (default, the published table) runs 20 fits on two processes; on
the shared 2-core development machine (load 5-10) it took 25 minutes wall, the four K = 32
fits 400-460 s each, every other fit under 70 s. ``--steps 300`` takes about a fifth of
that; ``--steps 20`` is a smoke test. Results: docs/results_vi.md.

References
----------
1. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.
2. L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation.
   ICLR Workshop, 2015.
3. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.
"""

from __future__ import annotations

import os

# small arrays: OpenBLAS threads only spin, and the two worker processes use both cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import autograd.numpy as np  # noqa: E402

from refflow import backend as B  # noqa: E402
from refflow import plot  # noqa: E402
from refflow.potentials import (  # noqa: E402
    BOXES,
    NORMALISABLE,
    POTENTIALS,
    log_normalizer,
    reference_log_z,
)
from refflow.tour import build_flow  # noqa: E402
from refflow.train import elbo, fit_vi  # noqa: E402

TARGETS = ("U1", "U2", "U3", "U4")
MODELS = (("planar", 2), ("planar", 8), ("planar", 32), ("nice", 6), ("realnvp", 6))
GRID = (-4.0, 4.0, -4.0, 4.0)
WALL = 0.2


def label(flow: str, k: int) -> str:
    return f"planar K={k}" if flow == "planar" else f"{flow} ({k})"


def confined(U):
    """U plus a Gaussian wall of width 0.2 outside [-4, 4]^2: a normalisable energy."""

    def energy(z):
        over = np.maximum(np.abs(z) - 4.0, 0.0)
        return U(z) + np.sum(over**2, axis=-1) / (2 * WALL**2)

    return energy


def target_and_log_z(target):
    """(log p~, log Z on R^2): U1 as it is, U2..U4 confined to the box."""
    if target in NORMALISABLE:
        U, log_z = POTENTIALS[target], reference_log_z(target)
    else:
        U = confined(POTENTIALS[target])
        log_z = log_normalizer(U, (-5.5, 5.5, -5.5, 5.5), n=1024)
    return (lambda z: -U(z)), log_z


def run_one(job):
    target, flow_name, k, steps, seed = job
    log_target, log_z = target_and_log_z(target)
    rng = B.rng(seed)
    q = build_flow(flow_name, 2, k, rng, hidden=32)
    lr = 1e-2 if flow_name == "planar" else 3e-3
    start = time.perf_counter()
    q, _ = fit_vi(q, log_target, steps=steps, rng=rng, batch_size=128, lr=lr,
                  anneal_steps=steps // 2, clip_norm=100.0, eval_every=100, progress=False)
    seconds = time.perf_counter() - start
    est, se = elbo(q, log_target, 20000, rng)
    z = B.to_numpy(q.sample(20000, rng))
    box = BOXES[target]
    inside = (z[:, 0] >= box[0]) & (z[:, 0] <= box[1]) & (z[:, 1] >= box[2]) & (z[:, 1] <= box[3])
    pts = plot.grid(GRID, 100)
    img = B.to_numpy(q.log_prob(pts)).reshape(100, 100)
    return {"target": target, "flow": flow_name, "K": k, "elbo": est, "se": se,
            "log_z": log_z, "kl": log_z - est, "outside": float(1.0 - inside.mean()),
            "seconds": seconds, "steps": steps}, img


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=".")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated subset of U1,U2,U3,U4")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    targets = [t for t in args.targets.split(",") if t]
    if not set(targets) <= set(TARGETS):
        parser.error(f"--targets: expected names from {TARGETS}, got {args.targets!r}")
    jobs = [(t, f, k, args.steps, args.seed) for t in targets for f, k in MODELS]
    # the slow K = 32 fits first, so the two workers finish together
    jobs.sort(key=lambda j: -(j[2] if j[1] == "planar" else 8))
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_one, jobs))
    by_key = {(r["target"], r["flow"], r["K"]): (r, img) for r, img in results}

    fig, axes = plot.figure(len(targets), 1 + len(MODELS), size=2.0)
    for i, t in enumerate(targets):
        plot.density(target_and_log_z(t)[0], bounds=GRID, n=100, ax=axes[i, 0],
                     title=f"exp(-{t})" if i == 0 else None)
        axes[i, 0].set_ylabel(t)
        for j, (f, k) in enumerate(MODELS):
            _, img = by_key[(t, f, k)]
            plot.density(lambda z, img=img: _lookup(img, z), bounds=GRID, n=100,
                         ax=axes[i, j + 1], title=label(f, k) if i == 0 else None)
    fig.savefig(os.path.join(args.out, "planar_vi.png"), dpi=110)

    head = "".join(f" | {label(f, k)}" for f, k in MODELS)
    print(f"KL(q || p) = log Z - ELBO, nats (+- standard error), {args.steps} steps\n")
    print(f"| target | log Z{head} |")
    print("|---|---|" + "---|" * len(MODELS))
    for t in targets:
        cells = []
        for f, k in MODELS:
            r, _ = by_key[(t, f, k)]
            extra = "" if t in NORMALISABLE else f" [{100 * r['outside']:.1f}% out]"
            cells.append(f"{r['kl']:.3f} +- {r['se']:.3f}{extra}")
        print(f"| {t} | {target_and_log_z(t)[1]:.4f} | " + " | ".join(cells) + " |")
    with open(os.path.join(args.out, "planar_vi.json"), "w") as fh:
        json.dump([r for r, _ in results], fh, indent=1)


def _lookup(img, z):
    """The precomputed log q on the plotting grid (the grid ``density`` asks for)."""
    return np.reshape(img, (-1,))[: z.shape[0]]


if __name__ == "__main__":
    main()
