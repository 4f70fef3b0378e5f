r"""Simulation-based inference with a known posterior: refflow's conditional NSF vs zuko's.

Neural posterior estimation (Papamakarios & Murray 2016; Greenberg et al. 2019): simulate
pairs theta ~ p(theta), x ~ p(x | theta), and fit a conditional flow q(theta | x) by maximum
likelihood on them. Minimising E_{theta, x}[-log q(theta | x)] minimises the expected
E_x[KL(p(theta | x) || q(theta | x))], because the two differ by E_x[H(theta | x)], a constant.
Both simulators below have a posterior that is known exactly, so both sides of that
statement can be measured:

* ``linear``: theta ~ N(0, I_2), x = M theta + 0.5 eps in R^3 with a fixed 3x2 matrix M.
  The posterior is N(S M^T x / 0.25, S), S = (I + M^T M / 0.25)^{-1}, in closed form.
* ``nonlinear``: theta ~ N(0, I_2), x = (theta_1^2 + theta_2, theta_2) + 0.4 eps in R^2.
  The sign of theta_1 is not identified: the posterior is a bimodal, curved ridge when
  x_1 > x_2 and a single blob otherwise. It is computed by quadrature, prior times
  likelihood normalised on a 241 x 241 grid over [-4.5, 4.5]^2.

Reported on held-out simulations (x not seen in training):

* the expected KL(p(theta | x) || q(theta | x)) over held-out x, in nats: for ``linear`` by
  Monte Carlo with exact posterior samples (64 per x), for ``nonlinear`` by quadrature on
  the grid, sum_i p_i (log p_i - log q_i) dA;
* the coverage of q's central credible intervals, per coordinate: for held-out pairs
  (theta*, x), the fraction whose theta*_j lies inside q's central 50% (90%) interval of
  theta_j, estimated from 500 samples of q(. | x). A calibrated posterior covers 50% (90%);
  less is overconfident, more underdispersed. Its binomial standard error with 1000 pairs is
  1.6 (0.9) points.

Models, same architecture size: a neural spline flow (Durkan et al. 2019) of 3 autoregressive
rational-quadratic spline layers (8 bins on [-5, 5], identity tails), MADEs with two hidden
layers of 64 ReLU units, the coordinate order reversed between layers; refflow:
``MAF(transformer=RationalQuadraticSpline, context_dim=C)`` with ``Reverse()``; zuko:
``zuko.flows.NSF(2, context=C, transforms=3, hidden_features=(64, 64))``. The context enters
refflow's MADE at every hidden layer and zuko's at the first, which is the only difference
in parameter count. Same training set, steps, batch size, Adam learning rate and cosine
schedule; float64 in both.

Run: ``python examples/sbi.py [--seeds 0 1 2] [--steps 2000]``; results in docs/conditional.md.
``--libraries refflow-torch-init`` adds refflow with zuko's (torch's) initial weight scale,
the ablation that explains most of the difference between the two.

References
----------
1. G. Papamakarios, I. Murray. Fast epsilon-free Inference of Simulation Models with Bayesian
   Conditional Density Estimation. NeurIPS, 2016.
2. D. Greenberg, M. Nonnenmacher, J. Macke. Automatic Posterior Transformation for
   Likelihood-free Inference. ICML, 2019.
3. C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows. NeurIPS, 2019.
4. F. Rozet et al. Zuko: normalizing flows in PyTorch. 2022. https://github.com/probabilists/zuko
"""

from __future__ import annotations

import os

# tiny matrices: OpenBLAS threads only spin (10x slower on a busy 2-core machine)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from refflow import backend as B  # noqa: E402
from refflow.affine import Reverse  # noqa: E402
from refflow.autoregressive import MAF  # noqa: E402
from refflow.core import Compose, Flow, repeat_context  # noqa: E402
from refflow.distributions import StandardNormal  # noqa: E402
from refflow.elementwise import RationalQuadraticSpline  # noqa: E402
from refflow.train import fit, learning_rate  # noqa: E402
from refflow.tree import count_parameters  # noqa: E402

D = 2                 # theta's dimension
LEVELS = (0.5, 0.9)   # central credible intervals whose coverage is reported
M = numpy.array([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.7]])
NOISE_LINEAR = 0.5
NOISE_NONLINEAR = 0.4
GRID = numpy.linspace(-4.5, 4.5, 241)


# ------------------------------------------------------------------------- simulators

def simulate_linear(rng, n):
    """(theta, x): theta ~ N(0, I_2), x = M theta + 0.5 eps (host arrays)."""
    theta = rng.standard_normal((n, D))
    return theta, theta @ M.T + NOISE_LINEAR * rng.standard_normal((n, M.shape[0]))


def linear_posterior(x):
    """Mean (N, 2) and covariance (2, 2) of p(theta | x) for the linear simulator."""
    precision = numpy.eye(D) + M.T @ M / NOISE_LINEAR**2
    cov = numpy.linalg.inv(precision)
    return x @ (cov @ M.T / NOISE_LINEAR**2).T, cov


def simulate_nonlinear(rng, n):
    """(theta, x): theta ~ N(0, I_2), x = (theta_1^2 + theta_2, theta_2) + 0.4 eps."""
    theta = rng.standard_normal((n, D))
    mean = numpy.stack([theta[:, 0] ** 2 + theta[:, 1], theta[:, 1]], axis=-1)
    return theta, mean + NOISE_NONLINEAR * rng.standard_normal((n, 2))


def nonlinear_log_posterior_grid(x):
    """log p(theta | x) on GRID x GRID, (N, G, G) with [i, j] at (GRID[i], GRID[j]).

    Prior times likelihood, normalised so that sum exp(.) dA = 1 (the rectangle rule on a
    grid whose spacing resolves the posterior's narrowest ridge, about 0.2 wide).
    """
    t1, t2 = numpy.meshgrid(GRID, GRID, indexing="ij")
    log_prior = -0.5 * (t1**2 + t2**2)
    r1 = x[:, 0, None, None] - (t1**2 + t2)
    r2 = x[:, 1, None, None] - t2
    log_joint = log_prior - 0.5 * (r1**2 + r2**2) / NOISE_NONLINEAR**2
    area = (GRID[1] - GRID[0]) ** 2
    return log_joint - logsumexp(log_joint, axis=(1, 2), keepdims=True) - math.log(area)


# ------------------------------------------------------------------------- the two flows

def refflow_nsf(rng, context_dim: int, transforms: int = 3, hidden=(64, 64)) -> Flow:
    steps = []
    for k in range(transforms):
        steps += [Reverse()] if k else []
        steps.append(MAF.init(rng, D, hidden=hidden, transformer=RationalQuadraticSpline,
                              activation="relu", context_dim=context_dim, bins=8, bound=5.0))
    return Flow(StandardNormal(D), Compose(*steps))


class Refflow:
    """q(theta | x) with refflow: build, fit, log q on pairs, samples per context."""

    name = "refflow"

    def __init__(self, context_dim, seed):
        self.flow = refflow_nsf(B.rng(seed), context_dim)
        self.seed = seed

    def fit(self, theta, x, steps, batch_size, lr):
        self.flow, _ = fit(self.flow, B.asarray(theta), steps=steps, batch_size=batch_size,
                           lr=lr, rng=B.rng(self.seed + 100), schedule="cosine",
                           context=B.asarray(x))

    def parameters(self):
        return count_parameters(self.flow)

    def log_prob(self, theta, x):
        return B.to_numpy(self.flow.log_prob(B.asarray(theta), context=B.asarray(x)))

    def sample(self, x, n):
        """(n, N, D): n samples for each of the N contexts (each context row repeated n times)."""
        rows = repeat_context(B.asarray(x), n)  # (N n, C): context k for rows k n .. (k + 1) n - 1
        draws = B.to_numpy(self.flow.sample(rows.shape[0], B.rng(self.seed + 200),
                                            context=rows))
        return numpy.swapaxes(draws.reshape(x.shape[0], n, D), 0, 1)


class RefflowTorchInit(Refflow):
    """refflow with torch.nn.Linear's initial scale in every MADE, zuko's (an ablation).

    Weights divided by sqrt(3) (uniform on +-1/sqrt(fan_in) has standard deviation
    1/sqrt(3 fan_in), refflow draws N(0, 1/fan_in)) and biases uniform on +-1/sqrt(fan_in)
    (refflow starts them at zero); everything else as ``Refflow``.
    """

    name = "refflow-torch-init"

    def __init__(self, context_dim, seed):
        super().__init__(context_dim, seed)
        rng = numpy.random.default_rng(seed)
        steps = []
        for step in self.flow.bijection.bijections:
            if isinstance(step, MAF):
                net = step.made.net
                biases = tuple(B.asarray(rng.uniform(-1.0, 1.0, b.shape) / math.sqrt(w.shape[0]))
                               for w, b in zip(net.weights, net.biases))
                weights = tuple(w / math.sqrt(3.0) for w in net.weights)
                net = dataclasses.replace(net, weights=weights, biases=biases)
                step = dataclasses.replace(step, made=dataclasses.replace(step.made, net=net))
            steps.append(step)
        self.flow = Flow(self.flow.base, Compose(*steps))


class Zuko:
    """The same with zuko's conditional NSF (torch, float64, one thread)."""

    name = "zuko"

    def __init__(self, context_dim, seed):
        import torch
        import zuko

        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.torch = torch
        self.flow = zuko.flows.NSF(D, context=context_dim, transforms=3,
                                   hidden_features=(64, 64)).double()
        self.seed = seed

    def fit(self, theta, x, steps, batch_size, lr):
        torch = self.torch
        theta_t, x_t = torch.as_tensor(theta), torch.as_tensor(x)
        optimizer = torch.optim.Adam(self.flow.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(self.seed + 100)
        order, start = torch.randperm(len(theta_t), generator=generator), 0
        for step in range(steps):
            if start + batch_size > len(order):  # a fresh order every epoch, as refflow.fit
                order, start = torch.randperm(len(theta_t), generator=generator), 0
            idx = order[start:start + batch_size]
            start += batch_size
            for group in optimizer.param_groups:
                group["lr"] = learning_rate("cosine", lr, step, steps)
            loss = -self.flow(x_t[idx]).log_prob(theta_t[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def parameters(self):
        return sum(p.numel() for p in self.flow.parameters())

    def log_prob(self, theta, x):
        with self.torch.no_grad():
            return self.flow(self.torch.as_tensor(x)).log_prob(self.torch.as_tensor(theta)).numpy()

    def sample(self, x, n):
        with self.torch.no_grad():
            self.torch.manual_seed(self.seed + 200)
            return self.flow(self.torch.as_tensor(x)).sample((n,)).numpy()


# ------------------------------------------------------------------------- the scores

def expected_kl_linear(model, x, rng, per_x: int = 64):
    """E_x KL(p || q) by Monte Carlo: per_x exact posterior draws for each held-out x."""
    mean, cov = linear_posterior(x)
    chol = numpy.linalg.cholesky(cov)
    eps = rng.standard_normal((per_x, x.shape[0], D))
    theta = mean + eps @ chol.T                                  # (per_x, N, D)
    log_p = (-0.5 * numpy.sum(eps**2, axis=-1) - numpy.sum(numpy.log(numpy.diag(chol)))
             - math.log(2.0 * math.pi))
    contexts = numpy.broadcast_to(x, theta.shape[:-1] + (x.shape[-1],)).reshape(-1, x.shape[-1])
    log_q = model.log_prob(theta.reshape(-1, D), contexts).reshape(theta.shape[:-1])
    per_context = numpy.mean(log_p - log_q, axis=0)
    return float(numpy.mean(per_context)), float(numpy.std(per_context) / math.sqrt(len(x)))


def expected_kl_nonlinear(model, x):
    """E_x KL(p || q) by quadrature on the grid, one held-out x at a time."""
    t1, t2 = numpy.meshgrid(GRID, GRID, indexing="ij")
    points = numpy.stack([t1.ravel(), t2.ravel()], axis=-1)     # (G^2, 2)
    area = (GRID[1] - GRID[0]) ** 2
    log_p = nonlinear_log_posterior_grid(x).reshape(len(x), -1)
    kls = []
    for k in range(len(x)):
        log_q = model.log_prob(points, numpy.repeat(x[k:k + 1], len(points), axis=0))
        kls.append(numpy.sum(numpy.exp(log_p[k]) * (log_p[k] - log_q)) * area)
    kls = numpy.asarray(kls)
    return float(numpy.mean(kls)), float(numpy.std(kls) / math.sqrt(len(x)))


def coverage(model, theta, x, n_samples: int = 500):
    """{level: (D,) fraction of theta*_j inside q's central credible interval of that level}."""
    draws = model.sample(x, n_samples)                          # (S, N, D)
    rank = numpy.mean(draws < theta, axis=0)                    # (N, D): q's CDF at theta*
    return {level: numpy.mean(numpy.abs(rank - 0.5) < level / 2, axis=0) for level in LEVELS}


SIMULATORS = {"linear": simulate_linear, "nonlinear": simulate_nonlinear}
LIBRARIES = {"refflow": Refflow, "zuko": Zuko, "refflow-torch-init": RefflowTorchInit}


def run(problem: str, library: str, seed: int, n_train: int, steps: int, n_kl: int,
        n_coverage: int, batch_size: int = 256, lr: float = 1e-3) -> dict:
    simulate = SIMULATORS[problem]
    data_rng = numpy.random.default_rng([seed, 2])
    theta, x = simulate(data_rng, n_train)
    theta_held, x_held = simulate(data_rng, max(n_kl, n_coverage))
    model = LIBRARIES[library](x.shape[-1], seed)
    start = time.perf_counter()
    model.fit(theta, x, steps, batch_size, lr)
    seconds = time.perf_counter() - start
    if problem == "linear":
        kl, kl_se = expected_kl_linear(model, x_held[:n_kl], numpy.random.default_rng([seed, 3]))
    else:
        kl, kl_se = expected_kl_nonlinear(model, x_held[:n_kl])
    cover = coverage(model, theta_held[:n_coverage], x_held[:n_coverage])
    nll = float(-numpy.mean(model.log_prob(theta_held, x_held)))
    return {"problem": problem, "library": library, "seed": seed, "steps": steps,
            "train": n_train, "parameters": model.parameters(), "seconds": seconds,
            "kl": kl, "kl_se": kl_se, "held_out_nll": nll,
            **{f"coverage_{int(100 * lv)}": cover[lv].tolist() for lv in LEVELS}}


def table(rows: list) -> str:
    """Markdown: mean +- sample std over seeds, per problem and library."""
    head = ("| simulator | library | parameters | E_x KL(p \\|\\| q), nats | held-out NLL | "
            + " | ".join(f"{int(100 * lv)}% coverage theta_1, theta_2" for lv in LEVELS)
            + " | seconds per fit |")
    lines = [head, "|---" * (6 + len(LEVELS)) + "|"]
    for problem in SIMULATORS:
        for library in LIBRARIES:
            group = [r for r in rows if (r["problem"], r["library"]) == (problem, library)]
            if not group:
                continue

            def stat(values, digits=3):
                v = numpy.asarray(values, dtype=float)
                spread = numpy.std(v, ddof=1) if len(v) > 1 else float("nan")
                return f"{v.mean():.{digits}f} +- {spread:.{digits}f}"

            cover = [", ".join(stat([100 * r[f"coverage_{int(100 * lv)}"][j] for r in group], 1)
                               for j in range(D)) for lv in LEVELS]
            lines.append(f"| {problem} | {library} | {group[0]['parameters']} | "
                         f"{stat([r['kl'] for r in group], 4)} | "
                         f"{stat([r['held_out_nll'] for r in group])} | " + " | ".join(cover)
                         + f" | {numpy.mean([r['seconds'] for r in group]):.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--train", type=int, default=20000, help="simulated (theta, x) pairs")
    parser.add_argument("--kl", type=int, default=200, help="held-out x for the expected KL")
    parser.add_argument("--coverage", type=int, default=1000, help="held-out pairs for coverage")
    parser.add_argument("--problems", nargs="+", default=list(SIMULATORS), choices=SIMULATORS)
    parser.add_argument("--libraries", nargs="+", default=["refflow", "zuko"],
                        choices=list(LIBRARIES))
    parser.add_argument("--json", default=None, help="write every run as JSON here")
    args = parser.parse_args()
    rows = []
    for problem in args.problems:
        for library in args.libraries:
            for seed in args.seeds:
                rows.append(run(problem, library, seed, args.train, args.steps, args.kl,
                                args.coverage))
                r = rows[-1]
                if args.json:
                    with open(args.json, "w") as fh:
                        json.dump(rows, fh, indent=1)
                print(f"{problem:<9} {library:<7} seed {seed}: KL {r['kl']:.4f} +- "
                      f"{r['kl_se']:.4f}, held-out NLL {r['held_out_nll']:.3f}, coverage "
                      + ", ".join(f"{k[9:]}%: {v}" for k, v in r.items()
                                  if k.startswith("coverage_"))
                      + f", {r['seconds']:.0f} s")
    print(table(rows))


if __name__ == "__main__":
    main()
