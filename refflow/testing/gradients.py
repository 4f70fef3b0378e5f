r"""check_gradients: autograd gradients of a scalar loss against finite differences.

Notes
-----
For each parameter array p_i, the derivative of t -> loss(p_i + t d) at t = 0 is computed
by central differences with one Richardson step and compared with <grad_i, d>: d runs
over the unit vectors of a small array (every entry checked) and over a few random unit
directions of a large one.

.. math::

    \frac{d}{dt} L(p + t d)\Big|_{t=0} = \langle \nabla L(p), d \rangle
    \approx \frac{4 D(h/2) - D(h)}{3}, \quad D(h) = \frac{L(p + h d) - L(p - h d)}{2h}

Cost: 4 loss evaluations per entry (small arrays) or per direction (large arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy

from refflow import backend as B
from refflow.testing.differences import NOISE, SAFETY
from refflow.testing.report import CheckResult, Report

__all__ = ["check_gradients"]


def _like(p: Any, a: numpy.ndarray) -> Any:
    """``a`` with the array type and dtype of the parameter ``p``."""
    a = a.astype(p.dtype)
    return a if isinstance(p, numpy.ndarray) else B.asarray(a)


def check_gradients(
    loss: Callable[[list], Any],
    params: list,
    *,
    rng: Any = None,
    tol: float | None = None,
    max_entries: int = 64,
    directions: int = 4,
) -> Report:
    r"""Compare autograd gradients of ``loss(params)`` with finite differences, per parameter.

    Parameters
    ----------
    loss : callable list of arrays -> scalar, written with ``autograd.numpy``.
    params : list (or tuple) of float arrays, e.g. the leaves of ``refflow.tree.partition``.
    rng : None, int seed or a Generator, for the random directions; default seed 0.
    tol : absolute tolerance on each directional derivative; by default derived from the
        Richardson error estimate and the dtype.
    max_entries : arrays with at most this many entries are checked entry by entry.
    directions : number of random unit directions for larger arrays.

    Returns
    -------
    Report
        Checks ``"finite"`` (loss and gradients) and ``"gradients"``, whose ``row`` is
        the index of the parameter array with the worst error.

    Notes
    -----
    Lecture: "Flow-based Models", maximum-likelihood training by gradient ascent; the
    gradient of -log p(x) is what every flow's training step needs.

    .. math::

        \langle \nabla L(p), d \rangle \approx \frac{4 D(h/2) - D(h)}{3}

    Cost: 4 evaluations of the loss per checked entry or direction.

    References
    ----------
    1. A. Griewank, A. Walther. Evaluating Derivatives, 2nd ed., SIAM, 2008.

    Examples
    --------
    >>> import autograd.numpy as anp
    >>> import numpy
    >>> report = check_gradients(lambda p: anp.sum(anp.sin(p[0]) * p[1] ** 2),
    ...                          [numpy.array([0.3, -1.2]), numpy.array([2.0, 0.5])])
    >>> report.ok
    True
    """
    import autograd

    if not isinstance(params, (list, tuple)) or not params:
        raise ValueError(f"params: expected a non-empty list of arrays, "
                         f"got {type(params).__name__}")
    params = list(params)
    for i, p in enumerate(params):
        if not B.is_array(p) or B.to_numpy(p).dtype.kind != "f":
            raise ValueError(f"params[{i}]: expected a float array, got {type(p).__name__}")
    if rng is None or isinstance(rng, (int, numpy.integer)):
        host_rng = numpy.random.default_rng(0 if rng is None else int(rng))
    else:
        host_rng = getattr(rng, "host", rng)
    value = float(B.to_numpy(loss(params)))
    grads = [B.to_numpy(g) for g in autograd.grad(loss)(params)]
    bad = [i for i, g in enumerate(grads) if not numpy.all(numpy.isfinite(g))]
    finite = CheckResult("finite", numpy.isfinite(value) and not bad,
                         float(len(bad) + (not numpy.isfinite(value))), 0.0,
                         bad[0] if bad else None, None,
                         f"non-finite gradient of params{bad}" if bad else
                         f"loss {value:.6g} and {len(grads)} gradients")

    def derivative(i, d, h):
        def at(t):
            moved = list(params)
            moved[i] = params[i] + _like(params[i], t * d)
            return float(B.to_numpy(loss(moved)))

        d_full = (at(h) - at(-h)) / (2 * h)
        d_half = (at(h / 2) - at(-h / 2)) / h
        R = (4 * d_half - d_full) / 3
        eps = float(numpy.finfo(params[i].dtype).eps)
        bound = SAFETY * abs(R - d_half) + 3 * NOISE * eps * max(1.0, abs(value)) / (h / 2)
        return R, bound

    worst = (-1.0, 0.0, 0.0, 0, "")
    for i, (p, g) in enumerate(zip(params, grads)):
        host = B.to_numpy(p)
        eps = float(numpy.finfo(host.dtype).eps)
        if host.size <= max_entries:
            cases = [(numpy.eye(host.size)[k].reshape(host.shape), f"entry {k}",
                      max(1.0, abs(float(host.ravel()[k])))) for k in range(host.size)]
        else:
            cases = []
            for k in range(directions):
                d = host_rng.standard_normal(host.shape)
                cases.append((d / numpy.linalg.norm(d), f"random direction {k}",
                              max(1.0, float(numpy.max(numpy.abs(host))))))
        for d, label, scale in cases:
            fd, bound = derivative(i, d, eps ** 0.2 * scale)
            exact = float(numpy.sum(g * d))
            t = bound if tol is None else tol
            err = abs(exact - fd) if numpy.isfinite(exact - fd) else numpy.inf
            if err / max(t, 1e-300) > worst[0]:
                worst = (err / max(t, 1e-300), err, t, i,
                         f"params[{i}] {label}: autograd {exact:.8g} vs finite differences "
                         f"{fd:.8g}")
    _, err, t, i, detail = worst
    grad_check = CheckResult("gradients", bool(err <= t), err, t, i, None, detail)
    return Report((finite, grad_check), "check_gradients", {"params": len(params)})
