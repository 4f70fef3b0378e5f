r"""Glow's latent factors on the 8x8 digits: interpolation, temperature, attribute manipulation.

The lecture's "Latent factors" (Kingma & Dhariwal 2018, section 5): because a flow is
invertible, every image x has an exact latent z = f^{-1}(x), and one can compute in z:

* **interpolation**: z_t = (1 - t) z_a + t z_b between the latents of two test images,
  decoded x_t = f(z_t);
* **temperature**: samples x = f(z) with z ~ N(0, T^2 I), T < 1, trade diversity for
  typicality (the paper's "reduced temperature");
* **attribute manipulation**: the paper moves a face's latent along the difference of the
  mean latents of images with and without an attribute (smiling, blond hair, ...). Here the
  attribute is the digit class: x' = f(z_x + alpha (zbar_b - zbar_a)), zbar_k the mean latent
  of the training images of class k;
* **a class-conditional Glow** p(x | c), the one-hot class as context (``context_dim=10``,
  extra channels of every coupling's conv net): samples of a chosen class at temperature T,
  and the class swap x' = f(f^{-1}(x; c_a); c_b), which keeps z (the writing style) and
  changes the class.

Preprocessing and architecture are those of ``examples/digits_flows.py`` (dequantisation,
logit space; 2 levels of 4 Glow steps with 32 hidden channels, ActNorm from data). The
figures' class claims are measured: a logistic regression trained on the training images'
pixels (98% test accuracy) labels the generated images, so the table gives how often a
class-conditional sample is read as its class, per temperature, and how often an image moved
along zbar_b - zbar_a is read as class b, against the same move made in logit-pixel space.

Run: ``python examples/glow_latents.py [--steps 400] [--out docs/_static/conditional]``;
writes glow_interpolation.png, glow_temperature.png, glow_attributes.png; results in
docs/conditional.md.

References
----------
1. D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
   NeurIPS, 2018.
"""

from __future__ import annotations

import os

# small convolutions: OpenBLAS threads only spin on a busy 2-core machine
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import matplotlib  # noqa: E402
import numpy  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from digits_flows import SHAPE, grid, preprocess, to_images  # noqa: E402

from refflow import backend as B  # noqa: E402
from refflow.core import Flow  # noqa: E402
from refflow.datasets import digits  # noqa: E402
from refflow.distributions import StandardNormal  # noqa: E402
from refflow.glow import Glow, init_from_data  # noqa: E402
from refflow.train import fit  # noqa: E402

CLASSES = 10
TEMPERATURES = (0.0, 0.5, 0.7, 0.85, 1.0)


def digit_labels(split: str):
    """The class of each image of ``refflow.datasets.digits(split)``, in the same order.

    ``digits`` returns images only; its split is scikit-learn's 1797 images shuffled by
    ``RandomState(0)``, the last 359 held out, which this repeats (and checks on the pixels).
    """
    from sklearn.datasets import load_digits
    from sklearn.utils import check_random_state

    bunch = load_digits()
    order = check_random_state(0).permutation(len(bunch.images))
    rows = order[-(len(order) // 5):] if split == "test" else order[:-(len(order) // 5)]
    if not numpy.array_equal(bunch.images[rows][..., None], B.to_numpy(digits(split))):
        raise RuntimeError("refflow.datasets.digits changed its split: update digit_labels")
    return bunch.target[rows]


def one_hot(labels):
    return B.asarray(numpy.eye(CLASSES)[labels])


def train_glow(t, context, steps: int, seed: int) -> Flow:
    """Glow of digits_flows.py (conditional when ``context`` is given), ActNorm from data."""
    glow = Glow.init(B.rng(seed), SHAPE, levels=2, steps=4, hidden=32, zero_last=True,
                     context_dim=0 if context is None else CLASSES)
    flow = init_from_data(Flow(StandardNormal(SHAPE), glow), t[:512],
                          context=None if context is None else context[:512])
    flow, _ = fit(flow, t, steps=steps, batch_size=128, lr=2e-3, rng=B.rng(seed + 1),
                  context=context)
    return flow


def latents(flow, t, context=None):
    z, _ = flow.bijection.inverse(t, context=context)
    return z


def decode(flow, z, context=None):
    x, _ = flow.bijection.forward(z, context=context)
    return x


def interpolate(za, zb, steps: int):
    """(steps, *shape): z_t = (1 - t) z_a + t z_b at t = 0, 1/(steps-1), ..., 1."""
    t = numpy.linspace(0.0, 1.0, steps).reshape((-1,) + (1,) * za.ndim)
    return (1.0 - t) * za + t * zb


def class_means(z, labels):
    """(CLASSES, *shape): the mean latent of each class."""
    return numpy.stack([z[labels == k].mean(axis=0) for k in range(CLASSES)])


def classifier(train_images, labels):
    """Logistic regression on pixel intensities in [0, 1] (the judge of the class claims)."""
    from sklearn.linear_model import LogisticRegression

    flat = numpy.reshape(train_images, (len(labels), -1)) / 16.0
    return LogisticRegression(max_iter=2000, C=1.0).fit(flat, labels)


def read(judge, images):
    """Classes the judge reads in images with intensities in [0, 1], (N, 8, 8)."""
    return judge.predict(numpy.reshape(images, (len(images), -1)))


def show(rows, titles, path):
    """One panel per (n_rows, n_cols, 8, 8) array of images, about half an inch per image."""
    width = sum(0.5 * images.shape[1] + 0.6 for images in rows)
    height = max(0.5 * images.shape[0] for images in rows) + 1.0
    fig, axes = plt.subplots(1, len(rows), figsize=(max(width, 4.5), height),
                             width_ratios=[images.shape[1] for images in rows])
    for ax, images, title in zip(numpy.atleast_1d(axes), rows, titles):
        n_rows, n_cols = images.shape[:2]
        ax.imshow(grid(images.reshape((-1, 8, 8)), n_rows, n_cols), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(out: str, steps: int, seed: int, table_json: str | None) -> None:
    os.makedirs(out, exist_ok=True)
    train_y, test_y = digit_labels("train"), digit_labels("test")
    t_train, _ = preprocess(digits("train"), B.rng(seed))        # (1438, 8, 8, 1)
    t_test, _ = preprocess(digits("test"), B.rng(seed + 1))
    judge = classifier(B.to_numpy(digits("train")), train_y)
    accuracy = float(numpy.mean(read(judge, B.to_numpy(digits("test")) / 16.0) == test_y))
    results = {"steps": steps, "seed": seed, "judge_test_accuracy": accuracy}

    start = time.perf_counter()
    plain = train_glow(t_train, None, steps, seed)
    cond = train_glow(t_train, one_hot(train_y), steps, seed + 10)
    results["train_seconds"] = time.perf_counter() - start
    rng = B.rng(seed + 2)

    # interpolation: pairs of test images, through the unconditional latent space
    pairs = [(0, 1), (3, 8), (4, 9), (7, 2), (5, 6)]
    first = {k: int(numpy.flatnonzero(test_y == k)[0]) for k in range(CLASSES)}
    z_test = B.to_numpy(latents(plain, t_test))
    rows = numpy.stack([to_images(decode(plain, B.asarray(interpolate(
        z_test[first[a]], z_test[first[b]], 8)))) for a, b in pairs])       # (5, 8, 8, 8)
    show([rows], ["z_t = (1 - t) z_a + t z_b, t = 0 .. 1"],
         os.path.join(out, "glow_interpolation.png"))

    # temperature: 10 classes x 6 samples per T, class-conditional Glow
    panels, results["class_read_at_T"] = [], {}
    labels = numpy.repeat(numpy.arange(CLASSES), 6)
    for T in TEMPERATURES:
        z = T * rng.standard_normal((len(labels),) + SHAPE)
        images = to_images(decode(cond, z, one_hot(labels)))
        results["class_read_at_T"][str(T)] = float(numpy.mean(read(judge, images) == labels))
        panels.append(images.reshape(CLASSES, 6, 8, 8))
    show(panels, [f"T = {T}: {100 * results['class_read_at_T'][str(T)]:.0f}% read as c"
                  for T in TEMPERATURES], os.path.join(out, "glow_temperature.png"))

    # attribute manipulation: move along zbar_b - zbar_a (unconditional), and the class swap
    # with z kept (conditional); source images: test images of class a
    means = class_means(B.to_numpy(latents(plain, t_train)), train_y)
    # the same move in logit-pixel space, t + alpha (tbar_b - tbar_a): what a linear "flow"
    # would do, so the latent space's share of the effect is the difference
    pixel_means = class_means(B.to_numpy(t_train), train_y)
    alphas = numpy.array([0.0, 0.5, 1.0, 1.5, 2.0])
    moves = [(1, 7), (3, 8), (4, 9), (6, 5), (0, 2)]
    panel_move, panel_swap, read_swap = [], [], []
    read_move, read_pixel = {a: [] for a in alphas}, {a: [] for a in alphas}
    for a, b in moves:
        sources = numpy.flatnonzero(test_y == a)
        z = z_test[sources]
        shifted = z[None] + alphas.reshape(-1, 1, 1, 1, 1) * (means[b] - means[a])
        images = to_images(decode(plain, B.asarray(shifted.reshape((-1,) + SHAPE))))
        images = images.reshape(len(alphas), len(sources), 8, 8)
        in_pixels = to_images(B.asarray((B.to_numpy(t_test)[sources][None] + alphas.reshape(
            -1, 1, 1, 1, 1) * (pixel_means[b] - pixel_means[a])).reshape((-1,) + SHAPE)))
        for alpha, block, pixel_block in zip(alphas, images,
                                             in_pixels.reshape(images.shape)):
            read_move[alpha].append(numpy.mean(read(judge, block) == b))
            read_pixel[alpha].append(numpy.mean(read(judge, pixel_block) == b))
        panel_move.append(images[:, 0])
        zc = latents(cond, t_test[sources], one_hot(numpy.full(len(sources), a)))
        swapped = to_images(decode(cond, zc, one_hot(numpy.full(len(sources), b))))
        read_swap.append(numpy.mean(read(judge, swapped) == b))
        panel_swap.append(numpy.stack([to_images(t_test[sources[0]:sources[0] + 1])[0],
                                       swapped[0]]))
    results["read_as_b_after_move"] = {str(a): float(numpy.mean(v)) for a, v in read_move.items()}
    results["read_as_b_after_pixel_move"] = {str(a): float(numpy.mean(v))
                                             for a, v in read_pixel.items()}
    results["read_as_b_after_swap"] = float(numpy.mean(read_swap))
    results["moves"] = moves
    show([numpy.stack(panel_move), numpy.stack(panel_swap)],
         ["f(z + alpha (zbar_b - zbar_a)), alpha = 0 .. 2", "x, f(f^-1(x; a); b)"],
         os.path.join(out, "glow_attributes.png"))
    print(json.dumps(results, indent=1))
    if table_json:
        with open(table_json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("docs", "_static", "conditional"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the measured numbers here")
    args = parser.parse_args()
    main(args.out, args.steps, args.seed, args.json)
