r"""The 2-D energies U1..U4 of Rezende & Mohamed (2015, Table 1), targets p(z) = exp(-U(z)) / Z.

Each ``U(z)`` maps (..., 2) to (...,) energies with ``autograd.numpy`` only, so it is
differentiable and runs on any backend. They are the targets of variational inference with a
flow q: the free energy F(q) = E_q[log q(z) + U(z)] is minimised, and
KL(q || p) = F(q) + log Z, so ``log_normalizer`` turns F into a KL divergence.

Notes
-----
Lecture: Definition (Normalizing flows), "Variational inference" (the ELBO with
log p(x | z) + log p(z) = -U(z) + const).

With w1(z) = sin(2 pi z1 / 4), w2(z) = 3 exp(-(1/2) ((z1 - 1) / 0.6)^2),
w3(z) = 3 sigma((z1 - 1) / 0.3), sigma(x) = 1 / (1 + e^-x):

.. math::
    U_1(z) &= \tfrac12 \left(\frac{\|z\| - 2}{0.4}\right)^2
        - \log\left(e^{-\frac12 \left(\frac{z_1 - 2}{0.6}\right)^2}
                  + e^{-\frac12 \left(\frac{z_1 + 2}{0.6}\right)^2}\right) \\
    U_2(z) &= \tfrac12 \left(\frac{z_2 - w_1(z)}{0.4}\right)^2 \\
    U_3(z) &= -\log\left(e^{-\frac12 \left(\frac{z_2 - w_1(z)}{0.35}\right)^2}
                  + e^{-\frac12 \left(\frac{z_2 - w_1(z) + w_2(z)}{0.35}\right)^2}\right) \\
    U_4(z) &= -\log\left(e^{-\frac12 \left(\frac{z_2 - w_1(z)}{0.4}\right)^2}
                  + e^{-\frac12 \left(\frac{z_2 - w_1(z) + w_3(z)}{0.35}\right)^2}\right) \\
    U_5(z) &= 2 \left(z_1^2 + z_2^2 - 2\right)^2 - \sin(\pi z_1)

U1 and U5 are normalisable on R^2 (log Z = 1.8775 and 1.6120). U2, U3 and U4 are not: for
fixed z1 they are Gaussian-like in z2 but constant in z1 far out, so exp(-U) has infinite
mass; they are used on the box [-4, 4]^2 (log Z there 2.0821, 2.6417, 2.6846).

References
----------
1. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015
   (Table 1, Figure 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import autograd.numpy as np

from refflow import backend as B
from refflow.checks import check_array, check_int

__all__ = [
    "BOXES",
    "NORMALISABLE",
    "POTENTIALS",
    "U1",
    "U2",
    "U3",
    "U4",
    "U5",
    "log_normalizer",
    "reference_log_z",
]

Box = tuple[float, float, float, float]


def _coords(z):
    z = check_array("z", z, min_ndim=1, last=2, finite=False)
    return z[..., 0], z[..., 1]


def _w1(z1):
    return np.sin(0.5 * math.pi * z1)


def _w2(z1):
    return 3.0 * np.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1):
    # 3 sigma((z1 - 1) / 0.3), with sigma(x) = (1 + tanh(x / 2)) / 2: no overflow in exp
    return 1.5 * (1.0 + np.tanh(0.5 * (z1 - 1.0) / 0.3))


def _neg_log_two_bumps(a, b):
    """-log(exp(a) + exp(b)), finite even where both exponentials underflow."""
    return -np.logaddexp(a, b)


def U1(z):
    r"""Two-mode ring: ((|z| - 2) / 0.4)^2 / 2 - log(e^{-((z1-2)/.6)^2/2} + e^{-((z1+2)/.6)^2/2}).

    Normalisable on R^2, log Z = 1.8775. The gradient is undefined at z = 0 (the cone of |z|).
    See the module docstring for the formula block and reference.

    >>> round(float(U1(B.asarray([0.0, 2.0]))), 4)
    4.8624
    """
    z1, z2 = _coords(z)
    ring = 0.5 * ((np.sqrt(z1**2 + z2**2) - 2.0) / 0.4) ** 2
    return ring + _neg_log_two_bumps(-0.5 * ((z1 - 2.0) / 0.6) ** 2,
                                     -0.5 * ((z1 + 2.0) / 0.6) ** 2)


def U2(z):
    r"""Sine wave: 1/2 ((z2 - w1(z)) / 0.4)^2, w1(z) = sin(2 pi z1 / 4).

    Not normalisable on R^2 (constant along the wave); on [-4, 4]^2 log Z = 2.0821.

    >>> float(U2(B.asarray([1.0, 1.0])))
    0.0
    """
    z1, z2 = _coords(z)
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2


def U3(z):
    r"""Sine wave with a bump: -log(e^{-((z2-w1)/0.35)^2/2} + e^{-((z2-w1+w2)/0.35)^2/2}).

    w2(z) = 3 exp(-((z1 - 1) / 0.6)^2 / 2). Not normalisable on R^2; on [-4, 4]^2
    log Z = 2.6417. Far from z1 = 1 the two bumps merge and the minimum is -log 2.

    >>> round(float(U3(B.asarray([-3.0, 1.0]))), 4)
    -0.6931
    """
    z1, z2 = _coords(z)
    d = z2 - _w1(z1)
    return _neg_log_two_bumps(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + _w2(z1)) / 0.35) ** 2)


def U4(z):
    r"""Sine wave with a step: -log(e^{-((z2-w1)/0.4)^2/2} + e^{-((z2-w1+w3)/0.35)^2/2}).

    w3(z) = 3 sigma((z1 - 1) / 0.3). Not normalisable on R^2; on [-4, 4]^2 log Z = 2.6846.

    >>> U4(B.asarray([[0.0, 0.0], [1.0, 2.0]])).shape
    (2,)
    """
    z1, z2 = _coords(z)
    d = z2 - _w1(z1)
    return _neg_log_two_bumps(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + _w3(z1)) / 0.35) ** 2)


def U5(z):
    r"""The lecture-assignment energy: U(z) = 2 (z1^2 + z2^2 - 2)^2 - sin(pi z1).

    The assignment names the function sin(pi x1) - 2 (x1^2 + x2^2 - 2)^2; taken as the *log*
    of the unnormalised density (log p = -U), since as an energy exp(-U) would grow like
    exp(2 |z|^4) and have no normaliser. The density is a ring of radius sqrt(2), heavier
    where sin(pi z1) > 0. Normalisable on R^2, log Z = 1.6120; minimum -1 at
    z = (1/2, +-sqrt(7)/2).

    >>> float(U5(B.asarray([0.5, 7.0**0.5 / 2])))
    -1.0
    """
    z1, z2 = _coords(z)
    return 2.0 * (z1**2 + z2**2 - 2.0) ** 2 - np.sin(math.pi * z1)


POTENTIALS: dict[str, Callable[[Any], Any]] = {"U1": U1, "U2": U2, "U3": U3, "U4": U4, "U5": U5}

# Boxes for reference_log_z. For the normalisable energies the mass outside the box is below
# exp(-50), so the box value is log Z on R^2; U2..U4 are only defined on their box.
BOXES: dict[str, Box] = {
    "U1": (-6.0, 6.0, -6.0, 6.0),
    "U2": (-4.0, 4.0, -4.0, 4.0),
    "U3": (-4.0, 4.0, -4.0, 4.0),
    "U4": (-4.0, 4.0, -4.0, 4.0),
    "U5": (-4.0, 4.0, -4.0, 4.0),
}
NORMALISABLE = frozenset({"U1", "U5"})


def log_normalizer(U: Callable[[Any], Any], box: Box = (-4.0, 4.0, -4.0, 4.0),
                   n: int = 512) -> float:
    r"""log Z = log of the integral of exp(-U(z)) over the box, by the composite midpoint rule.

    Parameters
    ----------
    U : an energy mapping (..., 2) to (...,).
    box : (z1_low, z1_high, z2_low, z2_high).
    n : grid points per axis; U is evaluated at the n^2 cell midpoints.

    Notes
    -----
    .. math::
        \log Z \approx \log \sum_{i,j} e^{-U(z_{ij})} + \log(h_1 h_2),
        \qquad z_{ij} = (a_1 + (i + \tfrac12) h_1,\; a_2 + (j + \tfrac12) h_2)

    summed as a log-sum-exp on the host. The error is O(h^2) in general and decays
    exponentially in n when exp(-U) is smooth and negligible (or periodic) at the box edges,
    as for U1 and U5 on a large enough box. Cost: n^2 evaluations of U.

    >>> round(log_normalizer(U1, (-6.0, 6.0, -6.0, 6.0), n=300), 4)
    1.8775
    """
    n = check_int("n", n, minimum=2)
    if len(box) != 4 or not (box[0] < box[1] and box[2] < box[3]):
        raise ValueError(f"box: expected (z1_low, z1_high, z2_low, z2_high) with low < high, "
                         f"got {box!r}")
    h1, h2 = (box[1] - box[0]) / n, (box[3] - box[2]) / n
    mid = B.arange(n, dtype="float64") + 0.5
    g1 = box[0] + h1 * mid[:, None] + 0.0 * mid[None, :]  # (n, n)
    g2 = box[2] + 0.0 * mid[:, None] + h2 * mid[None, :]  # (n, n)
    grid = np.concatenate([g1[..., None], g2[..., None]], axis=-1)  # (n, n, 2)
    neg_u = -B.to_numpy(U(grid))
    top = np.max(neg_u)
    return float(top + np.log(np.sum(np.exp(neg_u - top))) + math.log(h1 * h2))


@cache
def reference_log_z(name: str, n: int = 1024) -> float:
    r"""log Z of ``POTENTIALS[name]`` on ``BOXES[name]``, computed once by ``log_normalizer``.

    For names in ``NORMALISABLE`` this is log Z on R^2; for U2..U4 it is log Z on [-4, 4]^2.

    >>> round(reference_log_z("U2", n=256), 4)
    2.0821
    """
    if name not in POTENTIALS:
        raise ValueError(f"name: expected one of {sorted(POTENTIALS)}, got {name!r}")
    return log_normalizer(POTENTIALS[name], BOXES[name], n=n)
