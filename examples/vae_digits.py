r"""Amortised variational inference: a VAE on the 8x8 digits, diagonal Gaussian vs IAF posterior.

The lecture's second application: a variational posterior q_theta(z | x) "parameterized by
a flow model", trained by maximising

    ELBO(x) = E_q[log p(x | z) + log p(z) - log q(z | x)]  <=  log p(x).

Model: z in R^8, p(z) = N(0, I); decoder p(x | z) = prod_d Binomial(x_d; 16, sigmoid(l_d(z)))
on the 64 pixel counts 0..16 (a discrete likelihood, so the bounds below are in nats of
the actual pixels, no dequantisation); encoder and decoder are tanh MLPs with one hidden
layer of 128 units.

Posteriors (same encoder network, same seed, same budget):

* ``gaussian``: z = mu(x) + sigma(x) * eps, eps ~ N(0, I);
* ``iaf``: the same Gaussian followed by two IAF layers (and a reversal between them),
  z = IAF_2(R(IAF_1(z_0))), without a context: these IAF layers are shared by all x, so the
  flow bends the shape of every posterior the same way, the encoder places and scales it;
* ``iaf_context``: as ``iaf``, but the encoder also outputs a context h(x) in R^16 and the
  IAF steps are conditional flows, ``IAF.init(..., context_dim=16)``: h(x) enters every
  layer of each step's MADE, unmasked (Kingma et al. 2016, section 4), so the flow's shape
  depends on x. The autoregressive property holds in z because h(x) does not depend on z.

Reported on the 359 test images: the test ELBO (10 samples per image) and the
importance-weighted estimate log p(x) ~ log (1/S) sum_s p(x, z_s) / q(z_s | x), S = 500
(Burda et al. 2016), a tighter lower bound that is consistent as S grows.

Budget: ``--steps 4000`` (default) takes 21 s (Gaussian), 35 s (IAF) and about 40 s (IAF
with context), evaluation included, on an idle 2-core machine; ``--steps 200`` is a smoke
test. Results: docs/results_vi.md.

References
----------
1. D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR, 2014.
2. D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling. Improving
   Variational Inference with Inverse Autoregressive Flow. NeurIPS, 2016.
3. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR, 2016.
"""

from __future__ import annotations

import os

# tiny matrices: OpenBLAS threads only spin (10x slower on a busy 2-core machine)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import autograd.numpy as np
from autograd import value_and_grad

from refflow import backend as B
from refflow.affine import Reverse
from refflow.autoregressive import IAF
from refflow.core import Compose
from refflow.datasets import digits
from refflow.nn import MLP
from refflow.train import Adam, learning_rate
from refflow.tree import count_parameters, partition

LEVELS = 16       # pixel counts 0..16: Binomial(16, p)
LATENT = 8
HIDDEN = 128
CONTEXT = 16      # size of the encoder context h(x) of the conditional IAF steps (iaf_context)
MADE_HIDDEN = 64
LOG_2PI = math.log(2.0 * math.pi)


def log_binomial_coefficients(x):
    """sum_d log C(16, x_d) per image: the constant of the Binomial likelihood (host)."""
    host = B.to_numpy(x)
    table = [math.lgamma(LEVELS + 1) - math.lgamma(k + 1) - math.lgamma(LEVELS - k + 1)
             for k in range(LEVELS + 1)]
    return B.asarray(np.sum(np.asarray(table)[host.astype(int)], axis=-1))


def init(rng, posterior):
    """(encoder, decoder, flow): the flow is None for the Gaussian posterior."""
    context = CONTEXT if posterior == "iaf_context" else 0
    encoder = MLP.init(rng, [64, HIDDEN, 2 * LATENT + context])
    decoder = MLP.init(rng, [LATENT, HIDDEN, 64])
    flow = None
    if posterior in ("iaf", "iaf_context"):
        flow = Compose(IAF.init(rng, LATENT, hidden=(MADE_HIDDEN,), context_dim=context),
                       Reverse(),
                       IAF.init(rng, LATENT, hidden=(MADE_HIDDEN,), context_dim=context))
    return (encoder, decoder, flow)


def log_joint_and_q(model, x, const, eps):
    """log p(x, z) and log q(z | x) for z drawn with the noise eps (S, N, LATENT)."""
    encoder, decoder, flow = model
    h = encoder(x / LEVELS)  # (N, 2 LATENT + context)
    mu, log_sigma = h[:, :LATENT], h[:, LATENT:2 * LATENT]
    z = mu + np.exp(log_sigma) * eps  # (S, N, LATENT)
    log_q = -0.5 * np.sum(eps**2, axis=-1) - np.sum(log_sigma, axis=-1) - 0.5 * LATENT * LOG_2PI
    if flow is not None:
        # one context row per z row: h(x) repeated over the S noise samples, (S, N, CONTEXT)
        context = h[:, 2 * LATENT:] + np.zeros_like(eps[..., :1]) if flow.context_dim else None
        z, log_det = flow.forward(z, context=context)
        log_q = log_q - log_det
    logits = decoder(z)  # (S, N, 64)
    # Binomial(16, sigmoid(l)): x l - 16 log(1 + e^l), plus log C(16, x)
    log_px = np.sum(x * logits - LEVELS * np.logaddexp(0.0, logits), axis=-1) + const
    log_pz = -0.5 * np.sum(z**2, axis=-1) - 0.5 * LATENT * LOG_2PI
    return log_px + log_pz, log_q


def train(posterior, data, steps, batch, lr, seed):
    rng = B.rng(seed)
    params, rebuild = partition(init(rng, posterior))
    n = data.shape[0]
    const = log_binomial_coefficients(data)

    def loss(p, xb, cb, eps):
        log_joint, log_q = log_joint_and_q(rebuild(p), xb, cb, eps)
        return -np.sum(log_joint - log_q) / xb.shape[0]

    grad = value_and_grad(loss)
    opt = Adam(lr=lr)
    state = opt.init(params)
    order = B.to_numpy(rng.permutation(n))
    for step in range(steps):
        start = (step * batch) % (n - batch + 1)
        if start < batch and step:
            order = B.to_numpy(rng.permutation(n))
        idx = order[start:start + batch]
        eps = rng.standard_normal((1, batch, LATENT))
        _, g = grad(params, data[idx], const[idx], eps)
        params, state = opt.step(params, g, state,
                                 lr=learning_rate("cosine", lr, step, steps))
    return rebuild(params)


def evaluate(model, x, rng, samples=500, chunk=50):
    """Test ELBO (10 samples) and the importance-weighted log-likelihood (``samples``), nats."""
    const = log_binomial_coefficients(x)
    lj, lq = log_joint_and_q(model, x, const, rng.standard_normal((10, x.shape[0], LATENT)))
    test_elbo = float(np.mean(B.to_numpy(lj - lq)))
    weights = []
    for _ in range(samples // chunk):
        lj, lq = log_joint_and_q(model, x, const, rng.standard_normal((chunk, x.shape[0], LATENT)))
        weights.append(B.to_numpy(lj - lq))
    w = np.concatenate(weights, axis=0)  # (samples, N)
    top = np.max(w, axis=0)
    iw = top + np.log(np.mean(np.exp(w - top), axis=0))
    return test_elbo, float(np.mean(iw))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--posteriors", nargs="+", default=["gaussian", "iaf", "iaf_context"],
                        choices=["gaussian", "iaf", "iaf_context"])
    parser.add_argument("--json", default=None, help="write the table as JSON here")
    args = parser.parse_args()
    train_x = np.reshape(digits("train"), (-1, 64))
    test_x = np.reshape(digits("test"), (-1, 64))
    rows = []
    print(f"{'posterior':<12} {'params':>7} {'test ELBO':>10} {'IW log p(x), S=500':>19} "
          f"{'gap':>6} {'seconds':>8}")
    for posterior in args.posteriors:
        start = time.perf_counter()
        model = train(posterior, train_x, args.steps, args.batch, args.lr, args.seed)
        test_elbo, iw = evaluate(model, test_x, B.rng(args.seed + 1))
        seconds = time.perf_counter() - start
        rows.append({"posterior": posterior, "parameters": count_parameters(model),
                     "test_elbo": test_elbo, "iw_log_likelihood": iw, "seconds": seconds,
                     "steps": args.steps})
        print(f"{posterior:<12} {rows[-1]['parameters']:>7} {test_elbo:>10.2f} {iw:>19.2f} "
              f"{iw - test_elbo:>6.2f} {seconds:>8.0f}")
    print("nats per image (64 pixels, counts 0..16); gap = IW bound - ELBO")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
