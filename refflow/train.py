r"""Training a flow: maximum likelihood (``fit``) and variational inference (``fit_vi``).

The lecture's two applications of a flow, each one objective minimised with Adam:

1. density estimation, the negative log-likelihood over the training set S,
   L(S) = -(1/|S|) sum_{x in S} log p_theta(x);
2. variational inference, the evidence lower bound of a flow q_theta against an unnormalised
   target p~(z) = Z p(z), ELBO = E_q[log p~(z) - log q_theta(z)] = log Z - KL(q || p),
   estimated with the reparameterisation trick: z = f_theta(eps), eps ~ p_eps, so the
   sample and its log-density are differentiable in theta (``Flow.sample_and_log_prob``).

Notes
-----
Lecture: "MLE problem", "Flow-based Models" (the NLL training criterion) and the two
applications, density estimation and variational inference with the ELBO.

.. math::

    \mathcal{L}(S) = -\frac{1}{|S|} \sum_{x \in S} \log p_\theta(x), \qquad
    \mathrm{ELBO}(\theta) = \mathbb{E}_{\epsilon \sim p_\epsilon}\big[
        \log \tilde p(f_\theta(\epsilon)) - \log p_\epsilon(\epsilon)
        + \log|\det J_{f_\theta}(\epsilon)|\big]

**Conditional flows** (``context_dim`` C > 0) train the same objectives given a context:
``fit(flow, x, context=c)`` minimises -(1/|S|) sum log p_theta(x | c) over (x, c) pairs (the
rows of ``c`` batched with those of ``x``), and ``fit_vi(flow, log_target, context=x)``
trains an amortised posterior q_theta(z | x) for every observation x at once (Kingma &
Welling's amortisation, with a flow as q): the mean over x of ELBO(x) =
E_{q(z | x)}[log p(x, z) - log q(z | x)].

The flow is rebuilt from its unconstrained parameters inside each loss
(``refflow.tree.partition``), so no gradient step can leave the set of valid bijections.
The optimiser is written here because autograd's own starts from NumPy arrays and would not
run on CuPy. Per-step losses stay on the device and are read back in blocks
(``eval_every``), so a GPU run does not wait for the host after every step.

References
----------
1. D. P. Kingma, J. Ba. Adam: A Method for Stochastic Optimization. ICLR, 2015.
2. D. J. Rezende, S. Mohamed. Variational Inference with Normalizing Flows. ICML, 2015.
3. D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR, 2014.
4. I. Loshchilov, F. Hutter. SGDR: Stochastic Gradient Descent with Warm Restarts.
   ICLR, 2017 (the cosine schedule).
5. R. Pascanu, T. Mikolov, Y. Bengio. On the difficulty of training recurrent neural
   networks. ICML, 2013 (clipping by the global norm).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import autograd.numpy as np
from autograd import value_and_grad
from autograd.differential_operators import grad_and_aux

from refflow import backend as B
from refflow.checks import check_array, check_int, check_real
from refflow.core import context_dim_of, repeat_context
from refflow.tree import partition, ravel_leaves

__all__ = ["Adam", "fit", "fit_vi", "elbo", "nll", "learning_rate"]


@dataclass
class Adam:
    r"""Adam: p <- p - lr m_hat / (sqrt(v_hat) + eps), m, v running moments of g and g^2.

    m <- b1 m + (1 - b1) g and v <- b2 v + (1 - b2) g^2, bias-corrected to m_hat, v_hat.
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


def nll(flow: Any, x: Any, context: Any = None) -> Any:
    """The lecture's L(S) = -(1/|S|) sum log p(x) on a batch (a sum / n: no float64 creep).

    With a ``context`` ((N, C) or (C,)), the conditional NLL -(1/N) sum log p(x_i | c_i).
    """
    if context is None:
        return -np.sum(flow.log_prob(x)) / x.shape[0]
    return -np.sum(flow.log_prob(x, context)) / x.shape[0]


def learning_rate(schedule: str | Callable[[int], float], lr: float, step: int,
                  steps: int) -> float:
    r"""The learning rate at ``step`` (0-based) of ``steps``: constant, cosine or step decay.

    ``"cosine"``: lr (1 + cos(pi t / T)) / 2, from lr down to 0 at t = T.
    ``"step"``: lr / 10 after half of the steps and lr / 100 after three quarters.
    A callable ``schedule(step) -> lr`` is used as given.

    >>> learning_rate("cosine", 1.0, 50, 100)
    0.5
    >>> learning_rate("step", 1.0, 80, 100)
    0.01
    """
    if callable(schedule):
        return float(schedule(step))
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
    if schedule == "step":
        return lr * 0.1 ** ((4 * step >= 2 * steps) + (4 * step >= 3 * steps))
    raise ValueError(
        f"schedule: expected 'constant', 'cosine', 'step' or a callable, got {schedule!r}"
    )


def _clip(grads: list, max_norm: float | None) -> list:
    """Rescale the gradients so that their global norm is at most ``max_norm``.

    The factor min(1, max_norm / |g|) stays an array, so no value is read back to the host.
    """
    if max_norm is None:
        return grads
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    factor = np.minimum(1.0, max_norm / (norm + 1e-30))
    return [g * factor for g in grads]


def _host_floats(values: list) -> list:
    """Device scalars to Python floats in one transfer."""
    if not values:
        return []
    return [float(v) for v in B.to_numpy(B.xp().stack([B.xp().asarray(v) for v in values]))]


def _gradient_step(value_and_grads: Callable, params: list, state: dict, opt: Adam,
                   rate: float, clip_norm: float | None, *args: Any) -> tuple:
    """One optimiser step: ``value, grads = value_and_grads(params, *args)``, clip, Adam.

    The one gradient step of ``fit`` and ``fit_vi`` (and of data-parallel training, whose
    ``value_and_grads`` gathers the gradients of its parts). Returns ``(params, state,
    value, grads)``; the value and gradients stay on the device.
    """
    value, grads = value_and_grads(params, *args)
    params, state = opt.step(params, _clip(grads, clip_norm), state, lr=rate)
    return params, state, value, grads


def _check_finite_step(value: float, grads: list, step: int, what: str) -> None:
    """Raise ``FloatingPointError`` when the objective or a gradient is NaN or infinite.

    Checked at every evaluation (one device sync per ``eval_every`` steps): a NaN gradient
    turns every parameter NaN through Adam, even a scale built positive by construction.
    """
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} became {value} at step {step}: lower lr or set "
                                 f"clip_norm")
    finite = _host_floats([np.all(np.isfinite(g)) for g in grads])
    if not all(finite):
        raise FloatingPointError(f"a gradient of the {what} became NaN or infinite at step "
                                 f"{step}: lower lr or set clip_norm")


def _check_common(steps, batch_size, lr, rng, clip_norm, eval_every, schedule):
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_int("eval_every", eval_every)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
            math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a positive finite learning rate, got {lr!r}")
    if not hasattr(rng, "standard_normal") or not hasattr(rng, "permutation"):
        raise ValueError("rng: expected a generator, refflow.backend.rng(seed)")
    if clip_norm is not None and not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
        raise ValueError(f"clip_norm: expected a positive number or None, got {clip_norm!r}")
    learning_rate(schedule, lr, 0, steps)


def _progress_bar(progress: bool | None, steps: int, desc: str):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, leave=False)


def _split(arrays: tuple, validation, rng):
    """(train, held-out), each a tuple like ``arrays`` (the data, and its context rows).

    ``validation`` is a fraction of the rows held out at random (one permutation for all
    arrays, so a context row stays with its data row) or explicit held-out arrays: the data
    alone, or ``(data, context)`` when ``arrays`` has a context.
    """
    data = arrays[0]
    if validation is None:
        return arrays, None
    if isinstance(validation, float):
        n = data.shape[0]
        n_val = int(round(validation * n))
        if not 0.0 < validation < 1.0 or n_val < 1 or n - n_val < 1:
            raise ValueError(
                f"validation: expected a fraction in (0, 1) leaving at least one sample on "
                f"each side of the split of {n} samples, got {validation!r}"
            )
        order = rng.permutation(n)
        shuffled = tuple(a[order] for a in arrays)
        return (tuple(a[n_val:] for a in shuffled), tuple(a[:n_val] for a in shuffled))
    held = tuple(validation) if isinstance(validation, (tuple, list)) else (validation,)
    if len(held) != len(arrays):
        raise ValueError("validation: expected (data, context) held-out arrays for a "
                         "conditional fit" if len(arrays) > 1 else
                         "validation: expected a fraction or one held-out data array")
    for name, h, a in zip(("validation", "validation context"), held, arrays):
        check_array(name, h, ndim=len(a.shape), last=tuple(a.shape[1:]))
    if held[0].shape[0] < 1 or any(h.shape[0] != held[0].shape[0] for h in held):
        raise ValueError("validation: expected at least one held-out sample, and one context "
                         "row per held-out row")
    return arrays, held


def _batches(data, batch_size: int, rng):
    """Endless mini-batches: each epoch one permutation, then contiguous slices of it.

    ``data`` is an array, or a tuple of arrays with the same rows (data and context), which
    share each epoch's permutation and are yielded as a tuple.
    """
    arrays = data if isinstance(data, tuple) else (data,)
    n = arrays[0].shape[0]
    while True:
        if batch_size < n:
            order = rng.permutation(n)
            shuffled = tuple(a[order] for a in arrays)
        else:
            shuffled = arrays
        for start in range(0, n - batch_size + 1, batch_size):
            block = tuple(a[start:start + batch_size] for a in shuffled)
            yield block if isinstance(data, tuple) else block[0]


def _check_context_rows(flow: Any, context: Any, rows: int, what: str) -> Any:
    """ValueError naming ``context`` unless it is None for an unconditional flow, or (rows, C)
    for a flow conditioned on C numbers."""
    c = context_dim_of(flow)
    if context is None:
        if c:
            raise ValueError(f"context: the flow expects a context of dimension {c}, one row "
                             f"per {what}, got None")
        return None
    if not c:
        raise ValueError("context: the flow takes no context (context_dim 0)")
    check_array("context", context, ndim=2, last=c)
    if rows is not None and context.shape[0] != rows:
        raise ValueError(f"context: expected one row per {what} ({rows}), got "
                         f"{context.shape[0]}")
    return context


def _flat_parameters(flow: Any) -> tuple[list, Callable[[list], Any]]:
    """``partition(flow)`` with its leaves in one vector: ``([v], rebuild)``.

    Training differentiates one array: autograd builds its vector space once, where a list
    of n leaves costs it the space of the whole list once per leaf (n^2 work), and Adam
    updates one array instead of n.
    """
    leaves, rebuild_leaves = partition(flow)
    vector, unravel = ravel_leaves(leaves)
    return [vector], lambda params: rebuild_leaves(unravel(params[0]))


def fit(flow: Any, data: Any, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
        rng: Any = None, *, validation: float | Any = None, patience: int | None = None,
        eval_every: int = 50, schedule: str | Callable[[int], float] = "constant",
        clip_norm: float | None = None, callback: Callable[..., Any] | None = None,
        progress: bool | None = None, context: Any = None,
        client: Any = None, processes: int = 1) -> tuple[Any, dict]:
    r"""Fit ``flow`` to ``data`` by maximum likelihood: Adam on mini-batches of the NLL.

    Parameters
    ----------
    flow : ``refflow.Flow``.
    data : (N, *event_shape) array of the flow's backend, finite.
    steps : number of gradient steps.
    batch_size : mini-batch size (the whole training set if larger). Each epoch visits
        the training set in a fresh random order.
    lr : Adam's (peak) learning rate.
    rng : ``refflow.backend.rng(seed)``: the split and the batches; one seed, one result.
    validation : ``None``, a fraction in (0, 1) of ``data`` held out at random, or a
        held-out array (with ``context``: a pair ``(data, context)``). With it, the
        validation NLL is measured every ``eval_every`` steps and the parameters with the
        best one are returned (early stopping).
    patience : stop after this many evaluations without a better validation NLL
        (``None``: never stop early).
    eval_every : steps between evaluations (validation, history floats, callback).
    schedule : ``"constant"``, ``"cosine"``, ``"step"`` or ``schedule(step) -> lr``.
    clip_norm : rescale gradients whose global norm exceeds this (``None``: no clipping).
    callback : ``callback(step, flow, history)`` at every evaluation; returning ``True``
        stops training.
    progress : a tqdm bar; ``None`` shows it only when stderr is a terminal.
    context : (N, C) array, row i the context of ``data[i]``, for a conditional flow: the
        NLL is then -(1/|B|) sum log p(x | c) over the batch's (x, c) pairs (each batch and
        the validation split take the same rows of both).
    client : ``None`` (this process), or a Dask ``Client`` or scheduler address: the same
        steps, each batch's gradient computed in parts on the workers, ``data`` a
        ``dask.array`` or a list of shards (``refflow.dask.fit``; no validation, patience
        or context there).
    processes : cores to compute each step's gradient on (NumPy backend): 1, this process
        alone; n > 1 starts n - 1 worker processes (``refflow.workers.GradientWorkers``;
        about 0.2 s each, once per call; about 0.3 ms per step) that compute parts of each
        batch while this process computes the first. The same batches and steps; the result
        equals the one-process fit up to the order of the sums over rows. It pays at large
        batches (thousands of rows); a script that uses it needs
        ``if __name__ == "__main__":``.

    Returns
    -------
    flow : the trained flow (the best one on validation when ``validation`` is given).
    history : dict; ``"loss"`` (= ``"train_nll"``): the batch NLL of every step;
        ``"step"``, ``"val_nll"``, ``"lr"``: per evaluation; ``"best_step"``,
        ``"best_val_nll"``, ``"stopped_early"``.

    Raises
    ------
    ValueError : bad arguments or data (wrong shape, NaN, complex, not an array), a
        context missing for a conditional flow or given to an unconditional one.
    FloatingPointError : the NLL or a gradient became NaN or infinite (checked at every
        evaluation).
    refflow.workers.WorkerError : (a RuntimeError) with ``processes`` > 1, a worker died or
        raised during a step.

    Notes
    -----
    Lecture: "MLE problem". Minimises L(S) = -(1/|S|) sum_{x in S} log p_theta(x), or
    -(1/|S|) sum_{(x, c) in S} log p_theta(x | c) with a context.
    Cost per step: one ``log_prob`` and its gradient on a batch.

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
    processes = check_int("processes", processes)
    if client is not None:
        if processes != 1:
            raise ValueError("processes: a fit on a Dask client computes its gradients on "
                             "the client's workers; give client or processes, not both")
        if validation is not None or patience is not None or context is not None:
            raise ValueError("client: data-parallel fit takes no validation, patience or "
                             "context")
        from refflow import dask as on_dask  # the optional extra: imported only when asked

        return on_dask.fit(flow, data, steps, batch_size, lr, rng, client=client,
                           eval_every=eval_every, schedule=schedule, clip_norm=clip_norm,
                           callback=callback)
    _check_common(steps, batch_size, lr, rng, clip_norm, eval_every, schedule)
    if patience is not None:
        check_int("patience", patience)
    event_shape = tuple(getattr(flow, "event_shape", ()))
    if not hasattr(flow, "log_prob") or not event_shape:
        raise ValueError(f"flow: expected a refflow.Flow, got {type(flow).__name__}")
    check_array("data", data, ndim=1 + len(event_shape), last=event_shape)
    if data.shape[0] < 1:
        raise ValueError("data: expected at least one sample")
    context = _check_context_rows(flow, context, data.shape[0], "data row")
    arrays = (data,) if context is None else (data, context)
    train, held_out = _split(arrays, validation, rng)

    params, rebuild = _flat_parameters(flow)
    opt = Adam(lr=lr)
    state = opt.init(params)
    size = min(batch_size, train[0].shape[0])
    history: dict[str, Any] = {"loss": [], "step": [], "val_nll": [], "lr": [],
                               "best_step": None, "best_val_nll": None, "stopped_early": False}
    history["train_nll"] = history["loss"]
    pending: list = []
    best, best_params, waited = math.inf, params, 0
    bar = _progress_bar(progress, steps, "fit")
    workers = None
    try:
        if processes == 1:
            loss_and_grad = value_and_grad(lambda p, *batch: nll(rebuild(p), *batch))
            batches = _batches(train, size, rng)
        else:
            from refflow.workers import GradientWorkers

            workers = GradientWorkers(flow, *train, processes=processes)
            loss_and_grad = workers.value_and_grads
            # the batches' row numbers, from the same generator calls as the batches above
            batches = _batches((B.arange(train[0].shape[0]),), size, rng)
        for step in range(1, steps + 1):
            rate = learning_rate(schedule, lr, step - 1, steps)
            params, state, loss, grads = _gradient_step(loss_and_grad, params, state, opt, rate,
                                                        clip_norm, *next(batches))
            pending.append(loss)
            if bar is not None:
                bar.update(1)
            if step % eval_every and step != steps:
                continue
            history["loss"].extend(_host_floats(pending))
            pending = []
            _check_finite_step(history["loss"][-1], grads, step, "training NLL")
            history["step"].append(step)
            history["lr"].append(rate)
            current = rebuild(params)
            if held_out is not None:
                val = float(B.to_numpy(nll(current, *held_out)))
                history["val_nll"].append(val)
                if val < best:
                    best, best_params, waited = val, params, 0
                    history["best_step"], history["best_val_nll"] = step, val
                else:
                    waited += 1
            if bar is not None:
                bar.set_postfix(nll=history["loss"][-1], val=history["best_val_nll"])
            stop = callback is not None and callback(step, current, history) is True
            if stop or (patience is not None and waited >= patience):
                history["stopped_early"] = step < steps
                break
    finally:
        if bar is not None:
            bar.close()
        if workers is not None:
            workers.close()
    return rebuild(best_params if held_out is not None else params), history


def _check_target(flow, log_target, rng, context=None):
    if not callable(log_target):
        raise ValueError(f"log_target: expected a callable z -> log p~(z), got {log_target!r}")
    if not hasattr(flow, "sample_and_log_prob"):
        raise ValueError(f"flow: expected a refflow.Flow, got {type(flow).__name__}")
    if context is None:
        z, _ = flow.sample_and_log_prob(2, rng)
        out = check_real("log_target", log_target(z))
    else:
        pair = repeat_context(context[:1], 2)
        z, _ = flow.sample_and_log_prob(2, rng, pair)
        out = check_real("log_target", log_target(z, pair))
    if tuple(out.shape) != (2,):
        raise ValueError(
            f"log_target: expected one log-density per sample, shape (n,), got shape "
            f"{getattr(out, 'shape', None)} for n = 2"
        )


def _elbo_terms(flow, log_target, n, rng, context=None):
    """log p~(z) - log q(z) for n reparameterised draws z ~ q: the ELBO's integrand.

    With a context (n, C), draw i is z_i ~ q(z | c_i), scored by log_target(z, context).
    """
    if context is None:
        z, log_q = flow.sample_and_log_prob(n, rng)
        return log_target(z) - log_q
    z, log_q = flow.sample_and_log_prob(n, rng, context)
    return log_target(z, context) - log_q


def fit_vi(flow: Any, log_target: Callable[[Any], Any], steps: int = 1000, rng: Any = None,
           batch_size: int = 256, lr: float = 1e-3, *, anneal_steps: int = 0,
           eval_every: int = 50, schedule: str | Callable[[int], float] = "constant",
           clip_norm: float | None = None, callback: Callable[..., Any] | None = None,
           progress: bool | None = None, context: Any = None,
           samples_per_context: int = 1) -> tuple[Any, dict]:
    r"""Variational inference: maximise ELBO = E_q[log p~(z) - log q(z)] over the flow q.

    Parameters
    ----------
    flow : ``refflow.Flow``, the variational density q.
    log_target : z (n, *event_shape) -> (n,), the unnormalised log-density log p~(z)
        (for an energy U: ``lambda z: -U(z)``). With ``context``:
        ``log_target(z, context)``, z (n, *event_shape) and context (n, C), row i the
        observation that z_i was drawn for, -> (n,), the unnormalised log p(x_i, z_i).
    steps, rng, batch_size, lr : gradient steps, ``refflow.backend.rng(seed)``, Monte
        Carlo samples per step (with ``context``: context rows per step), Adam's learning
        rate.
    anneal_steps : the target's weight beta rises linearly from 0.01 to 1 over this many
        steps (Rezende & Mohamed's annealed free energy; 0: no annealing). Helps q find
        every mode before committing to one.
    eval_every, schedule, clip_norm, callback, progress : as in ``fit``.
    context : (M, C) array, for amortised VI with a conditional q(z | x): one row per
        observation x (the observation itself, or features of it). Each step takes
        ``min(batch_size, M)`` rows (a fresh permutation each epoch, as ``fit``'s batches)
        and draws ``samples_per_context`` = S samples z ~ q(z | x) for each, so the step
        averages batch_size * S terms of the ELBO of those observations.
    samples_per_context : S, draws per context row and step (only with ``context``).

    Returns
    -------
    flow : the trained q.
    history : dict; ``"elbo"``: the Monte Carlo ELBO (beta = 1) of every step's samples
        (with ``context``: its mean over the step's observations); ``"step"``, ``"lr"`` per
        evaluation.

    Raises
    ------
    ValueError : bad arguments, a ``log_target`` that does not give one value per sample, a
        context missing for a conditional q or given to an unconditional one.
    FloatingPointError : the ELBO estimate or a gradient became NaN or infinite (checked at
        every evaluation, as in ``fit``).

    Notes
    -----
    Lecture: the second application, variational inference: "sampling and evaluating from
    a variational posterior q_theta parameterized by a flow", trained by maximising the ELBO.
    With the reparameterisation z = f_theta(eps), the gradient of the Monte Carlo estimate is
    an unbiased estimate of the ELBO's gradient. Reverse KL: KL(q || p) = log Z - ELBO >= 0,
    mode-seeking. Cost per step: one ``sample_and_log_prob`` of ``batch_size`` samples
    (the flow's ``forward``), one target evaluation, their gradients.

    .. math::

        \mathrm{ELBO} = \mathbb{E}_{q}[\log \tilde p(z) - \log q(z)]
        = \log Z - \mathrm{KL}(q \,\|\, p)

    Amortised (with ``context``): one q_theta(z | x) for all observations, maximising
    (1/M) sum_m E_{q(z | x_m)}[log p(x_m, z) - log q(z | x_m)] =
    (1/M) sum_m [log p(x_m) - KL(q(. | x_m) || p(. | x_m))].

    Examples
    --------
    >>> import numpy
    >>> from refflow import backend, Flow, StandardNormal, Diagonal
    >>> q = Flow(StandardNormal(1), Diagonal(numpy.ones(1), numpy.zeros(1)))
    >>> target = lambda z: -0.5 * ((z[:, 0] - 2.0) / 0.5) ** 2       # N(2, 0.5^2), unnormalised
    >>> q, hist = fit_vi(q, target, steps=400, rng=backend.rng(0), batch_size=64, lr=0.05)
    >>> bool(abs(q.bijection.shift[0] - 2.0) < 0.1 and abs(q.bijection.scale[0] - 0.5) < 0.1)
    True
    """
    _check_common(steps, batch_size, lr, rng, clip_norm, eval_every, schedule)
    check_int("anneal_steps", anneal_steps, minimum=0)
    check_int("samples_per_context", samples_per_context)
    context = _check_context_rows(flow, context, None, "observation")
    if context is None and samples_per_context != 1:
        raise ValueError("samples_per_context: draws per context row, only with a context; "
                         "without one, batch_size is the number of draws")
    _check_target(flow, log_target, rng, context)

    params, rebuild = _flat_parameters(flow)
    opt = Adam(lr=lr)
    state = opt.init(params)

    def loss(p, beta, rows=None):
        if rows is None:
            n, terms_context = batch_size, None
        else:
            terms_context = repeat_context(rows, samples_per_context)  # (B * S, C)
            n = terms_context.shape[0]
        z, log_q = rebuild(p).sample_and_log_prob(n, rng, terms_context)
        log_p = log_target(z) if rows is None else log_target(z, terms_context)
        # aux: the plain ELBO estimate, whatever the annealing weight
        return np.sum(log_q - beta * log_p) / n, np.sum(log_p - log_q) / n

    grad_fn = grad_and_aux(loss)

    def value_and_grads(p, *args):
        grads, value = grad_fn(p, *args)
        return value, grads

    rows = None if context is None else _batches(context, min(batch_size, context.shape[0]),
                                                 rng)
    history: dict[str, Any] = {"elbo": [], "step": [], "lr": []}
    pending: list = []
    bar = _progress_bar(progress, steps, "fit_vi")
    try:
        for step in range(1, steps + 1):
            rate = learning_rate(schedule, lr, step - 1, steps)
            beta = min(1.0, 0.01 + step / anneal_steps) if anneal_steps else 1.0
            args = (beta,) if rows is None else (beta, next(rows))
            params, state, value, grads = _gradient_step(value_and_grads, params, state, opt,
                                                         rate, clip_norm, *args)
            pending.append(value)
            if bar is not None:
                bar.update(1)
            if step % eval_every and step != steps:
                continue
            history["elbo"].extend(_host_floats(pending))
            pending = []
            _check_finite_step(history["elbo"][-1], grads, step, "ELBO")
            history["step"].append(step)
            history["lr"].append(rate)
            if bar is not None:
                bar.set_postfix(elbo=history["elbo"][-1])
            if callback is not None and callback(step, rebuild(params), history) is True:
                break
    finally:
        if bar is not None:
            bar.close()
    return rebuild(params), history


def elbo(flow: Any, log_target: Callable[[Any], Any], n: int, rng: Any,
         batch_size: int = 4096, context: Any = None) -> tuple[float, float]:
    r"""Monte Carlo ELBO = mean_i [log p~(z_i) - log q(z_i)], z_i ~ q, and its standard error.

    Parameters
    ----------
    flow : ``refflow.Flow``, the variational density q.
    log_target : z (n, *event_shape) -> (n,), the unnormalised log-density log p~; with
        ``context``, ``log_target(z, context)`` as in ``fit_vi``.
    n : number of samples (with ``context``: per context row).
    rng : ``refflow.backend.rng(seed)``.
    batch_size : samples per pass (bounds the memory).
    context : (M, C) array of observations for an amortised q(z | x): the estimate is then
        the mean over the M rows of each row's ELBO, from n draws per row.

    Returns
    -------
    estimate, standard_error : floats; the standard error is std(w) / sqrt(n), w the
    n terms (with ``context``: sqrt(sum_m var_m / n) / M, var_m the spread of row m's
    terms: the Monte Carlo error at these M observations). With a known log Z,
    KL(q || p) = log Z - estimate, with the same error.

    Examples
    --------
    >>> import math, numpy
    >>> from refflow import backend, Flow, StandardNormal, Diagonal
    >>> q = Flow(StandardNormal(1), Diagonal(numpy.ones(1), numpy.zeros(1)))
    >>> est, se = elbo(q, lambda z: -0.5 * z[:, 0] ** 2, 1000, backend.rng(0))
    >>> round(est, 6) == round(0.5 * math.log(2 * math.pi), 6), se     # q = p: exact, no spread
    (True, 0.0)
    """
    n = check_int("n", n)
    batch_size = check_int("batch_size", batch_size)
    context = _check_context_rows(flow, context, None, "observation")
    _check_target(flow, log_target, rng, context)
    terms_context = None if context is None else repeat_context(context, n)  # (M * n, C)
    total = n if context is None else terms_context.shape[0]
    parts = []
    for start in range(0, total, batch_size):
        block = None if context is None else terms_context[start:start + batch_size]
        parts.append(B.to_numpy(_elbo_terms(flow, log_target, min(batch_size, total - start),
                                            rng, block)))
    w = B.to_numpy(np.concatenate(parts)) if len(parts) > 1 else parts[0]
    if not bool(np.all(np.isfinite(w))):
        raise FloatingPointError("elbo: log p~(z) - log q(z) is not finite for some samples")
    w = w.reshape(-1, n)  # (M, n): row m holds the draws for context row m
    if n == 1:
        return float(np.mean(w)), math.inf
    se = float(np.sqrt(np.sum(np.var(w, axis=1)) / n) / w.shape[0])
    return float(np.mean(w)), se
