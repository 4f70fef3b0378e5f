r"""Maximum-likelihood training of a flow: the lecture's NLL minimised with Adam.

Notes
-----
Lecture: "MLE problem" and "Flow-based Models": the training criterion is the negative
log-likelihood over the training set S,

.. math::

    \mathcal{L}(S) = -\frac{1}{|S|} \sum_{x \in S} \log p_\theta(x),

minimised here over mini-batches. The flow is rebuilt from its unconstrained parameters
inside the loss (``refflow.tree.partition``), so the gradient step can never leave the set of
valid bijections. The optimiser is written here because autograd's own starts from NumPy
arrays and would not run on CuPy.

References
----------
1. D. P. Kingma, J. Ba. Adam: A Method for Stochastic Optimization. ICLR, 2015.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import autograd.numpy as np
from autograd import value_and_grad

from refflow.backend import to_numpy
from refflow.checks import check_array, check_int
from refflow.tree import partition

__all__ = ["Adam", "fit", "nll"]


@dataclass
class Adam:
    r"""Adam: m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, p <- p - lr m_hat / (sqrt(v_hat) + eps).

    Holds its moments as arrays of the parameters' own backend and dtype.

    Examples
    --------
    >>> import numpy
    >>> opt = Adam(lr=0.1)
    >>> params = [numpy.array([1.0])]
    >>> state = opt.init(params)
    >>> params, state = opt.step(params, [numpy.array([2.0])], state)
    >>> params[0].round(6).tolist()          # the first step moves by lr against the sign
    [0.9]
    """

    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def init(self, params: list) -> dict:
        return {"m": [np.zeros_like(p) for p in params],
                "v": [np.zeros_like(p) for p in params], "t": 0}

    def step(self, params: list, grads: list, state: dict, lr: float | None = None):
        lr = self.lr if lr is None else lr
        t = state["t"] + 1
        m = [self.b1 * m + (1 - self.b1) * g for m, g in zip(state["m"], grads)]
        v = [self.b2 * v + (1 - self.b2) * g * g for v, g in zip(state["v"], grads)]
        c1, c2 = 1 - self.b1**t, 1 - self.b2**t
        new = [p - (lr / c1) * mi / (np.sqrt(vi / c2) + self.eps)
               for p, mi, vi in zip(params, m, v)]
        return new, {"m": m, "v": v, "t": t}


def nll(flow: Any, x: Any) -> Any:
    """The lecture's L(S) = -(1/|S|) sum log p(x) on a batch (a sum / n: no float64 creep)."""
    return -np.sum(flow.log_prob(x)) / x.shape[0]


def _check_data(flow, data):
    event_shape = tuple(flow.base.event_shape)
    check_array("data", data, ndim=1 + len(event_shape), last=event_shape)
    if data.shape[0] < 1:
        raise ValueError("data: expected at least one sample")


def fit(flow: Any, data: Any, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
        rng: Any = None) -> tuple[Any, dict]:
    """Fit ``flow`` to ``data`` by maximum likelihood with Adam on mini-batches.

    Parameters
    ----------
    flow : ``refflow.Flow``.
    data : (N, *event_shape) array of the flow's backend, finite.
    steps : number of gradient steps.
    batch_size : mini-batch size (the whole data set if larger).
    lr : Adam's learning rate.
    rng : ``refflow.backend.rng(seed)``, for the mini-batch draws.

    Returns
    -------
    flow : the trained flow.
    history : dict with ``"loss"``, the training NLL of each step's batch (floats).

    Examples
    --------
    >>> import numpy
    >>> from refflow import backend, Flow, StandardNormal, Diagonal
    >>> data = backend.rng(0).normal(3.0, 2.0, (500, 1))
    >>> flow = Flow(StandardNormal(1), Diagonal(numpy.ones(1), numpy.zeros(1)))
    >>> flow, hist = fit(flow, data, steps=300, batch_size=500, lr=0.1, rng=backend.rng(1))
    >>> bool(abs(flow.bijection.shift[0] - 3.0) < 0.3 and abs(flow.bijection.scale[0] - 2.0) < 0.3)
    True
    """
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    if rng is None:
        raise ValueError("rng: expected a generator, refflow.backend.rng(seed)")
    _check_data(flow, data)
    params, rebuild = partition(flow)
    opt = Adam(lr=lr)
    state = opt.init(params)
    loss_and_grad = value_and_grad(lambda p, xb: nll(rebuild(p), xb))
    n = data.shape[0]
    batch_size = min(batch_size, n)
    history: dict[str, list] = {"loss": []}
    for _ in range(steps):
        idx = rng.choice(n, size=batch_size, replace=False) if batch_size < n else None
        batch = data if idx is None else data[idx]
        loss, grads = loss_and_grad(params, batch)
        params, state = opt.step(params, grads, state)
        history["loss"].append(float(to_numpy(loss)))
    return rebuild(params), history
