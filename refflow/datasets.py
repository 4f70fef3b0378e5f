r"""Data for density estimation: 2-D toy densities, the MAF toy and scikit-learn's 8x8 digits.

Every toy sampler is ``name(n, rng) -> (n, 2)`` array of the current backend (float64), drawn
in one vectorised pass from ``rng = refflow.backend.rng(seed)``. Where the true density is
known in closed form (``eight_gaussians``, ``checkerboard``, ``maf_toy``) ``LOG_PROBS`` holds
it, so that KL(p || q) = E_p[log p(x) - log q(x)] of a fitted flow q can be measured.

Images are modelled in logit space; ``dequantize``, ``logit_transform`` and ``bits_per_dim``
turn a flow's log-density there into bits per dimension of the discrete pixels.

Notes
-----
Lecture: Definition (Normalizing flows), "density estimation, i.e. fitting p_theta(x) to the
data".

References
----------
1. G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density
   Estimation. NeurIPS, 2017.
2. W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud. FFJORD: Free-form
   Continuous Dynamics for Scalable Reversible Generative Models. ICLR, 2019.
3. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.
4. L. Theis, A. van den Oord, M. Bethge. A note on the evaluation of generative models.
   ICLR, 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import autograd.numpy as np

from refflow import backend as B
from refflow.checks import check_array, check_int

__all__ = [
    "DATASETS",
    "DIGITS_LEVELS",
    "LOG_PROBS",
    "bits_per_dim",
    "checkerboard",
    "checkerboard_log_prob",
    "circles",
    "dequantize",
    "digits",
    "eight_gaussians",
    "eight_gaussians_log_prob",
    "logit_inverse",
    "logit_transform",
    "maf_toy",
    "maf_toy_log_prob",
    "moons",
    "pinwheel",
    "two_spirals",
]

DIGITS_LEVELS = 17
_LOG_2PI = math.log(2.0 * math.pi)


def _check_rng(rng: Any) -> Any:
    if not all(hasattr(rng, m) for m in ("standard_normal", "uniform", "integers")):
        raise ValueError(
            f"rng: expected a refflow.backend.rng(seed) Generator, got {type(rng).__name__}"
        )
    return rng


def _columns(a, b):
    """The (n,) arrays a and b side by side as an (n, 2) array."""
    return np.concatenate([a[:, None], b[:, None]], axis=1)


def moons(n: int, rng: Any, noise: float = 0.1):
    r"""Two interleaved half circles: (cos t, sin t) and (1 - cos t, 1/2 - sin t), t ~ U[0, pi].

    Each point picks a moon with probability 1/2, gets isotropic N(0, noise^2) noise, and the
    whole set is shifted by (-1/2, -1/4) so that its mean is exactly 0.

    References
    ----------
    1. F. Pedregosa et al. Scikit-learn: Machine Learning in Python. JMLR, 2011.

    >>> moons(5, B.rng(0)).shape
    (5, 2)
    """
    n, rng = check_int("n", n), _check_rng(rng)
    b = rng.integers(0, 2, n)  # 1 = the lower moon
    t = rng.uniform(0.0, math.pi, n)
    x1 = b + (1 - 2 * b) * np.cos(t) - 0.5
    x2 = 0.5 * b + (1 - 2 * b) * np.sin(t) - 0.25
    return _columns(x1, x2) + noise * rng.standard_normal((n, 2))


def circles(n: int, rng: Any, noise: float = 0.1):
    r"""Two concentric circles of radius 2 and 1: r (cos t, sin t) + noise, t ~ U[0, 2 pi).

    >>> circles(3, B.rng(0)).shape
    (3, 2)
    """
    n, rng = check_int("n", n), _check_rng(rng)
    r = 2.0 - rng.integers(0, 2, n)
    t = rng.uniform(0.0, 2.0 * math.pi, n)
    return _columns(r * np.cos(t), r * np.sin(t)) + noise * rng.standard_normal((n, 2))


def eight_gaussians(n: int, rng: Any, radius: float = 2.0, scale: float = 0.25):
    r"""Equal mixture of 8 Gaussians N(c_k, scale^2 I), c_k = radius (cos(k pi/4), sin(k pi/4)).

    The density is ``eight_gaussians_log_prob``.

    References
    ----------
    1. Grathwohl et al. FFJORD. ICLR, 2019 (the 8-Gaussians toy).

    >>> eight_gaussians(4, B.rng(0)).shape
    (4, 2)
    """
    n, rng = check_int("n", n), _check_rng(rng)
    angle = rng.integers(0, 8, n) * (math.pi / 4.0)
    centres = radius * _columns(np.cos(angle), np.sin(angle))
    return centres + scale * rng.standard_normal((n, 2))


def eight_gaussians_log_prob(x, radius: float = 2.0, scale: float = 0.25):
    r"""log p(x) = log (1/8) sum_k N(x; c_k, scale^2 I), the density of ``eight_gaussians``.

    Computed as a log-sum-exp over the eight components (shifted by their maximum), so it
    stays finite far from every centre. x: (..., 2) -> (...,).

    >>> round(float(eight_gaussians_log_prob(B.asarray([[2.0, 0.0]]))[0]), 4)
    -1.1447
    """
    x = check_array("x", x, min_ndim=1, last=2)
    # one quadratic form per component: a loop over 8 constants, not over samples
    logits = [
        -0.5 * ((x[..., 0] - radius * math.cos(k * math.pi / 4)) ** 2
                + (x[..., 1] - radius * math.sin(k * math.pi / 4)) ** 2) / scale**2
        for k in range(8)
    ]
    top = logits[0]
    for other in logits[1:]:
        top = np.maximum(top, other)
    total = sum(np.exp(lg - top) for lg in logits)
    return top + np.log(total) - math.log(8.0) - _LOG_2PI - 2.0 * math.log(scale)


def checkerboard(n: int, rng: Any):
    r"""Uniform on the 8 dark cells of a 4 x 4 board of 2 x 2 squares covering [-4, 4)^2.

    A cell (i, j), i, j in {0..3}, with x in [-4 + 2i, -2 + 2i) x [-4 + 2j, -2 + 2j), is dark
    when i + j is even; the density is 1/32 there and 0 elsewhere (``checkerboard_log_prob``).

    >>> checkerboard(4, B.rng(0)).shape
    (4, 2)
    """
    n, rng = check_int("n", n), _check_rng(rng)
    cell = rng.integers(0, 8, n)
    j = cell // 2
    i = 2 * (cell % 2) + j % 2  # i + j = 2 (cell % 2) + (j + j % 2): always even
    u = rng.uniform(0.0, 1.0, (n, 2))
    return -4.0 + 2.0 * (_columns(i, j) + u)


def checkerboard_log_prob(x):
    r"""log p(x) = -log 32 on the dark cells of ``checkerboard``, -inf elsewhere.

    x: (..., 2) -> (...,). Not differentiable (piecewise constant).

    >>> float(checkerboard_log_prob(B.asarray([[-3.0, -3.0]]))[0]) == -math.log(32.0)
    True
    """
    x = check_array("x", x, min_ndim=1, last=2)
    cell = np.floor((x + 4.0) / 2.0)  # (..., 2) integer-valued cell indices
    inside = np.all((cell >= 0) & (cell <= 3), axis=-1)
    dark = np.mod(cell[..., 0] + cell[..., 1], 2.0) == 0
    zero = np.zeros_like(x[..., 0])
    return np.where(inside & dark, zero - math.log(32.0), zero - np.inf)


def pinwheel(n: int, rng: Any, arms: int = 5, radial_std: float = 0.3,
             tangential_std: float = 0.05, rate: float = 0.25):
    r"""Pinwheel: (r, t) = (1 + radial_std e1, tangential_std e2) rotated by 2 pi k/arms + rate e^r.

    k ~ U{0..arms-1}, e ~ N(0, I); the arm bends more the further out a point lies. Scaled
    by 2 so that the data spans about [-4, 4]^2.

    References
    ----------
    1. M. J. Johnson, D. Duvenaud, A. B. Wiltschko, S. R. Datta, R. P. Adams. Composing
       graphical models with neural networks for structured representations and fast
       inference. NeurIPS, 2016.

    >>> pinwheel(4, B.rng(0)).shape
    (4, 2)
    """
    n, rng = check_int("n", n), _check_rng(rng)
    arms = check_int("arms", arms)
    e = rng.standard_normal((n, 2))
    r = 1.0 + radial_std * e[:, 0]
    t = tangential_std * e[:, 1]
    angle = rng.integers(0, arms, n) * (2.0 * math.pi / arms) + rate * np.exp(r)
    c, s = np.cos(angle), np.sin(angle)
    return 2.0 * _columns(c * r - s * t, s * r + c * t)


def two_spirals(n: int, rng: Any, noise: float = 0.1):
    r"""Two interleaved spirals: +-(-t cos t, t sin t) / pi + noise, t = 3 pi sqrt(u), u ~ U[0, 1).

    The square root spreads points evenly along the arms (arc length grows like t^2); each
    arm winds 1.5 times and ends at radius 3.

    >>> two_spirals(4, B.rng(0)).shape
    (4, 2)
    """
    n, rng = check_int("n", n), _check_rng(rng)
    sign = 1 - 2 * rng.integers(0, 2, n)
    t = 3.0 * math.pi * np.sqrt(rng.uniform(0.0, 1.0, n))
    arm = _columns(-t * np.cos(t), t * np.sin(t)) / math.pi
    return sign[:, None] * arm + noise * rng.standard_normal((n, 2))


def maf_toy(n: int, rng: Any):
    r"""The MAF paper's toy: x2 ~ N(0, 2^2), x1 | x2 ~ N(x2^2 / 4, 1); columns (x1, x2).

    Its entropy is log(2 pi e) + log 2 = 3.531 nats, the best possible test NLL. An
    autoregressive model with order (x2, x1) fits it exactly; order (x1, x2) does not.

    References
    ----------
    1. G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density
       Estimation. NeurIPS, 2017 (Section 2.1, Figure 1).

    >>> maf_toy(4, B.rng(0)).shape
    (4, 2)
    """
    n, rng = check_int("n", n), _check_rng(rng)
    e = rng.standard_normal((n, 2))
    x2 = 2.0 * e[:, 1]
    return _columns(0.25 * x2**2 + e[:, 0], x2)


def maf_toy_log_prob(x):
    r"""log p(x) = log N(x2; 0, 4) + log N(x1; x2^2 / 4, 1), the density of ``maf_toy``.

    x: (..., 2) -> (...,).

    >>> round(float(maf_toy_log_prob(B.asarray([[0.0, 0.0]]))[0]), 4)
    -2.531
    """
    x = check_array("x", x, min_ndim=1, last=2)
    x1, x2 = x[..., 0], x[..., 1]
    return -0.5 * (x2 / 2.0) ** 2 - 0.5 * (x1 - 0.25 * x2**2) ** 2 - _LOG_2PI - math.log(2.0)


DATASETS: dict[str, Callable[..., Any]] = {
    "moons": moons,
    "circles": circles,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "two_spirals": two_spirals,
    "maf_toy": maf_toy,
}

LOG_PROBS: dict[str, Callable[..., Any]] = {
    "eight_gaussians": eight_gaussians_log_prob,
    "checkerboard": checkerboard_log_prob,
    "maf_toy": maf_toy_log_prob,
}


# ------------------------------------------------------------------------- images


def digits(split: str = "train", rng: Any = None):
    r"""scikit-learn's 8x8 handwritten digits as (N, 8, 8, 1) float images of integers 0..16.

    The 1797 images are shuffled once by NumPy's legacy ``RandomState(0)`` (a stream frozen by
    NumPy's compatibility policy, so the split never changes); the last 359 (20%) are the
    test set, the other 1438 the training set. With ``rng`` the returned rows are shuffled.
    The data ship with scikit-learn: nothing is downloaded.

    References
    ----------
    1. E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. UCI Machine
       Learning Repository, 1998.

    >>> digits("test").shape
    (359, 8, 8, 1)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.utils import check_random_state
    except ImportError as exc:
        raise ImportError(
            "refflow.datasets.digits needs scikit-learn, which bundles the 8x8 digits: "
            "pip install scikit-learn"
        ) from exc
    images = load_digits().images  # (1797, 8, 8), host float64
    order = check_random_state(0).permutation(len(images))
    n_test = len(images) // 5
    rows = order[-n_test:] if split == "test" else order[:-n_test]
    x = B.asarray(images[rows][..., None])  # (N, 8, 8, 1)
    if rng is not None:
        x = x[_check_rng(rng).permutation(x.shape[0])]
    return x


def dequantize(x, rng: Any, levels: int = DIGITS_LEVELS):
    r"""Uniform dequantisation y = (x + u) / levels, u ~ U[0, 1)^D, mapping {0..levels-1} to [0, 1).

    Notes
    -----
    A density q_V on v = x + u gives the discrete model P(x) = int_{[0,1)^D} q_V(x + u) du,
    and by Jensen log P(x) >= E_u log q_V(x + u), so the continuous NLL bounds the discrete
    one from above [1, 2]. Rescaling v to y = v / levels costs D log(levels) in log-density.

    References
    ----------
    1. B. Uria, I. Murray, H. Larochelle. RNADE: The real-valued neural autoregressive
       density-estimator. NeurIPS, 2013.
    2. L. Theis, A. van den Oord, M. Bethge. A note on the evaluation of generative models.
       ICLR, 2016.

    >>> y = dequantize(B.asarray([[0.0, 16.0]]), B.rng(0))
    >>> bool(((y >= 0) & (y < 1)).all())
    True
    """
    levels = check_int("levels", levels, minimum=2)
    x = check_array("x", x, min_ndim=1)
    host = B.to_numpy(x)
    if host.size and not (host.min() >= 0 and host.max() <= levels - 1
                          and (host == host.round()).all()):
        raise ValueError(f"x: expected integer values in 0..{levels - 1}")
    return (x + _check_rng(rng).uniform(0.0, 1.0, x.shape)) / levels


def logit_transform(y, alpha: float = 0.05):
    r"""RealNVP's preprocessing t = logit(alpha + (1 - 2 alpha) y), with its per-sample log-det.

    y: (N, ...) in [0, 1]; returns t (same shape) and log|det dt/dy| of shape (N,), summed
    over all axes but the first. alpha keeps t finite at y = 0 and y = 1.

    Notes
    -----
    .. math::
        s = \alpha + (1 - 2\alpha) y, \quad t = \log s - \log(1 - s), \quad
        \log\left|\det \frac{\partial t}{\partial y}\right|
            = \sum_d \log(1 - 2\alpha) - \log s_d - \log(1 - s_d)

    Invertible for 0 <= alpha < 1/2 (``logit_inverse``); cost O(D).

    References
    ----------
    1. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017
       (Section 4.1).

    >>> t, logdet = logit_transform(B.asarray([[0.5, 0.5]]))
    >>> float(t[0, 0]), round(float(logdet[0]), 4)
    (0.0, 2.5619)
    """
    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"alpha: expected 0 <= alpha < 0.5, got {alpha!r}")
    y = check_array("y", y, min_ndim=2)
    s = alpha + (1.0 - 2.0 * alpha) * y
    log_s, log_1ms = np.log(s), np.log1p(-s)
    per_dim = math.log(1.0 - 2.0 * alpha) - log_s - log_1ms
    return log_s - log_1ms, np.sum(per_dim, axis=tuple(range(1, len(y.shape))))


def logit_inverse(t, alpha: float = 0.05):
    r"""The inverse of ``logit_transform``: y = (sigmoid(t) - alpha) / (1 - 2 alpha).

    >>> float(logit_inverse(B.asarray([[0.0]]))[0, 0])
    0.5
    """
    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"alpha: expected 0 <= alpha < 0.5, got {alpha!r}")
    sigmoid = 0.5 * (np.tanh(0.5 * t) + 1.0)  # no overflow for large |t|
    return (sigmoid - alpha) / (1.0 - 2.0 * alpha)


def bits_per_dim(log_prob_transformed, logdet_preprocess, levels: int, dim: int):
    r"""Bits/dim = (D log(levels) - log q_T(t) - log|det dt/dy|) / (D ln 2), per sample.

    Parameters
    ----------
    log_prob_transformed : (N,) the model's log-density of the preprocessed data t.
    logdet_preprocess : (N,) log|det dt/dy| of the preprocessing y -> t (0 without one).
    levels : number of pixel values (17 for the digits).
    dim : D, the number of pixels per sample (64 for the digits).

    Notes
    -----
    Pixels x in {0..levels-1}^D, dequantised v = x + u, y = v / levels, t = g(y). Change of
    variables gives the density of v, and by Jensen an upper bound on the discrete NLL:

    .. math::
        -\log P(x) \le -\log q_V(v)
            = -\log q_T(t) - \log\left|\det \frac{\partial t}{\partial y}\right| + D \log L,
        \qquad \text{bits/dim} = \frac{-\log q_V(v)}{D \ln 2}.

    A model uniform on [0, 1)^D in y (log q_T + log-det = 0) scores log2(levels) exactly.
    Average over the data (and over u) to report a test score.

    References
    ----------
    1. L. Theis, A. van den Oord, M. Bethge. A note on the evaluation of generative models.
       ICLR, 2016.
    2. L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP. ICLR, 2017.

    >>> round(float(bits_per_dim(B.asarray([0.0]), B.asarray([0.0]), 17, 64)[0]), 4)
    4.0875
    """
    levels = check_int("levels", levels, minimum=2)
    dim = check_int("dim", dim)
    nll = dim * math.log(levels) - log_prob_transformed - logdet_preprocess
    return nll / (dim * math.log(2.0))
